use crate::support::{TestApp, TestDb};

#[tokio::test]
async fn healthz_answers_over_real_http() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db).await;
    let res = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap().trim(), "ok");
    let res = app.http.get(app.url("/no-such-path")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    app.stop().await;
}

/// What a client may hold on to is bounded: time to send headers, connections, time per
/// request, and how long shutdown waits for it.
mod bounds {
    use std::time::Duration;

    use reqwest::Method;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::scim::Scim;
    use crate::support::{TestApp, TestDb};

    fn host(app: &TestApp) -> String {
        app.base.trim_start_matches("http://").to_string()
    }

    /// Reads until the server closes the connection; what it sent before.
    async fn until_closed(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&out).to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_slow_to_send_its_headers_is_cut_off() {
        let db = TestDb::new().await;
        let mut cfg = db.config();
        cfg.http.header_read_timeout = Duration::from_secs(1);
        let app = TestApp::spawn_with(cfg).await;
        let mut s = TcpStream::connect(host(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        until_closed(&mut s).await;
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_past_the_limit_wait_for_one_to_close() {
        let db = TestDb::new().await;
        let mut cfg = db.config();
        cfg.http.max_connections = 2;
        cfg.http.header_read_timeout = Duration::from_secs(60);
        let app = TestApp::spawn_with(cfg).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(host(&app)).await.unwrap());
        }
        // Both slots are taken: a third client is not served (it waits in the backlog).
        let third = app.http.get(app.url("/healthz")).send();
        assert!(
            tokio::time::timeout(Duration::from_millis(500), third)
                .await
                .is_err(),
            "served past the connection limit"
        );
        held.pop();
        let res = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        drop(held);
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_past_its_time_is_503_with_retry_after() {
        let db = TestDb::new().await;
        let mut cfg = db.config();
        cfg.http.request_timeout = Duration::from_secs(1);
        cfg.scim.wait_timeout = Duration::from_secs(60);
        let s = Scim::on(TestApp::spawn_with(cfg).await).await;
        let far = [("portcullis-min-position", "999999999999/1")];
        let r = s.send(Method::GET, "/Users", None, &far).await;
        r.assert_error(503, None);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert!(r.body["detail"]
            .as_str()
            .unwrap()
            .contains("longer than 1 s"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_waits_for_requests_in_flight_only_so_long() {
        let db = TestDb::new().await;
        let mut cfg = db.config();
        cfg.http.shutdown_grace = Duration::from_secs(1);
        cfg.http.request_timeout = Duration::from_secs(600);
        let app = TestApp::spawn_with(cfg).await;
        // A request whose body never finishes arriving: in flight until something gives up.
        let mut s = TcpStream::connect(host(&app)).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        s.write_all(
            b"POST /admin/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken=",
        )
        .await
        .unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(30), app.stop()).await;
        assert!(stopped.is_ok(), "shutdown waited past its grace period");
        until_closed(&mut s).await;
    }
}
