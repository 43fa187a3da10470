//! Email verification end to end: 16 users each asking for a code over HTTP, until the mail
//! with it reaches an SMTP server (the in-process sink). Beside it, in the same run, the
//! baseline: the same mails sent straight with lettre to the same server (no event, no
//! outbox, no worker), which is what the mail path costs by itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::smtp::SmtpSink;
use portcullis::config::Config;
use portcullis::domain::user;
use portcullis::mail::Mailer;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::report::Report;

const USERS: usize = 16;

struct Stats {
    per_sec: f64,
    p50: f64,
    p99: f64,
    errors: usize,
}

fn stats(mut lat: Vec<f64>, errors: usize, elapsed: f64) -> Stats {
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Stats {
        per_sec: lat.len() as f64 / elapsed,
        p50: pct(0.5),
        p99: pct(0.99),
        errors,
    }
}

pub async fn run(server_url: &str, cell: Duration, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "verification").await;
    let sink = Arc::new(SmtpSink::start().await.unwrap());
    let mut cfg = Config::new(url.clone());
    cfg.pool_size = 32;
    cfg.smtp_url = Some(sink.url().into());
    cfg.verification.resend_after = chrono::Duration::zero();
    let served = crate::Served::start(&cfg).await;
    let (state, addr, org_id) = (served.state.clone(), served.addr, served.org);
    let issued = &served.token;
    let store = state.store.clone();
    let mut users = Vec::new();
    let mut last = issued.written.position;
    for i in 0..USERS {
        let mut doc = portcullis::domain::Doc::new();
        doc.insert("userName".into(), json!(format!("v{i}")));
        doc.insert(
            "emails".into(),
            json!([{"value": format!("v{i}@bench.example"), "primary": true}]),
        );
        let w = user::create(&store, org_id, doc, None).await.unwrap();
        last = last.max(w.position);
        users.push((w.id, format!("v{i}@bench.example")));
    }
    state
        .hub
        .wait_for_all(&["api_tokens", "users"], last, Duration::from_secs(60))
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let auth = format!("Bearer {}", issued.token.expose_secret());
    let start = Instant::now();
    let tasks: Vec<_> = users
        .iter()
        .cloned()
        .map(|(id, email)| {
            let (http, auth, sink) = (http.clone(), auth.clone(), sink.clone());
            let url = format!("http://{addr}/api/v1/orgs/{org_id}/users/{id}/email/verification");
            tokio::spawn(async move {
                let (mut lat, mut errors, mut n) = (Vec::new(), 0, 0);
                while start.elapsed() < cell {
                    let t = Instant::now();
                    let ok = http
                        .post(&url)
                        .header("authorization", &auth)
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 202);
                    if ok
                        && sink
                            .wait_for_to(&email, n + 1, Duration::from_secs(30))
                            .await
                    {
                        n += 1;
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let e2e = stats(lat, errors, start.elapsed().as_secs_f64());

    // Baseline: lettre straight to the same SMTP server, 16 senders.
    let mailer = Mailer::new(Some(&sink.url()), "Bench <bench@localhost>").unwrap();
    let mail = portcullis::mail::verification(
        "Bench",
        "x@bench.example",
        "ABCD2345",
        "http://x/verify-email?user=u&token=t",
        "1 hour",
    )
    .expect("the template renders");
    let sent = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..USERS)
        .map(|i| {
            let (mailer, mail, sent) = (mailer.clone(), mail.clone(), sent.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0);
                while start.elapsed() < cell {
                    let t = Instant::now();
                    match mailer
                        .send(&format!("direct{i}@bench.example"), &mail)
                        .await
                    {
                        Ok(()) => {
                            sent.fetch_add(1, Ordering::Relaxed);
                            lat.push(t.elapsed().as_secs_f64() * 1000.0)
                        }
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let (mut lat, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (l, e) = t.await.unwrap();
        lat.extend(l);
        errors += e;
    }
    let direct = stats(lat, errors, start.elapsed().as_secs_f64());

    let row = |name: &str, s: &Stats| {
        vec![
            name.to_string(),
            format!("{:.0}", s.per_sec),
            format!("{:.1}", s.p50),
            format!("{:.1}", s.p99),
            s.errors.to_string(),
        ]
    };
    out.section(
        &format!("Email verification end to end, {USERS} concurrent users"),
        &["path", "mails/s", "p50 ms", "p99 ms", "errors"],
        vec![
            row(
                "POST .../email/verification -> mail received (event + outbox + worker + SMTP)",
                &e2e,
            ),
            row(
                "baseline: lettre sends the same mail straight to the SMTP server",
                &direct,
            ),
        ],
        vec![format!(
            "End to end reaches {:.0}% of the direct send rate. Each request hashes its code with \
             argon2id; the SMTP server is in-process, so network time is not part of either row.",
            100.0 * e2e.per_sec / direct.per_sec
        )],
    );
    drop(state);
    served.stop().await;
    crate::drop_database(server_url, &db).await;
}
