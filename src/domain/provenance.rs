//! Who changed what: the actor and the request that every event records in its `metadata`
//! (through `eventstore::context`). Never a secret: tokens are named by id and name, a
//! dashboard session by a prefix of its stored hash.

use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::token::Scope;
use crate::eventstore::context;

/// Who acted.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// An API token: its id, the name it was issued with, its scope.
    Token {
        token_id: Uuid,
        name: Option<String>,
        scope: Scope,
    },
    /// The bootstrap admin credential, `PORTCULLIS_ADMIN_TOKEN`.
    BootstrapAdmin,
    /// An admin on the dashboard: the first 12 hex digits of the session's stored SHA-256
    /// (it tells sessions apart; it opens none).
    DashboardSession { session: String },
    /// Whoever followed a verification link from a mail (the link is the credential).
    VerificationLink,
    /// The command line, run by this operating-system user.
    Cli { user: Option<String> },
    /// One of the service's own workers.
    Service { name: &'static str },
}

impl Actor {
    /// Records the actor in the current scope: the events appended from now on carry it.
    pub fn record(&self) {
        context::record("actor", json!(self));
    }

    /// Runs `f` with this actor recorded in every event it appends: a worker's own scope,
    /// where no request is.
    pub async fn scope<F: std::future::Future>(&self, f: F) -> F::Output {
        context::scope(Map::from_iter([("actor".to_string(), json!(self))]), f).await
    }

    /// The command line's actor: `$USER` (or `$LOGNAME`) when set.
    pub fn cli() -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .map(|u| bounded(&u, 64));
        Actor::Cli { user }
    }
}

/// The fields of a unit of work that are known when it starts.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub request_id: String,
    pub actor: Option<Actor>,
    /// The client's address, as the service saw it (a proxy's, behind one).
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    /// What was asked, e.g. `POST /Users` or `tokens create`.
    pub operation: Option<String>,
}

impl Origin {
    /// A new unit of work with a random request id.
    pub fn new(operation: &str) -> Origin {
        Origin {
            request_id: Uuid::new_v4().to_string(),
            operation: Some(operation.to_string()),
            ..Default::default()
        }
    }

    pub fn fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("request_id".into(), json!(self.request_id));
        let optional = [
            ("actor", self.actor.as_ref().map(|a| json!(a))),
            ("client_addr", self.client_addr.as_ref().map(|v| json!(v))),
            ("user_agent", self.user_agent.as_ref().map(|v| json!(v))),
            ("operation", self.operation.as_ref().map(|v| json!(v))),
        ];
        for (k, v) in optional {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        }
        m
    }

    /// Runs `f` with this origin recorded in every event it appends.
    pub async fn scope<F: std::future::Future>(&self, f: F) -> F::Output {
        context::scope(self.fields(), f).await
    }
}

/// A Bulk operation inside its request: its bulkId and its own method and path.
pub async fn bulk_operation<F: std::future::Future>(
    bulk_id: Option<&str>,
    operation: &str,
    f: F,
) -> F::Output {
    let mut m = Map::new();
    m.insert("operation".into(), json!(operation));
    if let Some(id) = bulk_id {
        m.insert("bulk_id".into(), json!(bounded(id, 128)));
    }
    context::scope(m, f).await
}

/// Client-supplied text as it is kept: at most `max` characters, no control characters.
pub fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}
