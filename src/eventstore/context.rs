//! Who and why: a scope around one unit of work (an HTTP request, a CLI command, a worker's
//! job) whose fields every event appended inside it records in `metadata`. The store knows
//! nothing of what the fields mean; the layers above fill them (`domain::provenance`).

use std::future::Future;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};

tokio::task_local! {
    static SCOPE: Arc<Mutex<Map<String, Value>>>;
}

/// Runs `f` with `fields` recorded in every event it appends. A scope inside a scope starts
/// from its parent's fields (a Bulk operation inside its request).
pub async fn scope<F: Future>(fields: Map<String, Value>, f: F) -> F::Output {
    let mut merged = current();
    merged.extend(fields);
    SCOPE.scope(Arc::new(Mutex::new(merged)), f).await
}

/// Adds a field to the current scope, for what is known only later (the actor, once the
/// request is authenticated). Outside a scope it does nothing.
pub fn record(key: &str, value: Value) {
    let _ = SCOPE.try_with(move |m| {
        m.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_string(), value);
    });
}

/// The current scope's fields (empty outside one).
pub fn current() -> Map<String, Value> {
    SCOPE
        .try_with(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default()
}

/// `own` (an event's own metadata), with the scope's fields it does not set itself.
pub(super) fn merged(own: &Value, scope: &Map<String, Value>) -> Value {
    if scope.is_empty() {
        return own.clone();
    }
    let mut out = scope.clone();
    if let Value::Object(own) = own {
        out.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn scopes_nest_and_record_fields_known_later() {
        assert!(current().is_empty());
        let outer = Map::from_iter([("request_id".to_string(), json!("r1"))]);
        scope(outer, async {
            record("actor", json!({"kind": "cli"}));
            let inner = Map::from_iter([("bulk_id".to_string(), json!("b1"))]);
            scope(inner, async {
                let m = current();
                assert_eq!(m["request_id"], "r1");
                assert_eq!(m["actor"]["kind"], "cli");
                assert_eq!(m["bulk_id"], "b1");
                let own = json!({"request_id": "mine"});
                assert_eq!(
                    merged(&own, &m)["request_id"],
                    "mine",
                    "the event's own wins"
                );
            })
            .await;
            assert!(!current().contains_key("bulk_id"));
        })
        .await;
    }
}
