use std::process::Command;

use crate::support::TestDb;

fn portcullis(args: &[&str], database_url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .expect("run portcullis")
}

#[tokio::test]
async fn migrate_applies_once_and_says_what_it_applied() {
    let db = TestDb::empty().await;
    let out = portcullis(&["migrate"], &db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("applied V1__eventstore"), "{stdout}");

    let out = portcullis(&["migrate"], &db.url);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("up to date"), "{stdout}");
    assert!(!stdout.contains("applied V"), "{stdout}");

    let c = db.client().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM eventstore.events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error() {
    let out = portcullis(
        &["migrate"],
        "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
}

#[test]
fn help_documents_every_setting() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "PORTCULLIS_LISTEN",
        "PORTCULLIS_PLAIN_HTTP",
        "PORTCULLIS_HEADER_READ_TIMEOUT_SECONDS",
        "PORTCULLIS_REQUEST_TIMEOUT_SECONDS",
        "PORTCULLIS_MAX_CONNECTIONS",
        "PORTCULLIS_SHUTDOWN_GRACE_SECONDS",
        "PORTCULLIS_METRICS_TOKEN",
        "PORTCULLIS_POOL_SIZE",
        "PORTCULLIS_MAX_EVENT_BYTES",
        "PORTCULLIS_NOTIFY_MODE",
        "PORTCULLIS_LOG",
        "PORTCULLIS_ADMIN_TOKEN",
        "PORTCULLIS_LAG_EVENTS",
        "PORTCULLIS_LAG_SECONDS",
        "PORTCULLIS_STALL_SECONDS",
        "PORTCULLIS_PROJECTION_MAX_ATTEMPTS",
        "PORTCULLIS_WAIT_TIMEOUT_MS",
        "PORTCULLIS_SCIM_MAX_BODY_BYTES",
        "PORTCULLIS_SCIM_MAX_BULK_OPERATIONS",
        "SMTP_URL",
        "PORTCULLIS_MAIL_FROM",
        "PORTCULLIS_PUBLIC_URL",
        "PORTCULLIS_VERIFICATION_TTL_SECONDS",
        "PORTCULLIS_VERIFICATION_RESEND_SECONDS",
        "PORTCULLIS_MAIL_MAX_ATTEMPTS",
        "PORTCULLIS_MAIL_RETRY_SECONDS",
        "PORTCULLIS_LOG_FORMAT",
        "PORTCULLIS_PROJECTION_LAG",
    ] {
        assert!(
            help.contains(var),
            "serve --help does not mention {var}:\n{help}"
        );
    }
}

#[tokio::test]
async fn projections_status_reset_retry_and_acknowledge() {
    let db = TestDb::new().await;
    // A service ran once: the projections are registered.
    let app = crate::support::TestApp::spawn(&db).await;
    app.stop().await;

    let out = portcullis(&["projections", "status", "--json"], &db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["projections"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "event_counts"));

    let out = portcullis(&["projections", "status"], &db.url);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("event_counts") && text.contains("horizon"),
        "{text}"
    );

    let out = portcullis(&["projections", "reset", "event_counts"], &db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("reset event_counts"));

    // No service runs: the request waits in projections.rebuilds, and status shows it.
    let out = portcullis(&["projections", "rebuild", "users"], &db.url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rebuild of users requested"));
    let out = portcullis(&["projections", "status"], &db.url);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("rebuilding:"), "{text}");

    let out = portcullis(&["projections", "retry-failed", "event_counts"], &db.url);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 dead-lettered event(s) applied"));

    let out = portcullis(&["projections", "acknowledge", "event_counts"], &db.url);
    assert!(out.status.success());

    let out = portcullis(&["projections", "reset", "no_such_projection"], &db.url);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no projection named") && err.contains("event_counts"),
        "{err}"
    );
}

/// `portcullis serve` on a free port, logging JSON at info to a pipe.
fn serve_with_json_logs(database_url: &str) -> std::process::Child {
    serve_with_json_logs_and(database_url, &[])
}

fn serve_with_json_logs_and(database_url: &str, env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .envs(env.iter().copied())
        .env("DATABASE_URL", database_url)
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .env("PORTCULLIS_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start serve")
}

