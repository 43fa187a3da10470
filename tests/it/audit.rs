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

/// A token of `org` with `scope`, once the app accepts it.
async fn issued(s: &Scim, org: Uuid, scope: portcullis::domain::token::Scope) -> String {
    use portcullis::domain::token;
    use secrecy::ExposeSecret;
    let issued = token::issue(&s.app.state.store, org, scope, Some("auditor"))
        .await
        .unwrap();
    let timeout = std::time::Duration::from_secs(30);
    s.app
        .state
        .hub
        .wait_for_position("api_tokens", issued.written.position, timeout)
        .await
        .unwrap();
    issued.token.expose_secret().to_string()
}

async fn audit_token(s: &Scim, org: Uuid) -> String {
    issued(s, org, portcullis::domain::token::Scope::Audit).await
}

async fn audit(s: &Scim, org: Uuid, token: &str, query: &str) -> (u16, Value) {
    let url = s.app.url(&format!("/api/v1/orgs/{org}/audit?{query}"));
    let res = s.app.http.get(url).bearer_auth(token).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or_default())
}

fn kinds(v: &Value) -> Vec<String> {
    let entries = v["entries"].as_array().unwrap();
    entries
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_by_api_cli_and_view() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let token = audit_token(&s, s.org).await;
    let ann = s.post("/Users", &user("ann")).await.id();
    let ops = json!([{"op": "replace", "path": "displayName", "value": "Ann A."}]);
    let r = s.patch(&format!("/Users/{ann}"), ops).await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    let bob = s.post("/Users", &user("bob")).await.id();
    assert_eq!(s.delete(&format!("/Users/{bob}")).await.status, 204);

    let (status, all) = audit(&s, s.org, &token, "count=1000").await;
    assert_eq!(status, 200, "{all:#}");
    let newest = &all["entries"][0];
    assert_eq!(newest["event_type"], "user.removed", "{all:#}");
    assert_eq!(newest["resource_id"], bob.as_str());
    assert_eq!(newest["operation"], "DELETE /Users/{id}");
    assert_eq!(newest["actor"]["name"], "test");
    assert!(newest["request_id"].as_str().is_some());
    assert!(all["next_cursor"].is_null(), "one page holds it all");
    assert!(!all.to_string().contains("\"hash\""), "no hashes: {all:#}");
    assert!(kinds(&all).contains(&"token.issued".to_string()));

    // One user's history, oldest first; one type; one actor.
    let (_, history) = audit(&s, s.org, &token, &format!("resource={ann}&order=oldest")).await;
    assert_eq!(kinds(&history), ["user.added", "user.changed"]);
    let (_, added) = audit(&s, s.org, &token, "type=user.added").await;
    assert_eq!(kinds(&added), ["user.added", "user.added"]);
    let scim_token = newest["actor"]["token_id"].as_str().unwrap();
    let (_, by_scim) = audit(&s, s.org, &token, &format!("actor={scim_token}")).await;
    assert_eq!(by_scim["entries"].as_array().unwrap().len(), 4);

    // Pages of one, by cursor, give the same entries; a cursor fits only its own query.
    let mut walked = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = audit(&s, s.org, &token, &format!("count=1&cursor={cursor}")).await;
        assert_eq!(status, 200, "{page:#}");
        walked.extend(page["entries"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(Value::from(walked), all["entries"]);
    let (_, first) = audit(&s, s.org, &token, "count=1").await;
    let c = first["next_cursor"].as_str().unwrap().to_string();
    for bad in [
        format!("type=user.added&cursor={c}"),
        format!("cursor={c}x"),
    ] {
        let (status, body) = audit(&s, s.org, &token, &bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_cursor"))
        );
    }
    for bad in [
        "count=0",
        "since=yesterday",
        "resource=nope",
        "order=sideways",
    ] {
        assert_eq!(audit(&s, s.org, &token, bad).await.0, 400, "{bad}");
    }

    // Another org's audit token sees nothing of this org; a SCIM token may not read it.
    let other = portcullis::domain::org::create(&s.app.state.store, "Other")
        .await
        .unwrap();
    let theirs = audit_token(&s, other.id).await;
    assert_eq!(audit(&s, s.org, &theirs, "").await.0, 401);
    let (_, own) = audit(&s, other.id, &theirs, "").await;
    assert!(!own.to_string().contains(&ann), "{own:#}");
    assert_eq!(audit(&s, s.org, &s.token, "").await.0, 401);
    let admin = issued(&s, other.id, portcullis::domain::token::Scope::Admin).await;
    assert_eq!(
        audit(&s, s.org, &admin, "").await.0,
        200,
        "admins read every org's"
    );

    // The command line prints the same entries; DBAs read the same view.
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit",
            "--org",
            &s.org.to_string(),
            "--resource",
            &ann,
            "--json",
        ])
        .env("DATABASE_URL", &db.url)
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let later = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit",
            "--org",
            &s.org.to_string(),
            "--since",
            "2999-01-01T00:00:00Z",
        ])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(
        later.status.success() && later.stdout.is_empty(),
        "{later:?}"
    );
    let mut newest_first = history["entries"].as_array().unwrap().clone();
    newest_first.reverse();
    assert_eq!(lines, newest_first, "the CLI is newest first");
    let c = db.client().await;
    let hashed: i64 = c
        .query_one(
            "SELECT count(*) FROM eventstore.audit WHERE payload ?| array['hash', 'code_hash', 'token_hash']",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(hashed, 0);
}
