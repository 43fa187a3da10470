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
