//! The dashboard in a real headless browser: Chromium driven through chromedriver
//! (WebDriver), both from the distribution (`.ci/run` installs them).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use portcullis::eventstore::{Aggregate, Append, ExpectedVersion, NewEvent};
use serde_json::json;

use crate::support::{eventually, TestApp, TestDb};

const ADMIN: &str = "dashboard-test-admin-token";

/// chromedriver on a free port, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let bin = [
        "chromedriver",
        "/usr/bin/chromedriver",
        "/usr/lib/chromium/chromedriver",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .expect(
        "chromedriver is not installed: apt-get install chromium chromium-driver (.ci/run does)",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("chromedriver answers", Duration::from_secs(20), || {
        let req = http.get(format!("{url}/status"));
        async move {
            req.send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
    Driver { child, url }
}

async fn browser(driver: &Driver) -> fantoccini::Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]}),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// The class of a projection's row, as the page shows it now. The script replaces the rows
/// every 2 s, so a row found just before a refresh can go stale: look again until the
/// deadline.
async fn row_class(c: &fantoccini::Client, name: &str) -> Option<String> {
    let css = format!("tr[data-name=\"{name}\"]");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(row) = c.find(Locator::Css(&css)).await {
            if let Ok(class) = row.attr("class").await {
                return class;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_login_lag_and_retry_in_a_browser() {
    let db = TestDb::new().await;
    let mut cfg = db.config();
    cfg.admin_token = Some(ADMIN.into());
    cfg.runner.max_attempts = 1;
    cfg.thresholds.lag_events = 3;
    let app = TestApp::spawn_with(cfg).await;
    let store = &app.state.store;
    let c = db.client().await;

    // A lagging projection: registered, consuming user.added, run by nobody.
    c.execute(
        "INSERT INTO projections.projection_states (name, event_types) VALUES ('archive', ARRAY['user.added'])",
        &[],
    )
    .await
    .unwrap();
    let org = uuid::Uuid::new_v4();
    for _ in 0..5 {
        let id = uuid::Uuid::new_v4();
        store
            .push(&[
                Append::new(org, Aggregate::new("user", id), ExpectedVersion::NEW).event(
                    NewEvent::new(
                        "user.added",
                        json!({"attributes": {"userName": id.to_string()}}),
                    ),
                ),
            ])
            .await
            .unwrap();
    }
    // A degraded one: users cannot apply a change to a user it has never seen.
    let ghost = uuid::Uuid::new_v4();
    let pushed = store
        .push(&[
            Append::new(org, Aggregate::new("user", ghost), ExpectedVersion::Any).event(
                NewEvent::new("user.changed", json!({"set": {"title": "x"}, "unset": []})),
            ),
        ])
        .await
        .unwrap();
    app.state
        .hub
        // Generous: the horizon is the whole cluster's, and other tests share it.
        .wait_for_position("users", pushed.last(), Duration::from_secs(30))
        .await
        .unwrap();

    let driver = driver().await;
    let b = browser(&driver).await;
    // Not logged in: the login form; a wrong token is refused.
    b.goto(&app.url("/admin/projections")).await.unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/admin/login"));
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    b.find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("p.error"))
        .await
        .unwrap();
    assert!(b.source().await.unwrap().contains("not an admin token"));
    b.find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    b.find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // Form posts navigate: wait for the page they lead to.
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("rows"))
        .await
        .unwrap();
    let url = b.current_url().await.unwrap();
    assert_eq!(url.path(), "/admin/projections");
    assert!(
        !url.as_str().contains(ADMIN),
        "the token never appears in a URL"
    );
    // The cookie is HTTP-only: scripts cannot read it.
    let cookies = b.execute("return document.cookie", vec![]).await.unwrap();
    assert!(!cookies
        .as_str()
        .unwrap_or_default()
        .contains("portcullis_session"));

    // Every projection is listed; the lagging and the degraded ones are marked.
    for name in [
        "users",
        "groups",
        "orgs",
        "api_tokens",
        "event_counts",
        "archive",
    ] {
        assert!(row_class(&b, name).await.is_some(), "{name} is listed");
    }
    assert_eq!(row_class(&b, "archive").await.as_deref(), Some("lagging"));
    assert_eq!(row_class(&b, "users").await.as_deref(), Some("degraded"));
    // The script refreshes the table in place and draws the lag chart from the samples.
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#chart polyline"))
        .await
        .unwrap();
    let updated = b
        .find(Locator::Id("updated"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(updated.ends_with('Z'), "set by the script: {updated}");

    // The cause is fixed (the user exists now); retry from the dashboard, with confirmation.
    c.execute(
        "INSERT INTO projections.users (user_id, org_id, user_name, doc, version, created_at, updated_at) \
         VALUES ($1, $2, 'ghost', '{}', 0, now(), now())",
        &[&ghost, &org],
    )
    .await
    .unwrap();
    b.find(Locator::Css(
        "tr[data-name=\"users\"] a[href$=\"/retry-failed\"]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("submit"))
        .await
        .unwrap();
    assert!(b
        .source()
        .await
        .unwrap()
        .contains("Retry failed events of users?"));
    b.find(Locator::Id("submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("p.notice"))
        .await
        .unwrap();
    assert_eq!(
        b.current_url().await.unwrap().path(),
        "/admin/projections",
        "{}",
        b.source().await.unwrap()
    );
    assert!(b
        .source()
        .await
        .unwrap()
        .contains("1 event(s) applied, 0 still failing"));
    assert_eq!(row_class(&b, "users").await.as_deref(), Some("ok"));
    let title: String = c
        .query_one(
            "SELECT doc->>'title' FROM projections.users WHERE user_id = $1",
            &[&ghost],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(title, "x", "the dead-lettered event was applied");

    // Logging out ends access.
    b.find(Locator::Css("header button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Id("token"))
        .await
        .unwrap();
    b.goto(&app.url("/admin/projections")).await.unwrap();
    assert!(b
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/admin/login"));
    b.close().await.unwrap();
    app.stop().await;
}
