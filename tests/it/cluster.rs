//! Several nodes on real hosts: PostgreSQL and three Portcullis containers (`make image`) on
//! a private Docker network, SCIM writes through all three while one node is cut off from
//! the network with writes in flight, and another is killed. After each fault every
//! acknowledged write is readable from every node, and clients saw no 5xx but 503. Without
//! a Docker engine it fails, unless PORTCULLIS_SKIP_DOCKER_TESTS=1 (which `make test` sets,
//! saying so, where Docker is missing).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const NET: &str = "portcullis-cluster-test";

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn docker_ok(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
}

/// The containers and network of one run, removed on drop.
struct Cluster {
    names: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = docker(&["rm", "-f", "-v", n]);
        }
        let _ = docker(&["network", "rm", NET]);
    }
}

fn ip(name: &str) -> String {
    docker_ok(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        name,
    ])
}

fn start_node(name: &str, db_url: &str) {
    docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        NET,
        "--restart",
        "no",
        "-e",
        &format!("DATABASE_URL={db_url}"),
        "-e",
        "PORTCULLIS_WAIT_TIMEOUT_MS=5000",
        "portcullis:latest",
    ]);
}

/// One write through each of `ips`, at once; the acknowledged ids, and the other statuses
/// (0: the connection failed).
async fn write_round(client: &Client, ips: &[String], n: &mut usize) -> (Vec<String>, Vec<u16>) {
    let futs: Vec<_> = ips
        .iter()
        .map(|ip| {
            *n += 1;
            client.create(ip, *n)
        })
        .collect();
    let mut acked = Vec::new();
    let mut bad = Vec::new();
    for r in futures::future::join_all(futs).await {
        match r {
            Ok(id) => acked.push(id),
            Err(s) => bad.push(s),
        }
    }
    (acked, bad)
}

/// Writes through `ips` until one is acknowledged (or 60 s pass); how long that took.
async fn until_acknowledged(
    client: &Client,
    ips: &[String],
    n: &mut usize,
    acked: &mut Vec<String>,
    bad: &mut Vec<u16>,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        let (a, b) = write_round(client, ips, n).await;
        bad.extend(b);
        if !a.is_empty() {
            acked.extend(a);
            return Some(start.elapsed());
        }
    }
    None
}

struct Client {
    http: reqwest::Client,
    token: String,
    org: String,
}

impl Client {
    /// Creates a user through `node`; Ok(id) when acknowledged, Err(status) otherwise
    /// (0: the connection failed).
    async fn create(&self, node_ip: &str, n: usize) -> Result<String, u16> {
        let url = format!("http://{node_ip}:8080/scim/v2/{}/Users", self.org);
        let body = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": format!("u{n}")});
        let res = self
            .http
            .post(url)
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|_| 0u16)?;
        let status = res.status().as_u16();
        if status != 201 {
            return Err(status);
        }
        let v: Value = res.json().await.map_err(|_| 0u16)?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    async fn get(&self, node_ip: &str, id: &str) -> u16 {
        let url = format!("http://{node_ip}:8080/scim/v2/{}/Users/{id}", self.org);
        match self.http.get(url).bearer_auth(&self.token).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }
}

