//! RFC 9865 cursor paging through real HTTP: every resource once, in the order index paging
//! gives, in both directions, under concurrent writes; cursors that are forged, altered, from
//! another org or query, or too old are refused with the RFC's error types.

use std::collections::HashSet;
use std::sync::Arc;

use portcullis::clock::ManualClock;
use serde_json::{json, Value};

use super::{enc, ids, into_resp, org_with_token, Scim};
use crate::support::{TestApp, TestDb};

/// Follows nextCursor from the first page; returns the ids in order and the pages' bodies.
async fn walk(s: &Scim, query: &str, count: usize) -> (Vec<String>, Vec<Value>) {
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut path = format!("{query}&cursor&count={count}");
    loop {
        let r = s.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {:#}", r.body);
        assert!(
            r.body.get("startIndex").is_none(),
            "cursor pages have no startIndex"
        );
        let page = ids(&r.body);
        assert!(page.len() <= count);
        seen.extend(page);
        let next = r.body["nextCursor"].as_str().map(str::to_string);
        pages.push(r.body);
        match next {
            Some(c) => path = format!("{query}&cursor={c}&count={count}"),
            None => return (seen, pages),
        }
        assert!(pages.len() < 1000, "paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pages_give_every_resource_once_in_index_order_and_back() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    for i in 0..23 {
        // Every third user has no title: nulls sort last in both orders.
        let extra = if i % 3 == 0 {
            json!({})
        } else {
            json!({"title": format!("t{:02}", (i * 7) % 23)})
        };
        s.user(&format!("user{i:02}"), extra).await;
    }
    for (query, sort) in [
        ("/Users?", ""),
        (
            "/Users?sortBy=userName&sortOrder=descending",
            "sortBy=userName&sortOrder=descending&",
        ),
        ("/Users?sortBy=title", "sortBy=title&"),
        (
            "/Users?sortBy=title&sortOrder=descending",
            "sortBy=title&sortOrder=descending&",
        ),
        ("/Users?sortBy=meta.created", "sortBy=meta.created&"),
    ] {
        let index = s.get(&format!("/Users?{sort}count=1000")).await;
        let expected = ids(&index.body);
        assert_eq!(expected.len(), 23);
        let (seen, pages) = walk(&s, query, 5).await;
        assert_eq!(seen, expected, "{query}: same order as index paging");
        assert_eq!(pages.len(), 5);
        assert!(
            pages[0].get("previousCursor").is_none(),
            "the first page has none"
        );
        assert!(pages.iter().all(|p| p["totalResults"] == 23));
        assert_eq!(pages[4]["itemsPerPage"], 3);

        // previousCursor of the last page gives the fourth page again, and so on back.
        let mut at = pages[4].clone();
        for back in (0..4).rev() {
            let c = at["previousCursor"].as_str().expect("a previous page");
            let r = s.get(&format!("{query}&cursor={c}&count=5")).await;
            assert_eq!(r.status, 200, "{:#}", r.body);
            assert_eq!(ids(&r.body), ids(&pages[back]), "{query}: page {back}");
            at = r.body;
        }
        assert!(at.get("previousCursor").is_none(), "back at the start");
        assert!(at["nextCursor"].is_string());
    }

    // A filter pages too, and the SearchRequest takes the same cursor.
    let q = format!("/Users?filter={}", enc(r#"userName sw "user1""#));
    let (seen, _) = walk(&s, &q, 4).await;
    assert_eq!(seen.len(), 10);
    let body = |cursor: &str| {
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
               "filter": "userName sw \"user1\"", "cursor": cursor, "count": 4})
    };
    let first = s.post("/Users/.search", &body("")).await;
    assert_eq!(first.status, 200, "{:#}", first.body);
    assert_eq!(ids(&first.body), seen[..4].to_vec());
    let second = s
        .post(
            "/Users/.search",
            &body(first.body["nextCursor"].as_str().unwrap()),
        )
        .await;
    assert_eq!(ids(&second.body), seen[4..8].to_vec());
    // count=0: the total only.
    let r = s.get("/Users?cursor&count=0").await;
    assert_eq!(r.body["totalResults"], 23);
    assert!(r.body.get("nextCursor").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cursor_paging_is_stable_under_concurrent_writes() {
    let db = TestDb::new().await;
    let s = Arc::new(Scim::new(&db).await);
    let mut stay = HashSet::new();
    let mut doomed = Vec::new();
    for i in 0..60 {
        let id = s.user(&format!("u{i:03}"), json!({})).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        if i % 4 == 0 {
            doomed.push(id);
        } else {
            stay.insert(id);
        }
    }
    // While a client pages, others delete users and create new ones.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for (i, id) in doomed.into_iter().enumerate() {
                assert_eq!(s.delete(&format!("/Users/{id}")).await.status, 204);
                s.user(&format!("new{i:03}"), json!({})).await;
            }
        })
    };
    let (seen, _) = walk(&s, "/Users?", 7).await;
    writer.await.unwrap();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no resource twice");
    assert!(stay.is_subset(&unique), "every user that stayed was seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_are_refused_with_the_rfc_error_types() {
    let db = TestDb::new().await;
    let clock = ManualClock::default();
    let mut cfg = db.config();
    cfg.clock = Arc::new(clock.clone());
    cfg.scim.cursor_timeout = std::time::Duration::from_secs(600);
    let app = TestApp::spawn_with(cfg).await;
    let (org, token) = org_with_token(&app).await;
    let s = Scim { app, org, token };
    for i in 0..5 {
        s.user(&format!("c{i}"), json!({})).await;
    }
    let first = s.get("/Users?cursor&count=2").await;
    let next = first.body["nextCursor"].as_str().unwrap().to_string();

    // Altered, forged, or not a cursor at all.
    let mut altered = next.clone().into_bytes();
    let last = altered.len() - 3;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [altered.as_str(), "bm90LWEtY3Vyc29y", "%00%01", "x"] {
        s.get(&format!("/Users?cursor={bad}&count=2"))
            .await
            .assert_error(400, Some("invalidCursor"));
    }
    // Another query, another resource type, another org.
    s.get(&format!("/Users?cursor={next}&count=2&sortBy=userName"))
        .await
        .assert_error(400, Some("invalidCursor"));
    s.get(&format!(
        "/Users?cursor={next}&count=2&filter={}",
        enc(r#"userName pr"#)
    ))
    .await
    .assert_error(400, Some("invalidCursor"));
    s.get(&format!("/Groups?cursor={next}&count=2"))
        .await
        .assert_error(400, Some("invalidCursor"));
    let (org_b, token_b) = org_with_token(&s.app).await;
    let res = s
        .app
        .http
        .get(
            s.app
                .url(&format!("/scim/v2/{org_b}/Users?cursor={next}&count=2")),
        )
        .bearer_auth(&token_b)
        .send()
        .await
        .unwrap();
    into_resp(res)
        .await
        .assert_error(400, Some("invalidCursor"));

    // Counts out of range, and both ways of paging at once.
    s.get("/Users?cursor&count=1001")
        .await
        .assert_error(400, Some("invalidCount"));
    s.get("/Users?cursor&count=-1")
        .await
        .assert_error(400, Some("invalidCount"));
    s.get("/Users?cursor&startIndex=2")
        .await
        .assert_error(400, Some("invalidValue"));

    // Within the timeout the cursor works (attributes may differ between pages); after it,
    // expiredCursor.
    clock.advance(chrono::Duration::seconds(590));
    let r = s
        .get(&format!("/Users?cursor={next}&count=2&attributes=userName"))
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(ids(&r.body).len(), 2);
    clock.advance(chrono::Duration::seconds(20));
    s.get(&format!("/Users?cursor={next}&count=2"))
        .await
        .assert_error(400, Some("expiredCursor"));
    // The cursor that page issued is fresh.
    let fresh = r.body["nextCursor"].as_str().unwrap();
    assert_eq!(
        s.get(&format!("/Users?cursor={fresh}&count=2"))
            .await
            .status,
        200
    );

    // Discovery says how it works.
    let spc = s.get("/ServiceProviderConfig").await.body;
    assert_eq!(
        spc["pagination"],
        json!({"cursor": true, "index": true, "defaultPaginationMethod": "index",
               "defaultPageSize": 1000, "maxPageSize": 1000, "cursorTimeout": 600})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_page_by_cursor_too() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    for i in 0..7 {
        s.group(&format!("g{i}"), &[]).await;
    }
    let index = ids(&s.get("/Groups?sortBy=displayName&count=100").await.body);
    let (seen, pages) = walk(&s, "/Groups?sortBy=displayName", 3).await;
    assert_eq!(seen, index);
    assert_eq!(pages.len(), 3);
}
