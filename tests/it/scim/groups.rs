use serde_json::{json, Value};

use super::{ids, Scim};
use crate::support::TestDb;

fn member_ids(group: &Value) -> Vec<String> {
    let mut v: Vec<String> = group["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_members_and_computed_user_groups() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let ann = s.user("ann", json!({"displayName": "Ann Lee"})).await;
    let bob = s.user("bob", json!({})).await;
    let (ann, bob) = (ann["id"].as_str().unwrap(), bob["id"].as_str().unwrap());

    // Entra ID: an extra schema URI, a meta object, members with "$ref": null.
    let r = s
        .post(
            "/Groups",
            &json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group",
                            "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
                "displayName": "Engineering",
                "externalId": "ext-eng",
                "meta": {"resourceType": "Group"},
                "members": [{"value": ann, "$ref": null}, {"value": ann, "type": "User"}]
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let eng = r.id();
    assert_eq!(
        r.body["members"],
        json!([{"value": ann, "$ref": s.url(&format!("/Users/{ann}")), "type": "User"}]),
        "deduplicated on value, $ref filled in"
    );
    assert_eq!(r.body["externalId"], "ext-eng");
    // members.display comes only on request; lists leave members out unless asked.
    let d = s
        .get(&format!(
            "/Groups/{eng}?attributes=members.value,members.display"
        ))
        .await;
    assert_eq!(
        d.body["members"],
        json!([{"value": ann, "display": "Ann Lee"}])
    );
    let l = s.get(&format!("/Groups?filter=id eq \"{eng}\"")).await;
    assert_eq!(ids(&l.body), vec![eng.clone()]);
    assert!(l.body["Resources"][0].get("members").is_none());
    let l = s
        .get(&format!(
            "/Groups?filter=id eq \"{eng}\"&attributes=members"
        ))
        .await;
    assert_eq!(
        l.body["Resources"][0]["members"].as_array().unwrap().len(),
        1
    );
    // A nested group: all-staff holds engineering.
    let all = s.group("All staff", &[&eng, bob]).await;
    let all = all["id"].as_str().unwrap().to_string();
    let members = s.get(&format!("/Groups/{all}")).await.body["members"].clone();
    let nested = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["value"] == eng.as_str())
        .unwrap();
    assert_eq!(nested["type"], "Group");
    assert_eq!(nested["$ref"], s.url(&format!("/Groups/{eng}")));

    // User.groups: direct and indirect, readOnly.
    let u = s.get(&format!("/Users/{ann}")).await.body;
    let mut groups: Vec<(String, String)> = u["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["value"].as_str().unwrap().to_string(),
                g["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    groups.sort();
    let mut want = vec![
        (eng.clone(), "direct".to_string()),
        (all.clone(), "indirect".to_string()),
    ];
    want.sort();
    assert_eq!(groups, want);
    let l = s
        .get(&format!("/Users?filter=groups.value%20eq%20%22{all}%22"))
        .await;
    assert_eq!(
        sorted(ids(&l.body)),
        sorted(vec![ann.to_string(), bob.to_string()])
    );
    let l = s
        .get(&format!(
            "/Users?filter=groups[value eq \"{all}\" and type eq \"indirect\"]"
        ))
        .await;
    assert_eq!(
        ids(&l.body),
        vec![ann.to_string()],
        "only through engineering"
    );

    // Okta: remove one member by filter and add others in one PATCH; re-adding is a no-op.
    let r = s
        .patch(
            &format!("/Groups/{eng}"),
            json!([
                {"op": "remove", "path": format!("members[value eq \"{ann}\"]")},
                {"op": "add", "path": "members", "value": [{"value": bob}, {"value": bob}]}
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(member_ids(&r.body), vec![bob.to_string()]);
    let r = s
        .patch(
            &format!("/Groups/{eng}"),
            json!([{"op": "add", "path": "members", "value": [{"value": bob}]}]),
        )
        .await;
    assert_eq!(member_ids(&r.body), vec![bob.to_string()]);
    assert!(s
        .get(&format!("/Users/{ann}"))
        .await
        .body
        .get("groups")
        .is_none());

    // Entra ID: remove with a value list removes only those listed.
    s.patch(
        &format!("/Groups/{eng}"),
        json!([{"op": "add", "path": "members", "value": [{"value": ann}]}]),
    )
    .await;
    let r = s
        .patch(
            &format!("/Groups/{eng}"),
            json!([{"op": "Remove", "path": "members", "value": [{"value": bob}]}]),
        )
        .await;
    assert_eq!(member_ids(&r.body), vec![ann.to_string()]);

    // Okta: rename with replace {id (same), displayName}; replace members with [] clears.
    let r = s
        .patch(
            &format!("/Groups/{eng}"),
            json!([{"op": "replace", "value": {"id": eng, "displayName": "Engineering 2"}}]),
        )
        .await;
    assert_eq!(r.body["displayName"], "Engineering 2");
    let r = s
        .patch(
            &format!("/Groups/{eng}"),
            json!([{"op": "replace", "path": "members", "value": []}]),
        )
        .await;
    assert_eq!(r.body["members"], json!([]));

    // Entra ID: excludedAttributes=members with a displayName filter (case-insensitive).
    let l = s
        .get("/Groups?excludedAttributes=members&filter=displayName%20eq%20%22ENGINEERING%202%22")
        .await;
    assert_eq!(ids(&l.body), vec![eng.clone()]);
    assert!(l.body["Resources"][0].get("members").is_none());

    // displayName is unique per org, case-insensitively; required.
    s.post("/Groups", &json!({"displayName": "all STAFF"}))
        .await
        .assert_error(409, Some("uniqueness"));
    s.post("/Groups", &json!({"members": []}))
        .await
        .assert_error(400, Some("invalidValue"));
    // Members must exist in the org; a group cannot contain itself; type must match.
    s.post(
        "/Groups",
        &json!({"displayName": "x", "members": [{"value": uuid::Uuid::new_v4()}]}),
    )
    .await
    .assert_error(400, Some("invalidValue"));
    s.patch(
        &format!("/Groups/{eng}"),
        json!([{"op": "add", "path": "members", "value": [{"value": eng}]}]),
    )
    .await
    .assert_error(400, Some("invalidValue"));
    s.post(
        "/Groups",
        &json!({"displayName": "y", "members": [{"value": ann, "type": "Group"}]}),
    )
    .await
    .assert_error(400, Some("invalidValue"));
    s.patch(
        &format!("/Groups/{eng}"),
        json!([{"op": "add", "path": "members[value eq \"x\"].display", "value": "x"}]),
    )
    .await
    .assert_error(400, Some("mutability"));

    // PUT replaces the members.
    let r = s
        .put(
            &format!("/Groups/{all}"),
            &json!({"displayName": "All staff", "members": [{"value": ann}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(member_ids(&r.body), vec![ann.to_string()]);

    // Deleting a user removes it from every group; deleting a group removes it from others.
    s.patch(
        &format!("/Groups/{all}"),
        json!([{"op": "add", "path": "members", "value": [{"value": eng}, {"value": bob}]}]),
    )
    .await;
    assert_eq!(s.delete(&format!("/Users/{bob}")).await.status, 204);
    assert_eq!(
        member_ids(&s.get(&format!("/Groups/{all}")).await.body),
        sorted(vec![ann.to_string(), eng.clone()])
    );
    assert_eq!(s.delete(&format!("/Groups/{eng}")).await.status, 204);
    assert_eq!(
        member_ids(&s.get(&format!("/Groups/{all}")).await.body),
        vec![ann.to_string()]
    );
    s.get(&format!("/Groups/{eng}"))
        .await
        .assert_error(404, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_membership_patches_and_creates() {
    let db = TestDb::new().await;
    let s = std::sync::Arc::new(Scim::new(&db).await);
    let mut users = Vec::new();
    for i in 0..50 {
        users.push(
            s.user(&format!("member{i}"), json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let g = s.group("crowd", &[]).await;
    let gid = g["id"].as_str().unwrap().to_string();
    let tasks: Vec<_> = users
        .iter()
        .cloned()
        .map(|u| {
            let (s, gid) = (s.clone(), gid.clone());
            tokio::spawn(async move {
                s.patch(
                    &format!("/Groups/{gid}"),
                    json!([{"op": "add", "path": "members", "value": [{"value": u}]}]),
                )
                .await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{:#}", r.body);
    }
    let got = member_ids(&s.get(&format!("/Groups/{gid}")).await.body);
    assert_eq!(
        got,
        sorted(users.clone()),
        "every member added concurrently is there"
    );

    // Two concurrent creates of one userName: one 201, one 409.
    let (one, two) = (json!({"userName": "twin"}), json!({"userName": "TWIN"}));
    let (a, b) = tokio::join!(s.post("/Users", &one), s.post("/Users", &two));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{:#} {:#}", a.body, b.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_groups_are_snapshotted_and_the_snapshot_is_only_a_cache() {
    use portcullis::domain::{group, user, Doc};
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let store = &s.app.state.store;
    let mut members = Vec::new();
    for i in 0..260 {
        let mut doc = Doc::new();
        doc.insert("userName".into(), json!(format!("big{i}")));
        let w = user::create(store, s.org, doc, None).await.unwrap();
        members.push(group::Member {
            id: w.id,
            kind: group::Kind::User,
        });
    }
    let mut doc = Doc::new();
    doc.insert("displayName".into(), json!("big"));
    let g = group::create(store, s.org, doc, members[..250].to_vec())
        .await
        .unwrap();
    let gid = g.id.to_string();
    let c = db.client().await;
    let snapshot_version = || {
        let c = &c;
        let gid = gid.clone();
        async move {
            c.query_opt(
                "SELECT version FROM eventstore.snapshots WHERE aggregate_id = $1::text::uuid",
                &[&gid],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, i64>(0))
        }
    };
    assert_eq!(snapshot_version().await, None);

    // The first command on the long history writes a snapshot of it.
    let add = |id: uuid::Uuid| json!([{"op": "add", "path": "members", "value": [{"value": id}]}]);
    let r = s
        .patch(&format!("/Groups/{gid}"), add(members[250].id))
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["members"].as_array().unwrap().len(), 251);
    assert_eq!(
        snapshot_version().await,
        Some(251),
        "1 added + 250 member events"
    );

    // Later commands read the snapshot and the events after it, and decide the same.
    for m in &members[251..255] {
        assert_eq!(
            s.patch(&format!("/Groups/{gid}"), add(m.id)).await.status,
            200
        );
    }
    let r = s
        .patch(
            &format!("/Groups/{gid}"),
            json!([{"op": "remove", "path": format!("members[value eq \"{}\"]", members[0].id)}]),
        )
        .await;
    assert_eq!(r.body["members"].as_array().unwrap().len(), 254);
    let from_snapshot = group::load(store, s.org, g.id).await.unwrap().unwrap();
    let all = portcullis::eventstore::load(
        &s.app.state.pool.get().await.unwrap(),
        &group::aggregate(g.id),
    )
    .await
    .unwrap();
    assert_eq!(
        Some(from_snapshot),
        group::fold(&all),
        "snapshot + tail == the whole history"
    );

    // Only a cache: without it everything works the same.
    c.execute("TRUNCATE eventstore.snapshots", &[])
        .await
        .unwrap();
    let r = s.patch(&format!("/Groups/{gid}"), add(members[0].id)).await;
    assert_eq!(r.body["members"].as_array().unwrap().len(), 255);
    let r = s.patch(&format!("/Groups/{gid}"), add(members[0].id)).await;
    assert_eq!(
        r.body["members"].as_array().unwrap().len(),
        255,
        "re-adding is a no-op"
    );
}
