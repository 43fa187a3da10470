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
}

/// CPU seconds and wall time gathered over one or more measured slices.
#[derive(Clone, Copy, Default)]
pub struct Used {
    server: f64,
    me: f64,
    wall: f64,
}

/// A slice being measured (see [`Meter::slice`]).
pub struct Slice<'a> {
    meter: &'a Meter,
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
    /// A meter of the server `c` is connected to and of this process; `None` when the server
    /// is not on this machine.
    pub async fn new(c: &tokio_postgres::Client) -> Option<Meter> {
        let backend: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()?
            .get(0);
        let postmaster = parent_of(&backend.to_string())?;
        cpu_seconds("self")?;
        Some(Meter { postmaster })
    }

    /// Starts measuring a slice; [`Slice::add_to`] ends it.
    pub fn slice(&self) -> Slice<'_> {
        Slice {
            meter: self,
            server: server_seconds(&self.postmaster),
            me: cpu_seconds("self").unwrap_or_default(),
            started: Instant::now(),
        }
    }
}

impl Slice<'_> {
    /// Ends the slice and adds what it spent to `used`.
    pub fn add_to(self, used: &mut Used) {
        used.wall += self.started.elapsed().as_secs_f64();
        used.server += server_seconds(&self.meter.postmaster) - self.server;
        used.me += cpu_seconds("self").unwrap_or(self.me) - self.me;
    }
}

impl Used {
    /// What the slices spent on each of `ops` operations.
    pub fn per_op(&self, ops: f64) -> Spent {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        Spent {
            server_ms: self.server * 1000.0 / ops,
            me_ms: self.me * 1000.0 / ops,
            idle: (1.0 - (self.server + self.me) / (cores * self.wall)).max(0.0),
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
