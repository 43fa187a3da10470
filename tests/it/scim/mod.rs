//! SCIM contract tests over real HTTP (the README's SCIM contract, row by row), plus read-your-writes,
//! concurrency and tenant isolation.

mod bulk;
mod conformance;
mod consistency;
mod contract;
mod crash;
mod cursors;
mod discovery;
mod filters;
mod groups;
mod isolation;
mod round_two;

use std::time::Duration;

use portcullis::domain::{org, token};
use reqwest::header::HeaderMap;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{TestApp, TestDb};

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// A response: status, headers, JSON body (Null when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a SCIM error body with this status (and scimType, when given).
    #[track_caller]
    pub fn assert_error(&self, status: u16, scim_type: Option<&str>) {
        assert_eq!(self.status, status, "{:#}", self.body);
        assert_eq!(self.body["schemas"][0], ERROR, "{:#}", self.body);
        assert_eq!(
            self.body["status"],
            status.to_string(),
            "status is a string"
        );
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        if let Some(t) = scim_type {
            assert_eq!(self.body["scimType"], t, "{:#}", self.body);
        }
        assert_eq!(self.header("content-type"), Some("application/scim+json"));
    }

    pub fn id(&self) -> String {
        self.body["id"].as_str().expect("an id").to_string()
    }
}

/// An org with a SCIM token, on a running app.
pub struct Scim {
    pub app: TestApp,
    pub org: Uuid,
    pub token: String,
}

/// Creates an org and a SCIM token for it, and waits until the app accepts the token.
pub async fn org_with_token(app: &TestApp) -> (Uuid, String) {
    let store = &app.state.store;
    let org = org::create(store, "Test Org").await.unwrap();
    let issued = token::issue(store, org.id, token::Scope::Scim, Some("test"))
        .await
        .unwrap();
    app.state
        .hub
        .wait_for_position(
            "api_tokens",
            issued.written.position,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    (org.id, issued.token.expose_secret().to_string())
}

impl Scim {
    pub async fn new(db: &TestDb) -> Scim {
        crate::support::init_tracing();
        let app = TestApp::spawn(db).await;
        Scim::on(app).await
    }

    /// On an app whose pool holds `connections`: what a test of per-connection state needs.
    pub async fn with_pool(db: &TestDb, connections: usize) -> Scim {
        let mut cfg = db.config();
        cfg.pool_size = connections;
        Scim::on(TestApp::spawn_with(cfg).await).await
    }

    pub async fn on(app: TestApp) -> Scim {
        let (org, token) = org_with_token(&app).await;
        Scim { app, org, token }
    }

    /// This org and token on another app (another server on the same database).
    pub fn also_on(&self, app: TestApp) -> Scim {
        Scim {
            app,
            org: self.org,
            token: self.token.clone(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/scim/v2/{}{}", self.app.base, self.org, path)
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .app
            .http
            .request(method, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/scim+json")
                .body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        into_resp(
            req.send()
                .await
                .unwrap_or_else(|e| panic!("request: {e:?}")),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::POST, path, Some(body), &[]).await
    }
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        self.send(Method::PUT, path, Some(body), &[]).await
    }
    pub async fn patch(&self, path: &str, ops: Value) -> Resp {
        let body = serde_json::json!({"schemas": [PATCH_OP], "Operations": ops});
        self.send(Method::PATCH, path, Some(&body), &[]).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None, &[]).await
    }

    /// POST /Users with a userName (and whatever else `extra` holds); asserts 201.
    pub async fn user(&self, user_name: &str, extra: Value) -> Value {
        let mut body = serde_json::json!({"schemas": [USER], "userName": user_name});
        if let Value::Object(m) = extra {
            body.as_object_mut().unwrap().extend(m);
        }
        let r = self.post("/Users", &body).await;
        assert_eq!(r.status, 201, "{:#}", r.body);
        r.body
    }

    /// POST /Groups; asserts 201.
    pub async fn group(&self, name: &str, members: &[&str]) -> Value {
        let members: Vec<Value> = members
            .iter()
            .map(|m| serde_json::json!({"value": m}))
            .collect();
        let r = self
            .post(
                "/Groups",
                &serde_json::json!({"displayName": name, "members": members}),
            )
            .await;
        assert_eq!(r.status, 201, "{:#}", r.body);
        r.body
    }
}

pub async fn into_resp(res: reqwest::Response) -> Resp {
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.bytes().await.expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)))
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// Percent-encodes a filter (or any query value) for a URL.
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every stored payload of one aggregate, concatenated (to look for secrets).
pub async fn event_payloads(db: &TestDb, id: &str) -> String {
    let rows = db
        .client()
        .await
        .query(
            "SELECT payload::text FROM eventstore.events WHERE aggregate_id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// The ids of a ListResponse's resources.
pub fn ids(list: &Value) -> Vec<String> {
    list["Resources"]
        .as_array()
        .expect("Resources")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}
