use serde_json::json;

use super::Scim;
use crate::support::TestDb;

const BULK: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_with_bulk_id_references_and_fail_on_errors() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;
    let existing = s.user("existing", json!({})).await;
    let existing = existing["id"].as_str().unwrap();
    let r = s
        .post(
            "/Bulk",
            &json!({
                "schemas": [BULK],
                "Operations": [
                    {"method": "POST", "path": "/Users", "bulkId": "u1", "data": {"userName": "bulk1"}},
                    {"method": "POST", "path": "/Groups", "bulkId": "g1",
                     "data": {"displayName": "bulk group", "members": [{"value": "bulkId:u1"}, {"value": existing}]}},
                    {"method": "PATCH", "path": "/Users/bulkId:u1",
                     "data": {"Operations": [{"op": "replace", "path": "title", "value": "Bulked"}]}},
                    {"method": "POST", "path": "/Users", "bulkId": "dup", "data": {"userName": "EXISTING"}},
                    {"method": "DELETE", "path": format!("/Users/{existing}")},
                    {"method": "POST", "path": "/Groups", "data": {"displayName": "x", "members": [{"value": "bulkId:nope"}]}}
                ]
            }),
        )
        .await;
    assert_eq!(r.status, 200, "{:#}", r.body);
    assert_eq!(
        r.body["schemas"][0],
        "urn:ietf:params:scim:api:messages:2.0:BulkResponse"
    );
    assert!(r.header("portcullis-position").is_some());
    let ops = r.body["Operations"].as_array().unwrap();
    let statuses: Vec<&str> = ops.iter().map(|o| o["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201", "201", "200", "409", "204", "400"]);
    assert_eq!(ops[0]["bulkId"], "u1");
    assert_eq!(ops[3]["response"]["scimType"], "uniqueness");
    let user_url = ops[0]["location"].as_str().unwrap();
    let user_id = user_url.rsplit('/').next().unwrap();
    // Read at once: the bulk response waited for the read models.
    let u = s.get(&format!("/Users/{user_id}")).await;
    assert_eq!(u.body["title"], "Bulked");
    let gid = ops[1]["location"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap();
    let g = s.get(&format!("/Groups/{gid}")).await;
    let members: Vec<&str> = g.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_str().unwrap())
        .collect();
    assert_eq!(members, [user_id], "the deleted user left the group");

    // failOnErrors: stops after that many errors.
    let r = s
        .post(
            "/Bulk",
            &json!({"schemas": [BULK], "failOnErrors": 1, "Operations": [
                {"method": "POST", "path": "/Users", "data": {"userName": "bulk1"}},
                {"method": "POST", "path": "/Users", "data": {"userName": "never"}}
            ]}),
        )
        .await;
    assert_eq!(r.body["Operations"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.get("/Users?filter=userName%20eq%20%22never%22")
            .await
            .body["totalResults"],
        0
    );

    // Limits: too many operations -> 413; malformed requests -> 400.
    let many: Vec<_> = (0..1001)
        .map(|i| json!({"method": "POST", "path": "/Users", "data": {"userName": format!("m{i}")}}))
        .collect();
    s.post("/Bulk", &json!({"schemas": [BULK], "Operations": many}))
        .await
        .assert_error(413, None);
    s.post("/Bulk", &json!({"schemas": [BULK]}))
        .await
        .assert_error(400, Some("invalidSyntax"));
    let r = s
        .post("/Bulk", &json!({"Operations": [{"method": "GET", "path": "/Users"}, {"method": "POST", "path": "/Widgets", "data": {}}]}))
        .await;
    let statuses: Vec<&str> = r.body["Operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["400", "400"]);
}
