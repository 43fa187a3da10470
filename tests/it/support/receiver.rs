//! A SET receiver (RFC 8935) inside the test: a real HTTP server on 127.0.0.1 that records
//! every SET POSTed to it and answers 202, or 400 while it is told to refuse. It can
//! be taken down (the port refuses connections) and brought back on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

/// One SET as it arrived.
#[derive(Debug, Clone)]
pub struct Got {
    pub token: String,
    pub content_type: String,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct Inner {
    got: Vec<Got>,
    refusing: bool,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    count: Arc<watch::Sender<usize>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The claims of a SET, unverified (for the jti a test refuses).
pub fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS");
    let raw = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("JSON claims")
}

async fn accept(
    axum::extract::State(s): axum::extract::State<Shared>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, axum::Json<Value>) {
    let refused = {
        let mut i = s.inner.lock().unwrap();
        i.got.push(Got {
            token: body,
            content_type: headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            authorization: headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        });
        let n = i.got.len();
        s.count.send_replace(n);
        i.refusing
    };
    if refused {
        let body = json!({"err": "invalid_request", "description": "refused by the test"});
        return (StatusCode::BAD_REQUEST, axum::Json(body));
    }
    (StatusCode::ACCEPTED, axum::Json(json!({})))
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Shared::default()).await
    }

    async fn start_on(addr: SocketAddr, shared: Shared) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/events", post(accept))
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/events", self.addr)
    }

    /// Stops listening: connections to its port are refused until [`up`](Self::up).
    pub async fn down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub async fn up(&mut self) {
        let again = Self::start_on(self.addr, self.shared.clone()).await;
        *self = again;
    }

    /// Answers 400 (the receiver refusing the SET) while `on`, else 202.
    pub fn refuse(&self, on: bool) {
        self.shared.inner.lock().unwrap().refusing = on;
    }

    pub fn got(&self) -> Vec<Got> {
        self.shared.inner.lock().unwrap().got.clone()
    }

    /// Waits until `n` SETs have arrived in all; panics at the deadline.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Got> {
        let mut rx = self.shared.count.subscribe();
        let waited = tokio::time::timeout(deadline, rx.wait_for(|c| *c >= n)).await;
        let got = self.got();
        assert!(
            waited.is_ok(),
            "{} of {n} SETs arrived within {deadline:?}",
            got.len()
        );
        got
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Verifies a SET against a JWKS: ES256, the `kid` of one of its keys, `typ` secevent+jwt,
/// and `aud`; returns its claims.
pub fn verify(token: &str, jwks: &Value, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("a JWS header");
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("secevent+jwt"));
    let kid = header.kid.expect("a kid");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).expect("a JWKS");
    let jwk = set
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} is not in the JWKS"));
    let key = DecodingKey::from_jwk(jwk).expect("a usable JWK");
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap_or_else(|e| panic!("the SET does not verify: {e}"))
        .claims
}
