//! Poll delivery (RFC 8936): the receiver fetches SETs and acknowledges them; acknowledged
//! ones never come back.

use reqwest::Method;
use serde_json::{json, Value};

use super::{admin, health, jwks, kinds, register, setup};
use crate::scim::{Scim, USER};
use crate::support::receiver::verify;
use crate::support::TestDb;

fn url(s: &Scim, made: &Value) -> String {
    s.app.url(&format!(
        "/api/v1/orgs/{}/receivers/{}/poll",
        s.org,
        made["id"].as_str().unwrap()
    ))
}

async fn poll_as(s: &Scim, made: &Value, token: &str, body: Value) -> (u16, Value) {
    let r = s
        .app
        .http
        .post(url(s, made))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Polls with the receiver's own token; asserts 200.
pub async fn poll(s: &Scim, made: &Value, body: Value) -> Value {
    let (status, got) = poll_as(s, made, made["poll_token"].as_str().unwrap(), body).await;
    assert_eq!(status, 200, "{got:#}");
    got
}

fn jtis(got: &Value) -> Vec<String> {
    got["sets"].as_object().unwrap().keys().cloned().collect()
}

async fn user(s: &Scim, name: &str) -> String {
    let r = s
        .post("/Users", &json!({"schemas": [USER], "userName": name}))
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    r.id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_sets_come_back_until_acknowledged_and_never_after() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let made = register(
        &s,
        json!({"name": "poller", "delivery": "poll", "events": ["prov:create:notice", "prov:delete"]}),
    )
    .await;
    assert!(made["poll_token"].as_str().unwrap().starts_with("pcr_"));
    let audience = made["audience"].as_str().unwrap().to_string();
    let ids = [
        user(&s, "p0").await,
        user(&s, "p1").await,
        user(&s, "p2").await,
    ];

    let got = poll(&s, &made, json!({"returnImmediately": true})).await;
    assert_eq!(got["moreAvailable"], false);
    let first = jtis(&got);
    assert_eq!(first.len(), 3);
    let keys = jwks(&s).await;
    let uris: Vec<String> = got["sets"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| {
            let c = verify(t.as_str().unwrap(), &keys, &audience);
            assert_eq!(kinds(&c), ["prov:create:notice"]);
            c["sub_id"]["uri"].as_str().unwrap().to_string()
        })
        .collect();
    let expected: Vec<String> = ids.iter().map(|i| format!("/Users/{i}")).collect();
    assert_eq!(uris, expected, "in log order");

    // Not acknowledged: they come back.
    let again = poll(
        &s,
        &made,
        json!({"returnImmediately": true, "maxEvents": 2}),
    )
    .await;
    assert_eq!(jtis(&again), first[..2]);
    assert_eq!(again["moreAvailable"], true);

    let rest = poll(
        &s,
        &made,
        json!({"ack": &first[..2], "returnImmediately": true}),
    )
    .await;
    assert_eq!(jtis(&rest), first[2..]);
    let none = poll(
        &s,
        &made,
        json!({"ack": &first[2..], "returnImmediately": true}),
    )
    .await;
    assert!(
        jtis(&none).is_empty(),
        "acknowledged SETs never come back: {none:#}"
    );

    // A poll that waits returns as soon as there is something.
    let waiting = {
        let (s2, made2) = (url(&s, &made), made.clone());
        let http = s.app.http.clone();
        tokio::spawn(async move {
            let r = http
                .post(s2)
                .bearer_auth(made2["poll_token"].as_str().unwrap())
                .json(&json!({"maxEvents": 10}))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    };
    let r = s.delete(&format!("/Users/{}", ids[0])).await;
    assert_eq!(r.status, 204);
    let woke = waiting.await.unwrap();
    let token = woke["sets"].as_object().unwrap().values().next().unwrap();
    let c = verify(token.as_str().unwrap(), &keys, &audience);
    assert_eq!(kinds(&c), ["prov:delete"]);

    // The receiver refuses one: it is kept aside, not sent again.
    let j = jtis(&woke);
    let errs = json!({&j[0]: {"err": "invalid_key", "description": "unknown kid"}});
    let after = poll(
        &s,
        &made,
        json!({"setErrs": errs, "returnImmediately": true}),
    )
    .await;
    assert!(jtis(&after).is_empty(), "{after:#}");
    let h = health(&db, made["id"].as_str().unwrap()).await;
    assert_eq!(h.get::<_, String>("status"), "rejected");
    assert_eq!(h.get::<_, i64>("rejected"), 1);
    assert_eq!(h.get::<_, i64>("delivered_total"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_receivers_own_token_polls_and_bad_polls_change_nothing() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let events = json!(["prov:create:notice"]);
    let a = register(
        &s,
        json!({"name": "a", "delivery": "poll", "events": events}),
    )
    .await;
    let b = register(
        &s,
        json!({"name": "b", "delivery": "poll", "events": events}),
    )
    .await;
    user(&s, "x").await;
    let b_token = b["poll_token"].as_str().unwrap();
    let (status, _) = poll_as(&s, &a, b_token, json!({})).await;
    assert_eq!(status, 401, "another receiver's token");
    let (status, _) = poll_as(&s, &a, &s.token, json!({})).await;
    assert_eq!(status, 401, "a SCIM token");
    for bad in [
        json!({"maxEvents": 5000}),
        json!({"ack": "not a list"}),
        json!({"setErrs": ["not", "an", "object"]}),
    ] {
        let (status, body) = poll_as(&s, &a, a["poll_token"].as_str().unwrap(), bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body:#}");
    }
    let got = poll(&s, &a, json!({"returnImmediately": true})).await;
    assert_eq!(
        jtis(&got).len(),
        1,
        "nothing was acknowledged by the bad polls"
    );

    let r = admin(
        &s,
        Method::DELETE,
        &format!("/receivers/{}", a["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r.status, 204);
    let (status, _) = poll_as(&s, &a, a["poll_token"].as_str().unwrap(), json!({})).await;
    assert_eq!(status, 401, "a removed receiver polls no more");
    let r = admin(&s, Method::GET, "/receivers", None).await;
    assert_eq!(r.body["receivers"].as_array().unwrap().len(), 1);
    assert!(
        r.body.to_string().find("pcr_").is_none(),
        "tokens are never listed"
    );
}
