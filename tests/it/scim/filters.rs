use serde_json::{json, Value};

use super::{enc, ids, Scim, ENTERPRISE};
use crate::support::TestDb;

async fn filter(s: &Scim, endpoint: &str, f: &str) -> Vec<String> {
    let r = s.get(&format!("{endpoint}?filter={}", enc(f))).await;
    assert_eq!(r.status, 200, "{f}: {:#}", r.body);
    let mut v = ids(&r.body);
    v.sort();
    v
}

fn set(v: &[&Value]) -> Vec<String> {
    let mut v: Vec<String> = v
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_over_http() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let ann = s
        .user(
            "ann.lee",
            json!({"name": {"familyName": "O'Malley", "givenName": "Ann"}, "title": "Engineer",
                   "emails": [{"value": "ann@work.example", "type": "work", "primary": true},
                              {"value": "ann@home.example", "type": "home"}],
                   "externalId": "EXT-1", "userType": "Employee",
                   ENTERPRISE: {"employeeNumber": "701", "manager": {"value": "boss-1"}}}),
        )
        .await;
    let bob = s
        .user(
            "Bob_Smith",
            json!({"name": {"familyName": "Smith"}, "active": false,
                   "emails": [{"value": "bob@work.example", "type": "work"}],
                   "phoneNumbers": [{"value": "+1 555", "type": "fax"}],
                   ENTERPRISE: {"employeeNumber": "702"}}),
        )
        .await;
    let cy = s
        .user(
            "cy",
            json!({"emails": [{"value": "cy_x@other.example", "type": "home"}]}),
        )
        .await;
    let (a, b, c) = (&ann, &bob, &cy);

    for (f, want) in [
        (r#"userName eq "ANN.LEE""#, vec![a]),
        (r#"USERNAME Eq "ann.lee""#, vec![a]),
        (r#"userName ne "ann.lee""#, vec![b, c]),
        (r#"userName sw "b""#, vec![b]),
        (r#"userName ew "SMITH""#, vec![b]),
        (r#"userName co "_""#, vec![b]),
        (r#"userName gt "b""#, vec![b, c]),
        (r#"userName le "bob_smith""#, vec![a, b]),
        (r#"externalId eq "EXT-1""#, vec![a]),
        (r#"externalId eq "ext-1""#, vec![]),
        (r#"emails co "work.example""#, vec![a, b]),
        (r#"emails.value ew "@HOME.example""#, vec![a]),
        (r#"emails[type eq "work" and value co "bob"]"#, vec![b]),
        (
            r#"emails[type eq "home"] and not (emails[type eq "work"])"#,
            vec![c],
        ),
        (r#"emails[primary eq true]"#, vec![a]),
        (r#"emails.type eq "work" or phoneNumbers pr"#, vec![a, b]),
        (r#"phoneNumbers[type eq "fax"]"#, vec![b]),
        (r#"name.familyName sw "o'""#, vec![a]),
        (r#"title pr"#, vec![a]),
        (r#"not (title pr)"#, vec![b, c]),
        (r#"active eq false"#, vec![b]),
        (r#"active eq "True""#, vec![a, c]),
        (r#"userType eq "employee""#, vec![a]),
        (
            format!(r#"id eq "{}""#, a["id"].as_str().unwrap()).as_str(),
            vec![a],
        ),
        (r#"id eq "nope""#, vec![]),
        (&format!("{ENTERPRISE}:employeeNumber eq \"702\""), vec![b]),
        (
            &format!("{ENTERPRISE}:manager.value eq \"boss-1\""),
            vec![a],
        ),
        (
            "urn:ietf:params:scim:schemas:core:2.0:User:userName eq \"cy\"",
            vec![c],
        ),
        (
            r#"meta.created gt "2000-01-01T00:00:00Z" and meta.lastModified le "2999-01-01T00:00:00Z""#,
            vec![a, b, c],
        ),
        (r#"meta.resourceType eq "User""#, vec![a, b, c]),
        (
            r#"userName eq "ann.lee" or userName eq "cy" and active eq false"#,
            vec![a],
        ),
        (
            r#"(userName eq "ann.lee" or userName eq "cy") and active eq true"#,
            vec![a, c],
        ),
        // Entra ID's connection test: a random userName -> 200, empty.
        (
            r#"userName eq "0c4d6b9e-5a0f-4c36-9b6f-2b3c4d5e6f70""#,
            vec![],
        ),
        // Values are data, never SQL.
        (r#"userName eq "x' OR '1'='1""#, vec![]),
        (r#"userName co "%""#, vec![]),
    ] {
        assert_eq!(filter(&s, "/Users", f).await, set(&want), "{f}");
    }

    for bad in [
        "active gt true",
        "active lt false",
        "shoeSize eq 44",
        "userName zz \"x\"",
        "userName eq",
        "(userName eq \"x\"",
        "emails[type eq \"work\"",
        "password eq \"x\"",
        "meta.created eq \"last tuesday\"",
        "name eq \"x\"",
    ] {
        let r = s.get(&format!("/Users?filter={}", enc(bad))).await;
        r.assert_error(400, Some("invalidFilter"));
    }
    // Length and depth limits.
    let long = format!("userName eq \"{}\"", "x".repeat(5000));
    s.get(&format!("/Users?filter={}", enc(&long)))
        .await
        .assert_error(400, Some("invalidFilter"));
    let deep = format!("{}title pr{}", "(".repeat(40), ")".repeat(40));
    s.get(&format!("/Users?filter={}", enc(&deep)))
        .await
        .assert_error(400, Some("invalidFilter"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_name_eq_uses_the_index() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    s.user("indexed", json!({})).await;
    let f = portcullis::scim::filter::parse(r#"userName eq "indexed""#).unwrap();
    let users = &portcullis::scim::schema::USER_TYPE;
    let f = portcullis::scim::filter::resolve(users, &f, false).unwrap();
    let c = portcullis::scim::query::compile(users, &f, 2).unwrap();
    let client = db.client().await;
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN SELECT r.user_id FROM projections.users r WHERE r.org_id = $1 AND ({})",
                c.sql
            ),
            &[&s.org, &"indexed"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(plan.contains("users_org_user_name_idx"), "{plan}");
    // And with the planner free to choose, on a table that is not tiny.
    client.batch_execute("RESET enable_seqscan").await.unwrap();
    client
        .batch_execute(&format!(
            "INSERT INTO projections.users (user_id, org_id, user_name, doc, version, created_at, updated_at) \
             SELECT gen_random_uuid(), '{}', 'bulk' || i, '{{}}', 1, now(), now() FROM generate_series(1, 5000) i; \
             ANALYZE projections.users",
            s.org
        ))
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            &format!(
                "EXPLAIN SELECT r.user_id FROM projections.users r WHERE r.org_id = $1 AND ({})",
                c.sql
            ),
            &[&s.org, &"indexed"],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_and_sorting() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let names = [
        "delta", "Alpha", "echo", "charlie", "Bravo", "golf", "foxtrot",
    ];
    let mut created = Vec::new();
    for n in names {
        created.push(
            s.user(
                n,
                json!({"emails": [{"value": format!("{n}@x.org"), "primary": true}]}),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // Pages of 3 (Okta's import shape): integer counters, stable order, every user once.
    let mut seen = Vec::new();
    for start in [1, 4, 7] {
        let r = s.get(&format!("/Users?startIndex={start}&count=3")).await;
        assert_eq!(r.body["totalResults"], json!(7));
        assert_eq!(r.body["startIndex"], json!(start));
        assert!(r.body["itemsPerPage"].is_u64());
        assert_eq!(
            r.body["schemas"],
            json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
        );
        seen.extend(ids(&r.body));
    }
    assert_eq!(
        seen, created,
        "default order is creation order, stable between pages"
    );
    // count=0: totals only; count<0 means 0; startIndex<1 means 1; count capped.
    let r = s.get("/Users?count=0").await;
    assert_eq!(
        (r.body["totalResults"].clone(), r.body["Resources"].clone()),
        (json!(7), json!([]))
    );
    assert_eq!(
        s.get("/Users?count=-5").await.body["itemsPerPage"],
        json!(0)
    );
    assert_eq!(
        s.get("/Users?startIndex=0&count=1").await.body["startIndex"],
        json!(1)
    );
    assert_eq!(
        ids(&s.get("/Users?startIndex=-3&count=1").await.body),
        vec![created[0].clone()]
    );
    assert_eq!(
        s.get("/Users?count=100000").await.body["itemsPerPage"],
        json!(7)
    );
    assert_eq!(
        s.get("/Users?startIndex=99").await.body["Resources"],
        json!([])
    );
    s.get("/Users?count=lots")
        .await
        .assert_error(400, Some("invalidValue"));

    // sortBy is case-insensitive (on the attribute and on the values).
    let sorted = |r: &Value| -> Vec<String> {
        r["Resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["userName"].as_str().unwrap().to_string())
            .collect()
    };
    let r = s.get("/Users?sortBy=USERNAME").await;
    assert_eq!(
        sorted(&r.body),
        ["Alpha", "Bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
    );
    let r = s
        .get("/Users?sortBy=userName&sortOrder=descending&count=2")
        .await;
    assert_eq!(sorted(&r.body), ["golf", "foxtrot"]);
    // Multi-valued: by the primary value.
    let r = s
        .get("/Users?sortBy=emails&sortOrder=descending&count=1")
        .await;
    assert_eq!(sorted(&r.body), ["golf"]);
    s.get("/Users?sortBy=nosuch")
        .await
        .assert_error(400, Some("invalidValue"));
    s.get("/Users?sortOrder=sideways")
        .await
        .assert_error(400, Some("invalidValue"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_endpoints() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let u = s.user("searcher", json!({"title": "T"})).await;
    let g = s.group("searchers", &[u["id"].as_str().unwrap()]).await;
    let req = |filter: &str| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
               "filter": filter, "attributes": ["userName", "displayName"], "startIndex": 1, "count": 10})
    };
    let r = s
        .post("/Users/.search", &req("userName sw \"search\""))
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(ids(&r.body), vec![u["id"].as_str().unwrap()]);
    assert!(
        r.body["Resources"][0].get("title").is_none(),
        "attributes applied"
    );
    let r = s
        .post("/Groups/.search", &req("displayName eq \"SEARCHERS\""))
        .await;
    assert_eq!(ids(&r.body), vec![g["id"].as_str().unwrap()]);
    // The root search covers both types; a filter on an attribute only groups have finds groups.
    let r = s
        .post(
            "/.search",
            &json!({"filter": "displayName sw \"search\" or userName sw \"search\""}),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(r.body["totalResults"], json!(2));
    let r = s.post("/.search", &json!({"filter": "members pr"})).await;
    assert_eq!(ids(&r.body), vec![g["id"].as_str().unwrap()]);
    let r = s
        .post("/.search", &json!({"count": 1, "startIndex": 2}))
        .await;
    assert_eq!(
        ids(&r.body),
        vec![g["id"].as_str().unwrap()],
        "pages across both types"
    );
    s.post("/Users/.search", &json!({"filter": "bad filter"}))
        .await
        .assert_error(400, Some("invalidFilter"));
    s.post("/Users/.search", &json!({"count": "x"}))
        .await
        .assert_error(400, Some("invalidValue"));
    s.post("/Users/.search", &json!([1]))
        .await
        .assert_error(400, Some("invalidSyntax"));
}
