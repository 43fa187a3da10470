//! One tenant's bad input or bad event never reaches, or stalls, another tenant.

use portcullis::eventstore::{Aggregate, Append, ExpectedVersion, NewEvent};
use serde_json::json;
use uuid::Uuid;

use super::{Scim, USER};
use crate::support::TestDb;

async fn event_count(s: &Scim) -> i64 {
    let c = s.app.state.store.pool().get().await.unwrap();
    c.query_one("SELECT count(*) FROM eventstore.events", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn values_the_read_models_cannot_index_are_refused_before_they_are_stored() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let id = s.user("kept", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = event_count(&s).await;
    let long = "x".repeat(3500);
    let bodies = [
        json!({"schemas": [USER], "userName": "a", "externalId": long}),
        json!({"schemas": [USER], "userName": "b", "emails": [{"value": format!("{long}@x.example")}]}),
        json!({"schemas": [USER], "userName": "c", "displayName": long}),
        json!({"schemas": [USER], "userName": "d\u{0}nul"}),
        json!({"schemas": [USER], "userName": "e", "nickName": "with \u{0} inside"}),
    ];
    for body in &bodies {
        s.post("/Users", body)
            .await
            .assert_error(400, Some("invalidValue"));
    }
    let patch = s
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "externalId", "value": long}]),
        )
        .await;
    patch.assert_error(400, Some("invalidValue"));
    let group = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                       "displayName": "g", "externalId": long});
    s.post("/Groups", &group)
        .await
        .assert_error(400, Some("invalidValue"));
    assert_eq!(event_count(&s).await, before, "nothing was appended");
    // The largest value that fits is stored and projected.
    let fits = "y".repeat(portcullis::domain::MAX_INDEXED_BYTES);
    let ok = s
        .post(
            "/Users",
            &json!({"schemas": [USER], "userName": "f", "externalId": fits}),
        )
        .await;
    assert_eq!(ok.status, 201, "{:#}", ok.body);
}

#[tokio::test]
async fn a_bad_event_of_one_org_is_dead_lettered_at_once_and_another_org_writes_on() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    // Org A's event, written past the domain as an old version or a DBA might: an index
    // row too large for the users read model.
    let org_a = Uuid::new_v4();
    // Random text: PostgreSQL cannot compress it below the B-tree limit.
    let random: String = (0..3500)
        .map(|_| rand::random_range(b'a'..=b'z') as char)
        .collect();
    let attrs = json!({"userName": "big", "externalId": random});
    let bad = s
        .app
        .state
        .store
        .push(&[Append::new(
            org_a,
            Aggregate::new("user", Uuid::new_v4()),
            ExpectedVersion::NEW,
        )
        .event(NewEvent::new("user.added", json!({ "attributes": attrs })))])
        .await
        .unwrap()
        .last();
    // Org B's writes are answered from the read model, right behind it.
    for i in 0..5 {
        let r = s
            .post(
                "/Users",
                &json!({"schemas": [USER], "userName": format!("b{i}")}),
            )
            .await;
        assert_eq!(r.status, 201, "{:#}", r.body);
    }
    let c = s.app.state.store.pool().get().await.unwrap();
    let f = portcullis::runtime::failed_events(&c, "users")
        .await
        .unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].position, bad);
    assert_eq!(f[0].failure_count, 1, "dead-lettered on its first failure");
    assert!(f[0].dead_lettered_at.is_some());
    assert!(f[0].error.contains("index row"), "{}", f[0].error);
}

#[tokio::test]
async fn while_a_reset_model_is_behind_reads_answer_503_never_a_partial_200() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let mut id = String::new();
    for i in 0..30 {
        id = s.user(&format!("r{i}"), json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
    }
    // Holding the projection's lock keeps every runner from refilling the model, so the
    // incomplete state lasts as long as the test needs.
    let dba = db.client().await;
    dba.batch_execute(
        "SELECT pg_advisory_lock(hashtextextended('portcullis.projection/users', 0)); \
         SELECT projections.reset('users');",
    )
    .await
    .unwrap();
    let hub = s.app.state.hub.clone();
    crate::support::eventually(
        "the hub hears of the reset",
        std::time::Duration::from_secs(10),
        || {
            let incomplete = !hub.is_complete("users");
            async move { incomplete.then_some(()) }
        },
    )
    .await;
    for path in [
        "/Users?count=0".to_string(),
        format!("/Users/{id}"),
        "/Users?filter=userName%20eq%20%22r1%22".to_string(),
    ] {
        let r = s.get(&path).await;
        r.assert_error(503, None);
        assert_eq!(r.header("retry-after"), Some("1"), "{path}");
    }
    dba.batch_execute(
        "SELECT pg_advisory_unlock(hashtextextended('portcullis.projection/users', 0))",
    )
    .await
    .unwrap();
    let total = crate::support::eventually(
        "the model is complete again",
        std::time::Duration::from_secs(30),
        || async {
            let r = s.get("/Users?count=0").await;
            (r.status == 200).then(|| r.body["totalResults"].clone())
        },
    )
    .await;
    assert_eq!(
        total, 30,
        "the first 200 after the reset is the whole model"
    );
}

/// The live round sends its COMMIT in the same round trip as its writes when every
/// projection sends them at once (`Projection::sends_at_once`, as users and event_counts do
/// for creations). When one of those writes fails, that COMMIT rolls back: nothing of the
/// round may count as applied. The failing event is dead-lettered, every projection applies
/// every other event exactly once (event_counts the failing one too), and every position
/// reaches the log's end.
#[tokio::test]
async fn a_live_round_whose_write_fails_behind_its_commit_keeps_none_of_it() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE projections.users ADD CONSTRAINT no_poison CHECK (user_name <> 'poison')",
        )
        .await
        .unwrap();
    let store = &s.app.state.store;
    let mut at = Vec::new();
    for name in ["first", "poison", "last"] {
        let mut doc = portcullis::domain::Doc::new();
        doc.insert("userName".into(), json!(name));
        let w = portcullis::domain::user::create(store, s.org, doc, None)
            .await
            .unwrap();
        at.push(w.position);
    }
    s.app
        .state
        .hub
        .wait_for_all(
            &["users", "event_counts"],
            at[2],
            std::time::Duration::from_secs(30),
        )
        .await
        .unwrap();
    let c = store.pool().get().await.unwrap();
    let f = portcullis::runtime::failed_events(&c, "users")
        .await
        .unwrap();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].position, at[1]);
    assert!(f[0].dead_lettered_at.is_some());
    let row = c
        .query_one(
            "SELECT (SELECT array_agg(user_name ORDER BY user_name) FROM projections.users \
                      WHERE org_id = $1), \
                    (SELECT events FROM projections.event_counts \
                      WHERE org_id = $1 AND event_type = 'user.added')",
            &[&s.org],
        )
        .await
        .unwrap();
    let (names, counted): (Vec<String>, i64) = (row.get(0), row.get(1));
    assert_eq!(names, ["first", "last"]);
    assert_eq!(counted, 3, "each creation counted once");
    for name in ["users", "event_counts"] {
        let state = portcullis::runtime::state(&c, name).await.unwrap().unwrap();
        assert!(state.position >= at[2], "{name} at {}", state.position);
    }
}
