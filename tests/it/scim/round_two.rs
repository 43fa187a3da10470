//! Request shapes real provisioning clients send that the public testers found wanting, one
//! test per defect, through real HTTP.

use serde_json::json;

use super::{enc, event_payloads, ids, Scim, ENTERPRISE, USER};
use crate::support::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_matching_filter_value_path_then_sub_attribute() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let ann = s
        .user(
            "ann",
            json!({"emails": [{"type": "work", "value": "a@b.example"},
                              {"type": "home", "value": "home@b.example"}]}),
        )
        .await["id"]
        .clone();
    s.user(
        "bob",
        json!({"emails": [{"type": "home", "value": "a@b.example"}]}),
    )
    .await;
    let l = s
        .get(&format!(
            "/Users?filter={}",
            enc(r#"emails[type eq "work"].value eq "A@B.example""#)
        ))
        .await;
    assert_eq!(l.status, 200, "{:#}", l.body);
    assert_eq!(ids(&l.body), vec![ann.as_str().unwrap().to_string()]);
    // Type and value must hold for the same address: ann's home address does not match.
    let l = s
        .get(&format!(
            "/Users?filter={}",
            enc(r#"emails[type eq "home"].value eq "a@b.example""#)
        ))
        .await;
    assert_eq!(l.body["totalResults"], 1, "only bob");
    let r = s
        .post(
            "/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "filter": "emails[type eq \"work\"].value eq \"a@b.example\""}),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["totalResults"], 1);
    s.get(&format!(
        "/Users?filter={}",
        enc(r#"emails[type eq "work"].nope eq "x""#)
    ))
    .await
    .assert_error(400, Some("invalidFilter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_advertise_only_accepted_reference_types() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let g = s
        .get("/Schemas/urn:ietf:params:scim:schemas:core:2.0:Group")
        .await;
    assert_eq!(g.status, 200);
    let members = g.body["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "members")
        .unwrap();
    let find = |n: &str| {
        members["subAttributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(find("$ref")["referenceTypes"], json!(["User", "Group"]));
    assert_eq!(find("display")["returned"], "request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_give_back_what_was_written() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let id = s.user("ann", json!({"active": true})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/Users/{id}");
    let emails = json!([{"type": "work", "value": "ann@x.example", "primary": true}]);
    let r = s
        .patch(
            &path,
            json!([{"op": "add", "path": "emails", "value": emails}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(
        r.body["emails"], emails,
        "no verified the client did not send"
    );
    assert_eq!(s.get(&path).await.body["emails"], emails);

    // A path naming the whole extension takes a map of its attributes; `schemas` in it is
    // ignored.
    let r = s
        .patch(
            &path,
            json!([{"op": "add", "path": ENTERPRISE,
                    "value": {"schemas": [ENTERPRISE], "department": "R&D"}},
                   {"op": "replace", "path": ENTERPRISE, "value": {"costCenter": "7"}}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(
        r.body[ENTERPRISE],
        json!({"department": "R&D", "costCenter": "7"})
    );
    assert!(r.body["schemas"]
        .as_array()
        .unwrap()
        .contains(&json!(ENTERPRISE)));

    // Removing active unsets it; an absent active means active (filters agree).
    let r = s
        .patch(&path, json!([{"op": "remove", "path": "active"}]))
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert!(r.body.get("active").is_none(), "{:#}", r.body);
    assert!(s.get(&path).await.body.get("active").is_none());
    let l = s
        .get(&format!("/Users?filter={}", enc("active eq true")))
        .await;
    assert_eq!(ids(&l.body), vec![id.clone()]);
    // A user created without active has none either.
    let b = s.user("bob", json!({})).await;
    assert!(b.get("active").is_none(), "{b:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_filters_that_match_nothing_create_only_for_entra_shape() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let u = s
        .user(
            "ann",
            json!({"emails": [{"type": "work", "value": "w@x.example"}]}),
        )
        .await;
    let path = format!("/Users/{}", u["id"].as_str().unwrap());
    let before = s.get(&path).await.body;
    for (p, scim_type) in [
        (r#"emails[type eq "nomatch"].value"#, "noTarget"),
        (r#"emails[value eq "none@x.example"].type"#, "noTarget"),
        (
            r#"phoneNumbers[type eq "work" and primary eq true].value"#,
            "noTarget",
        ),
    ] {
        s.patch(
            &path,
            json!([{"op": "replace", "path": p, "value": "n@x.example"}]),
        )
        .await
        .assert_error(400, Some(scim_type));
    }
    assert_eq!(s.get(&path).await.body, before, "nothing changed");
    // Entra ID's shape, a canonical type: the value is created.
    let r = s
        .patch(
            &path,
            json!([{"op": "replace", "path": "emails[type eq \"home\"].value", "value": "h@x.example"},
                   {"op": "replace", "path": "phoneNumbers[type eq \"mobile\"].value", "value": "+1 555"}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert!(r.body["emails"]
        .as_array()
        .unwrap()
        .contains(&json!({"type": "home", "value": "h@x.example"})));
    assert_eq!(
        r.body["phoneNumbers"],
        json!([{"type": "mobile", "value": "+1 555"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_refused_with_400_wherever_text_reaches_sql() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    s.user("ann", json!({})).await;
    for f in [
        r#"userName eq "a\u0000b""#,
        r#"emails[value eq "\u0000"]"#,
        r#"emails[type eq "work"].value eq "x\u0000""#,
    ] {
        s.get(&format!("/Users?filter={}", enc(f)))
            .await
            .assert_error(400, Some("invalidFilter"));
    }
    let r = s
        .post(
            "/Users/.search",
            &json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                    "filter": "userName eq \"a\u{0}\""}),
        )
        .await;
    r.assert_error(400, Some("invalidFilter"));
    s.post("/Users", &json!({"schemas": [USER], "userName": "b\u{0}"}))
        .await
        .assert_error(400, Some("invalidValue"));
    s.get("/Users/%00").await.assert_error(404, None);
    s.get("/Users?sortBy=%00").await.assert_error(400, None);
    let l = s.get("/Users?attributes=%00").await;
    assert_eq!(l.status, 200, "an unknown attribute name selects nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_patched_with_an_empty_path_is_set() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let id = s.user("ann", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = s
        .patch(
            &format!("/Users/{id}"),
            json!([{"op": "replace", "path": "", "value": {"password": "a-long-new-secret"}}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert!(r.body.get("password").is_none());
    let all = event_payloads(&db, &id).await;
    assert!(!all.contains("a-long-new-secret"));
    assert_eq!(all.matches("$argon2id$").count(), 1, "{all}");
}

/// Statements prepared on the pool's connections whose text mentions `needle`, summed (each
/// connection reports its own, from `pg_prepared_statements`).
async fn prepared_on_pool(s: &Scim, needle: &str) -> i64 {
    let pool = &s.app.state.pool;
    let mut held = Vec::new();
    for _ in 0..pool.status().size {
        held.push(pool.get().await.unwrap());
    }
    let sql = format!(
        "SELECT count(*)::text FROM pg_prepared_statements WHERE statement LIKE '%{needle}%'"
    );
    let mut n = 0;
    for c in &held {
        for m in c.simple_query(&sql).await.unwrap() {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                n += r.get(0).unwrap().parse::<i64>().unwrap();
            }
        }
    }
    n
}

/// A pattern or a range is planned for its value every time: kept prepared, PostgreSQL would
/// plan it generically after five runs, blind to how selective the value is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pattern_and_range_filters_are_planned_per_query() {
    let db = TestDb::new().await;
    let s = Scim::with_pool(&db, 1).await;
    s.user("ann", json!({"emails": [{"value": "ann@one.example"}]}))
        .await;
    s.user("bob", json!({"emails": [{"value": "bob@two.example"}]}))
        .await;
    for i in 0..8 {
        let (needle, want) = [("one.example", "ann"), ("two.example", "bob")][i % 2];
        for f in [
            format!(r#"emails co "{needle}""#),
            format!(r#"userName sw "{want}" and meta.lastModified gt "2000-01-01T00:00:00Z""#),
        ] {
            let r = s.get(&format!("/Users?filter={}", enc(&f))).await;
            assert_eq!(r.status, 200, "{f}: {:#}", r.body);
            assert_eq!(r.body["totalResults"], 1, "{f}: {:#}", r.body);
            assert_eq!(r.body["Resources"][0]["userName"], want, "{f}");
        }
    }
    assert_eq!(prepared_on_pool(&s, " LIKE ").await, 0);
    // Equality stays prepared.
    for _ in 0..3 {
        let r = s
            .get(&format!("/Users?filter={}", enc(r#"userName eq "ann""#)))
            .await;
        assert_eq!(r.body["totalResults"], 1);
    }
    assert_eq!(prepared_on_pool(&s, "lower(r.user_name) = ").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_shaped_filters_keep_a_bounded_number_prepared() {
    let db = TestDb::new().await;
    // Two connections: 150 shapes would leave 75 prepared on each without the bound.
    let s = Scim::with_pool(&db, 2).await;
    s.user("ann", json!({"title": "t"})).await;
    for i in 0..150 {
        let f = format!(r#"title eq "t" or userName eq "{i}" or (nickName pr and title eq "{i}")"#);
        let f = f.repeat(1 + i % 50).replace(")title", ") or title");
        let sort = ["title", "userName", "displayName"][i / 50];
        let r = s
            .get(&format!(
                "/Users?filter={}&sortBy={sort}&count={}",
                enc(&f),
                i + 1
            ))
            .await;
        assert_eq!(r.status, 200, "{f}: {:#}", r.body);
        assert_eq!(r.body["totalResults"], 1);
    }
    // Only list statements read `title` out of the document.
    let left = prepared_on_pool(&s, "''title''").await;
    let bound = 2 * portcullis::scim::PREPARED_PER_CONNECTION as i64;
    assert!(left > 0, "hot shapes stay prepared");
    assert!(
        left <= bound,
        "{left} list statements prepared, more than {bound}"
    );
    // A hot shape is prepared once and reused.
    for n in 0..20 {
        let f = enc(&format!(r#"userName eq "u{n}""#));
        assert_eq!(s.get(&format!("/Users?filter={f}")).await.status, 200);
    }
    let eq = prepared_on_pool(&s, "lower(r.user_name) = lower($2)").await;
    assert!((1..=2).contains(&eq), "{eq} statements for one shape");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_sets_through_removals_and_re_adds() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c", "d"] {
        ids.push(
            s.user(n, json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let g = s.group("g", &[&ids[0], &ids[1], &ids[2], &ids[3]]).await;
    let path = format!("/Groups/{}", g["id"].as_str().unwrap());
    let members = |v: &serde_json::Value| -> Vec<String> {
        v["members"]
            .as_array()
            .map(|a| {
                let mut v: Vec<String> = a
                    .iter()
                    .map(|m| m["value"].as_str().unwrap().to_string())
                    .collect();
                v.sort();
                v
            })
            .unwrap_or_default()
    };
    let set = |v: &[&String]| {
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    let r = s
        .patch(
            &path,
            json!([{"op": "remove", "path": "members", "value": [{"value": ids[0]}, {"value": ids[2]}]},
                   {"op": "remove", "path": format!("members[value eq \"{}\"]", ids[3])},
                   {"op": "add", "path": "members", "value": [{"value": ids[0]}, {"value": ids[1]}]}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(members(&r.body), set(&[&ids[1], &ids[0]]));
    // The next PATCH folds the group from its events: removed members stay removed.
    let r = s
        .patch(
            &path,
            json!([{"op": "add", "path": "members", "value": [{"value": ids[2]}, {"value": ids[1]}]}]),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(members(&r.body), set(&[&ids[1], &ids[0], &ids[2]]));
    assert_eq!(members(&s.get(&path).await.body), members(&r.body));
}
