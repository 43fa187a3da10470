//! SCIM load through every node while the faults happen: one writer per node creates users
//! and reads each acknowledged one back from the next node with its position token. It
//! tallies what clients saw: acknowledged writes, refusals (503, connection errors), anything
//! else, and stale reads (a read with a position token that did not see the write).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{OwnedRwLockWriteGuard, RwLock};
use tokio::task::JoinHandle;

use super::bed::Addresses;

/// Talks SCIM to any node of the bed.
#[derive(Clone)]
pub struct Scim {
    pub http: reqwest::Client,
    pub token: String,
    pub org: String,
}

/// What a request came to: its status, or 0 when the connection failed or timed out.
type Status = u16;

impl Scim {
    pub fn new(token: String, org: String) -> Scim {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        Scim { http, token, org }
    }

    fn url(&self, ip: &str, rest: &str) -> String {
        format!("http://{ip}:8080/scim/v2/{}/{rest}", self.org)
    }

    /// Creates `user_name` through the node at `ip`: (id, position) when acknowledged.
    pub async fn create(&self, ip: &str, user_name: &str) -> Result<(String, String), Status> {
        let body = json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": user_name,
        });
        let res = self
            .http
            .post(self.url(ip, "Users"))
            .bearer_auth(&self.token)
            .header("content-type", "application/scim+json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|_| 0u16)?;
        if res.status().as_u16() != 201 {
            return Err(res.status().as_u16());
        }
        let position = res
            .headers()
            .get("portcullis-position")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let v: Value = res.json().await.map_err(|_| 0u16)?;
        Ok((v["id"].as_str().unwrap_or_default().to_string(), position))
    }

    /// Reads a user through the node at `ip`, optionally no older than `position`: the status
    /// and its userName.
    pub async fn get(&self, ip: &str, id: &str, position: Option<&str>) -> (Status, String) {
        let mut req = self
            .http
            .get(self.url(ip, &format!("Users/{id}")))
            .bearer_auth(&self.token);
        if let Some(p) = position {
            req = req.header("portcullis-min-position", p);
        }
        let Ok(res) = req.send().await else {
            return (0, String::new());
        };
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap_or_default();
        (
            status,
            v["userName"].as_str().unwrap_or_default().to_string(),
        )
    }
}

#[derive(Default)]
pub struct Tally {
    /// Acknowledged writes: (id, the node that acknowledged it, when).
    pub acked: Vec<(String, usize, Instant)>,
    /// Writes and reads answered 503 or cut off.
    pub refused: usize,
    /// Any other answer that is not a success: (what, status).
    pub unexpected: Vec<(String, Status)>,
    /// Reads with a position token that missed the write: (id, status, userName seen).
    pub stale: Vec<(String, Status, String)>,
}

pub struct Load {
    tally: Arc<Mutex<Tally>>,
    gate: Arc<RwLock<()>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// One writer per node address.
    pub fn start(scim: Scim, addresses: Addresses) -> Load {
        let n = addresses.read().unwrap().len();
        let load = Load {
            tally: Arc::default(),
            gate: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
        };
        let names = Arc::new(AtomicUsize::new(0));
        let tasks = (0..n)
            .map(|i| {
                let w = Writer {
                    node: i,
                    scim: scim.clone(),
                    addresses: addresses.clone(),
                    tally: load.tally.clone(),
                    names: names.clone(),
                };
                let (gate, stop) = (load.gate.clone(), load.stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _open = gate.read().await;
                        w.once().await;
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    /// Stops the writers between requests (in-flight ones finish) until the guard drops.
    pub async fn pause(&self) -> OwnedRwLockWriteGuard<()> {
        self.gate.clone().write_owned().await
    }

    pub fn acked(&self) -> Vec<String> {
        let t = self.tally.lock().unwrap();
        t.acked.iter().map(|(id, _, _)| id.clone()).collect()
    }

    /// How long after `t0` a node other than `except` first acknowledged a write: a write
    /// is acknowledged once the projections have applied it, so this is how long the
    /// projections took to move again. Waits up to a minute.
    pub async fn resumed_after(&self, t0: Instant, except: Option<usize>) -> Duration {
        let first = || {
            let t = self.tally.lock().unwrap();
            t.acked
                .iter()
                .filter(|(_, node, at)| *at > t0 && Some(*node) != except)
                .map(|(_, _, at)| *at)
                .min()
        };
        let what = "a write acknowledged by another node after the fault";
        crate::support::eventually(what, Duration::from_secs(60), || async { first() }).await;
        first().unwrap() - t0
    }

    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.tally)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }
}

struct Writer {
    node: usize,
    scim: Scim,
    addresses: Addresses,
    tally: Arc<Mutex<Tally>>,
    names: Arc<AtomicUsize>,
}

impl Writer {
    fn address(&self, i: usize) -> String {
        let a = self.addresses.read().unwrap();
        a[i % a.len()].clone()
    }

    /// One write through this writer's node, and when acknowledged one read of it through the
    /// next node with its position token.
    async fn once(&self) {
        let name = format!("u{}", self.names.fetch_add(1, Ordering::Relaxed));
        let written = self.scim.create(&self.address(self.node), &name).await;
        let (id, position) = match written {
            Ok(w) => w,
            Err(status) => {
                let what = format!("POST /Users {name} via node {}", self.node);
                return self.refused(what, status);
            }
        };
        let at = Instant::now();
        self.tally
            .lock()
            .unwrap()
            .acked
            .push((id.clone(), self.node, at));
        let reader = self.address(self.node + 1);
        let (status, seen) = self.scim.get(&reader, &id, Some(&position)).await;
        let mut t = self.tally.lock().unwrap();
        match status {
            200 if seen == name => {}
            200 | 404 => t.stale.push((id, status, seen)),
            s => {
                drop(t);
                self.refused(format!("GET /Users/{id} at {position}"), s)
            }
        }
    }

    fn refused(&self, what: String, status: Status) {
        let mut t = self.tally.lock().unwrap();
        match status {
            0 | 503 => t.refused += 1,
            s => t.unexpected.push((what, s)),
        }
    }
}
