//! The public SCIM conformance suite, scim2-tester (PyPI), against the in-process server over
//! real HTTP. `scripts/scim-tester.sh` installs it into a virtualenv of the project's own.

use std::process::Command;

use serde_json::Value;

use super::Scim;
use crate::support::TestDb;

/// Checks we believe are wrong, with the reason; each is still run and reported. Empty:
/// every check must pass.
const EXCLUDED: &[(&str, &str)] = &[];

fn tester_python() -> String {
    let out = Command::new("scripts/scim-tester.sh")
        .output()
        .expect("scripts/scim-tester.sh runs");
    assert!(
        out.status.success(),
        "scripts/scim-tester.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_scim2_tester_suite_passes() {
    let python = tokio::task::spawn_blocking(tester_python).await.unwrap();
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let base = s.url("");
    let token = s.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("tests/conformance/scim2_tester_run.py")
            .arg(&base)
            .arg(&token)
            .output()
            .expect("the suite runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "scim2-tester could not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    // The suite ran its CRUD checks for both resource types, not only discovery.
    assert!(results.len() > 100, "only {} checks ran", results.len());
    for rt in ["User", "Group"] {
        assert!(
            results.iter().any(|r| r["resource_type"] == rt),
            "no {rt} checks"
        );
    }
    let failed: Vec<&Value> = results
        .iter()
        .filter(|r| !matches!(r["status"].as_str(), Some("SUCCESS" | "COMPLIANT")))
        .filter(|r| !EXCLUDED.iter().any(|(t, _)| r["title"] == *t))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} scim2-tester checks failed:\n{}",
        failed.len(),
        results.len(),
        failed
            .iter()
            .map(|r| format!("{r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
