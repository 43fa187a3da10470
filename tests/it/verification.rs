//! Email verification end to end: a real SMTP server (the in-process sink), the outbox
//! worker, codes and links, and every limit driven by a ManualClock.

use std::sync::Arc;
use std::time::Duration;

use crate::support::smtp::{Received, SmtpSink};
use chrono::Duration as Span;
use portcullis::clock::ManualClock;
use serde_json::{json, Value};

use crate::scim::{org_with_token, Scim};
use crate::support::{eventually, TestApp, TestDb};

struct Env {
    s: Scim,
    sink: SmtpSink,
    clock: ManualClock,
    db: TestDb,
}

async fn env_with(max_attempts: i32) -> Env {
    crate::support::init_tracing();
    let db = TestDb::new().await;
    let sink = SmtpSink::start().await.unwrap();
    let clock = ManualClock::default();
    let mut cfg = db.config();
    cfg.smtp_url = Some(sink.url().into());
    cfg.clock = Arc::new(clock.clone());
    cfg.mail.max_attempts = max_attempts;
    cfg.mail.public_url = "http://portcullis.test".into();
    let app = TestApp::spawn_with(cfg).await;
    let (org, token) = org_with_token(&app).await;
    Env {
        s: Scim { app, org, token },
        sink,
        clock,
        db,
    }
}

async fn env() -> Env {
    env_with(8).await
}

impl Env {
    fn api(&self, user: &str, tail: &str) -> String {
        self.s.app.url(&format!(
            "/api/v1/orgs/{}/users/{user}/email{tail}",
            self.s.org
        ))
    }

    async fn post(&self, url: &str, body: Option<Value>) -> (u16, Option<String>, Value) {
        let mut req = self.s.app.http.post(url).bearer_auth(&self.s.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let retry = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, res.json().await.unwrap_or(Value::Null))
    }

    async fn request(&self, user: &str) -> (u16, Option<String>, Value) {
        self.post(&self.api(user, "/verification"), None).await
    }

    async fn verify(&self, user: &str, code: &str) -> (u16, Value) {
        let (s, _, b) = self
            .post(&self.api(user, "/verify"), Some(json!({"code": code})))
            .await;
        (s, b)
    }

