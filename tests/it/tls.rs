//! TLS to PostgreSQL against a server of the test's own, with certificates the test makes:
//! every sslmode does what libpq's does, and a certificate that does not check out is refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use portcullis::db::{self, Purpose};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::support::pg::OwnServer;

struct Ca {
    pem: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn new_ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        cert,
        key,
    }
}

/// Turns SSL on in the server, with a certificate for `localhost` signed by `ca`.
async fn enable_ssl(admin: &tokio_postgres::Client, ca: &Ca) {
    let data: String = admin
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca.cert, &ca.key)
        .unwrap();
    let owner = std::fs::metadata(&data).unwrap();
    for (name, body) in [
        ("server.crt", cert.pem()),
        ("server.key", key.serialize_pem()),
    ] {
        let path = std::path::Path::new(&data).join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    // One statement each: ALTER SYSTEM refuses to run inside a (multi-statement) block.
    for sql in [
        "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
        "ALTER SYSTEM SET ssl_key_file = 'server.key'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
}

/// Whether a pooled connection to `url` works, and is encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let pool = db::pool_for(url, 1, Purpose::Requests).map_err(|e| e.to_string())?;
    let c = pool.get().await.map_err(|e| portcullis::error_chain(&e))?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sslmode_against_a_server_with_a_certificate_the_test_made() {
    crate::support::init_tracing();
    let (server, url) = tokio::task::spawn_blocking(OwnServer::start).await.unwrap();
    let ca = new_ca();
    let admin = crate::support::pg::connect(&url).await;
    enable_ssl(&admin, &ca).await;
    let dir = tempdir(&server);
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&other_file, new_ca().pem).unwrap();
    let port = server.port;
    // `localhost` is the certificate's name; hostaddr keeps the connection on IPv4.
    let named = format!("postgres://postgres@localhost:{port}/postgres?hostaddr=127.0.0.1");
    let by_ip = format!("postgres://postgres@127.0.0.1:{port}/postgres?");
    let ca = ca_file.display();
    let other = other_file.display();

    // The reload that turns SSL on is asynchronous: wait for the server to offer it.
    crate::support::eventually(
        "SSL to be on",
        std::time::Duration::from_secs(30),
        || async {
            encrypted(&format!("{named}&sslmode=require"))
                .await
                .ok()
                .filter(|e| *e)
        },
    )
    .await;
    for (case, url, want) in [
        (
            "verify-full",
            format!("{named}&sslmode=verify-full&sslrootcert={ca}"),
            Ok(true),
        ),
        (
            "verify-ca by IP",
            format!("{by_ip}sslmode=verify-ca&sslrootcert={ca}"),
            Ok(true),
        ),
        ("require", format!("{by_ip}sslmode=require"), Ok(true)),
        ("prefer", by_ip.clone(), Ok(true)),
        ("disable", format!("{by_ip}sslmode=disable"), Ok(false)),
        (
            "verify-full by IP",
            format!("{by_ip}sslmode=verify-full&sslrootcert={ca}"),
            Err(()),
        ),
        (
            "another CA",
            format!("{named}&sslmode=verify-full&sslrootcert={other}"),
            Err(()),
        ),
        (
            "another CA, verify-ca",
            format!("{by_ip}sslmode=verify-ca&sslrootcert={other}"),
            Err(()),
        ),
    ] {
        let got = encrypted(&url).await;
        match want {
            Ok(w) => assert_eq!(got.as_ref().ok(), Some(&w), "{case}: {got:?}"),
            Err(()) => assert!(got.is_err(), "{case} connected: {got:?}"),
        }
    }
    // The service's own start-up path (migrations over TLS) works too.
    db::migrate(&format!("{named}&sslmode=verify-full&sslrootcert={ca}"))
        .await
        .unwrap();
    drop(server);
}

fn tempdir(server: &OwnServer) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-tls-{}", server.port));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
