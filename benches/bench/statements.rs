//! One SCIM client creating users one after another, each read back: the latency a single
//! provisioning client sees, and how many statements PostgreSQL runs per create (counted by
//! pg_stat_statements across every connection of the service: the write, the projections'
//! work, wake-ups and the read back). The baseline is an in-memory SCIM server in Python,
//! driven by the same client in the same run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use portcullis::config::Config;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::paging::Api;
use crate::report::Report;

const CREATES: usize = 200;

/// The baseline server, beside this file.
const INMEMORY_SCRIPT: &str = "benches/bench/inmemory_scim.py";

/// One create and read back: the milliseconds the POST took (its answer read), and the GET.
#[derive(Clone, Copy)]
struct Timed {
    post: f64,
    get: f64,
}

/// Creates user `n` and reads it back by id.
async fn create_and_read(api: &Api, n: usize) -> Timed {
    let start = Instant::now();
    let body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": format!("single{n}@bench.example"),
        "emails": [{"value": format!("single{n}@bench.example"), "type": "work", "primary": true}],
    });
    let res = api
        .http
        .post(format!("{}/Users", api.base))
        .header("Authorization", &api.auth)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", api.base);
    let body: serde_json::Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap();
    let posted = start.elapsed();
    api.get(&format!("/Users/{id}")).await;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    Timed {
        post: ms(posted),
        get: ms(start.elapsed() - posted),
    }
}

/// The POST, the GET, and both of each create, as percentiles.
struct Sides {
    total: Percentiles,
    post: Percentiles,
    get: Percentiles,
}

impl Sides {
    fn of(all: &[Timed]) -> Sides {
        Sides {
            total: Percentiles::of(all.iter().map(|t| t.post + t.get).collect()),
            post: Percentiles::of(all.iter().map(|t| t.post).collect()),
            get: Percentiles::of(all.iter().map(|t| t.get).collect()),
        }
    }

    /// The row of the report: p50 and p99 of both, then the p50 of each.
    fn row(&self, server: &str, statements: String) -> Vec<String> {
        vec![
            server.into(),
            self.total.0.len().to_string(),
            format!("{:.2}", self.total.at(0.5)),
            format!("{:.2}", self.total.at(0.99)),
            format!("{:.2}", self.post.at(0.5)),
            format!("{:.2}", self.get.at(0.5)),
            statements,
        ]
    }
}

/// Latencies, sorted.
struct Percentiles(Vec<f64>);

impl Percentiles {
    fn of(mut all: Vec<f64>) -> Percentiles {
        all.sort_by(f64::total_cmp);
        Percentiles(all)
    }

    fn at(&self, q: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * q) as usize]
    }
}

/// The in-memory Python SCIM server, killed when dropped.
struct InMemory {
    child: Child,
    port: u16,
}

impl InMemory {
    /// `None` when it does not start (no python3) or does not say its port.
    fn start(token: &str) -> Option<InMemory> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(INMEMORY_SCRIPT);
        let child = Command::new("python3")
            .arg(script)
            .arg(token)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| eprintln!("python3 {INMEMORY_SCRIPT}: {e}"))
            .ok()?;
        // Killed on the way out (drop) when it does not say its port.
        let mut server = InMemory { child, port: 0 };
        let mut line = String::new();
        BufReader::new(server.child.stdout.take()?)
            .read_line(&mut line)
            .ok()?;
        server.port = line.trim().strip_prefix("port ")?.parse().ok()?;
        Some(server)
    }
}

