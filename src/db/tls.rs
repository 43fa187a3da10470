//! TLS to PostgreSQL with rustls, by libpq's `sslmode` and `sslrootcert` in DATABASE_URL.
//! tokio-postgres knows only disable / prefer / require and no `sslrootcert`, so both are
//! taken out of the URL here and turned into a rustls configuration:
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (the default) | if the server offers it | no |
//! | `require` | yes | no |
//! | `verify-ca` | yes | signed by `sslrootcert` |
//! | `verify-full` | yes | signed by `sslrootcert`, and names the host |
//!
//! `sslrootcert` is a PEM file of CA certificates, or `system` for the system's store.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Why the TLS settings in DATABASE_URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("sslmode {0:?} is not one of disable, prefer, require, verify-ca, verify-full")]
    Mode(String),
    #[error(
        "sslmode={0} checks the server's certificate: set sslrootcert to a CA file or to system"
    )]
    NoRootCert(&'static str),
    #[error("cannot read the CA certificates in sslrootcert {path:?}")]
    RootCert {
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert {0:?} holds no usable CA certificate")]
    EmptyRootCert(String),
    #[error("cannot build the TLS configuration")]
    Config(#[from] rustls::Error),
    #[error("cannot build the certificate verifier")]
    Verifier(#[from] rustls::client::VerifierBuilderError),
}

/// The TLS settings of a DATABASE_URL, and the URL tokio-postgres is given without them.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://...?sslmode=...`) or a
/// `key=value` connection string; tokio-postgres then gets `sslmode=disable|prefer|require`.
pub fn settings(url: &str) -> Result<Settings, TlsError> {
    let (mut mode, mut root_cert) = (None, None);
    let mut take = |k: &str, v: &str| match k {
        "sslmode" => {
            mode = Some(v.to_string());
            true
        }
        "sslrootcert" => {
            root_cert = Some(v.to_string());
            true
        }
        _ => false,
    };
    let rest = if let Some((base, query)) = url.split_once('?').filter(|_| url.contains("://")) {
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k, &percent_decode(v))
            })
            .collect();
        (base.to_string(), kept.join("&"), '?')
    } else if url.contains("://") {
        (url.to_string(), String::new(), '?')
    } else {
        let kept: Vec<&str> = url
            .split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k, v.trim_matches('\''))
            })
            .collect();
        (String::new(), kept.join(" "), ' ')
    };
    let mode = match mode.as_deref().unwrap_or("prefer") {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => return Err(TlsError::Mode(other.to_string())),
    };
    let ours = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    };
    let (base, kept, sep) = rest;
    let url = match (sep, kept.is_empty()) {
        ('?', true) => format!("{base}?sslmode={ours}"),
        ('?', false) => format!("{base}?{kept}&sslmode={ours}"),
        _ => format!("{kept} sslmode={ours}"),
    };
    Ok(Settings {
        url,
        mode,
        root_cert,
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(a), Some(b)) if hex(a).is_some() && hex(b).is_some() => {
                out.push((hex(a).unwrap() * 16 + hex(b).unwrap()) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The rustls configuration for `s`; `None` for `sslmode=disable`.
pub fn client_config(s: &Settings) -> Result<Option<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let verifier: Arc<dyn ServerCertVerifier> = match s.mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => Arc::new(Unverified(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let name = if s.mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            };
            let roots = roots(s.root_cert.as_deref().ok_or(TlsError::NoRootCert(name))?)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            if s.mode == SslMode::VerifyCa {
                Arc::new(AnyName(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(Some(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

fn roots(root_cert: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if root_cert == "system" {
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
    } else {
        let certs = CertificateDer::pem_file_iter(root_cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsError::RootCert {
                path: root_cert.to_string(),
                source,
            })?;
        roots.add_parsable_certificates(certs);
    }
    if roots.is_empty() {
        return Err(TlsError::EmptyRootCert(root_cert.to_string()));
    }
    Ok(roots)
}

/// `require` and `prefer`: encrypted, the certificate not checked (libpq's meaning).
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted CA; the name in it need not be the host's.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_leave_the_url_and_become_rustls_modes() {
        let s = settings("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&x=1")
            .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(s.url, "postgres://u@h/db?x=1&sslmode=require");
        let s = settings("postgres://u@h/db").unwrap();
        assert_eq!(
            (s.mode, s.url.as_str()),
            (SslMode::Prefer, "postgres://u@h/db?sslmode=prefer")
        );
        let s = settings("host=h sslmode=disable user=u").unwrap();
        assert_eq!(
            (s.mode, s.url.as_str()),
            (SslMode::Disable, "host=h user=u sslmode=disable")
        );
        assert!(matches!(
            settings("postgres://h?sslmode=nope"),
            Err(TlsError::Mode(_))
        ));
        let verify = settings("postgres://h?sslmode=verify-ca").unwrap();
        assert!(matches!(
            client_config(&verify),
            Err(TlsError::NoRootCert("verify-ca"))
        ));
        let missing =
            settings("postgres://h?sslmode=verify-full&sslrootcert=/nonexistent").unwrap();
        assert!(matches!(
            client_config(&missing),
            Err(TlsError::RootCert { .. })
        ));
    }
}
