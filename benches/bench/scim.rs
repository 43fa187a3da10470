//! SCIM over real HTTP, 16 concurrent clients, on an org of 100k users: create (including the
//! wait for the read models), get by id, `userName eq`, `emails co`, and PATCH membership of
//! a 1000-member group. Each row also runs its baseline in the same run: the same work
//! without HTTP and without waiting (the domain command, or the read model's SQL), so the
//! ratio shows what the API, authentication and read-your-writes cost. The create row runs
//! its two sides in turns, so that neither alone bears the server's background work.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::config::Config;
use portcullis::domain::{group, user};
use portcullis::eventstore::{Append, ExpectedVersion, NewEvent, UniqueValue};
use secrecy::ExposeSecret;
use serde_json::json;
use uuid::Uuid;

use crate::report::Report;

const CLIENTS: usize = 16;
const USERS: usize = 100_000;
const GROUP_MEMBERS: usize = 1000;

struct Stats {
    per_sec: f64,
    p50: f64,
    p99: f64,
    errors: usize,
}

/// What one side of a row saw over one or more slices: every request's latency in ms, the
/// failures, the seconds it ran.
#[derive(Default)]
struct Sample {
    lat: Vec<f64>,
    errors: usize,
    secs: f64,
}

impl Sample {
    fn add(&mut self, other: Sample) {
        self.lat.extend(other.lat);
        self.errors += other.errors;
        self.secs += other.secs;
    }

    fn stats(mut self) -> Stats {
        self.lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let all = &self.lat;
        let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
        Stats {
            per_sec: all.len() as f64 / self.secs,
            p50: pct(0.5),
            p99: pct(0.99),
            errors: self.errors,
        }
    }
}

/// Runs `op(i)` from CLIENTS tasks for `cell`; `i` counts up from `next` across all tasks
/// (and across the slices that share `next`: a create must not repeat a userName).
async fn sample<F, Fut>(cell: Duration, op: Arc<F>, next: Arc<AtomicUsize>) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut errors = 0;
                while start.elapsed() < cell {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    if !op(i).await {
                        errors += 1;
                    }
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Sample::default();
    for t in tasks {
        let (lat, errors) = t.await.unwrap();
        all.lat.extend(lat);
        all.errors += errors;
    }
    all.secs = start.elapsed().as_secs_f64();
    all
}

async fn measure<F, Fut>(cell: Duration, op: F) -> Stats
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    sample(cell, Arc::new(op), Arc::default()).await.stats()
}

/// What [`in_turns`] measured: each side's samples and CPU, and the rate of `a` over the rate
/// of `b` in each turn.
struct Turns {
    sides: [(Sample, crate::cpu::Used); 2],
    ratios: Vec<f64>,
}

impl Turns {
    /// The lowest and highest ratio of a single turn: how far the machine's changes of speed
    /// move a ratio measured over one turn alone.
    fn spread(&self) -> String {
        let lo = self.ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = self.ratios.iter().copied().fold(0.0, f64::max);
        format!("{lo:.2}-{hi:.2}")
    }
}

/// Runs `a` and `b` in turns, each for `cell` in all, so that the server's background work
/// (autovacuum after the load, checkpoints) and this machine's changes of speed weigh on both
/// alike; `meter` adds up the CPU each side spent. Both sides warm up first (connections
/// opened, statements prepared), unmeasured, and each turn begins once `settled` is done
/// (outside the time measured): a turn does not inherit the work the other side left behind.
async fn in_turns<A, FutA, B, FutB, S, FutS>(
    cell: Duration,
    meter: Option<&crate::cpu::Meter>,
    settled: S,
    a: A,
    b: B,
) -> Turns
where
    A: Fn(usize) -> FutA + Send + Sync + 'static,
    FutA: Future<Output = bool> + Send,
    B: Fn(usize) -> FutB + Send + Sync + 'static,
    FutB: Future<Output = bool> + Send,
    S: Fn() -> FutS,
    FutS: Future<Output = ()>,
{
    const TURNS: u32 = 4;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let (next_a, next_b) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
    let [mut sa, mut sb] = [(); 2].map(|_| (Sample::default(), crate::cpu::Used::default()));
    let mut ratios = Vec::new();
    let rate = |s: &Sample| s.lat.len() as f64 / s.secs;
    // The first request of each client opened a connection to a pool whose connections had
    // yet to prepare their statements: 75-115 ms each, against 12 ms for the rest.
    let warm_up = (cell / TURNS / 4).max(Duration::from_millis(100));
    sample(warm_up, a.clone(), next_a.clone()).await;
    sample(warm_up, b.clone(), next_b.clone()).await;
    for _ in 0..TURNS {
        settled().await;
        let slice = meter.map(|m| m.slice());
        let turn_a = sample(cell / TURNS, a.clone(), next_a.clone()).await;
        slice.into_iter().for_each(|s| s.add_to(&mut sa.1));
        settled().await;
        let slice = meter.map(|m| m.slice());
        let turn_b = sample(cell / TURNS, b.clone(), next_b.clone()).await;
        slice.into_iter().for_each(|s| s.add_to(&mut sb.1));
        ratios.push(rate(&turn_a) / rate(&turn_b));
        sa.0.add(turn_a);
        sb.0.add(turn_b);
    }
    Turns {
        sides: [sa, sb],
        ratios,
    }
}

