//! Several nodes on real hosts: PostgreSQL and three Portcullis containers on a private
//! Docker network, with SCIM load through all three while the faults of a production
//! cluster happen: the node holding a projection's lock is cut off from the network
//! mid-batch, such a node is killed, PostgreSQL restarts, and every node is restarted in
//! turn. After each fault every acknowledged write is readable from every node and the log
//! and read models agree; throughout, clients see no 5xx but 503 and no stale read with a
//! position token. Without a Docker engine it fails, unless PORTCULLIS_SKIP_DOCKER_TESTS=1
//! (which `make test` sets, saying so, where Docker is missing).
//!
//! `PORTCULLIS_CLUSTER_ROUNDS=5 cargo test --test it cluster -- --nocapture` repeats the
//! partition and the kill and prints the medians (docs/ARCHITECTURE.md states them).

mod bed;
mod load;

use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;

use bed::Bed;
use load::{Load, Scim};

const NODES: usize = 3;

fn cli(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Cuts off the node whose runner holds a projection lock mid-batch; how long until another
/// node acknowledges a write (the lock and the horizon it held back have passed on). The node
/// then rejoins.
async fn partition_a_lock_holder(bed: &Bed, load: &Load) -> Duration {
    let (stall, holder) = bed.stall_a_lock_holder().await;
    bed.disconnect(holder).await;
    let t0 = Instant::now();
    stall.release().await;
    let took = load.resumed_after(t0, Some(holder)).await;
    bed.connect(holder).await;
    bed.ready(holder).await;
    took
}

/// Kills the node whose runner holds a projection lock mid-batch; how long until another
/// node acknowledges a write. The node is then started again.
async fn kill_a_lock_holder(bed: &Bed, load: &Load) -> Duration {
    let (stall, holder) = bed.stall_a_lock_holder().await;
    bed.kill(holder).await;
    let t0 = Instant::now();
    stall.release().await;
    let took = load.resumed_after(t0, Some(holder)).await;
    bed.start_node(holder).await;
    bed.ready(holder).await;
    took
}

/// Restarts PostgreSQL under load; how long after it is back until a write is acknowledged.
async fn restart_postgres(bed: &Bed, load: &Load) -> Duration {
    bed.restart_postgres().await;
    let t0 = Instant::now();
    load.resumed_after(t0, None).await
}

/// Restarts every node in turn (each drains, then starts); the longest a node took from
/// the restart to ready.
async fn roll(bed: &Bed) -> Duration {
    let mut longest = Duration::ZERO;
    for i in 0..NODES {
        let t0 = Instant::now();
        bed.restart_node(i).await;
        bed.ready(i).await;
        longest = longest.max(t0.elapsed());
    }
    longest
}

/// With the load paused: every write acknowledged so far reads back from every node, and the
/// log and the read models agree.
async fn verify(bed: &Bed, load: &Load, scim: &Scim, org: uuid::Uuid, after: &str) {
    let _paused = load.pause().await;
    let acked = load.acked();
    let addresses = bed.addresses.read().unwrap().clone();
    let reads = addresses
        .iter()
        .flat_map(|ip| acked.iter().map(move |id| (ip, id)))
        .map(|(ip, id)| async move { (ip, id, scim.get(ip, id, None).await.0) });
    let missing: Vec<_> = futures::stream::iter(reads)
        .buffer_unordered(16)
        .filter(|(_, _, status)| futures::future::ready(*status != 200))
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "after {after}: not readable: {missing:?}"
    );
    let db = bed.sql().await;
    let last = std::sync::Mutex::new(None);
    let what = format!("the log and the read models to agree after {after}");
    crate::support::eventually(&what, Duration::from_secs(30), || async {
        let d = bed::disagreement(&db, org).await?;
        let mut seen = last.lock().unwrap();
        if *seen != Some(d) {
            // (users, event counts, dead letters) that differ: shown while they converge.
            eprintln!("cluster: after {after}: disagreement {d:?}");
            *seen = Some(d);
        }
        (d == (0, 0, 0)).then_some(())
    })
    .await;
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_partitions_kills_and_restarts() {
    if !bed::docker_or_skip("three_nodes_survive_partitions_kills_and_restarts") {
        return;
    }
    let rounds: usize = std::env::var("PORTCULLIS_CLUSTER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let bed = Bed::start(NODES).await;
    let db_url = bed.db_url().await;
    let org = cli(&db_url, &["orgs", "create", "Cluster"]);
    let token = cli(
        &db_url,
        &["tokens", "create", "--org", &org, "--scope", "scim"],
    );
    let scim = Scim::new(token, org.clone());
    let org: uuid::Uuid = org.parse().unwrap();
    let load = Load::start(scim.clone(), bed.addresses.clone());
    load.resumed_after(Instant::now(), None).await;

    let (mut partitions, mut kills) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let took = partition_a_lock_holder(&bed, &load).await;
        eprintln!("cluster: round {round}: partition of a lock holder: resumed after {took:?}");
        partitions.push(took);
        verify(&bed, &load, &scim, org, "a partition").await;
        let took = kill_a_lock_holder(&bed, &load).await;
        eprintln!("cluster: round {round}: kill of a lock holder: resumed after {took:?}");
        kills.push(took);
        verify(&bed, &load, &scim, org, "a kill").await;
    }
    let pg = restart_postgres(&bed, &load).await;
    eprintln!("cluster: PostgreSQL restart: resumed {pg:?} after it was back");
    verify(&bed, &load, &scim, org, "a PostgreSQL restart").await;
    let rolled = roll(&bed).await;
    eprintln!("cluster: rolling restart: the slowest node was ready again after {rolled:?}");
    load.resumed_after(Instant::now(), None).await;
    verify(&bed, &load, &scim, org, "a rolling restart").await;

    let tally = load.stop().await;
    eprintln!(
        "cluster: {rounds} round(s); takeover median after a partition {:?}, after a kill {:?}; \
         {} writes acknowledged, {} requests refused with 503 or a connection error, \
         {} other answers, {} stale reads",
        median(partitions),
        median(kills),
        tally.acked.len(),
        tally.refused,
        tally.unexpected.len(),
        tally.stale.len(),
    );
    assert!(tally.unexpected.is_empty(), "{:?}", tally.unexpected);
    assert!(tally.stale.is_empty(), "{:?}", tally.stale);
}
