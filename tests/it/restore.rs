//! A logical dump restored into a new cluster: the service refuses to start until the log
//! is rebased, and after the rebase new events are projected.

use std::process::Command;

use portcullis::app::StartError;
use portcullis::http::AppState;
use serde_json::json;

use crate::scim::{Scim, USER};
use crate::support::{TestApp, TestDb};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a PostgreSQL client tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_restore_the_service_waits_for_the_rebase_and_then_projects_new_events() {
    let source = TestDb::new().await;
    // The source cluster has handed out 10M more transaction ids than the one restored into
    // will have: raising the source's offset stands for that (one server runs every test).
    source
        .client()
        .await
        .batch_execute("UPDATE eventstore.xid_offset SET xid_offset = xid_offset + 10000000")
        .await
        .unwrap();
    let s = Scim::new(&source).await;
    for name in ["ada", "grace", "edsger"] {
        s.user(name, json!({})).await;
    }
    let (org, token) = (s.org, s.token.clone());
    s.app.stop().await;

    let dump = std::env::temp_dir().join(format!("{}.sql", source.name));
    run(Command::new("pg_dump")
        .arg("--no-owner")
        .arg("-f")
        .arg(&dump)
        .arg(&source.url));
    let restored = TestDb::empty().await;
    run(Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&dump)
        .arg(&restored.url));
    let _ = std::fs::remove_file(&dump);
    restored
        .client()
        .await
        .batch_execute("UPDATE eventstore.xid_offset SET xid_offset = xid_offset - 10000000")
        .await
        .unwrap();

    let refused = AppState::start(&restored.config()).await.err();
    match &refused {
        Some(StartError::NotRebased { ahead }) => assert!(*ahead >= 9_000_000, "{ahead}"),
        _ => panic!(
            "the service must refuse to start: {:?}",
            refused.map(|e| e.to_string())
        ),
    }
    assert!(refused
        .unwrap()
        .to_string()
        .contains("eventstore.rebase_after_restore()"));

    restored
        .client()
        .await
        .query_one("SELECT eventstore.rebase_after_restore()", &[])
        .await
        .unwrap();
    let app = TestApp::spawn(&restored).await;
    let s = Scim { app, org, token };
    let created = s
        .post("/Users", &json!({"schemas": [USER], "userName": "barbara"}))
        .await;
    assert_eq!(created.status, 201, "{:#}", created.body);
    let list = s.get("/Users?filter=userName%20eq%20%22barbara%22").await;
    assert_eq!(list.body["totalResults"], 1, "{:#}", list.body);
    let all = s.get("/Users?count=0").await;
    assert_eq!(all.body["totalResults"], 4, "restored and new users");
}
