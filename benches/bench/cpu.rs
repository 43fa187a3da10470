//! CPU time spent during a measurement, from /proc: by the PostgreSQL server (its postmaster
//! and every child of it) and by this process (the clients and the service). It shows where a
//! ratio goes on a machine where the three share the cores. Linux only; elsewhere, or when
//! the server runs on another host, it reports nothing.

use std::time::Instant;

/// /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) of `pid` so far.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after its last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

fn parent_of(pid: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .map(|p| p.trim().to_string())
}

/// CPU seconds of the postmaster `root` and its children.
fn server_seconds(root: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| pid == root || parent_of(pid).as_deref() == Some(root))
        .filter_map(|pid| cpu_seconds(&pid))
        .sum()
}

pub struct Meter {
    postmaster: String,
    server: f64,
    me: f64,
    started: Instant,
}

/// CPU per operation over a measurement, in milliseconds, and the share of the machine's
/// cores nobody used.
pub struct Spent {
    pub server_ms: f64,
    pub me_ms: f64,
    pub idle: f64,
}

impl Meter {
    /// Starts measuring; `None` when the server `c` is connected to is not on this machine.
    pub async fn start(c: &tokio_postgres::Client) -> Option<Meter> {
        let backend: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()?
            .get(0);
        let postmaster = parent_of(&backend.to_string())?;
        Some(Meter {
            server: server_seconds(&postmaster),
            me: cpu_seconds("self")?,
            postmaster,
            started: Instant::now(),
        })
    }

    /// What the measurement spent on each of `ops` operations.
    pub fn per_op(&self, ops: f64) -> Spent {
        let wall = self.started.elapsed().as_secs_f64();
        let server = server_seconds(&self.postmaster) - self.server;
        let me = cpu_seconds("self").unwrap_or(self.me) - self.me;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Spent {
            server_ms: server * 1000.0 / ops,
            me_ms: me * 1000.0 / ops,
            idle: (1.0 - (server + me) / (cores * wall)).max(0.0),
        }
    }
}

impl std::fmt::Display for Spent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} ms PostgreSQL + {:.3} ms this process (cores idle {:.0}%)",
            self.server_ms,
            self.me_ms,
            self.idle * 100.0
        )
    }
}
