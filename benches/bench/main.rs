//! `make bench`: benchmarks that compare side by side in one run (ratios hold on a noisy
//! machine; absolute numbers do not). Needs DATABASE_URL; `scripts/bench.sh` provides a
//! throwaway cluster with default durability settings.
//!
//! usage: cargo bench --bench bench -- [--seconds N] [appends]

mod appends;
mod report;

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
                println!("usage: bench [--seconds N] [appends]");
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
    out.print();
}