fn cli(db_url: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_survive_a_partition_and_a_kill() {
    if docker(&["info"]).is_err() {
        // Skipped only when asked to (scripts/test.sh says so where Docker is missing), so a
        // machine that lost its Docker engine cannot pass this test by accident.
        let skip = std::env::var("PORTCULLIS_SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1");
        assert!(
            skip,
            "no Docker engine answers; set PORTCULLIS_SKIP_DOCKER_TESTS=1 to skip"
        );
        eprintln!("SKIPPED three_nodes_survive_a_partition_and_a_kill: no Docker engine");
        return;
    }
    // `make test` builds the image first; a bare `cargo test` builds it here.
    if docker(&["image", "inspect", "portcullis:latest"]).is_err() {
        let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image.sh"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&built.stderr);
        assert!(built.status.success(), "make image: {err}");
    }
    let _ = docker(&["network", "rm", NET]);
    docker_ok(&["network", "create", NET]);
    let mut cluster = Cluster { names: vec![] };
    let run = std::process::id();
    let pg = format!("pc-pg-{run}");
    cluster.names.push(pg.clone());
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &pg,
        "--network",
        NET,
        "portcullis-postgres:15",
    ]);
    let db_url_inside = format!("postgres://postgres@{pg}:5432/postgres");
    let db_url = format!("postgres://postgres@{}:5432/postgres", ip(&pg));
    let _db =
        crate::support::eventually("PostgreSQL to start", Duration::from_secs(60), || async {
            let (c, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(conn);
            Some(c)
        })
        .await;
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let name = format!("pc-node{i}-{run}");
        cluster.names.push(name.clone());
        start_node(&name, &db_url_inside);
        nodes.push((name.clone(), ip(&name)));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for (name, node_ip) in &nodes {
        crate::support::eventually(
            &format!("{name} to be ready"),
            Duration::from_secs(90),
            || {
                let req = http.get(format!("http://{node_ip}:8080/readyz"));
                async move { req.send().await.ok().filter(|r| r.status() == 200) }
            },
        )
        .await;
    }
    let org = cli(&db_url, &["orgs", "create", "Cluster"]);
    let token = cli(
        &db_url,
        &["tokens", "create", "--org", &org, "--scope", "scim"],
    );
    let client = Client { http, token, org };

    let mut acked: Vec<String> = Vec::new();
    let mut bad: Vec<u16> = Vec::new();
    let mut n = 0;
    let all: Vec<String> = nodes.iter().map(|(_, ip)| ip.clone()).collect();
    for _ in 0..10 {
        let (a, b) = write_round(&client, &all, &mut n).await;
        acked.extend(a);
        bad.extend(b);
    }

    // Node 1 is cut off from the network while writes through it are in flight (its runners
    // are then mid-batch, holding projection locks); the others take over.
    let (cut_off, _) = nodes[0].clone();
    let others: Vec<String> = all[1..].to_vec();
    let disconnect = tokio::task::spawn_blocking({
        let cut_off = cut_off.clone();
        move || docker_ok(&["network", "disconnect", NET, &cut_off])
    });
    let (_, b) = write_round(&client, &all, &mut n).await;
    bad.extend(b);
    disconnect.await.unwrap();
    let partition = until_acknowledged(&client, &others, &mut n, &mut acked, &mut bad).await;
    let partition = partition.expect("no write was acknowledged within 60 s of the partition");
    eprintln!("cluster: partition of {cut_off}: writes acknowledged again after {partition:?}");
    docker_ok(&["network", "connect", NET, &cut_off]);
    let node1_ip = ip(&cut_off);

    // Node 2 is killed outright, with writes in flight.
    let (victim, _) = nodes[1].clone();
    let survivors = vec![node1_ip, all[2].clone()];
    let kill = tokio::task::spawn_blocking({
        let victim = victim.clone();
        move || docker_ok(&["kill", &victim])
    });
    let (_, b) = write_round(&client, &others, &mut n).await;
    bad.extend(b);
    kill.await.unwrap();
    let after_kill = until_acknowledged(&client, &survivors, &mut n, &mut acked, &mut bad).await;
    let after_kill = after_kill.expect("no write was acknowledged within 60 s of the kill");
    eprintln!("cluster: kill of {victim}: writes acknowledged again after {after_kill:?}");
    for _ in 0..10 {
        let (a, b) = write_round(&client, &survivors, &mut n).await;
        acked.extend(a);
        bad.extend(b);
    }
    let survivors: Vec<(String, String)> = vec![
        (cut_off.clone(), survivors[0].clone()),
        (nodes[2].0.clone(), survivors[1].clone()),
    ];

    // Every acknowledged write is readable from every node still up, at once.
    for (name, node_ip) in &survivors {
        for id in &acked {
            assert_eq!(client.get(node_ip, id).await, 200, "{id} on {name}");
        }
    }
    let unexpected: Vec<u16> = bad
        .iter()
        .copied()
        .filter(|s| *s != 503 && *s != 0)
        .collect();
    assert!(unexpected.is_empty(), "clients saw {unexpected:?}");
    eprintln!(
        "cluster: {} writes acknowledged, {} refused with 503 or a connection error",
        acked.len(),
        bad.len()
    );
}