impl Drop for InMemory {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn run(server_url: &str, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "statements").await;
    let admin = crate::connect(&url).await;
    let counted = admin
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .is_ok();
    let served = crate::Served::start(&Config::new(url.clone())).await;
    served
        .state
        .hub
        .wait_for_position(
            "api_tokens",
            served.token.written.position,
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    let portcullis = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}/scim/v2/{}", served.addr, served.org),
        auth: format!("Bearer {}", served.token.token.expose_secret()),
    };
    let python = tokio::task::spawn_blocking(|| InMemory::start("bench-token"))
        .await
        .unwrap();
    let python_scim = python.as_ref().map(|p| Api {
        http: reqwest::Client::new(),
        base: format!("http://127.0.0.1:{}/scim/v2", p.port),
        auth: "Bearer bench-token".into(),
    });
    for n in 0..20 {
        create_and_read(&portcullis, n).await;
        if let Some(py) = &python_scim {
            create_and_read(py, n).await;
        }
    }
    let statements = statements_per_create(&admin, counted, &portcullis).await;
    // Then the latencies, the two servers one after the other, so that the machine's changes
    // of speed weigh on both alike.
    let (mut ours, mut theirs) = (Vec::with_capacity(CREATES), Vec::with_capacity(CREATES));
    for n in 0..CREATES {
        ours.push(create_and_read(&portcullis, 2000 + n).await);
        if let Some(py) = &python_scim {
            theirs.push(create_and_read(py, 2000 + n).await);
        }
    }
    report(out, ours, python.map(|_| theirs), statements);
    served.stop().await;
    drop(admin);
    crate::drop_database(server_url, &db).await;
}

/// Statements per create and read back, over every connection of the service's database
/// (`counted`: pg_stat_statements is there).
async fn statements_per_create(
    admin: &tokio_postgres::Client,
    counted: bool,
    portcullis: &Api,
) -> String {
    if !counted {
        return "n/a (pg_stat_statements is not loaded)".into();
    }
    admin
        .execute("SELECT pg_stat_statements_reset()", &[])
        .await
        .unwrap();
    // Counted alone: the baseline's requests would stretch the run, and whatever the service
    // does on a timer meanwhile would be counted against these creates.
    for n in 0..CREATES {
        create_and_read(portcullis, 1000 + n).await;
    }
    let calls = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let total: i64 = admin.query_one(calls, &[]).await.unwrap().get(0);
    if std::env::var_os("PORTCULLIS_BENCH_VERBOSE").is_some() {
        let top = admin
            .query(
                "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 110) FROM pg_stat_statements \
                  WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                  ORDER BY calls DESC LIMIT 25",
                &[],
            )
            .await
            .unwrap();
        for r in top {
            eprintln!("{:>6} {}", r.get::<_, i64>(0), r.get::<_, String>(1));
        }
    }
    // The reset and the count themselves are two of them.
    format!("{:.1}", (total - 2) as f64 / CREATES as f64)
}

/// The section: Portcullis's latencies and statements, and the baseline's latencies when it
/// ran.
fn report(out: &mut Report, ours: Vec<Timed>, theirs: Option<Vec<Timed>>, statements: String) {
    let ours = Sides::of(&ours);
    let mut rows = vec![ours.row("Portcullis", statements)];
    let mut notes = vec![
        "Targets (issue 10): p50 <= 2.5 ms, <= 12 statements.".to_string(),
        "POST: the append, then the live round that projects it with the read back riding \
         along its COMMIT (two database round trips); GET: one read. Each p50 is taken on its \
         own, so the two need not add up to the p50 of both."
            .to_string(),
    ];
    match theirs {
        Some(theirs) => {
            let theirs = Sides::of(&theirs);
            rows.push(theirs.row(
                "baseline: an in-memory Python SCIM server",
                "none (no database)".into(),
            ));
            notes.push(format!(
                "Portcullis p50 / baseline p50: {:.2}. The baseline ({}) keeps users in a dict, \
                 answers over HTTP/1.1 with the same client, and stores nothing; the two take \
                 turns, one create and read back each. The statements are counted over {CREATES} \
                 creates before, with no baseline requests in between.",
                ours.total.at(0.5) / theirs.total.at(0.5),
                INMEMORY_SCRIPT
            ));
        }
        None => notes.push(format!(
            "baseline: n/a ({INMEMORY_SCRIPT} did not start; it needs python3 on the PATH)."
        )),
    }
    out.section(
        "One client: POST /Users then GET it back, one after another",
        &[
            "server",
            "creates",
            "p50 ms",
            "p99 ms",
            "POST p50 ms",
            "GET p50 ms",
            "statements per create (incl. read back)",
        ],
        rows,
        notes,
    );
}
