//! Operations: /metrics parsed as Prometheus text, /readyz following the projections.

use std::time::Duration;

use portcullis::eventstore::{Aggregate, Append, ExpectedVersion, NewEvent};
use serde_json::{json, Value};

use crate::scim::Scim;
use crate::support::{eventually, TestApp, TestDb};

async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let res = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("text/plain; version=0.0.4")));
    let text = res.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text")
}

fn value(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(b) => b.last().map(|b| b.count).unwrap_or(0.0),
            prometheus_parse::Value::Summary(_) => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_events_are_written_and_projected() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let before = scrape(&s.app).await;
    for name in ["users", "groups", "api_tokens", "orgs", "event_counts"] {
        for m in [
            "portcullis_projection_events_behind",
            "portcullis_projection_seconds_behind",
            "portcullis_projection_failed_events",
            "portcullis_projection_dead_lettered_events",
        ] {
            assert!(
                value(&before, m, &[("projection", name)]).is_some(),
                "{m}{{projection={name}}}"
            );
        }
        // Every status is a series from the first scrape: alerts need no absent() tricks.
        for status in portcullis::metrics::PROJECTION_STATUSES {
            let labels = [("projection", name), ("status", status)];
            assert!(value(&before, "portcullis_projection_status", &labels).is_some());
        }
    }
    // Request counters and waits are series from start-up too (a route nobody calls with a
    // 500, a wait that never timed out), so rate() sees their first increment.
    for (metric, labels) in [
        (
            "portcullis_http_requests_total",
            [("route", "/admin/logout"), ("status", "500")],
        ),
        (
            "portcullis_http_requests_total",
            [("route", "/scim/v2/:org/Groups/:id"), ("status", "503")],
        ),
        (
            "portcullis_wait_for_position_seconds",
            [("projection", "orgs"), ("outcome", "timeout")],
        ),
    ] {
        assert!(
            value(&before, metric, &labels).is_some(),
            "{metric}{labels:?}"
        );
    }
    let appended = value(&before, "portcullis_events_appended_total", &[]).unwrap();
    let waits = value(
        &before,
        "portcullis_wait_for_position_seconds",
        &[("projection", "users"), ("outcome", "reached")],
    )
    .unwrap_or(0.0);
    let posts = value(
        &before,
        "portcullis_http_requests_total",
        &[("route", "/scim/v2/:org/Users"), ("status", "201")],
    )
    .unwrap_or(0.0);

    for i in 0..3 {
        s.user(&format!("m{i}"), json!({})).await;
    }
    let r = s.get("/Users/not-a-uuid").await;
    assert_eq!(r.status, 404);

    let after = scrape(&s.app).await;
    assert!(value(&after, "portcullis_events_appended_total", &[]).unwrap() >= appended + 3.0);
    assert!(
        value(
            &after,
            "portcullis_wait_for_position_seconds",
            &[("projection", "users"), ("outcome", "reached")]
        )
        .unwrap()
            >= waits + 3.0
    );
    assert!(
        value(
            &after,
            "portcullis_http_requests_total",
            &[("route", "/scim/v2/:org/Users"), ("status", "201")]
        )
        .unwrap()
            >= posts + 3.0
    );
    assert!(
        value(
            &after,
            "portcullis_http_requests_total",
            &[("route", "/scim/v2/:org/Users/:id"), ("status", "404")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        value(
            &after,
            "portcullis_http_request_duration_seconds",
            &[("route", "/scim/v2/:org/Users"), ("status", "201")]
        )
        .unwrap()
            >= 3.0
    );
    assert!(value(&after, "portcullis_mail_sent_total", &[]).is_some());
    assert!(value(&after, "portcullis_mail_failed_total", &[]).is_some());

    // A projection that falls behind shows it: stop nothing, just read what the view says
    // for a projection nobody runs.
    let c = db.client().await;
    c.execute(
        "INSERT INTO projections.projection_states (name, event_types) VALUES ('archive', ARRAY['user.added'])",
        &[],
    )
    .await
    .unwrap();
    // projections.health is read at most once a second: wait for a scrape that has it.
    let behind = eventually(
        "a scrape with the new projection",
        Duration::from_secs(30),
        || async {
            let scrape = scrape(&s.app).await;
            let n = value(
                &scrape,
                "portcullis_projection_events_behind",
                &[("projection", "archive")],
            );
            n.is_some().then_some(scrape)
        },
    )
    .await;
    assert_eq!(
        value(
            &behind,
            "portcullis_projection_events_behind",
            &[("projection", "archive")]
        ),
        Some(3.0)
    );
    assert!(
        value(
            &behind,
            "portcullis_projection_seconds_behind",
            &[("projection", "archive")]
        )
        .unwrap()
            >= 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_projections() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.thresholds.lag_events = 5;
    // Runs the projections once, so they are registered and caught up.
    let setup = TestApp::spawn_with(cfg.clone()).await;
    let head = portcullis::eventstore::head(&setup.state.pool.get().await.unwrap())
        .await
        .unwrap();
    let names: Vec<&str> = ["users", "groups", "orgs", "api_tokens", "event_counts"].to_vec();
    setup
        .state
        .hub
        .wait_for_all(&names, head, Duration::from_secs(10))
        .await
        .unwrap();
    setup.stop().await;

    // A server whose projections are stopped.
    cfg.run_projections = false;
    let app = TestApp::spawn_with(cfg.clone()).await;
    let readyz = |app: &TestApp| {
        let req = app.http.get(app.url("/readyz"));
        async move {
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ready");

    // Events pile up beyond the lag threshold: not ready, and it says why.
    let org = uuid::Uuid::new_v4();
    let mut last = Default::default();
    for _ in 0..10 {
        let id = uuid::Uuid::new_v4();
        last = app
            .state
            .store
            .push(&[
                Append::new(org, Aggregate::new("user", id), ExpectedVersion::NEW).event(
                    NewEvent::new(
                        "user.added",
                        json!({"attributes": {"userName": id.to_string()}}),
                    ),
                ),
            ])
            .await
            .unwrap()
            .last();
    }
    // The verdict is computed at most once a second: wait for the next one.
    let body = eventually("readyz to see the lag", Duration::from_secs(30), || async {
        let (status, body) = readyz(&app).await;
        (status == 503).then_some(body)
    })
    .await;
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("users") && reasons.contains("lagging"),
        "{body}"
    );

    // Projections run again (in another server): ready once they have caught up.
    let runner = TestApp::spawn_with({
        let mut c = cfg.clone();
        c.run_projections = true;
        c
    })
    .await;
    app.state
        .hub
        .wait_for_all(&names, last, Duration::from_secs(10))
        .await
        .unwrap();
    eventually(
        "readyz to see the catch-up",
        Duration::from_secs(30),
        || async { (readyz(&app).await.0 == 200).then_some(()) },
    )
    .await;
    // /healthz stays a plain liveness check throughout.
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    runner.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_per_projection_override_the_global_ones() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.thresholds.per_projection = vec![("users".into(), 0, 3600.0)];
    let setup = TestApp::spawn_with(cfg.clone()).await;
    let head = portcullis::eventstore::head(&setup.state.pool.get().await.unwrap())
        .await
        .unwrap();
    setup
        .state
        .hub
        .wait_for_all(&["users", "event_counts"], head, Duration::from_secs(10))
        .await
        .unwrap();
    setup.stop().await;
    cfg.run_projections = false;
    let app = TestApp::spawn_with(cfg).await;
    let id = uuid::Uuid::new_v4();
    app.state
        .store
        .push(&[Append::new(
            uuid::Uuid::new_v4(),
            Aggregate::new("user", id),
            ExpectedVersion::NEW,
        )
        .event(NewEvent::new(
            "user.added",
            json!({"attributes": {"userName": "one"}}),
        ))])
        .await
        .unwrap();
    let c = db.client().await;
    let status = |name: &'static str| {
        let c = &c;
        async move {
            let r = c
                .query_one(
                    "SELECT status, lag_events FROM projections.health WHERE name = $1",
                    &[&name],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0), r.get::<_, i64>(1))
        }
    };
    assert_eq!(
        status("users").await,
        ("lagging".to_string(), 0),
        "one event is over its own limit"
    );
    assert_eq!(
        status("event_counts").await,
        ("ok".to_string(), 1000),
        "the global limit"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_a_bearer_token() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.http.metrics_token = Some("scraper-secret".into());
    let app = TestApp::spawn_with(cfg).await;
    let get = |token: Option<&str>| {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(None).await, 401);
    assert_eq!(get(Some("wrong")).await, 401);
    assert_eq!(get(Some("scraper-secret")).await, 200);
    app.stop().await;
}

/// The alerting rules shipped in docs/prometheus are valid and fire when they should
/// (`make test` installs promtool, from the distribution's prometheus package).
#[test]
fn alerting_rules_pass_promtool() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/prometheus");
    for args in [
        ["check", "rules", "portcullis-alerts.yml"],
        ["test", "rules", "portcullis-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("promtool (scripts/promtool.sh installs it): {e}"));
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
