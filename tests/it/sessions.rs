//! Dashboard sessions over real HTTP: server-side, hashed at rest, expiring, revoked at
//! logout and with their credential, and failed logins throttled.

use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as Span;
use portcullis::clock::ManualClock;
use portcullis::domain::{org, token};
use secrecy::ExposeSecret;

use crate::support::{TestApp, TestDb};

const ADMIN: &str = "sessions-test-admin-token";

struct Env {
    app: TestApp,
    http: reqwest::Client,
    clock: ManualClock,
    db: TestDb,
}

async fn env() -> Env {
    let db = TestDb::new().await;
    let clock = ManualClock::default();
    let mut cfg = db.config();
    cfg.admin_token = Some(ADMIN.into());
    cfg.clock = Arc::new(clock.clone());
    let app = TestApp::spawn_with(cfg).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    Env {
        app,
        http,
        clock,
        db,
    }
}

impl Env {
    /// Logs in with `token`: the status, and the session cookie's `Set-Cookie` if any.
    async fn login(&self, token: &str) -> (u16, Option<String>, Option<String>) {
        let res = self
            .http
            .post(self.app.url("/admin/login"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (
            res.status().as_u16(),
            header("set-cookie"),
            header("retry-after"),
        )
    }

    /// The dashboard with this cookie: 200, or a redirect to the login form.
    async fn dashboard(&self, cookie: &str) -> u16 {
        self.http
            .get(self.app.url("/admin/projections"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn logged_in(&self, token: &str) -> String {
        let (status, set_cookie, _) = self.login(token).await;
        assert_eq!(status, 303);
        let set_cookie = set_cookie.expect("a session cookie");
        set_cookie.split(';').next().unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_server_side_expire_and_end_at_logout() {
    let e = env().await;
    let (status, set_cookie, _) = e.login(ADMIN).await;
    assert_eq!(status, 303);
    let set_cookie = set_cookie.unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Secure", "Max-Age=43200"] {
        assert!(set_cookie.contains(part), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let id = cookie.strip_prefix("portcullis_session=").unwrap();
    assert!(!cookie.contains(ADMIN) && id.len() >= 43, "{cookie}");
    // Only the id's hash is stored, never the id or the token.
    let c = e.db.client().await;
    let stored: String = c
        .query_one("SELECT row_to_json(s)::text FROM admin.sessions s", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored.contains(&token::hash(id)), "{stored}");
    assert!(!stored.contains(id) && !stored.contains(ADMIN), "{stored}");
    assert_eq!(e.dashboard(&cookie).await, 200);

    // Logout ends it on the server: the old cookie, replayed, is refused.
    let res = e
        .http
        .post(e.app.url("/admin/logout"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_ne!(e.dashboard(&cookie).await, 200);
    let left: i64 = c
        .query_one("SELECT count(*) FROM admin.sessions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // A session lasts 12 hours, however active.
    let cookie = e.logged_in(ADMIN).await;
    e.clock.advance(Span::hours(12) - Span::seconds(1));
    assert_eq!(e.dashboard(&cookie).await, 200);
    e.clock.advance(Span::seconds(2));
    assert_ne!(e.dashboard(&cookie).await, 200);
    // A forged cookie is nobody's.
    assert_ne!(e.dashboard("portcullis_session=forged").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_with_the_admin_token_it_was_opened_with() {
    let e = env().await;
    let store = &e.app.state.store;
    let o = org::create(store, "Ops").await.unwrap();
    let issued = token::issue(store, o.id, token::Scope::Admin, Some("ops"))
        .await
        .unwrap();
    let hub = &e.app.state.hub;
    hub.wait_for_position(
        "api_tokens",
        issued.written.position,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let cookie = e.logged_in(issued.token.expose_secret()).await;
    assert_eq!(e.dashboard(&cookie).await, 200);
    let revoked = token::revoke(store, issued.written.id).await.unwrap();
    hub.wait_for_position("api_tokens", revoked.position, Duration::from_secs(30))
        .await
        .unwrap();
    assert_ne!(e.dashboard(&cookie).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_address() {
    let e = env().await;
    for _ in 0..5 {
        assert_eq!(e.login("pca_wrong").await.0, 401);
    }
    // Now even the right token waits: guessing gains nothing from the answer.
    let (status, _, retry_after) = e.login(ADMIN).await;
    assert_eq!(status, 429);
    assert_eq!(retry_after.as_deref(), Some("60"));
    e.clock.advance(Span::seconds(61));
    e.logged_in(ADMIN).await;
}