/// The lines `child` logs up to the one saying it serves, then stops it.
async fn lines_until_serving(mut child: std::process::Child) -> Vec<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    // Reads until the service says it serves (a line per event; the process ends the stream).
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let done = line.contains("portcullis is serving");
            seen.push(line);
            if done {
                break;
            }
        }
        seen
    });
    let lines = tokio::time::timeout(std::time::Duration::from_secs(30), lines)
        .await
        .expect("the service logs that it serves")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    lines
}

/// `PORTCULLIS_LOG_FORMAT=json`: one JSON object per line, with the span fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let db = TestDb::new().await;
    let lines = lines_until_serving(serve_with_json_logs(&db.url)).await;
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
    }
    assert!(lines
        .last()
        .unwrap()
        .contains("\"message\":\"portcullis is serving\""));
}

/// `--worker-threads` (`PORTCULLIS_WORKER_THREADS`) sizes the runtime `serve` runs on, as its
/// start-up line says; zero is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_on_the_worker_threads_it_is_given() {
    let db = TestDb::new().await;
    let workers = |lines: Vec<String>| {
        let v: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        v["fields"]["worker_threads"]
            .as_u64()
            .expect("worker_threads")
    };
    let three = serve_with_json_logs_and(&db.url, &[("PORTCULLIS_WORKER_THREADS", "3")]);
    assert_eq!(workers(lines_until_serving(three).await), 3);
    let one = serve_with_json_logs_and(&db.url, &[("PORTCULLIS_WORKER_THREADS", "1")]);
    assert_eq!(workers(lines_until_serving(one).await), 1);
    let zero = portcullis(&["serve", "--worker-threads", "0"], &db.url);
    assert!(!zero.status.success());
    let said = String::from_utf8_lossy(&zero.stderr);
    assert!(said.contains("--worker-threads"), "{said}");
}

/// A client's mistakes (4xx) and an unimplemented feature (/Me's 501) are not the service's
/// errors: nothing is logged at ERROR for them, and the 501 is logged at INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_logged_as_errors() {
    use std::io::BufRead;
    let db = TestDb::new().await;
    let stdout = |args: &[&str]| {
        let out = portcullis(args, &db.url);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    portcullis(&["migrate"], &db.url);
    let org = stdout(&["orgs", "create", "Logs", "--no-wait"]);
    let token = stdout(&[
        "tokens",
        "create",
        "--org",
        &org,
        "--scope",
        "scim",
        "--no-wait",
    ]);
    let mut child = serve_with_json_logs(&db.url);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("portcullis is serving") {
                let _ = tx.send(line.clone());
            }
            all.push(line);
        }
        all
    });
    let serving =
        tokio::task::spawn_blocking(move || rx.recv_timeout(std::time::Duration::from_secs(30)))
            .await
            .unwrap()
            .expect("the service logs that it serves");
    let v: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr = v["fields"]["address"]
        .as_str()
        .expect("address")
        .to_string();
    let base = format!("http://{addr}/scim/v2/{org}");
    let http = reqwest::Client::new();
    let auth = format!("Bearer {token}");
    let status = |r: reqwest::Response| r.status().as_u16();
    let statuses = [
        status(http.get(format!("{base}/Users")).send().await.unwrap()),
        status(
            crate::support::eventually(
                "the token works",
                std::time::Duration::from_secs(10),
                || {
                    let (http, base, auth) = (http.clone(), base.clone(), auth.clone());
                    async move {
                        let r = http
                            .get(format!("{base}/Users?filter=nonsense"))
                            .header("authorization", auth)
                            .send()
                            .await
                            .ok()?;
                        (r.status() != 401).then_some(r)
                    }
                },
            )
            .await,
        ),
        status(
            http.get(format!("{base}/Users/{}", uuid::Uuid::new_v4()))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap(),
        ),
        status(
            http.get(format!("{base}/Me"))
                .header("authorization", &auth)
                .send()
                .await
                .unwrap(),
        ),
    ];
    assert_eq!(statuses, [401, 400, 404, 501]);
    let _ = child.kill();
    let _ = child.wait();
    let lines = reader.join().unwrap();
    let levels: Vec<(String, String)> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["level"].as_str().unwrap_or_default().to_string(),
                v.to_string(),
            )
        })
        .collect();
    let errors: Vec<&String> = levels
        .iter()
        .filter(|(l, _)| l == "ERROR")
        .map(|(_, v)| v)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(
        levels
            .iter()
            .any(|(l, v)| l == "INFO" && v.contains("unimplemented feature")),
        "{lines:#?}"
    );
}