    async fn status(&self, user: &str) -> (u16, Value) {
        let res = self
            .s
            .app
            .http
            .get(self.api(user, ""))
            .bearer_auth(&self.s.token)
            .send()
            .await
            .unwrap();
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    /// Waits for mail number `n` (1-based) and returns it.
    async fn mail(&self, n: usize) -> Received {
        self.sink
            .wait_for(n, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("mail {n} did not arrive"))[n - 1]
            .clone()
    }

    async fn click(&self, link: &str) -> (u16, String) {
        let path = link
            .strip_prefix("http://portcullis.test")
            .expect("link base");
        let res = self
            .s
            .app
            .http
            .get(self.s.app.url(path))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }

    async fn user(&self, name: &str, email: &str) -> String {
        let u = self
            .s
            .user(name, json!({"emails": [{"value": email, "primary": true}]}))
            .await;
        u["id"].as_str().unwrap().to_string()
    }
}

fn code_of(m: &Received) -> String {
    let body = m.decoded();
    let at = body.find("Your verification code: ").expect("a code") + 24;
    body[at..at + 8].to_string()
}

fn link_of(m: &Received) -> String {
    let body = m.decoded();
    let at = body
        .find("http://portcullis.test/verify-email?")
        .expect("a link");
    body[at..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_and_link_arrive_by_smtp_and_verify() {
    let e = env().await;
    let user = e.user("ann", "ann@example.com").await;
    assert_eq!(
        e.status(&user).await,
        (200, json!({"email": "ann@example.com", "verified": false}))
    );

    let (status, _, body) = e.request(&user).await;
    assert_eq!(status, 202, "{body}");
    let m = e.mail(1).await;
    assert_eq!(m.to, ["<ann@example.com>"]);
    assert!(
        m.data.contains("Subject: Your verification code"),
        "{}",
        m.data
    );
    assert!(m.data.contains("text/plain") && m.data.contains("text/html"));
    let code = code_of(&m);
    assert!(code
        .chars()
        .all(|c| portcullis::domain::verification::ALPHABET.contains(&(c as u8))));

    let wrong = if code.starts_with('A') {
        "BBBBBBBB"
    } else {
        "AAAAAAAA"
    };
    assert_eq!(e.verify(&user, wrong).await.0, 400);
    let (status, body) = e.verify(&user, &code.to_lowercase()).await;
    assert_eq!((status, &body), (200, &json!({"verified": true})));
    assert_eq!(e.status(&user).await.1["verified"], true);
    // SCIM shows it.
    let u = e.s.get(&format!("/Users/{user}")).await;
    assert_eq!(u.body["emails"][0]["verified"], true, "{:#}", u.body);
    let l =
        e.s.get("/Users?filter=emails%5Bverified%20eq%20true%5D")
            .await;
    assert_eq!(l.body["totalResults"], 1);
    // The worker recorded that it sent the code.
    let c = e.db.client().await;
    eventually("code.sent recorded", Duration::from_secs(10), || {
        let c = &c;
        let user = user.clone();
        async move {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM eventstore.events WHERE aggregate_id = $1::text::uuid \
                     AND event_type = 'user.email.verification.code.sent'",
                    &[&user],
                )
                .await
                .unwrap()
                .get(0);
            (n == 1).then_some(())
        }
    })
    .await;
    let outbox: i64 = c
        .query_one("SELECT count(*) FROM mail.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0, "sent mail leaves the outbox");

    // Again, by link, for another user.
    let bob = e.user("bob", "bob@example.com").await;
    assert_eq!(e.request(&bob).await.0, 202);
    let link = link_of(&e.mail(2).await);
    assert!(link.contains(&format!("user={bob}")), "{link}");
    let (status, page) = e.click(&link).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("verified"));
    assert_eq!(e.status(&bob).await.1["verified"], true);
    // Used links and wrong links get the same page.
    let (used_status, used_page) = e.click(&link).await;
    let (bad_status, bad_page) = e
        .click(&format!(
            "http://portcullis.test/verify-email?user={bob}&token=nope"
        ))
        .await;
    let (none_status, none_page) = e.click("http://portcullis.test/verify-email").await;
    assert_eq!((used_status, bad_status, none_status), (400, 400, 400));
    assert_eq!(used_page, bad_page);
    assert_eq!(bad_page, none_page);

    // No secret in the event log: neither code nor link token appears in any payload.
    let token = link.split("token=").nth(1).unwrap().to_string();
    let rows = c
        .query("SELECT payload::text FROM eventstore.events", &[])
        .await
        .unwrap();
    for r in rows {
        let p: String = r.get(0);
        assert!(
            !p.contains(&code) && !p.contains(&token),
            "a secret in the log: {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_single_use_attempt_and_resend_limits() {
    let e = env().await;
    let user = e.user("lim", "lim@example.com").await;

    // Resend limit: once a minute by default, with Retry-After.
    assert_eq!(e.request(&user).await.0, 202);
    let first = code_of(&e.mail(1).await);
    let (status, retry, body) = e.request(&user).await;
    assert_eq!((status, retry.as_deref()), (429, Some("60")), "{body}");
    e.clock.advance(Span::seconds(59));
    assert_eq!(e.request(&user).await.1.as_deref(), Some("1"));
    e.clock.advance(Span::seconds(1));
    assert_eq!(e.request(&user).await.0, 202);
    let second = code_of(&e.mail(2).await);
    // The refused requests sent nothing: two mails to the address, not four.
    assert!(
        e.sink
            .wait_for_to("lim@example.com", 2, Duration::from_secs(10))
            .await
    );
    assert_eq!(e.sink.count_to("lim@example.com"), 2);
    // A new request replaces the previous code.
    if first != second {
        assert_eq!(e.verify(&user, &first).await.0, 400, "the old code is void");
    }

    // Five wrong attempts burn the code: the right one fails after that.
    for i in 0..5 {
        let wrong = if second.starts_with('A') {
            "BBBBBBB2"
        } else {
            "AAAAAAA2"
        };
        let (status, body) = e.verify(&user, wrong).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_code")),
            "attempt {i}"
        );
    }
    assert_eq!(e.verify(&user, &second).await.0, 400, "burnt");

    // Expiry: an hour by default.
    e.clock.advance(Span::seconds(61));
    assert_eq!(e.request(&user).await.0, 202);
    let third = code_of(&e.mail(3).await);
    e.clock.advance(Span::minutes(60));
    assert_eq!(e.verify(&user, &third).await.0, 400, "expired");

    // Single use.
    assert_eq!(e.request(&user).await.0, 202);
    let fourth = code_of(&e.mail(4).await);
    e.clock.advance(Span::minutes(59));
    assert_eq!(e.verify(&user, &fourth).await.0, 200);
    assert_eq!(e.verify(&user, &fourth).await.0, 400, "used");

    // Unknown users and other orgs' users answer like a wrong code; nothing is revealed.
    let (_, wrong_body) = e.verify(&user, "AAAAAAAA").await;
    let (s1, b1) = e
        .verify(&uuid::Uuid::new_v4().to_string(), "AAAAAAAA")
        .await;
    let (s2, b2) = e.verify("not-a-uuid", "AAAAAAAA").await;
    let (org_b, token_b) = org_with_token(&e.s.app).await;
    let other = Scim {
        app: TestApp::spawn(&e.db).await,
        org: org_b,
        token: token_b,
    };
    let stranger = other
        .user("stranger", json!({"emails": [{"value": "s@x.org"}]}))
        .await;
    let (s3, b3) = e.verify(stranger["id"].as_str().unwrap(), "AAAAAAAA").await;
    assert_eq!((s1, s2, s3), (400, 400, 400));
    assert!(b1 == wrong_body && b2 == wrong_body && b3 == wrong_body);
    assert_eq!(e.request(stranger["id"].as_str().unwrap()).await.0, 404);
    assert_eq!(e.status(stranger["id"].as_str().unwrap()).await.0, 404);
    // A user without an address, a missing token, a malformed body.
    let bare = e.s.user("bare", json!({})).await;
    assert_eq!(e.request(bare["id"].as_str().unwrap()).await.0, 409);
    let res =
        e.s.app
            .http
            .post(e.api(&user, "/verification"))
            .send()
            .await
            .unwrap();
    assert_eq!(res.status(), 401);
    let (s, _, b) = e
        .post(&e.api(&user, "/verify"), Some(json!({"nope": 1})))
        .await;
    assert_eq!((s, b["error"].as_str()), (400, Some("invalid_request")));
    other.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_keeps_the_request_retries_and_delivers() {
    let e = env_with(3).await;
    let user = e.user("patient", "patient@example.com").await;
    e.sink.stop();
    assert_eq!(e.request(&user).await.0, 202);
    let c = e.db.client().await;
    let attempts = |n: i32| {
        let c = &c;
        async move {
            let r = c
                .query_opt(
                    "SELECT attempts, last_error, failed_at IS NOT NULL FROM mail.outbox",
                    &[],
                )
                .await
                .unwrap()?;
            (r.get::<_, i32>(0) >= n).then(|| (r.get::<_, Option<String>>(1), r.get::<_, bool>(2)))
        }
    };
    let (error, failed) =
        eventually("a failed attempt", Duration::from_secs(10), || attempts(1)).await;
    assert!(error.is_some_and(|e| !e.is_empty()));
    assert!(!failed);
    // The server is back, but the backoff (5 s on the clock) is not over: nothing is sent.
    e.sink.resume().await.unwrap();
    e.s.app.state.wake_mailer();
    assert!(
        e.sink
            .wait_for(1, Duration::from_millis(300))
            .await
            .is_none(),
        "retried before the backoff"
    );
    e.clock.advance(Span::seconds(5));
    e.s.app.state.wake_mailer();
    let m = e.mail(1).await;
    assert_eq!(m.to, ["<patient@example.com>"]);
    let code = code_of(&m);
    assert_eq!(
        e.verify(&user, &code).await.0,
        200,
        "the code that finally arrived works"
    );

    // Giving up after the configured tries: visible in mail.outbox.
    let other = e.user("unlucky", "unlucky@example.com").await;
    e.sink.stop();
    assert_eq!(e.request(&other).await.0, 202);
    eventually("attempt 1", Duration::from_secs(10), || attempts(1)).await;
    e.clock.advance(Span::seconds(5));
    e.s.app.state.wake_mailer();
    eventually("attempt 2", Duration::from_secs(10), || attempts(2)).await;
    let code: String = c
        .query_one("SELECT secret->>'code' FROM mail.outbox", &[])
        .await
        .unwrap()
        .get(0);
    e.clock.advance(Span::seconds(10));
    e.s.app.state.wake_mailer();
    let (_, failed) = eventually("attempt 3", Duration::from_secs(10), || attempts(3)).await;
    assert!(failed, "given up after 3 tries");
    // What was given up keeps no secret, and the code it carried no longer works.
    let left: Value = c
        .query_one("SELECT secret FROM mail.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, json!({}));
    let (status, body) = e.verify(&other, &code).await;
    assert_ne!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_changing_a_verified_address_resets_it_and_may_send_a_code() {
    let e = env().await;
    let user = e.user("mover", "old@example.com").await;
    assert_eq!(e.request(&user).await.0, 202);
    let code = code_of(&e.mail(1).await);
    assert_eq!(e.verify(&user, &code).await.0, 200);

    // The org setting is off: the new address is unverified and nobody is mailed.
    let r = e
        .s
        .patch(&format!("/Users/{user}"), json!([{"op": "replace", "path": "emails[primary eq true].value", "value": "new@example.com"}]))
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert!(
        r.body["emails"][0].get("verified").is_none(),
        "{:#}",
        r.body
    );
    assert_eq!(
        e.status(&user).await.1,
        json!({"email": "new@example.com", "verified": false})
    );
    let c = e.db.client().await;
    let outbox: i64 = c
        .query_one("SELECT count(*) FROM mail.outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0);

    // Verify the new one, switch the setting on, change again: a code goes to the new address.
    e.clock.advance(Span::seconds(61));
    assert_eq!(e.request(&user).await.0, 202);
    let code = code_of(&e.mail(2).await);
    assert_eq!(e.verify(&user, &code).await.0, 200);
    portcullis::domain::org::set_verify_email_on_change(&e.s.app.state.store, e.s.org, true)
        .await
        .unwrap();
    e.clock.advance(Span::seconds(61));
    let r = e
        .s
        .put(&format!("/Users/{user}"), &json!({"userName": "mover", "emails": [{"value": "third@example.com", "primary": true}]}))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body["emails"][0].get("verified").is_none(),
        "{:#}",
        r.body
    );
    let m = e.mail(3).await;
    assert_eq!(m.to, ["<third@example.com>"]);
    assert_eq!(e.verify(&user, &code_of(&m)).await.0, 200);
    // Unrelated changes leave the verification alone.
    let r =
        e.s.patch(
            &format!("/Users/{user}"),
            json!([{"op": "replace", "path": "title", "value": "x"}]),
        )
        .await;
    assert_eq!(r.body["emails"][0]["verified"], true);
}
