use std::time::Duration;

use portcullis::eventstore::{Aggregate, Append, ExpectedVersion, NewEvent};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{TestApp, TestDb};

const TOKEN: &str = "test-admin-token-0123456789abcdef";

#[tokio::test]
async fn projection_health_answers_only_the_admin_token() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.admin_token = Some(TOKEN.into());
    let app = TestApp::spawn_with(cfg).await;
    let url = app.url("/api/v1/admin/projections/health");

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some(TOKEN),
        Some("Basic dGVzdA=="),
    ] {
        let mut req = app.http.get(&url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401, "{auth:?}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    let pushed = app
        .state
        .store
        .push(&[Append::new(
            Uuid::new_v4(),
            Aggregate::new("user", Uuid::new_v4()),
            ExpectedVersion::NEW,
        )
        .event(NewEvent::new("user.added", json!({})))])
        .await
        .unwrap();
    app.state
        .hub
        .wait_for_position("event_counts", pushed.last(), Duration::from_secs(30))
        .await
        .unwrap();
    let res = app.http.get(&url).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["horizon_age_seconds"].is_number(), "{body}");
    let p = body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "event_counts")
        .expect("event_counts is listed")
        .clone();
    for field in [
        "name",
        "position",
        "events_behind",
        "seconds_behind",
        "failed",
        "dead_lettered",
        "status",
        "updated_at",
    ] {
        assert!(p.get(field).is_some(), "{field} missing in {p}");
    }
    assert_eq!(p["status"], "ok");
    assert_eq!(p["events_behind"], 0);
    let pos: portcullis::eventstore::Position = p["position"].as_str().unwrap().parse().unwrap();
    assert!(pos >= pushed.last());
    app.stop().await;
}

#[tokio::test]
async fn without_a_configured_token_admin_endpoints_refuse_everyone() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let res = app
        .http
        .get(app.url("/api/v1/admin/projections/health"))
        .bearer_auth("")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    app.stop().await;
}

#[tokio::test]
async fn every_table_column_view_and_function_is_commented() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let missing: Vec<String> = c
        .query(
            "SELECT n.nspname || '.' || c.relname || coalesce('.' || a.attname, '') \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
              WHERE n.nspname IN ('eventstore', 'projections', 'mail', 'scim', 'admin') AND c.relkind IN ('r', 'v') \
                AND obj_description(c.oid, 'pg_class') IS NULL \
             UNION ALL \
             SELECT n.nspname || '.' || c.relname || '.' || a.attname \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
              WHERE n.nspname IN ('eventstore', 'projections', 'mail', 'scim', 'admin') AND c.relkind IN ('r', 'v') \
                AND col_description(c.oid, a.attnum) IS NULL \
             UNION ALL \
             SELECT n.nspname || '.' || p.proname || '()' \
               FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
              WHERE n.nspname IN ('eventstore', 'projections', 'mail', 'scim', 'admin') AND obj_description(p.oid, 'pg_proc') IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        missing.is_empty(),
        "objects without COMMENT ON: {missing:?}"
    );
}
