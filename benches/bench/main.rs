//! `make bench`: benchmarks that compare side by side in one run (ratios hold on a noisy
//! machine; absolute numbers do not). Needs DATABASE_URL; `scripts/bench.sh` provides a
//! throwaway cluster with default durability settings.
//!
//! usage: cargo bench --bench bench -- [--seconds N] [appends] [waits] [catchup] [rebuild] [statements] [scim] [secevents] [verification]

mod appends;
mod catchup;
mod cpu;
mod paging;
mod rebuild;
mod report;
mod scim;
mod secevents;
// The tests' SMTP sink (a real SMTP server in-process); the benchmark uses part of it.
#[allow(dead_code)]
#[path = "../../tests/it/support/smtp.rs"]
mod smtp;
mod statements;
mod verification;
mod waits;

use std::time::Duration;

/// On the runtime `portcullis serve` runs on (the clients share it), with as many worker
/// threads as PORTCULLIS_WORKER_THREADS says, as for `serve`.
fn main() {
    let threads = std::env::var("PORTCULLIS_WORKER_THREADS")
        .ok()
        .map(worker_threads);
    portcullis::app::runtime(threads)
        .expect("a tokio runtime")
        .block_on(run());
}

/// PORTCULLIS_WORKER_THREADS in the range `serve` accepts (tokio panics on 0), or exit 2.
fn worker_threads(n: String) -> usize {
    match n.parse() {
        Ok(t @ 1..=1024) => t,
        _ => {
            eprintln!("PORTCULLIS_WORKER_THREADS must be a number from 1 to 1024, not {n:?}");
            std::process::exit(2)
        }
    }
}

async fn run() {
    let mut seconds = 3.0f64;
    let mut which: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .expect("--seconds takes a number")
            }
            "--bench" => {}
            "-h" | "--help" => {
                println!(
                    "usage: bench [--seconds N] [appends] [waits] [catchup] [rebuild] [statements] [scim] [secevents] [verification]"
                );
                return;
            }
            other => which.push(other.to_string()),
        }
    }
    let url = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must name a server the benchmark may create a database on");
    let cell = Duration::from_secs_f64(seconds);
    let all = which.is_empty();
    let mut out = report::Report::default();
    if all || which.iter().any(|w| w == "appends") {
        appends::run(&url, cell, &mut out).await;
    }
    if all || which.iter().any(|w| w == "waits") {
        waits::run(&url, cell, &mut out).await;
    }
    if all || which.iter().any(|w| w == "catchup") {
        catchup::run(&url, &mut out).await;
    }
    if all || which.iter().any(|w| w == "rebuild") {
        rebuild::run(&url, &mut out).await;
    }
    if all || which.iter().any(|w| w == "statements") {
        statements::run(&url, &mut out).await;
    }
    if all || which.iter().any(|w| w == "scim") {
        scim::run(&url, cell, &mut out).await;
    }
    if all || which.iter().any(|w| w == "secevents") {
        secevents::run(&url, cell, &mut out).await;
    }
    if all || which.iter().any(|w| w == "verification") {
        verification::run(&url, cell, &mut out).await;
    }
    out.print();
}

/// The app served in-process on 127.0.0.1, with an org and a SCIM token for it.
pub struct Served {
    pub state: portcullis::http::AppState,
    pub addr: std::net::SocketAddr,
    pub org: uuid::Uuid,
    pub token: portcullis::domain::token::Issued,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(cfg: &portcullis::config::Config) -> Served {
        use portcullis::domain::{org, token};
        let state = portcullis::http::AppState::start(cfg).await.expect("start");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(portcullis::app::serve(
            listener,
            state.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        let org = org::create(&state.store, "bench").await.unwrap().id;
        let token = token::issue(&state.store, org, token::Scope::Scim, None)
            .await
            .unwrap();
        Served {
            state,
            addr,
            org,
            token,
            stop,
            server,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// A database of the benchmark's own on the server, migrated; returns its name and URL.
pub async fn scratch_database(server_url: &str, what: &str) -> (String, String) {
    let db = format!("portcullis_bench_{what}_{}", std::process::id());
    connect(server_url)
        .await
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await
        .expect("create the benchmark database");
    let url = portcullis::db::url_with_database(server_url, &db);
    portcullis::db::migrate(&url).await.expect("migrate");
    (db, url)
}

pub async fn drop_database(server_url: &str, db: &str) {
    let _ = connect(server_url)
        .await
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await;
}

/// Returns once no rebuild is under way (the swap is a condition in SQL: checked with a
/// backoff, bounded by a deadline).
pub async fn rebuilds_done(c: &tokio_postgres::Client) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut backoff = Duration::from_millis(10);
    while Instant::now() < deadline {
        let left: i64 = c
            .query_one("SELECT count(*) FROM projections.rebuilds", &[])
            .await
            .expect("read projections.rebuilds")
            .get(0);
        if left == 0 {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(100));
    }
    panic!("the rebuild did not swap in within 900 s");
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}
