use serde_json::{json, Map, Value};

use super::{Scim, ENTERPRISE, USER};
use crate::support::TestDb;

/// A value for an attribute as /Schemas describes it.
fn sample(attr: &Value) -> Value {
    let name = attr["name"].as_str().unwrap();
    let one = match attr["type"].as_str().unwrap() {
        "boolean" => json!(name == "active"),
        "complex" => {
            let mut m = Map::new();
            for sub in attr["subAttributes"].as_array().unwrap() {
                let sname = sub["name"].as_str().unwrap();
                if sub["mutability"] == "readOnly" || (name == "members" && sname == "$ref") {
                    continue;
                }
                m.insert(sname.into(), sample(sub));
            }
            Value::Object(m)
        }
        _ => match attr["canonicalValues"].as_array() {
            Some(c) if !c.is_empty() => c[0].clone(),
            _ => json!(format!("v-{name}")),
        },
    };
    if attr["multiValued"] == true {
        json!([one])
    } else {
        one
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_advertises_what_works() {
    let db = TestDb::new().await;
    let s = Scim::new(&db).await;

    let spc = s.get("/ServiceProviderConfig").await;
    assert_eq!(spc.status, 200);
    assert_eq!(spc.header("content-type"), Some("application/scim+json"));
    for feature in ["patch", "bulk", "filter", "changePassword", "sort", "etag"] {
        assert_eq!(spc.body[feature]["supported"], true, "{feature}");
    }
    assert!(spc.body["filter"]["maxResults"].as_u64().unwrap() >= 100);
    assert!(spc.body["bulk"]["maxOperations"].as_u64().unwrap() > 0);
    assert_eq!(
        spc.body["authenticationSchemes"][0]["type"],
        "oauthbearertoken"
    );

    let rts = s.get("/ResourceTypes").await;
    assert_eq!(rts.body["totalResults"], 2);
    let user_rt = s.get("/ResourceTypes/user").await;
    assert_eq!(user_rt.body["endpoint"], "/Users");
    assert_eq!(user_rt.body["schemaExtensions"][0]["schema"], ENTERPRISE);
    assert_eq!(
        s.get("/ResourceTypes/Group").await.body["schema"],
        "urn:ietf:params:scim:schemas:core:2.0:Group"
    );
    s.get("/ResourceTypes/Widget").await.assert_error(404, None);

    let schemas = s.get("/Schemas").await;
    let ids: Vec<&str> = schemas.body["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            USER,
            ENTERPRISE,
            "urn:ietf:params:scim:schemas:core:2.0:Group"
        ]
    );
    let user_schema = s.get(&format!("/Schemas/{USER}")).await.body;
    let ent_schema = s
        .get(&format!("/Schemas/{}", ENTERPRISE.to_uppercase()))
        .await
        .body;
    assert_eq!(ent_schema["id"], ENTERPRISE);
    s.get("/Schemas/urn:nope").await.assert_error(404, None);
    let attr = |schema: &Value, name: &str| -> Value {
        schema["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(attr(&user_schema, "password")["returned"], "never");
    assert_eq!(attr(&user_schema, "groups")["mutability"], "readOnly");
    assert_eq!(attr(&user_schema, "userName")["uniqueness"], "server");

    // Every readWrite attribute advertised can be written and is read back as written, and
    // every one can be filtered on with pr.
    let mut body = Map::new();
    body.insert("schemas".into(), json!([USER, ENTERPRISE]));
    let mut ext = Map::new();
    for (schema, target) in [(&user_schema, None), (&ent_schema, Some(&mut ext))] {
        let target: &mut Map<String, Value> = match target {
            Some(t) => t,
            None => &mut body,
        };
        for a in schema["attributes"].as_array().unwrap() {
            if a["mutability"] == "readOnly" {
                continue;
            }
            target.insert(a["name"].as_str().unwrap().into(), sample(a));
        }
    }
    body.insert(ENTERPRISE.into(), Value::Object(ext));
    let body = Value::Object(body);
    let r = s.post("/Users", &body).await;
    assert_eq!(r.status, 201, "{:#}", r.body);
    let mut got = r.body.clone();
    for e in got["emails"].as_array_mut().unwrap() {
        let verified = e.as_object_mut().unwrap().remove("verified");
        assert_eq!(verified, None, "shown only for a verified address");
    }
    for (k, v) in body.as_object().unwrap() {
        if k == "password" {
            assert!(r.body.get(k).is_none());
            continue;
        }
        assert_eq!(&got[k], v, "{k} round-trips");
    }
    for a in user_schema["attributes"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        if name == "password" || name == "groups" {
            continue;
        }
        let f = format!("{name} pr");
        let l = s
            .get(&format!("/Users?filter={}", f.replace(' ', "%20")))
            .await;
        assert_eq!(l.status, 200, "{f}: {:#}", l.body);
        assert_eq!(l.body["totalResults"], 1, "{f}");
    }
}
