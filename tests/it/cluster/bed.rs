//! The test bed: a private Docker network with PostgreSQL and N Portcullis containers
//! (`make image`), the faults the cluster test injects, and SQL the test reads from outside.

use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::support::eventually;

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

/// Docker commands block; the load keeps running on the runtime meanwhile.
async fn docker_ok(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&refs).unwrap_or_else(|e| panic!("docker {}: {e}", args.join(" ")))
    })
    .await
    .unwrap()
}

/// Whether the test can run here: a Docker engine answers, or the caller asked to skip
/// (scripts/test.sh does where Docker is missing, and says so), so a machine that lost its
/// engine cannot pass by accident.
pub fn docker_or_skip(test: &str) -> bool {
    if docker(&["info"]).is_ok() {
        return true;
    }
    let skip = std::env::var("PORTCULLIS_SKIP_DOCKER_TESTS").is_ok_and(|v| v == "1");
    assert!(
        skip,
        "no Docker engine answers; set PORTCULLIS_SKIP_DOCKER_TESTS=1 to skip"
    );
    eprintln!("SKIPPED {test}: no Docker engine");
    false
}

/// The node addresses the load writes to; they change when a container rejoins.
pub type Addresses = Arc<RwLock<Vec<String>>>;

/// The containers and network of one run, removed on drop.
pub struct Bed {
    net: String,
    pg: String,
    pub nodes: Vec<String>,
    pub addresses: Addresses,
    http: reqwest::Client,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for n in self.nodes.iter().chain([&self.pg]) {
            let _ = docker(&["rm", "-f", "-v", n]);
        }
        let _ = docker(&["network", "rm", &self.net]);
    }
}

impl Bed {
    /// PostgreSQL and `n` nodes, every one ready.
    pub async fn start(n: usize) -> Bed {
        // `make test` builds the image first; a bare `cargo test` builds it here.
        if docker(&["image", "inspect", "portcullis:latest"]).is_err() {
            let built = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/image.sh"))
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&built.stderr);
            assert!(built.status.success(), "make image: {err}");
        }
        let run = std::process::id();
        let net = format!("portcullis-cluster-{run}");
        docker_ok(&["network", "create", &net]).await;
        let bed = Bed {
            pg: format!("pc-pg-{run}"),
            nodes: (1..=n).map(|i| format!("pc-node{i}-{run}")).collect(),
            net,
            addresses: Arc::default(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        };
        let (pg, net) = (bed.pg.clone(), bed.net.clone());
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &pg,
            "--network",
            &net,
            "portcullis-postgres:15",
        ])
        .await;
        bed.sql().await;
        let db_url = format!("postgres://postgres@{pg}:5432/postgres");
        for name in bed.nodes.clone() {
            docker_ok(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                "--restart",
                "no",
                "-e",
                &format!("DATABASE_URL={db_url}"),
                "-e",
                "PORTCULLIS_WAIT_TIMEOUT_MS=5000",
                "portcullis:latest",
            ])
            .await;
        }
        *bed.addresses.write().unwrap() = vec![String::new(); n];
        for i in 0..n {
            bed.ready(i).await;
        }
        bed
    }

    async fn ip(&self, name: &str) -> String {
        docker_ok(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ])
        .await
    }

    /// The database as seen from the test (its address may change when it restarts).
    pub async fn db_url(&self) -> String {
        format!(
            "postgres://postgres@{}:5432/postgres",
            self.ip(&self.pg).await
        )
    }

    /// A connection of the test's own to PostgreSQL, once it accepts one.
    pub async fn sql(&self) -> Client {
        let url = self.db_url().await;
        eventually("PostgreSQL to accept", Duration::from_secs(60), || async {
            let (c, conn) = tokio_postgres::connect(&url, NoTls).await.ok()?;
            tokio::spawn(conn);
            Some(c)
        })
        .await
    }

    /// Waits until node `i` answers /readyz with 200, and records its address.
    pub async fn ready(&self, i: usize) -> Duration {
        let start = std::time::Instant::now();
        let ip = self.ip(&self.nodes[i]).await;
        let name = &self.nodes[i];
        eventually(
            &format!("{name} to be ready"),
            Duration::from_secs(90),
            || {
                let req = self.http.get(format!("http://{ip}:8080/readyz"));
                async move { req.send().await.ok().filter(|r| r.status() == 200) }
            },
        )
        .await;
        self.addresses.write().unwrap()[i] = ip;
        start.elapsed()
    }

    pub async fn disconnect(&self, i: usize) {
        docker_ok(&["network", "disconnect", &self.net, &self.nodes[i]]).await;
    }

    pub async fn connect(&self, i: usize) {
        docker_ok(&["network", "connect", &self.net, &self.nodes[i]]).await;
    }

    pub async fn kill(&self, i: usize) {
        docker_ok(&["kill", &self.nodes[i]]).await;
    }

    pub async fn start_node(&self, i: usize) {
        docker_ok(&["start", &self.nodes[i]]).await;
    }

    /// A graceful restart: SIGTERM (the node drains), then started again.
    pub async fn restart_node(&self, i: usize) {
        docker_ok(&["restart", "-t", "30", &self.nodes[i]]).await;
    }

    pub async fn restart_postgres(&self) {
        docker_ok(&["restart", "-t", "30", &self.pg]).await;
    }

    /// Holds back every runner that reaches the users read model, mid-batch: the test locks
    /// the table (no transaction id, so the horizon is not held back by the test itself) and
    /// the runner that applies the next users batch waits on it with its projection locks held.
    /// Returns the index of the node whose runner is waiting; the stall ends on `release`.
    pub async fn stall_a_lock_holder(&self) -> (Stall, usize) {
        let c = self.sql().await;
        c.batch_execute("BEGIN; LOCK TABLE projections.users IN EXCLUSIVE MODE")
            .await
            .unwrap();
        let stall = Stall(c);
        // Looked for from a connection of its own, outside a transaction: inside one,
        // pg_stat_activity keeps what its first read saw until the transaction ends, so
        // looking from the stall's own transaction found the runner only when it was
        // already waiting at the first look (a run in ten or so timed out).
        let look = self.sql().await;
        let what = "a runner holding a projection lock to wait on the users table";
        let found = tokio::time::timeout(
            Duration::from_secs(30),
            // Its own deadline is longer: the timeout around it ends first, with the sessions.
            eventually(what, Duration::from_secs(60), || async {
                let rows = look.query(LOCK_HOLDER_SQL, &[]).await.ok()?;
                let ip: String = rows.first()?.get(0);
                self.addresses.read().unwrap().iter().position(|a| *a == ip)
            }),
        )
        .await;
        match found {
            Ok(holder) => (stall, holder),
            Err(_) => {
                let nodes = self.addresses.read().unwrap().clone();
                let sessions = sessions(&look).await;
                panic!("timed out after 30s waiting for {what}; nodes at {nodes:?}; sessions:\n{sessions}")
            }
        }
    }
}

