//! SCIM security events (RFC 9967) as signed SETs: pushed to a receiver inside the test,
//! polled with acknowledgements, verified against the JWKS, over real HTTP.

mod feed;
mod poll;
mod push;

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::scim::{into_resp, Resp, Scim};
use crate::support::{TestApp, TestDb};

pub const ADMIN: &str = "pca_secevents-admin";
pub const PREFIX: &str = "urn:ietf:params:scim:event:";

/// A service whose failed pushes are retried within milliseconds, an org and its SCIM token.
pub async fn setup(db: &TestDb) -> Scim {
    crate::support::init_tracing();
    let mut cfg = db.config();
    cfg.admin_token = Some(ADMIN.into());
    cfg.secevents.retry_base = Duration::from_millis(20);
    cfg.secevents.retry_max = Duration::from_millis(200);
    cfg.secevents.long_poll = Duration::from_secs(10);
    Scim::on(TestApp::spawn_with(cfg).await).await
}

/// A request to the JSON API with the admin token.
pub async fn admin(s: &Scim, method: Method, path: &str, body: Option<Value>) -> Resp {
    let mut req = s
        .app
        .http
        .request(method, s.app.url(&format!("/api/v1/orgs/{}{path}", s.org)))
        .bearer_auth(ADMIN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    into_resp(req.send().await.expect("request")).await
}

/// Registers a receiver; asserts 201.
pub async fn register(s: &Scim, body: Value) -> Value {
    let r = admin(s, Method::POST, "/receivers", Some(body)).await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    r.body
}

pub async fn jwks(s: &Scim) -> Value {
    let r = s
        .app
        .http
        .get(s.app.url(&format!("/api/v1/orgs/{}/jwks.json", s.org)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/jwk-set+json"
    );
    r.json().await.unwrap()
}

/// The SCIM event URIs of a SET's `events` claim, without the common prefix.
pub fn kinds(claims: &Value) -> Vec<String> {
    claims["events"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.trim_start_matches(PREFIX).to_string())
        .collect()
}

/// The receiver's row of secevents.receiver_health.
pub async fn health(db: &TestDb, id: &str) -> tokio_postgres::Row {
    let id: uuid::Uuid = id.parse().unwrap();
    db.client()
        .await
        .query_one(
            "SELECT status, pending, rejected, failures, delivered_total, events_unread, last_error \
               FROM secevents.receiver_health WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_that_cannot_work_are_refused_and_store_nothing() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let bad = [
        (
            json!({"name": "x", "delivery": "push", "events": ["prov:create:full"]}),
            "endpoint",
        ),
        (
            json!({"name": "x", "delivery": "push", "endpoint": "ftp://h/x", "events": ["prov:delete"]}),
            "http or https",
        ),
        (
            json!({"name": "x", "delivery": "push", "endpoint": "https://u:pw@h/x", "events": ["prov:delete"]}),
            "credentials",
        ),
        (
            json!({"name": "x", "delivery": "poll", "events": ["prov:create"]}),
            "unknown event URI",
        ),
        (
            json!({"name": "x", "delivery": "poll", "events": []}),
            "1 to 32",
        ),
        (
            json!({"name": "", "delivery": "poll", "events": ["prov:delete"]}),
            "name",
        ),
        (
            json!({"name": "x", "delivery": "carrier pigeon", "events": ["prov:delete"]}),
            "delivery",
        ),
    ];
    for (body, says) in bad {
        let r = admin(&s, Method::POST, "/receivers", Some(body.clone())).await;
        assert_eq!(r.status, 400, "{body}: {:#}", r.body);
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{body}: {detail}");
    }
    let n: i64 = db
        .client()
        .await
        .query_one("SELECT count(*) FROM secevents.receivers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // Only admins register; another org's SCIM token does not.
    let body = json!({"name": "x", "delivery": "poll", "events": ["prov:delete"]});
    let r = s
        .app
        .http
        .post(s.app.url(&format!("/api/v1/orgs/{}/receivers", s.org)))
        .bearer_auth(&s.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let nowhere = uuid::Uuid::new_v4();
    let r = s
        .app
        .http
        .post(s.app.url(&format!("/api/v1/orgs/{nowhere}/receivers")))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_provider_config_lists_the_event_uris_once_the_org_has_receivers() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let r = s.get("/ServiceProviderConfig").await;
    assert_eq!(r.status, 200);
    assert!(
        r.body.get("securityEvents").is_none(),
        "not configured: absent (RFC 9967 §4)"
    );
    register(
        &s,
        json!({"name": "r", "delivery": "poll", "events": ["prov:delete"]}),
    )
    .await;
    let r = s.get("/ServiceProviderConfig").await;
    assert_eq!(r.status, 200);
    let se = &r.body["securityEvents"];
    assert_eq!(se["asyncRequest"], "none");
    let uris: Vec<&str> = se["eventUris"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    for u in [
        "prov:create:notice",
        "prov:create:full",
        "prov:patch:full",
        "prov:put:notice",
        "prov:delete",
        "prov:activate",
        "prov:deactivate",
        "feed:add",
        "feed:remove",
    ] {
        assert!(
            uris.contains(&format!("{PREFIX}{u}").as_str()),
            "{u}: {uris:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_sign_new_sets_and_old_ones_verify_until_removed() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let made = register(
        &s,
        json!({"name": "r", "delivery": "poll", "events": ["prov:create:notice"]}),
    )
    .await;
    let first = jwks(&s).await;
    assert_eq!(first["keys"].as_array().unwrap().len(), 1);
    let old_kid = first["keys"][0]["kid"].as_str().unwrap().to_string();
    assert_eq!(first["keys"][0]["kty"], "EC");
    assert!(first["keys"][0].get("d").is_none(), "never the private key");

    let r = admin(&s, Method::POST, "/signing-keys", None).await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let new_kid = r.body["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    let both = jwks(&s).await;
    assert_eq!(both["keys"].as_array().unwrap().len(), 2);
    assert_eq!(
        both["keys"][0]["kid"],
        new_kid.as_str(),
        "the active key first"
    );

    s.user("after-rotation", json!({})).await;
    let got = poll::poll(&s, &made, json!({"returnImmediately": true})).await;
    let token = got["sets"].as_object().unwrap().values().next().unwrap();
    let header = jsonwebtoken::decode_header(token.as_str().unwrap()).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));

    let r = admin(
        &s,
        Method::DELETE,
        &format!("/signing-keys/{new_kid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 409, "the active key stays: {:#}", r.body);
    let r = admin(
        &s,
        Method::DELETE,
        &format!("/signing-keys/{old_kid}"),
        None,
    )
    .await;
    assert_eq!(r.status, 204, "{:#}", r.body);
    let left = jwks(&s).await;
    assert_eq!(left["keys"].as_array().unwrap().len(), 1);
    assert_eq!(left["keys"][0]["kid"], new_kid.as_str());
}

fn portcullis(args: &[&str], db: &TestDb) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .expect("run portcullis");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{args:?}: {stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_registers_lists_and_rotates() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let org = s.org.to_string();
    let (out, err) = portcullis(
        &[
            "receivers",
            "add",
            "--org",
            &org,
            "--name",
            "from the cli",
            "--delivery",
            "poll",
            "--events",
            "prov:create:notice,prov:delete",
        ],
        &db,
    );
    let made: Value = serde_json::from_str(&out).expect("the receiver as JSON");
    assert_eq!(made["name"], "from the cli");
    assert_eq!(made["events"].as_array().unwrap().len(), 2);
    let token = err.lines().last().unwrap().trim();
    assert!(token.starts_with("pcr_"), "{err}");
    assert!(
        !out.contains(token),
        "the token goes to standard error only"
    );

    s.user("seen-by-the-cli-receiver", json!({})).await;
    let mut made = made;
    made["poll_token"] = json!(token);
    let got = poll::poll(&s, &made, json!({"returnImmediately": true})).await;
    assert_eq!(got["sets"].as_object().unwrap().len(), 1);

    let (list, _) = portcullis(&["receivers", "list", "--org", &org], &db);
    assert!(
        list.contains("from the cli") && list.contains(" ok "),
        "{list}"
    );
    let (kid, _) = portcullis(&["signing-keys", "rotate", "--org", &org], &db);
    let (keys, _) = portcullis(&["signing-keys", "list", "--org", &org], &db);
    assert!(
        keys.contains(&format!("{} ES256 active", kid.trim())),
        "{keys}"
    );
    assert_eq!(
        keys.lines().filter(|l| l.contains(" retired ")).count(),
        1,
        "{keys}"
    );
    let id = made["id"].as_str().unwrap();
    portcullis(&["receivers", "remove", "--org", &org, id], &db);
    let (list, _) = portcullis(&["receivers", "list", "--org", &org, "--json"], &db);
    assert_eq!(serde_json::from_str::<Value>(&list).unwrap(), json!([]));
}
