//! The HTTP server's flags and the limits they set.

use clap::Args;
use secrecy::SecretString;

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// The service is reached over plain http, with no TLS in front of it: the dashboard's
    /// session cookie is then sent without `Secure`. Leave off whenever users reach it over
    /// https (browsers accept `Secure` cookies from http://localhost too).
    #[arg(long, env = "PORTCULLIS_PLAIN_HTTP")]
    pub plain_http: bool,
    /// Seconds a client may take to send a request's headers; slower connections are closed.
    #[arg(
        long,
        env = "PORTCULLIS_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub header_read_timeout_seconds: u64,
    /// Seconds a request may take, body included; past it the answer is 503.
    #[arg(long, env = "PORTCULLIS_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
    /// Open HTTP connections at most; further clients wait until one closes.
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds shutdown waits for requests in flight before it drops them.
    #[arg(long, env = "PORTCULLIS_SHUTDOWN_GRACE_SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Bearer token `/metrics` then requires (unset: open, as Prometheus scrapes usually are).
    #[arg(long, env = "PORTCULLIS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
}

impl HttpArgs {
    pub fn options(&self) -> HttpOptions {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        HttpOptions {
            plain_http: self.plain_http,
            header_read_timeout: secs(self.header_read_timeout_seconds),
            request_timeout: secs(self.request_timeout_seconds),
            max_connections: self.max_connections.max(1),
            shutdown_grace: secs(self.shutdown_grace_seconds),
            metrics_token: self
                .metrics_token
                .clone()
                .filter(|t| !t.is_empty())
                .map(SecretString::from),
        }
    }
}

/// How the HTTP server treats its clients.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Cookies without `Secure` (see [`HttpArgs::plain_http`]).
    pub plain_http: bool,
    pub header_read_timeout: std::time::Duration,
    pub request_timeout: std::time::Duration,
    pub max_connections: usize,
    pub shutdown_grace: std::time::Duration,
    pub metrics_token: Option<SecretString>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            plain_http: false,
            header_read_timeout: std::time::Duration::from_secs(10),
            request_timeout: std::time::Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: std::time::Duration::from_secs(10),
            metrics_token: None,
        }
    }
}
