//! Push delivery (RFC 8935) to a receiver inside the test.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::{admin, health, jwks, kinds, register, setup};
use crate::scim::{Scim, PATCH_OP, USER};
use crate::support::receiver::{verify, Receiver};
use crate::support::{eventually, TestDb};

const WAIT: Duration = Duration::from_secs(20);

/// The position a write answered with.
fn position(r: &crate::scim::Resp) -> String {
    r.header("portcullis-position")
        .expect("a write answers with its position")
        .to_string()
}

async fn user(s: &Scim, name: &str) -> (String, String) {
    let r = s
        .post("/Users", &json!({"schemas": [USER], "userName": name}))
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    (r.id(), position(&r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_change_reaches_a_push_receiver_once_signed_and_in_order() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let rx = Receiver::start().await;
    let wants = [
        "prov:create:full",
        "prov:patch:full",
        "prov:put:notice",
        "prov:delete",
        "prov:deactivate",
    ];
    let made = register(
        &s,
        json!({"name": "app", "delivery": "push", "endpoint": rx.endpoint(), "events": wants,
               "authorization": "Bearer rx-issued-secret"}),
    )
    .await;
    assert_eq!(made["audience"], rx.endpoint().as_str());
    assert!(
        !made.to_string().contains("rx-issued-secret"),
        "write-only: {made}"
    );

    let body = json!({"schemas": [USER], "userName": "ann", "externalId": "ann-7", "active": true});
    let r = s.post("/Users", &body).await;
    assert_eq!(r.status, 201);
    let (ann, mut positions) = (r.id(), vec![position(&r)]);
    let r = s
        .patch(
            &format!("/Users/{ann}"),
            json!([{"op": "replace", "path": "active", "value": false}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    positions.push(position(&r));
    let body = json!({"schemas": [USER], "userName": "ann", "displayName": "Ann", "active": false});
    let r = s.put(&format!("/Users/{ann}"), &body).await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    positions.push(position(&r));
    let r = s
        .post(
            "/Groups",
            &json!({"displayName": "crm", "members": [{"value": ann}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let group = r.id();
    positions.push(position(&r));
    let r = s.delete(&format!("/Users/{ann}")).await;
    assert_eq!(r.status, 204);
    positions.push(position(&r));

    let got = rx.wait_for(5, WAIT).await;
    let keys = jwks(&s).await;
    let claims: Vec<Value> = got
        .iter()
        .map(|g| {
            assert_eq!(g.content_type, "application/secevent+jwt");
            assert_eq!(g.authorization.as_deref(), Some("Bearer rx-issued-secret"));
            verify(&g.token, &keys, &rx.endpoint())
        })
        .collect();
    let txns: Vec<&str> = claims.iter().map(|c| c["txn"].as_str().unwrap()).collect();
    assert_eq!(
        txns, positions,
        "one SET per change, in log order, txn = its position"
    );
    let issuer = format!("http://127.0.0.1:8080/scim/v2/{}", s.org);
    for c in &claims {
        assert_eq!(c["iss"], issuer.as_str());
        assert_eq!(c["sub_id"]["format"], "scim");
        assert!(c.get("sub").is_none(), "RFC 9967 §2.1: sub_id, never sub");
    }
    let jtis: std::collections::HashSet<&str> =
        claims.iter().map(|c| c["jti"].as_str().unwrap()).collect();
    assert_eq!(jtis.len(), 5);

    let uri = format!("/Users/{ann}");
    assert_eq!(claims[0]["sub_id"]["uri"], uri.as_str());
    assert_eq!(claims[0]["sub_id"]["externalId"], "ann-7");
    assert_eq!(kinds(&claims[0]), ["prov:create:full"]);
    let data = &claims[0]["events"][format!("{}prov:create:full", super::PREFIX)]["data"];
    assert_eq!(data["userName"], "ann");
    assert_eq!(data["id"], ann.as_str());

    let mut k = kinds(&claims[1]);
    k.sort();
    assert_eq!(k, ["prov:deactivate", "prov:patch:full"]);
    let patch = &claims[1]["events"][format!("{}prov:patch:full", super::PREFIX)];
    assert_eq!(patch["data"]["schemas"][0], PATCH_OP);
    assert_eq!(patch["data"]["Operations"][0]["path"], "active");
    assert_eq!(patch["version"], "W/\"2\"");

    assert_eq!(kinds(&claims[2]), ["prov:put:notice"]);
    let attrs = &claims[2]["events"][format!("{}prov:put:notice", super::PREFIX)]["attributes"];
    assert!(
        attrs.as_array().unwrap().contains(&json!("displayName")),
        "{attrs}"
    );

    assert_eq!(
        claims[3]["sub_id"]["uri"],
        format!("/Groups/{group}").as_str()
    );
    let g = &claims[3]["events"][format!("{}prov:create:full", super::PREFIX)]["data"];
    assert_eq!(
        g["members"][0]["value"],
        ann.as_str(),
        "the group's members in its create"
    );

    assert_eq!(claims[4]["sub_id"]["uri"], uri.as_str());
    assert_eq!(kinds(&claims[4]), ["prov:delete"]);

    let id = made["id"].as_str().unwrap();
    let h = eventually("nothing pending", WAIT, || async {
        let h = health(&db, id).await;
        (h.get::<_, i64>("pending") == 0).then_some(h)
    })
    .await;
    assert_eq!(h.get::<_, String>("status"), "ok");
    assert_eq!(h.get::<_, i64>("delivered_total"), 5);
    let listed = admin(&s, Method::GET, &format!("/receivers/{id}"), None).await;
    assert_eq!(listed.status, 200);
    assert!(
        !listed.body.to_string().contains("rx-issued-secret"),
        "{:#}",
        listed.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_was_down_gets_what_it_missed_and_holds_up_no_other() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let mut down = Receiver::start().await;
    let steady = Receiver::start().await;
    let events = ["prov:create:notice", "prov:patch:notice"];
    let a = register(
        &s,
        json!({"name": "down", "delivery": "push", "endpoint": down.endpoint(), "events": events}),
    )
    .await;
    register(
        &s,
        json!({"name": "steady", "delivery": "push", "endpoint": steady.endpoint(), "events": events}),
    )
    .await;
    user(&s, "before").await;
    down.wait_for(1, WAIT).await;
    steady.wait_for(1, WAIT).await;

    down.down().await;
    let mut positions = Vec::new();
    for i in 0..6 {
        let (id, p) = user(&s, &format!("while-down-{i}")).await;
        positions.push(p);
        if i == 2 {
            let r = s
                .patch(
                    &format!("/Users/{id}"),
                    json!([{"op": "add", "path": "title", "value": "x"}]),
                )
                .await;
            positions.push(position(&r));
        }
    }
    // The other receiver is not held up: it has all of them while the first is down.
    steady.wait_for(8, WAIT).await;
    let id = a["id"].as_str().unwrap();
    let h = eventually("pushes failing", WAIT, || async {
        let h = health(&db, id).await;
        (h.get::<_, i32>("failures") > 0).then_some(h)
    })
    .await;
    assert_eq!(h.get::<_, String>("status"), "retrying");
    assert!(h.get::<_, Option<String>>("last_error").is_some());
    // The dashboard shows it too.
    let page = s
        .app
        .http
        .get(s.app.url("/admin/projections"))
        .bearer_auth(super::ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let row = format!("<tr class=\"retrying\" data-receiver=\"{id}\"><td>down</td>");
    assert!(page.contains(&row), "{page}");

    down.up().await;
    let got = down.wait_for(8, WAIT).await;
    let keys = jwks(&s).await;
    let txns: Vec<String> = got[1..]
        .iter()
        .map(|g| {
            verify(&g.token, &keys, &down.endpoint())["txn"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(txns, positions, "everything it missed, in order, once");
    let h = eventually("caught up", WAIT, || async {
        let h = health(&db, id).await;
        (h.get::<_, i64>("pending") == 0 && h.get::<_, i32>("failures") == 0).then_some(h)
    })
    .await;
    assert_eq!(h.get::<_, String>("status"), "ok");
    assert_eq!(down.got().len(), 8, "nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_the_receiver_refuses_is_kept_aside_and_sent_again_on_retry() {
    let db = TestDb::new().await;
    let s = setup(&db).await;
    let rx = Receiver::start().await;
    let made = register(
        &s,
        json!({"name": "picky", "delivery": "push", "endpoint": rx.endpoint(), "events": ["prov:create:notice"]}),
    )
    .await;
    let id: uuid::Uuid = made["id"].as_str().unwrap().parse().unwrap();
    rx.refuse(true);
    let (u, p) = user(&s, "refused").await;
    // The same receiver, change and subject always give the same jti.
    let refused = portcullis::secevents::set::jti(id, p.parse().unwrap(), &format!("/Users/{u}"));
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(
        crate::support::receiver::claims(&got[0].token)["jti"],
        refused.as_str()
    );
    rx.refuse(false);
    user(&s, "accepted").await;
    rx.wait_for(2, WAIT).await;
    let h = eventually("the refusal recorded", WAIT, || async {
        let h = health(&db, &id.to_string()).await;
        (h.get::<_, i64>("rejected") == 1 && h.get::<_, i64>("pending") == 0).then_some(h)
    })
    .await;
    assert_eq!(h.get::<_, String>("status"), "rejected");

    let r = admin(&s, Method::POST, &format!("/receivers/{id}/retry"), None).await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["requeued"], 1);
    let got = rx.wait_for(3, WAIT).await;
    let again = crate::support::receiver::claims(&got[2].token);
    assert_eq!(again["jti"], refused.as_str(), "the same SET, sent again");
    eventually("nothing refused", WAIT, || async {
        let h = health(&db, &id.to_string()).await;
        (h.get::<_, String>("status") == "ok" && h.get::<_, i64>("pending") == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_delivering_node_stops_another_takes_over_from_the_checkpoint() {
    let db = TestDb::new().await;
    let config = || {
        let mut cfg = db.config();
        cfg.admin_token = Some(super::ADMIN.into());
        cfg.secevents.lease = Duration::from_secs(1);
        cfg
    };
    let first = Scim::on(crate::support::TestApp::spawn_with(config()).await).await;
    let rx = Receiver::start().await;
    let made = register(
        &first,
        json!({"name": "app", "delivery": "push", "endpoint": rx.endpoint(), "events": ["prov:create:notice"]}),
    )
    .await;
    let id = made["id"].as_str().unwrap().to_string();
    user(&first, "on-the-first-node").await;
    rx.wait_for(1, WAIT).await;
    let holder: String = health_lease(&db, &id).await;

    // A second node; the first stops (its lease is not renewed any more).
    let second = crate::support::TestApp::spawn_with(config()).await;
    let (org, token) = (first.org, first.token.clone());
    first.app.stop().await;
    let s = Scim {
        app: second,
        org,
        token,
    };
    let mut positions = Vec::new();
    for i in 0..5 {
        positions.push(user(&s, &format!("on-the-second-node-{i}")).await.1);
    }
    let got = rx.wait_for(6, WAIT).await;
    let keys = jwks(&s).await;
    let mut seen = Vec::new();
    for g in &got[1..] {
        let txn = verify(&g.token, &keys, &rx.endpoint())["txn"]
            .as_str()
            .unwrap()
            .to_string();
        if !seen.contains(&txn) {
            seen.push(txn);
        }
    }
    assert_eq!(
        seen, positions,
        "each change, in order, from the checkpoint on"
    );
    let now: String = health_lease(&db, &id).await;
    assert_ne!(now, holder, "the second node holds the lease now");
}

async fn health_lease(db: &TestDb, id: &str) -> String {
    let id: uuid::Uuid = id.parse().unwrap();
    db.client()
        .await
        .query_one(
            "SELECT leased_by FROM secevents.receivers WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}
