use std::process::Command;

use crate::support::{TestApp, TestDb};

/// Runs the CLI beside the in-process service (on a blocking thread, so the service keeps
/// serving meanwhile).
async fn cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let (url, args): (String, Vec<String>) =
        (db.url.clone(), args.iter().map(|s| s.to_string()).collect());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(&args)
            .env("DATABASE_URL", url)
            .env("PORTCULLIS_LOG", "warn")
            .output()
            .expect("run portcullis")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

async fn health_status(app: &TestApp, token: &str) -> u16 {
    app.http
        .get(app.url("/api/v1/admin/projections/health"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orgs_and_tokens_from_the_command_line() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;

    let (ok, org, err) = cli(&db, &["orgs", "create", "Acme Corp"]).await;
    assert!(ok, "{err}");
    let org_id: uuid::Uuid = org.parse().expect("stdout holds only the org id");

    let (ok, admin, err) = cli(
        &db,
        &[
            "tokens", "create", "--org", &org, "--scope", "admin", "--name", "ci",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(
        admin.starts_with("pcs_") && !admin.contains(char::is_whitespace),
        "stdout holds only the token: {admin:?}"
    );
    let admin_id = err
        .split_whitespace()
        .nth(1)
        .and_then(|w| w.parse::<uuid::Uuid>().ok())
        .unwrap_or_else(|| panic!("the token id on stderr: {err}"));

    // Usable as soon as the command returns: it waited for the running service.
    assert_eq!(health_status(&app, &admin).await, 200);
    let (ok, scim, _) = cli(&db, &["tokens", "create", "--org", &org, "--scope", "scim"]).await;
    assert!(ok);
    assert_eq!(
        health_status(&app, &scim).await,
        401,
        "a scim token is no admin token"
    );
    assert_eq!(health_status(&app, &format!("{admin}x")).await, 401);

    // Only hashes are kept.
    let c = db.client().await;
    let leaked: i64 = c
        .query_one(
            "SELECT count(*) FROM eventstore.events WHERE payload::text LIKE '%' || $1 || '%' OR payload::text LIKE '%' || $2 || '%'",
            &[&admin, &scim],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0, "a plain token reached the event log");
    let stored: String = c
        .query_one(
            "SELECT token_hash FROM projections.api_tokens WHERE token_id = $1",
            &[&admin_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, portcullis::domain::token::hash(&admin));
    let (org_of_token, scope): (uuid::Uuid, String) = {
        let r = c
            .query_one(
                "SELECT org_id, scope FROM projections.api_tokens WHERE token_id = $1",
                &[&admin_id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((org_of_token, scope.as_str()), (org_id, "admin"));

    let (ok, out, err) = cli(&db, &["tokens", "revoke", &admin_id.to_string()]).await;
    assert!(ok, "{err}");
    assert!(out.contains("revoked"));
    assert_eq!(health_status(&app, &admin).await, 401, "revoked at once");
    let (ok, _, err) = cli(&db, &["tokens", "revoke", &admin_id.to_string()]).await;
    assert!(ok, "revoking twice is fine: {err}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_requests_are_clear_errors() {
    let db = TestDb::new().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["tokens", "create", "--org", &unknown, "--scope", "scim"],
            &["organization", "not found"],
        ),
        (
            &["tokens", "create", "--org", "not-a-uuid", "--scope", "scim"],
            &["--org"],
        ),
        (
            &["tokens", "create", "--org", &unknown, "--scope", "root"],
            &["scim", "admin"],
        ),
        (&["orgs", "create", "  "], &["name"]),
        (&["tokens", "revoke", &unknown], &["not found"]),
    ];
    for (args, expected) in cases {
        let (ok, _, err) = cli(&db, args).await;
        assert!(!ok, "{args:?} succeeded");
        for e in expected {
            assert!(err.contains(e), "{args:?}: {err}");
        }
    }
    // Without a running service the org is created all the same, with a note.
    let (ok, out, err) = cli(&db, &["orgs", "create", "Lonely"]).await;
    assert!(ok && out.parse::<uuid::Uuid>().is_ok(), "{err}");
    assert!(err.contains("no running portcullis service"), "{err}");
}

/// What `make run` does: an org and a SCIM token from the CLI without waiting, `orgs list`
/// to find the org again, and the token working on the SCIM API once a service runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_org_and_scim_token_work_on_the_scim_api() {
    let db = TestDb::new().await;
    let (ok, org, err) = cli(
        &db,
        &["orgs", "create", "--no-wait", "Default organization"],
    )
    .await;
    assert!(ok, "{err}");
    assert!(!err.contains("note:"), "--no-wait does not wait: {err}");
    let (ok, token, err) = cli(
        &db,
        &[
            "tokens",
            "create",
            "--no-wait",
            "--org",
            &org,
            "--scope",
            "scim",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, listed, _) = cli(&db, &["orgs", "list"]).await;
    assert!(ok);
    assert_eq!(listed, format!("{org} Default organization"));

    let app = TestApp::spawn(&db).await;
    let head = portcullis::eventstore::head(&app.state.pool.get().await.unwrap())
        .await
        .unwrap();
    app.state
        .hub
        .wait_for_all(
            &["orgs", "api_tokens"],
            head,
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    let res = app
        .http
        .get(app.url(&format!("/scim/v2/{org}/Users")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_settings_from_the_command_line() {
    let db = TestDb::new().await;
    let (ok, org, err) = cli(&db, &["orgs", "create", "--no-wait", "Settings Inc"]).await;
    assert!(ok, "{err}");
    let (ok, out, _) = cli(&db, &["orgs", "settings", &org]).await;
    assert!(ok);
    assert_eq!(out, r#"{"verify_email_on_change":false}"#);
    let (ok, out, _) = cli(
        &db,
        &["orgs", "settings", &org, "--verify-email-on-change", "true"],
    )
    .await;
    assert!(ok);
    assert_eq!(out, r#"{"verify_email_on_change":true}"#);
    let (ok, _, err) = cli(
        &db,
        &["orgs", "settings", &uuid::Uuid::new_v4().to_string()],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("no organization"), "{err}");
}

/// A revocation this process was never told of (its LISTEN connection down, the pool fine,
/// so the api_tokens generation it sees does not move) stops the token within the cache's
/// bound, not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cache_cannot_outlive_a_missed_revocation() {
    use portcullis::domain::{org, token};
    use secrecy::ExposeSecret;

    let db = TestDb::new().await;
    let store = db.store(Default::default());
    let o = org::create(&store, "Cache").await.unwrap();
    let issued = token::issue(&store, o.id, token::Scope::Scim, None)
        .await
        .unwrap();
    let presented = issued.token.expose_secret();
    let c = db.client().await;
    // The read model row, as the api_tokens projection writes it.
    c.execute(
        "INSERT INTO projections.api_tokens (token_id, org_id, scope, token_hash, created_at) \
         VALUES ($1, $2, 'scim', $3, now())",
        &[&issued.written.id, &o.id, &token::hash(presented)],
    )
    .await
    .unwrap();
    let cache = token::TokenCache::default();
    let now = chrono::Utc::now();
    let generation = 7;
    let check = |at| cache.authenticate(store.pool(), presented, generation, at);
    assert!(check(now).await.unwrap().is_some());
    c.execute(
        "UPDATE projections.api_tokens SET revoked_at = now() WHERE token_id = $1",
        &[&issued.written.id],
    )
    .await
    .unwrap();
    assert!(check(now).await.unwrap().is_some(), "believed, briefly");
    let later = now + chrono::Duration::seconds(token::CACHE_TTL_SECONDS + 1);
    assert!(check(later).await.unwrap().is_none());
}

/// Made-up bearer tokens from one address cost a lookup each only until the throttle trips;
/// then they are refused without one (429 with Retry-After) on both surfaces, while a token
/// this process has seen valid still works from that address, until the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_bearer_tokens_are_throttled_per_address() {
    use chrono::Duration as Span;
    use portcullis::clock::ManualClock;
    use portcullis::domain::{org, token};
    use secrecy::ExposeSecret;

    let db = TestDb::new().await;
    let clock = ManualClock::default();
    let mut cfg = db.config();
    cfg.clock = std::sync::Arc::new(clock.clone());
    let app = TestApp::spawn_with(cfg).await;
    let store = &app.state.store;
    let o = org::create(store, "Flood").await.unwrap();
    let known = token::issue(store, o.id, token::Scope::Scim, None)
        .await
        .unwrap();
    let unseen = token::issue(store, o.id, token::Scope::Scim, None)
        .await
        .unwrap();
    let timeout = std::time::Duration::from_secs(30);
    app.state
        .hub
        .wait_for_position("api_tokens", unseen.written.position, timeout)
        .await
        .unwrap();
    let (known, unseen) = (known.token.expose_secret(), unseen.token.expose_secret());
    let users = app.url(&format!("/scim/v2/{}/Users?count=0", o.id));
    let get = |t: String| app.http.get(&users).bearer_auth(t).send();
    assert_eq!(get(known.into()).await.unwrap().status(), 200);
    for i in 0..30 {
        let made_up = format!("{}madeup{i}", token::PREFIX);
        assert_eq!(get(made_up).await.unwrap().status(), 401);
    }
    let res = get(format!("{}madeup", token::PREFIX)).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "60");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "429", "{body}");
    assert_eq!(
        health_status(&app, "pcs_madeup").await,
        429,
        "the JSON API too"
    );
    assert_eq!(
        get(known.into()).await.unwrap().status(),
        200,
        "a token seen valid is still looked up"
    );
    assert_eq!(get(unseen.into()).await.unwrap().status(), 429);
    clock.advance(Span::seconds(61));
    assert_eq!(get(unseen.into()).await.unwrap().status(), 200);
}
