//! One SCIM client creating users one after another, each read back: the latency a single
//! provisioning client sees, and how many statements PostgreSQL runs per create (counted by
//! pg_stat_statements across every connection of the service: the write, the projections'
//! work, wake-ups and the read back).

use std::time::Instant;

use portcullis::config::Config;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::report::Report;

const CREATES: usize = 200;

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
    let base = format!("http://{}/scim/v2/{}", served.addr, served.org);
    let auth = format!("Bearer {}", served.token.token.expose_secret());
    let http = reqwest::Client::new();
    let create = |n: usize| {
        let body = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": format!("single{n}@bench.example"),
            "emails": [{"value": format!("single{n}@bench.example"), "type": "work", "primary": true}],
        });
        http.post(format!("{base}/Users"))
            .header("Authorization", &auth)
            .json(&body)
            .send()
    };
    for n in 0..20 {
        create(n).await.unwrap();
    }
    let calls = "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
    if counted {
        admin
            .execute("SELECT pg_stat_statements_reset()", &[])
            .await
            .unwrap();
    }
    let mut latencies = Vec::with_capacity(CREATES);
    for n in 0..CREATES {
        let start = Instant::now();
        let res = create(1000 + n).await.unwrap();
        assert_eq!(res.status(), 201);
        let body: serde_json::Value = res.json().await.unwrap();
        let id = body["id"].as_str().unwrap();
        let got = http
            .get(format!("{base}/Users/{id}"))
            .header("Authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(got.status(), 200);
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    let statements = if counted {
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
    } else {
        "n/a (pg_stat_statements is not loaded)".into()
    };
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    out.section(
        "One client: POST /Users then GET it back, one after another",
        &[
            "creates",
            "p50 ms",
            "p99 ms",
            "statements per create (incl. read back)",
        ],
        vec![vec![
            CREATES.to_string(),
            format!("{:.2}", pct(0.5)),
            format!("{:.2}", pct(0.99)),
            statements,
        ]],
        vec!["Targets (issue 10): p50 <= 2.5 ms, <= 12 statements.".into()],
    );
    served.stop().await;
    drop(admin);
    crate::drop_database(server_url, &db).await;
}
