//! Catch-up from position zero into the real read models (users with their emails, groups
//! with their memberships), each beside its ceiling in the same run: a bare multi-row INSERT
//! of the same rows into copies of the tables with the same indexes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::eventstore::{EventStore, StoreOptions};
use portcullis::read_models::{Groups, Users};
use portcullis::runtime::{ProgressHub, Projection, Projector, RunnerOptions};

use crate::report::Report;

const USERS: i64 = 200_000;
const GROUPS: i64 = 2_000;
const MEMBERS_PER_GROUP: i64 = 100;

/// Writes the log straight in SQL: every user with one email, then groups of 100 members.
const SEED: &str = "
INSERT INTO eventstore.events (org_id, aggregate_type, aggregate_id, version, event_type, payload)
SELECT '00000000-0000-0000-0000-000000000001', 'user', u.id, 1, 'user.added',
       jsonb_build_object('attributes', jsonb_build_object(
           'userName', 'user' || u.n || '@bench.example',
           'name', jsonb_build_object('givenName', 'Bench', 'familyName', 'User ' || u.n),
           'emails', jsonb_build_array(jsonb_build_object(
               'value', 'u' || u.n || '@mail' || (u.n % 100) || '.example', 'type', 'work', 'primary', true)),
           'active', true))
  FROM (SELECT n, ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid AS id
          FROM generate_series(1, $1::bigint) n) u;
INSERT INTO eventstore.events (org_id, aggregate_type, aggregate_id, version, event_type, payload)
SELECT '00000000-0000-0000-0000-000000000001', 'group', g.id, v.v, v.type, v.payload
  FROM (SELECT n, ('00000000-0000-4000-9000-' || lpad(n::text, 12, '0'))::uuid AS id
          FROM generate_series(1, $2::bigint) n) g
 CROSS JOIN LATERAL (
       SELECT 1 AS v, 'group.added' AS type,
              jsonb_build_object('attributes', jsonb_build_object('displayName', 'group ' || g.n)) AS payload
       UNION ALL
       SELECT 1 + m, 'group.member.added', jsonb_build_object('type', 'User', 'value',
              '00000000-0000-4000-8000-' || lpad((((g.n * 7919 + m) % $1::bigint) + 1)::text, 12, '0'))
         FROM generate_series(1, $3::bigint) m) v;
";

