//! `make bench`: benchmarks that compare side by side in one run (ratios hold on a noisy
//! machine; absolute numbers do not). Needs DATABASE_URL; `scripts/bench.sh` provides a
//! throwaway cluster with default durability settings.
//!
//! usage: cargo bench --bench bench -- [--seconds N] [appends] [waits] [scim] [verification]

mod appends;
mod report;
mod scim;
mod verification;
mod waits;

use std::time::Duration;

#[tokio::main]
async fn main() {
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
                println!("usage: bench [--seconds N] [appends] [waits] [scim] [verification]");
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
    if all || which.iter().any(|w| w == "scim") {
        scim::run(&url, cell, &mut out).await;
    }
    if all || which.iter().any(|w| w == "verification") {
        verification::run(&url, cell, &mut out).await;
    }
    out.print();
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

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}