pub async fn run(server_url: &str, cell: Duration, out: &mut Report) {
    let (db, url) = crate::scratch_database(server_url, "scim").await;
    let mut cfg = Config::new(url.clone());
    cfg.pool_size = 32;
    cfg.scim.wait_timeout = Duration::from_secs(30);
    let served = crate::Served::start(&cfg).await;
    let (state, addr, org_id) = (served.state.clone(), served.addr, served.org);
    let issued = &served.token;
    let store = state.store.clone();
    let tok = issued.token.expose_secret().to_string();

    // The service's read models, which a write waits for.
    let projections: Vec<&str> = portcullis::read_models::all()
        .iter()
        .map(|p| p.name())
        .collect();
    let projections = &projections;

    // 100k users, written as the domain writes them but 500 to a push, then projected.
    let setup = Instant::now();
    let mut ids = Vec::with_capacity(USERS);
    let mut last = issued.written.position;
    for chunk in 0..USERS / 500 {
        let appends: Vec<Append> = (0..500)
            .map(|k| {
                let n = chunk * 500 + k;
                let id = Uuid::new_v4();
                ids.push(id);
                let name = format!("user{n}@bench.example");
                Append::new(org_id, user::aggregate(id), ExpectedVersion::NEW)
                    .claim(UniqueValue::case_insensitive(user::USER_NAME, name.clone()))
                    .event(NewEvent::new(
                        user::ADDED,
                        json!({"attributes": {
                            "userName": name,
                            "name": {"givenName": "Bench", "familyName": format!("User {n}")},
                            "emails": [{"value": format!("u{n}@mail{}.example", n % 100), "type": "work", "primary": true}],
                            "active": true
                        }}),
                    ))
            })
            .collect();
        last = store.push(&appends).await.unwrap().last();
    }
    let members: Vec<group::Member> = ids[..GROUP_MEMBERS]
        .iter()
        .map(|&id| group::Member {
            id,
            kind: group::Kind::User,
        })
        .collect();
    let mut doc = portcullis::domain::Doc::new();
    doc.insert("displayName".into(), json!("big group"));
    let big = group::create(&store, org_id, doc, members).await.unwrap();
    last = last.max(big.position);
    state
        .hub
        .wait_for_all(projections, last, Duration::from_secs(600))
        .await
        .expect("projections catch up");
    let setup = setup.elapsed();

    let http = reqwest::Client::new();
    let base = Arc::new(format!("http://{addr}/scim/v2/{org_id}"));
    let ids = Arc::new(ids);
    let auth = Arc::new(format!("Bearer {tok}"));
    let mut rows = Vec::new();
    let mut row = |name: &str, scim: Stats, direct: Stats, note: &str| {
        rows.push(vec![
            name.to_string(),
            format!("{:.0}", scim.per_sec),
            format!("{:.1}", scim.p50),
            format!("{:.1}", scim.p99),
            format!("{:.0}", direct.per_sec),
            format!("{:.1}", direct.p99),
            format!("{:.2}", scim.per_sec / direct.per_sec),
            format!("{}", scim.errors + direct.errors),
            note.to_string(),
        ]);
    };

    // Create (POST, wait for the read models, read back) vs the domain command alone, in
    // turns (see `in_turns`).
    let run_id = std::process::id();
    let metered = crate::connect(&url).await;
    let meter = crate::cpu::Meter::new(&metered).await;
    let scim_create = {
        let (http, base, auth) = (http.clone(), base.clone(), auth.clone());
        move |i| {
            let (http, base, auth) = (http.clone(), base.clone(), auth.clone());
            async move {
                let body = json!({"userName": format!("new{run_id}-{i}@bench.example"),
                                  "emails": [{"value": format!("new{i}@bench.example")}]});
                http.post(format!("{base}/Users"))
                    .header("authorization", auth.as_str())
                    .header("content-type", "application/scim+json")
                    .body(body.to_string())
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 201)
            }
        }
    };
    let direct_create = {
        let store = store.clone();
        move |i| {
            let store = store.clone();
            async move {
                // The document the SCIM clients send.
                let mut doc = portcullis::domain::Doc::new();
                doc.insert(
                    "userName".into(),
                    json!(format!("direct{run_id}-{i}@bench.example")),
                );
                doc.insert(
                    "emails".into(),
                    json!([{"value": format!("direct{i}@bench.example")}]),
                );
                user::create(&store, org_id, doc, None).await.is_ok()
            }
        }
    };
    // The read models catch up with what the last turn wrote before the next begins: the
    // baseline's turn leaves them a round or two behind, and the first request of each SCIM
    // client after it waited for that (15-19 ms against 12 for the rest, in one run).
    let settled = || async {
        let written = *store.subscribe().borrow();
        state
            .hub
            .wait_for_all(projections, written, Duration::from_secs(60))
            .await
            .expect("the read models catch up between turns");
    };
    let turns = in_turns(cell, meter.as_ref(), settled, scim_create, direct_create).await;
    let spread = turns.spread();
    let [(s, scim_used), (d, direct_used)] = turns.sides;
    let create_cpu = match meter {
        Some(_) => format!(
            "CPU per create during the cells (this process holds the clients and the service): \
             POST /Users {}; user::create {}.",
            scim_used.per_op(s.lat.len() as f64),
            direct_used.per_op(d.lat.len() as f64),
        ),
        None => {
            "CPU per create: n/a (the server is not on this machine, or this is not Linux).".into()
        }
    };
    let (s, d) = (s.stats(), d.stats());
    row(
        "POST /Users (incl. wait + read back)",
        s,
        d,
        &format!("baseline: user::create, no HTTP, no wait; ratio in each of the turns: {spread}"),
    );

    // Reads: the SCIM request vs the read model's SQL on a pooled connection.
    let pool = state.pool.clone();
    let get_for = |cell: Duration, path: Arc<dyn Fn(usize) -> String + Send + Sync>| {
        let (http, base, auth) = (http.clone(), base.clone(), auth.clone());
        measure(cell, move |i| {
            let (http, base, auth, path) = (http.clone(), base.clone(), auth.clone(), path.clone());
            async move {
                http.get(format!("{base}{}", path(i)))
                    .header("authorization", auth.as_str())
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
    };
    let get = |path: Arc<dyn Fn(usize) -> String + Send + Sync>| get_for(cell, path);
    let sql = |q: &'static str, arg: Arc<dyn Fn(usize) -> String + Send + Sync>| {
        let pool = pool.clone();
        measure(cell, move |i| {
            let (pool, arg) = (pool.clone(), arg.clone());
            async move {
                let c = pool.get().await.unwrap();
                // As the service runs them: a pattern is planned for its value each time.
                let st = match q.contains(" LIKE ") {
                    true => c.prepare(q).await.unwrap(),
                    false => c.prepare_cached(q).await.unwrap(),
                };
                c.query(&st, &[&org_id, &arg(i)]).await.is_ok()
            }
        })
    };
    let pick = {
        let ids = ids.clone();
        move |i: usize| ids[(i * 7919) % ids.len()]
    };
    let p1 = pick.clone();
    let by_id: Arc<dyn Fn(usize) -> String + Send + Sync> =
        Arc::new(move |i| format!("/Users/{}", p1(i)));
    let by_name: Arc<dyn Fn(usize) -> String + Send + Sync> = Arc::new(|i| {
        format!(
            "/Users?filter=userName%20eq%20%22USER{}@bench.example%22",
            (i * 7919) % USERS
        )
    });
    let s = get(by_id.clone()).await;
    let p2 = pick.clone();
    let d = sql(
        "SELECT doc FROM projections.users WHERE org_id = $1 AND user_id = $2::text::uuid",
        Arc::new(move |i| p2(i).to_string()),
    )
    .await;
    row("GET /Users/{id}", s, d, "baseline: SELECT by primary key");

    let s = get(by_name.clone()).await;
    let d = sql(
        "SELECT doc FROM projections.users WHERE org_id = $1 AND lower(user_name) = lower($2)",
        Arc::new(|i| format!("user{}@bench.example", (i * 7919) % USERS)),
    )
    .await;
    // The ratio from the two read in turns, in short slices, so that background work of the
    // server (autovacuum after the load, checkpoints) weighs on both alike.
    let (mut id_rate, mut eq_rate) = (0.0, 0.0);
    for _ in 0..4 {
        id_rate += get_for(cell / 4, by_id.clone()).await.per_sec;
        eq_rate += get_for(cell / 4, by_name.clone()).await.per_sec;
    }
    let eq_vs_id = eq_rate / id_rate;
    row(
        "GET /Users?filter=userName eq",
        s,
        d,
        "baseline: the index lookup in SQL",
    );

    let s = get(Arc::new(|i| {
        format!(
            "/Users?filter=emails%20co%20%22{}@mail%22&count=10",
            (i * 7919) % USERS
        )
    }))
    .await;
    let d = sql(
        "SELECT u.doc FROM projections.users u WHERE u.org_id = $1 AND EXISTS (SELECT 1 FROM \
         projections.user_emails e WHERE e.user_id = u.user_id AND lower(e.value) LIKE '%' || $2 || '%') LIMIT 10",
        Arc::new(|i| format!("{}@mail", (i * 7919) % USERS)),
    )
    .await;
    row(
        "GET /Users?filter=emails co (count=10)",
        s,
        d,
        "baseline: the trigram search in SQL",
    );

    // PATCH membership of the 1000-member group: add a user, and remove it on the next turn.
    let gid = big.id;
    let s = {
        let (http, base, auth, ids) = (http.clone(), base.clone(), auth.clone(), ids.clone());
        measure(cell, move |i| {
            let (http, base, auth, ids) = (http.clone(), base.clone(), auth.clone(), ids.clone());
            async move {
                let member = ids[GROUP_MEMBERS + (i / 2) % (USERS - GROUP_MEMBERS)];
                let op = if i % 2 == 0 {
                    json!({"op": "add", "path": "members", "value": [{"value": member}]})
                } else {
                    json!({"op": "remove", "path": format!("members[value eq \"{member}\"]")})
                };
                http.patch(format!("{base}/Groups/{gid}"))
                    .header("authorization", auth.as_str())
                    .header("content-type", "application/scim+json")
                    .body(json!({"Operations": [op]}).to_string())
                    .query(&[("excludedAttributes", "members")])
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await
    };
    let d = {
        let (store, ids) = (store.clone(), ids.clone());
        measure(cell, move |i| {
            let (store, ids) = (store.clone(), ids.clone());
            async move {
                let member = ids[GROUP_MEMBERS + USERS / 2 + (i / 2) % (USERS / 2 - GROUP_MEMBERS)];
                group::update(&store, org_id, gid, None, |g| {
                    let mut m = g.members.clone();
                    if i % 2 == 0 {
                        m.push(group::Member {
                            id: member,
                            kind: group::Kind::User,
                        });
                    } else {
                        m.retain(|x| x.id != member);
                    }
                    Ok::<_, portcullis::domain::DomainError>((g.doc.clone(), m))
                })
                .await
                .is_ok()
            }
        })
        .await
    };
    row(
        "PATCH /Groups/{id} members (1000-member group)",
        s,
        d,
        "baseline: group::update, no HTTP, no wait",
    );

    out.section(
        &format!("SCIM over HTTP, {CLIENTS} concurrent clients, org of {USERS} users"),
        &[
            "request",
            "SCIM req/s",
            "p50 ms",
            "p99 ms",
            "baseline req/s",
            "baseline p99 ms",
            "SCIM / baseline",
            "errors",
            "baseline",
        ],
        rows,
        vec![
            format!(
                "Setup: {USERS} users pushed 500 per transaction and projected in {:.1} s ({:.0} events/s \
                 through the users projection). The client, the service and PostgreSQL share the machine.",
                setup.as_secs_f64(),
                USERS as f64 / setup.as_secs_f64()
            ),
            create_cpu,
            format!(
                "userName eq filter / GET by id: {eq_vs_id:.2} of the rate, measured in turns (target: at least 0.80)."
            ),
        ],
    );
    let api = crate::paging::Api {
        http: http.clone(),
        base: base.to_string(),
        auth: auth.to_string(),
    };
    crate::paging::run(&api, &state, org_id, &ids, out).await;
    drop(state);
    served.stop().await;
    crate::drop_database(server_url, &db).await;
}
