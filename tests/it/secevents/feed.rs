//! A receiver whose feed is one group's members (RFC 9967 §2.3).

use serde_json::{json, Value};

use super::poll::poll;
use super::{jwks, kinds, register, setup};
use crate::scim::Scim;
use crate::support::receiver::verify;
use crate::support::TestDb;

async fn patched(s: &Scim, path: &str, ops: Value) {
    let r = s.patch(path, ops).await;
    assert!(r.status == 200 || r.status == 204, "{path}: {:#}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_feed_follows_its_members_in_and_out() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let a = s.user("in-from-the-start", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let b = s.user("joins-later", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let group = s.group("crm-users", &[&a]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wants = [
        "feed:add",
        "feed:remove",
        "prov:patch:notice",
        "prov:delete",
    ];
    let made = register(
        &s,
        json!({"name": "crm", "delivery": "poll", "events": wants, "group": group}),
    )
    .await;
    assert_eq!(made["group"], group.as_str());

    let title = |t: &str| json!([{"op": "add", "path": "title", "value": t}]);
    patched(&s, &format!("/Users/{a}"), title("in the feed")).await;
    patched(&s, &format!("/Users/{b}"), title("not yet in it")).await;
    let add_b = json!([{"op": "add", "path": "members", "value": [{"value": b}]}]);
    patched(&s, &format!("/Groups/{group}"), add_b).await;
    patched(&s, &format!("/Users/{b}"), title("in it now")).await;
    let remove_a = json!([{"op": "remove", "path": format!("members[value eq \"{a}\"]")}]);
    patched(&s, &format!("/Groups/{group}"), remove_a).await;
    patched(&s, &format!("/Users/{a}"), title("left")).await;
    assert_eq!(s.delete(&format!("/Users/{b}")).await.status, 204);

    let got = poll(&s, &made, json!({"returnImmediately": true})).await;
    let keys = jwks(&s).await;
    let audience = made["audience"].as_str().unwrap();
    let seen: Vec<(String, String)> = got["sets"]
        .as_object()
        .unwrap()
        .values()
        .map(|t| {
            let c = verify(t.as_str().unwrap(), &keys, audience);
            (
                kinds(&c).join(","),
                c["sub_id"]["uri"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (ua, ub) = (format!("/Users/{a}"), format!("/Users/{b}"));
    let expected = vec![
        ("prov:patch:notice".to_string(), ua.clone()),
        ("feed:add".to_string(), ub.clone()),
        ("prov:patch:notice".to_string(), ub.clone()),
        ("feed:remove".to_string(), ua.clone()),
        ("prov:delete".to_string(), ub.clone()),
    ];
    assert_eq!(seen, expected);

    // A group that is not there makes no feed.
    let r = super::admin(
        &s,
        reqwest::Method::POST,
        "/receivers",
        Some(json!({"name": "x", "delivery": "poll", "events": wants, "group": uuid::Uuid::new_v4()})),
    )
    .await;
    assert_eq!(r.status, 400, "{:#}", r.body);
}