/// The ceilings: the rows the projections write, inserted 2000 events' worth at a time.
const CEILING_USERS: &str = "
WITH e AS (SELECT * FROM eventstore.events WHERE event_type = 'user.added' AND (tx, seq) > ($1, $2)
            ORDER BY tx, seq LIMIT 2000),
     u AS (INSERT INTO bench.users (user_id, org_id, user_name, display_name, active, doc, version, created_at, updated_at)
           SELECT aggregate_id, org_id, payload->'attributes'->>'userName', payload->'attributes'->>'displayName',
                  true, payload->'attributes', version, created_at, created_at FROM e),
     m AS (INSERT INTO bench.user_emails (user_id, org_id, ord, value, type, is_primary)
           SELECT aggregate_id, org_id, 0, payload#>>'{attributes,emails,0,value}', 'work', true FROM e)
SELECT max(tx)::bigint, max(seq) FROM (SELECT tx, seq FROM e ORDER BY tx DESC, seq DESC LIMIT 1) l";

const CEILING_GROUPS: &str = "
WITH e AS (SELECT * FROM eventstore.events WHERE aggregate_type = 'group' AND (tx, seq) > ($1, $2)
            ORDER BY tx, seq LIMIT 2000),
     g AS (INSERT INTO bench.groups (group_id, org_id, display_name, version, created_at, updated_at)
           SELECT aggregate_id, org_id, payload->'attributes'->>'displayName', version, created_at, created_at
             FROM e WHERE event_type = 'group.added'),
     m AS (INSERT INTO bench.group_members (group_id, member_id, org_id, member_type, added_at)
           SELECT aggregate_id, (payload->>'value')::uuid, org_id, 'User', created_at
             FROM e WHERE event_type = 'group.member.added')
SELECT max(tx)::bigint, max(seq) FROM (SELECT tx, seq FROM e ORDER BY tx DESC, seq DESC LIMIT 1) l";

pub async fn run(server_url: &str, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "catchup").await;
    let c = crate::connect(&url).await;
    let seed: Vec<&str> = SEED.split(";\n").filter(|s| !s.trim().is_empty()).collect();
    c.execute(seed[0], &[&USERS]).await.expect("seed users");
    c.execute(seed[1], &[&USERS, &GROUPS, &MEMBERS_PER_GROUP])
        .await
        .expect("seed groups");
    c.batch_execute(
        "CREATE SCHEMA bench;
         CREATE TABLE bench.users (LIKE projections.users INCLUDING ALL);
         CREATE TABLE bench.user_emails (LIKE projections.user_emails INCLUDING ALL);
         CREATE TABLE bench.groups (LIKE projections.groups INCLUDING ALL);
         CREATE TABLE bench.group_members (LIKE projections.group_members INCLUDING ALL);
         ANALYZE eventstore.events;",
    )
    .await
    .unwrap();
    // The pool the service's runtime has (its session settings included).
    let pool = portcullis::db::pool_for(&url, 8, portcullis::db::Purpose::Background).unwrap();
    let hub = ProgressHub::start(&url, pool.clone()).await.unwrap();
    let mut rows = Vec::new();
    let cases: [(Arc<dyn Projection>, i64, &str, &str); 2] = [
        (
            Arc::new(Users),
            USERS,
            "users (with emails), in place",
            CEILING_USERS,
        ),
        (
            Arc::new(Groups),
            GROUPS * (1 + MEMBERS_PER_GROUP),
            "groups (with memberships), in place",
            CEILING_GROUPS,
        ),
    ];
    // In place: the runner applies every batch to the live tables, all their indexes kept.
    let in_place = RunnerOptions {
        rebuild_from_zero_at: None,
        ..RunnerOptions::default()
    };
    for (projection, events, label, ceiling) in cases {
        let ceiling = ceiling_rate(&c, ceiling, events).await;
        let secs = replay(&url, &pool, &hub, projection, in_place.clone()).await;
        let rate = events as f64 / secs;
        rows.push(vec![
            label.into(),
            events.to_string(),
            format!("{secs:.1}"),
            format!("{rate:.0}"),
            format!("{ceiling:.0}"),
            format!("{:.0}%", 100.0 * rate / ceiling),
        ]);
    }
    // The same users again, through a blue/green rebuild: the copy is filled without its
    // secondary indexes and they are built in bulk before the swap.
    let ceiling = rows[0][4].parse::<f64>().unwrap_or(f64::NAN);
    let mut row = |label: &str, secs: f64| {
        let rate = USERS as f64 / secs;
        rows.push(vec![
            label.into(),
            USERS.to_string(),
            format!("{secs:.1}"),
            format!("{rate:.0}"),
            format!("{ceiling:.0}"),
            format!("{:.0}%", 100.0 * rate / ceiling),
        ]);
    };
    row(
        "users, by a rebuild (indexes built in bulk)",
        rebuild(&url, &pool, &hub, &c).await,
    );
    // And from zero as the service fills a model (after a reset here): a long log is
    // filled by a rebuild.
    hub.rewind(
        "users",
        c.batch_execute("SELECT projections.reset('users')"),
    )
    .await
    .unwrap();
    let secs = replay(&url, &pool, &hub, Arc::new(Users), RunnerOptions::default()).await;
    row(
        "users from zero, as the service fills them (by a rebuild)",
        secs,
    );
    out.section(
        "Catch-up of the real read models from position zero",
        &[
            "read model",
            "events",
            "seconds",
            "events/s",
            "ceiling events/s (bare multi-row INSERT)",
            "share",
        ],
        rows,
        vec![format!(
            "{USERS} user.added (one email each), {GROUPS} groups of {MEMBERS_PER_GROUP} members; \
             the ceiling inserts the same rows, 2000 events at a time, into copies of the tables \
             with the same indexes, computed inside the server. The first two rows fill in place \
             (a runner keeping every index of the live tables); the service fills a model at \
             position zero over a log of more than {} events of its types by a rebuild, as in \
             the last row. Target: users >= 50k events/s.",
            RunnerOptions::default()
                .rebuild_from_zero_at
                .unwrap_or_default()
        )],
    );
    drop(c);
    crate::drop_database(server_url, &db).await;
}

/// Events per second that bare INSERTs of the projection's rows reach.
async fn ceiling_rate(c: &tokio_postgres::Client, sql: &str, events: i64) -> f64 {
    let stmt = c.prepare(sql).await.unwrap();
    let (mut tx, mut seq) = (0i64, 0i64);
    let start = Instant::now();
    loop {
        let r = c.query_one(&stmt, &[&tx, &seq]).await.unwrap();
        match (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) {
            (Some(t), Some(s)) => (tx, seq) = (t, s),
            _ => break,
        }
    }
    events as f64 / start.elapsed().as_secs_f64()
}

/// Seconds for the projection to replay the whole log.
async fn replay(
    url: &str,
    pool: &deadpool_postgres::Pool,
    hub: &ProgressHub,
    projection: Arc<dyn Projection>,
    opts: RunnerOptions,
) -> f64 {
    let name = projection.name();
    let head = portcullis::eventstore::head(&pool.get().await.unwrap())
        .await
        .unwrap();
    let store = EventStore::new(pool.clone(), StoreOptions::default());
    let start = Instant::now();
    let projector = Projector::start(
        url,
        pool.clone(),
        store,
        hub.clone(),
        vec![projection],
        opts,
    )
    .await
    .unwrap();
    hub.wait_for_position(name, head, Duration::from_secs(900))
        .await
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    projector.stop();
    secs
}

/// Seconds from asking for a rebuild of users until its copy is swapped in.
async fn rebuild(
    url: &str,
    pool: &deadpool_postgres::Pool,
    hub: &ProgressHub,
    c: &tokio_postgres::Client,
) -> f64 {
    let store = EventStore::new(pool.clone(), StoreOptions::default());
    let projector = Projector::start(
        url,
        pool.clone(),
        store,
        hub.clone(),
        vec![Arc::new(Users)],
        RunnerOptions::default(),
    )
    .await
    .unwrap();
    let start = Instant::now();
    projector.rebuild("users").await.unwrap();
    crate::rebuilds_done(c).await;
    let secs = start.elapsed().as_secs_f64();
    projector.stop();
    secs
}
