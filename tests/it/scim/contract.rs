use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::{ids, into_resp, Scim, ENTERPRISE, USER};
use crate::support::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_lifecycle_post_get_put_patch_delete() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;

    // Okta: POST with a password and "groups": [] (readOnly, ignored).
    let r = s
        .post(
            "/Users",
            &json!({
                "schemas": [USER, ENTERPRISE],
                "userName": "ann@example.com",
                "name": {"givenName": "Ann", "familyName": "Lee"},
                "emails": [{"value": "ann@example.com", "type": "work", "primary": true}],
                "password": "correct horse battery staple",
                "groups": [],
                "active": true,
                ENTERPRISE: {"employeeNumber": "701", "manager": {"value": "m-1"}}
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(r.header("content-type"), Some("application/scim+json"));
    let id = r.id();
    assert_eq!(
        r.header("location"),
        Some(s.url(&format!("/Users/{id}")).as_str())
    );
    assert_eq!(r.body["meta"]["location"], s.url(&format!("/Users/{id}")));
    assert_eq!(r.header("etag"), r.body["meta"]["version"].as_str());
    assert_eq!(r.body["meta"]["resourceType"], "User");
    assert!(r
        .header("portcullis-position")
        .is_some_and(|p| p.contains('/')));
    assert!(r.body.get("password").is_none(), "password never returned");
    assert_eq!(r.body["name"]["familyName"], "Lee");
    assert_eq!(r.body[ENTERPRISE]["employeeNumber"], "701");
    assert_eq!(r.body["schemas"], json!([USER, ENTERPRISE]));

    let g = s.get(&format!("/Users/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.body, r.body);
    assert!(!g.body.to_string().contains("correct horse"));

    // Okta: PUT echoing id, meta and groups; PUT replaces every readWrite attribute.
    let mut put = g.body.clone();
    put["name"] = json!({"givenName": "Annie"});
    put["active"] = json!(false);
    put.as_object_mut().unwrap().remove(ENTERPRISE);
    let p = s.put(&format!("/Users/{id}"), &put).await;
    assert_eq!(p.status, 200, "{:#}", p.body);
    assert_eq!(p.body["name"], json!({"givenName": "Annie"}));
    assert_eq!(p.body["active"], false);
    assert!(p.body.get(ENTERPRISE).is_none());
    assert_ne!(p.header("etag"), g.header("etag"));

    // Entra ID: capitalised ops, "False"/"True" strings, dotted and URN keys without a path.
    let r = s
        .patch(
            &format!("/Users/{id}"),
            json!([
                {"op": "Replace", "path": "active", "value": "True"},
                {"op": "Replace", "value": {
                    "name.familyName": "Lee",
                    (format!("{ENTERPRISE}:department")): "R&D"
                }},
                {"op": "Add", "path": "emails[type eq \"home\"].value", "value": "ann@home.example"},
                {"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": "271"}
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["active"], true);
    assert_eq!(
        r.body["name"],
        json!({"givenName": "Annie", "familyName": "Lee"})
    );
    assert_eq!(r.body[ENTERPRISE]["department"], "R&D");
    assert_eq!(r.body[ENTERPRISE]["manager"], json!({"value": "271"}));
    assert!(r.body["emails"]
        .as_array()
        .unwrap()
        .contains(&json!({"type": "home", "value": "ann@home.example"})));

    // Okta: deactivation by PATCH without a path.
    let r = s
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "value": {"active": false}}]),
        )
        .await;
    assert_eq!((r.status, &r.body["active"]), (200, &json!(false)));
    // A deactivated user is still returned, also in lists.
    let l = s.get("/Users?filter=active%20eq%20false").await;
    assert_eq!(ids(&l.body), vec![id.clone()]);

    let d = s.delete(&format!("/Users/{id}")).await;
    assert_eq!(d.status, 204);
    assert!(d.header("portcullis-position").is_some());
    s.get(&format!("/Users/{id}")).await.assert_error(404, None);
    s.delete(&format!("/Users/{id}"))
        .await
        .assert_error(404, None);
    // Its userName is free again.
    s.user("ANN@example.com", json!({})).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_argon2_hashes_never_returned() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let u = s
        .user("pw", json!({"password": "hunter2-but-longer"}))
        .await;
    let id = u["id"].as_str().unwrap();
    let r = s
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "password", "value": "another-secret"}]),
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.get("password").is_none());
    let r = s.get(&format!("/Users/{id}?attributes=password")).await;
    assert!(r.body.get("password").is_none());
    let all = super::event_payloads(&db, id).await;
    assert!(!all.contains("hunter2") && !all.contains("another-secret"));
    assert_eq!(all.matches("$argon2id$").count(), 2, "{all}");
    s.patch(
        &format!("/Users/{id}"),
        json!([{"op": "remove", "path": "password"}]),
    )
    .await
    .assert_error(400, Some("mutability"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_and_tenants() {
    let db = TestDb::new().await;
    let a = Scim::new(&db).await;
    let (org_b, token_b) = super::org_with_token(&a.app).await;
    let alice = a.user("alice", json!({})).await;
    let alice_id = alice["id"].as_str().unwrap();
    let b = Scim {
        app: crate::support::TestApp::spawn(&db).await,
        org: org_b,
        token: token_b.clone(),
    };
    let bob = b.user("bob", json!({})).await;
    let bob_id = bob["id"].as_str().unwrap();
    let group_b = b.group("b-team", &[bob_id]).await;
    let group_b = group_b["id"].as_str().unwrap();

    let send = |token: Option<&str>, method: Method, url: String| {
        let mut req = a.app.http.request(method, url);
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        async move { into_resp(req.send().await.unwrap()).await }
    };
    let users_a = a.url("/Users");
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer nonsense"),
        Some("Basic dXNlcjpwYXNz"),
        Some("Bearer pcs_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let r = send(auth, Method::GET, users_a.clone()).await;
        r.assert_error(401, None);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // Org B's token on org A's paths: 401, whatever the path; an org that does not exist
    // answers the same.
    let bearer_b = format!("Bearer {token_b}");
    for path in [
        "/Users",
        &format!("/Users/{alice_id}"),
        "/Groups",
        "/Nope",
        "/ServiceProviderConfig",
    ] {
        send(Some(&bearer_b), Method::GET, a.url(path))
            .await
            .assert_error(401, None);
    }
    let nowhere = format!("{}/scim/v2/{}/Users", a.app.base, uuid::Uuid::new_v4());
    send(Some(&bearer_b), Method::GET, nowhere)
        .await
        .assert_error(401, None);
    let bad_org = format!("{}/scim/v2/not-a-uuid/Users", a.app.base);
    send(Some(&bearer_b), Method::GET, bad_org)
        .await
        .assert_error(401, None);

    // Org A's token, org B's resource ids: 404 for each, and nothing changes.
    for (path, body) in [
        (format!("/Users/{bob_id}"), json!({"userName": "x"})),
        (format!("/Groups/{group_b}"), json!({"displayName": "x"})),
    ] {
        a.get(&path).await.assert_error(404, None);
        a.put(&path, &body).await.assert_error(404, None);
        a.patch(
            &path,
            json!([{"op": "replace", "path": "externalId", "value": "x"}]),
        )
        .await
        .assert_error(404, None);
        a.delete(&path).await.assert_error(404, None);
    }
    // A group in A cannot take B's user as a member.
    let r = a
        .post(
            "/Groups",
            &json!({"displayName": "a", "members": [{"value": bob_id}]}),
        )
        .await;
    r.assert_error(400, Some("invalidValue"));
    // Lists in A never show B's rows.
    for path in [
        "/Users",
        "/Groups",
        "/Users?filter=userName%20eq%20%22bob%22",
    ] {
        let l = a.get(path).await;
        assert_eq!(l.status, 200);
        assert!(!l.body.to_string().contains(bob_id), "{path}: {:#}", l.body);
        assert!(!l.body.to_string().contains(group_b));
    }
    let l = a.get("/Users").await;
    assert_eq!(ids(&l.body), vec![alice_id.to_string()]);
    assert_eq!(
        b.get(&format!("/Users/{bob_id}")).await.body["userName"],
        "bob"
    );

    // A revoked token is refused from then on; an admin-scope token is not a SCIM token.
    let store = &a.app.state.store;
    let admin = portcullis::domain::token::issue(
        store,
        a.org,
        portcullis::domain::token::Scope::Admin,
        None,
    )
    .await
    .unwrap();
    a.app
        .state
        .hub
        .wait_for_position(
            "api_tokens",
            admin.written.position,
            std::time::Duration::from_secs(10),
        )
        .await
        .unwrap();
    send(
        Some(&format!("Bearer {}", admin.token.expose_secret())),
        Method::GET,
        a.url("/Users"),
    )
    .await
    .assert_error(401, None);
    let caller = {
        let c = db.client().await;
        c.query_one(
            "SELECT token_id FROM projections.api_tokens WHERE org_id = $1 AND scope = 'scim'",
            &[&a.org],
        )
        .await
        .unwrap()
        .get::<_, uuid::Uuid>(0)
    };
    let w = portcullis::domain::token::revoke(store, caller)
        .await
        .unwrap();
    a.app
        .state
        .hub
        .wait_for_position("api_tokens", w.position, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    a.get("/Users").await.assert_error(401, None);
    b.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_scim_bodies_and_change_nothing() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let u = s
        .user("Zoe", json!({"emails": [{"value": "z@x.org"}]}))
        .await;
    let id = u["id"].as_str().unwrap().to_string();
    let before = s.get(&format!("/Users/{id}")).await.body;

    // Uniqueness: userName compared case-insensitively.
    s.post("/Users", &json!({"userName": "zoe"}))
        .await
        .assert_error(409, Some("uniqueness"));
    let other = s.user("other", json!({})).await;
    s.patch(
        &format!("/Users/{}", other["id"].as_str().unwrap()),
        json!([{"op": "replace", "path": "userName", "value": "ZOE"}]),
    )
    .await
    .assert_error(409, Some("uniqueness"));

    // Malformed JSON, wrong types, unknown attributes, missing userName.
    let raw = |body: &'static str, ct: &'static str| {
        let req = s
            .app
            .http
            .post(s.url("/Users"))
            .bearer_auth(&s.token)
            .header("content-type", ct)
            .body(body);
        async move { into_resp(req.send().await.unwrap()).await }
    };
    raw("{\"userName\": ", "application/scim+json")
        .await
        .assert_error(400, Some("invalidSyntax"));
    raw("", "application/json")
        .await
        .assert_error(400, Some("invalidSyntax"));
    raw("{\"userName\": \"x\"}", "text/plain")
        .await
        .assert_error(400, Some("invalidSyntax"));
    // Okta sends application/json: accepted.
    assert_eq!(
        raw("{\"userName\": \"okta\"}", "application/json")
            .await
            .status,
        201
    );
    s.post("/Users", &json!({"userName": 7.5, "active": "maybe"}))
        .await
        .assert_error(400, Some("invalidValue"));
    s.post("/Users", &json!({"userName": "x", "shoeSize": 44}))
        .await
        .assert_error(400, Some("invalidSyntax"));
    s.post("/Users", &json!({"displayName": "no userName"}))
        .await
        .assert_error(400, Some("invalidValue"));
    s.post(
        "/Users",
        &json!({"userName": "p", "emails": [
        {"value": "a@x", "primary": true}, {"value": "b@x", "primary": true}]}),
    )
    .await
    .assert_error(400, Some("invalidValue"));

    // PATCH: unknown op, bad path, readOnly attribute, remove without path, no target.
    let path = format!("/Users/{id}");
    for (ops, t) in [
        (
            json!([{"op": "move", "path": "title", "value": "x"}]),
            "invalidSyntax",
        ),
        (
            json!([{"op": "add", "path": "title[", "value": "x"}]),
            "invalidPath",
        ),
        (
            json!([{"op": "add", "path": "nosuch", "value": "x"}]),
            "invalidPath",
        ),
        (
            json!([{"op": "replace", "path": "id", "value": "x"}]),
            "mutability",
        ),
        (
            json!([{"op": "replace", "path": "meta.created", "value": "x"}]),
            "mutability",
        ),
        (
            json!([{"op": "add", "path": "groups", "value": [{"value": "x"}]}]),
            "mutability",
        ),
        (json!([{"op": "remove"}]), "noTarget"),
        (
            json!([{"op": "replace", "path": "emails[type eq \"fax\"]", "value": {"value": "f"}}]),
            "noTarget",
        ),
        (
            json!([{"op": "replace", "path": "active", "value": 3}]),
            "invalidValue",
        ),
        // Atomic: the first operation is valid, the second is not; neither applies.
        (
            json!([{"op": "replace", "path": "title", "value": "Boss"}, {"op": "add", "path": "bogus", "value": 1}]),
            "invalidPath",
        ),
    ] {
        s.patch(&path, ops.clone()).await.assert_error(400, Some(t));
    }
    let r = s
        .send(
            Method::PATCH,
            &path,
            Some(&json!({"Operations": "nope"})),
            &[],
        )
        .await;
    r.assert_error(400, Some("invalidSyntax"));

    // ETags: stale If-Match -> 412 on PUT, PATCH and DELETE; matching If-None-Match -> 304.
    let etag = before["meta"]["version"].as_str().unwrap().to_string();
    let stale = "W/\"999\"";
    let title = json!({"schemas": [super::PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "x"}]});
    s.send(Method::PATCH, &path, Some(&title), &[("if-match", stale)])
        .await
        .assert_error(412, None);
    s.send(
        Method::PUT,
        &path,
        Some(&json!({"userName": "Zoe"})),
        &[("if-match", stale)],
    )
    .await
    .assert_error(412, None);
    s.send(Method::DELETE, &path, None, &[("if-match", stale)])
        .await
        .assert_error(412, None);
    let r = s
        .send(Method::GET, &path, None, &[("if-none-match", &etag)])
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(
        s.send(Method::GET, &path, None, &[("if-none-match", stale)])
            .await
            .status,
        200
    );

    // Nothing above changed the user.
    assert_eq!(s.get(&path).await.body, before);

    let r = s
        .send(Method::PATCH, &path, Some(&title), &[("if-match", &etag)])
        .await;
    assert_eq!(r.status, 200);
    s.send(Method::PATCH, &path, Some(&title), &[("if-match", &etag)])
        .await
        .assert_error(412, None);

    // Body size limit -> 413.
    let big = json!({"userName": "big", "title": "x".repeat(1024 * 1024 + 1)});
    s.post("/Users", &big).await.assert_error(413, None);

    // Unknown ids and paths -> 404; wrong methods -> 405; /Me -> 501.
    s.get("/Users/not-a-uuid").await.assert_error(404, None);
    s.get(&format!("/Users/{}", uuid::Uuid::new_v4()))
        .await
        .assert_error(404, None);
    s.get("/Widgets").await.assert_error(404, None);
    s.get("/Users/x/y").await.assert_error(404, None);
    s.send(Method::DELETE, "/Users", None, &[])
        .await
        .assert_error(405, None);
    s.post("/ServiceProviderConfig", &json!({}))
        .await
        .assert_error(405, None);
    s.send(Method::PUT, "/Schemas", Some(&json!({})), &[])
        .await
        .assert_error(405, None);
    s.get("/Users/.search").await.assert_error(405, None);
    s.get("/Me").await.assert_error(501, None);
    s.post("/Me", &json!({})).await.assert_error(501, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_and_excluded_attributes_on_reads_and_writes() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let u = s
        .user(
            "attr",
            json!({"name": {"givenName": "G", "familyName": "F"}, "title": "T",
                   "emails": [{"value": "a@x", "type": "work"}]}),
        )
        .await;
    let id = u["id"].as_str().unwrap();
    let r = s
        .get(&format!(
            "/Users/{id}?attributes=UserName,name.givenName,emails.value"
        ))
        .await;
    assert_eq!(
        r.body,
        json!({"schemas": [USER], "id": id, "userName": "attr", "name": {"givenName": "G"},
               "emails": [{"value": "a@x"}]})
    );
    let r = s
        .get(&format!(
            "/Users/{id}?excludedAttributes=emails,meta,name.familyName,id,schemas"
        ))
        .await;
    assert_eq!(r.body["id"], id, "id is returned always");
    assert!(r.body.get("emails").is_none() && r.body.get("meta").is_none());
    assert_eq!(r.body["name"], json!({"givenName": "G"}));
    let l = s.get("/Users?attributes=userName").await;
    assert_eq!(
        l.body["Resources"][0],
        json!({"schemas": [USER], "id": id, "userName": "attr"})
    );
    // On writes too.
    let r = s
        .post(
            "/Users?attributes=userName",
            &json!({"userName": "w", "title": "x"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body.as_object().unwrap().len(), 3, "{:#}", r.body);
    // PATCH with an empty attributes list: no body.
    let r = s
        .send(
            Method::PATCH,
            &format!("/Users/{id}?attributes="),
            Some(&json!({"Operations": [{"op": "replace", "path": "title", "value": "U"}]})),
            &[],
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.body, Value::Null);
    assert!(r.header("etag").is_some() && r.header("portcullis-position").is_some());
    assert_eq!(s.get(&format!("/Users/{id}")).await.body["title"], "U");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pascal_case_bodies_and_one_primary() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    // The Microsoft validator sends PascalCase names; they are read case-insensitively.
    let r = s
        .post(
            "/Users",
            &json!({
                "Schemas": [USER],
                "UserName": "Pascal",
                "Name": {"GivenName": "P", "FamilyName": "Case"},
                "Emails": [{"Value": "p@work.example", "Type": "work", "Primary": "True"}],
                "Active": "True",
                "ExternalId": "E1"
            }),
        )
        .await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    assert_eq!(r.body["userName"], "Pascal");
    assert_eq!(
        r.body["name"],
        json!({"givenName": "P", "familyName": "Case"})
    );
    assert_eq!(
        r.body["emails"],
        json!([{"value": "p@work.example", "type": "work", "primary": true}])
    );
    assert_eq!(r.body["externalId"], "E1");
    let id = r.id();
    // A new primary value demotes the old one.
    let r = s
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "Add", "Path": "Emails", "Value": [{"Value": "p@home.example", "Type": "home", "Primary": true}]}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    let primaries: Vec<&str> = r.body["emails"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["primary"] == true)
        .map(|e| e["value"].as_str().unwrap())
        .collect();
    assert_eq!(primaries, ["p@home.example"]);
    let l = s
        .get("/Users?filter=emails%5Bprimary%20eq%20true%5D.value%20pr")
        .await;
    assert_eq!(l.status, 200, "{:#}", l.body);
    assert_eq!(ids(&l.body), vec![id.clone()], "value path then .sub");
    let l = s
        .get(
            "/Users?filter=emails%5Bprimary%20eq%20true%20and%20value%20ew%20%22home.example%22%5D",
        )
        .await;
    assert_eq!(ids(&l.body), vec![id]);
}
