//! Costs that grow with a tenant's size, on the SCIM bench's org of 100k users, one client as
//! an importer is: reading every user in pages of 100 by startIndex against by cursor (RFC
//! 9865), and PATCHing 1000 members into a group of 99k (baseline: the domain command).

use std::time::{Duration, Instant};

use portcullis::domain::group;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::report::Report;

const PAGE: usize = 100;
const BIG_GROUP: usize = 99_000;
const ADDED: usize = 1000;

/// A SCIM API served over HTTP: its base URL and the bearer header.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub auth: String,
}

impl Api {
    pub async fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.expect("json")
    }
}

struct Import {
    total: Duration,
    pages: usize,
    users: usize,
    last_page_ms: f64,
}

/// Reads every user, `PAGE` at a time, following `next` from the first page's path.
async fn import(api: &Api, first: &str, next: impl Fn(&Value, usize) -> Option<String>) -> Import {
    let start = Instant::now();
    let (mut path, mut pages, mut users) = (first.to_string(), 0, 0);
    loop {
        let t = Instant::now();
        let body = api.get(&path).await;
        let page_ms = t.elapsed().as_secs_f64() * 1000.0;
        let got = body["Resources"].as_array().map_or(0, Vec::len);
        users += got;
        pages += 1;
        match next(&body, users) {
            Some(p) if got > 0 => path = p,
            _ => {
                return Import {
                    total: start.elapsed(),
                    pages,
                    users,
                    last_page_ms: page_ms,
                }
            }
        }
    }
}

fn pct(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)]
}

pub async fn run(
    api: &Api,
    state: &portcullis::http::AppState,
    org: Uuid,
    ids: &[Uuid],
    out: &mut Report,
) {
    let index = import(
        api,
        &format!("/Users?startIndex=1&count={PAGE}"),
        |body, seen| {
            let total = body["totalResults"].as_u64().unwrap_or(0) as usize;
            (seen < total).then(|| format!("/Users?startIndex={}&count={PAGE}", seen + 1))
        },
    )
    .await;
    let cursor = import(api, &format!("/Users?cursor&count={PAGE}"), |body, _| {
        body["nextCursor"]
            .as_str()
            .map(|c| format!("/Users?cursor={c}&count={PAGE}"))
    })
    .await;
    let row = |name: &str, i: &Import| {
        vec![
            name.to_string(),
            format!("{}", i.users),
            format!("{}", i.pages),
            format!("{:.1}", i.total.as_secs_f64()),
            format!("{:.1}", i.total.as_secs_f64() * 1000.0 / i.pages as f64),
            format!("{:.1}", i.last_page_ms),
        ]
    };
    let rows = vec![
        row("startIndex (index)", &index),
        row("cursor (RFC 9865)", &cursor),
    ];
    out.section(
        &format!(
            "Import of every user ({} and those the SCIM bench created) in pages of {PAGE}, one client",
            ids.len()
        ),
        &[
            "paging",
            "users read",
            "pages",
            "total s",
            "mean page ms",
            "last page ms",
        ],
        rows,
        vec![format!(
            "Cursor / index: {:.2}x the total time, {:.2}x the last page's latency.",
            cursor.total.as_secs_f64() / index.total.as_secs_f64(),
            cursor.last_page_ms / index.last_page_ms
        )],
    );

    big_group_patch(api, state, org, ids, out).await;
}

/// PATCH adding `ADDED` members to a group of `BIG_GROUP`, then removing them again; the
/// baseline does the same through `group::update` without HTTP.
async fn big_group_patch(
    api: &Api,
    state: &portcullis::http::AppState,
    org: Uuid,
    ids: &[Uuid],
    out: &mut Report,
) {
    let member = |id: Uuid| group::Member {
        id,
        kind: group::Kind::User,
    };
    let mut doc = portcullis::domain::Doc::new();
    doc.insert("displayName".into(), json!("very big group"));
    let base_members: Vec<_> = ids[..BIG_GROUP].iter().copied().map(member).collect();
    let g = group::create(&state.store, org, doc, base_members)
        .await
        .expect("big group");
    state
        .hub
        .wait_for_position("groups", g.position, Duration::from_secs(600))
        .await
        .expect("groups projected");
    let extra = &ids[BIG_GROUP..BIG_GROUP + ADDED];
    let values: Vec<Value> = extra.iter().map(|id| json!({"value": id})).collect();
    let rounds = 10;
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (op, lat) in [
            (
                json!({"op": "add", "path": "members", "value": values}),
                &mut add,
            ),
            // Entra's shape: the members to remove as a value list.
            (
                json!({"op": "remove", "path": "members", "value": values}),
                &mut remove,
            ),
        ] {
            let t = Instant::now();
            let r = api
                .http
                .patch(format!("{}/Groups/{}", api.base, g.id))
                .header("authorization", &api.auth)
                .header("content-type", "application/scim+json")
                .query(&[("excludedAttributes", "members")])
                .body(json!({"Operations": [op]}).to_string())
                .send()
                .await
                .expect("patch");
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let mut direct = Vec::new();
    for round in 0..rounds * 2 {
        let t = Instant::now();
        group::update(&state.store, org, g.id, None, |cur| {
            let mut m = cur.members.clone();
            if round % 2 == 0 {
                m.extend(extra.iter().copied().map(member));
            } else {
                let gone: std::collections::HashSet<_> = extra.iter().collect();
                m.retain(|x| !gone.contains(&x.id));
            }
            Ok::<_, portcullis::domain::DomainError>((cur.doc.clone(), m))
        })
        .await
        .expect("update");
        direct.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut both = add.clone();
    both.extend(remove.iter().copied());
    let rows = vec![
        vec![
            format!("PATCH add {ADDED} members (incl. wait)"),
            format!("{:.0}", pct(&mut add, 0.5)),
            format!("{:.0}", pct(&mut add, 0.99)),
        ],
        vec![
            format!("PATCH remove {ADDED} members (incl. wait)"),
            format!("{:.0}", pct(&mut remove, 0.5)),
            format!("{:.0}", pct(&mut remove, 0.99)),
        ],
        vec![
            "baseline: group::update, no HTTP, no wait".into(),
            format!("{:.0}", pct(&mut direct, 0.5)),
            format!("{:.0}", pct(&mut direct, 0.99)),
        ],
    ];
    out.section(
        &format!("PATCH of {ADDED} members on a group of {BIG_GROUP}, one client, {rounds} rounds"),
        &["request", "p50 ms", "p99 ms"],
        rows,
        vec![format!(
            "SCIM p99 / baseline p99: {:.2}.",
            pct(&mut both, 0.99) / pct(&mut direct, 0.99)
        )],
    );
}
