//! Who changed what: every event records its actor and request (issue: audit trail), over
//! real HTTP and the real command line.

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::scim::{Scim, USER};
use crate::support::TestDb;

/// The metadata of the last event of `aggregate`.
async fn metadata(db: &TestDb, aggregate: Uuid) -> Value {
    let c = db.client().await;
    let row = c
        .query_one(
            "SELECT metadata FROM eventstore.events WHERE aggregate_id = $1 \
             ORDER BY tx DESC, seq DESC LIMIT 1",
            &[&aggregate],
        )
        .await
        .unwrap();
    row.get(0)
}

fn user(name: &str) -> Value {
    json!({"schemas": [USER], "userName": name})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_writes_record_their_token_request_and_operation() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let headers = [("x-request-id", "req-42.a:b"), ("user-agent", "Entra/1.0")];
    let r = s
        .send(Method::POST, "/Users", Some(&user("ann")), &headers)
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(r.header("x-request-id"), Some("req-42.a:b"));
    let m = metadata(&db, r.id().parse().unwrap()).await;
    assert_eq!(m["request_id"], "req-42.a:b", "{m:#}");
    assert_eq!(m["operation"], "POST /Users");
    assert_eq!(m["client_addr"], "127.0.0.1");
    assert_eq!(m["user_agent"], "Entra/1.0");
    assert_eq!(m["actor"]["kind"], "token");
    assert_eq!(m["actor"]["scope"], "scim");
    assert_eq!(m["actor"]["name"], "test");
    let token_id: Uuid = m["actor"]["token_id"].as_str().unwrap().parse().unwrap();
    let c = db.client().await;
    let hash: String = c
        .query_one(
            "SELECT token_hash FROM projections.api_tokens WHERE token_id = $1",
            &[&token_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hash, portcullis::domain::token::hash(&s.token));
    assert!(!m.to_string().contains(&s.token), "never the token itself");

    // A request id that is not well formed is replaced by one of the service's own.
    let id = r.id();
    let long = "x".repeat(129);
    for bad in ["has space", long.as_str()] {
        let ops = json!({"schemas": [crate::scim::PATCH_OP],
            "Operations": [{"op": "replace", "path": "displayName", "value": bad}]});
        let r = s
            .send(
                Method::PATCH,
                &format!("/Users/{id}"),
                Some(&ops),
                &[("x-request-id", bad)],
            )
            .await;
        assert_eq!(r.status, 200, "{:#}", r.body);
        let given = r.header("x-request-id").unwrap().to_string();
        assert!(given.parse::<Uuid>().is_ok(), "{given}");
        let m = metadata(&db, id.parse().unwrap()).await;
        assert_eq!(m["request_id"], given.as_str());
        assert_eq!(m["operation"], "PATCH /Users/{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_operations_record_their_bulk_id() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [{"method": "POST", "path": "/Users", "bulkId": "q1", "data": user("bob")}],
    });
    let r = s
        .send(
            Method::POST,
            "/Bulk",
            Some(&body),
            &[("x-request-id", "bulk-1")],
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    let location = r.body["Operations"][0]["location"].as_str().unwrap();
    let id: Uuid = location.rsplit('/').next().unwrap().parse().unwrap();
    let m = metadata(&db, id).await;
    assert_eq!(m["request_id"], "bulk-1", "{m:#}");
    assert_eq!(m["bulk_id"], "q1");
    assert_eq!(m["operation"], "Bulk POST /Users");
    assert_eq!(m["actor"]["kind"], "token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_writes_record_the_cli_and_the_command() {
    let db = TestDb::new().await;
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["orgs", "create", "Audited", "--no-wait"])
        .env("DATABASE_URL", &db.url)
        .env("PORTCULLIS_LOG", "warn")
        .env("USER", "dba-alice")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let org: Uuid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let m = metadata(&db, org).await;
    assert_eq!(
        m["actor"],
        json!({"kind": "cli", "user": "dba-alice"}),
        "{m:#}"
    );
    assert_eq!(m["operation"], "portcullis orgs create");
    assert!(m["request_id"].as_str().unwrap().parse::<Uuid>().is_ok());
}