/// Every client session of the cluster's database: address, state, what it waits on, how
/// long its transaction has been open, the advisory locks it holds, and its statement.
async fn sessions(c: &Client) -> String {
    let Ok(rows) = c.query(SESSIONS_SQL, &[]).await else {
        return "(could not read pg_stat_activity)".into();
    };
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

const SESSIONS_SQL: &str = "\
SELECT concat_ws(' | ', a.pid, host(a.client_addr), a.application_name, a.state,
       a.wait_event_type || ':' || a.wait_event, now() - a.xact_start,
       (SELECT string_agg(l.objid::text || CASE WHEN l.granted THEN '' ELSE ' (waiting)' END, ',')
          FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'),
       left(a.query, 120))
  FROM pg_stat_activity a WHERE a.backend_type = 'client backend' ORDER BY a.pid";

const LOCK_HOLDER_SQL: &str = "SELECT DISTINCT host(a.client_addr) \
     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
     WHERE l.locktype = 'advisory' AND l.granted AND a.wait_event_type = 'Lock' \
       AND a.client_addr IS NOT NULL";

/// The test's transaction that holds the users table.
pub struct Stall(Client);

impl Stall {
    pub async fn release(self) {
        self.0.batch_execute("COMMIT").await.unwrap();
    }
}

/// How far the log and the read models of `org` disagree: (users missing, extra or at
/// another version; event types counted wrongly; dead letters).
pub async fn disagreement(c: &Client, org: uuid::Uuid) -> Option<(i64, i64, i64)> {
    let row = c.query_one(DISAGREEMENT_SQL, &[&org]).await.ok()?;
    Some((row.get(0), row.get(1), row.get(2)))
}

const DISAGREEMENT_SQL: &str = "\
WITH log AS (
    SELECT aggregate_id AS id, max(version) AS version, bool_or(event_type = 'user.removed') AS gone
    FROM eventstore.events WHERE org_id = $1 AND aggregate_type = 'user' GROUP BY aggregate_id),
live AS (SELECT id, version FROM log WHERE NOT gone),
model AS (SELECT user_id AS id, version FROM projections.users WHERE org_id = $1),
counted AS (SELECT event_type, count(*) AS n FROM eventstore.events WHERE org_id = $1 GROUP BY 1),
counts AS (SELECT event_type, events AS n FROM projections.event_counts WHERE org_id = $1)
SELECT
    (SELECT count(*) FROM live FULL JOIN model USING (id)
      WHERE live.version IS DISTINCT FROM model.version),
    (SELECT count(*) FROM counted FULL JOIN counts USING (event_type)
      WHERE counted.n IS DISTINCT FROM counts.n),
    (SELECT count(*) FROM projections.failed_events f JOIN eventstore.events e
       ON (e.tx, e.seq) = (f.event_tx, f.event_seq) WHERE e.org_id = $1)";
