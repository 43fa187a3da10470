//! The rows of one table that a batch touches: loaded in one query, changed in memory event
//! by event, then written with a few set-based statements.

use std::collections::HashMap;
use std::hash::Hash;

use uuid::Uuid;

use crate::eventstore::StoredEvent;
use crate::runtime::{ReduceError, Tx};

struct Slot<V> {
    /// The row is in the table (loaded before the batch).
    stored: bool,
    row: Option<V>,
    dirty: bool,
}

pub(crate) struct Rows<K, V> {
    slots: HashMap<K, Slot<V>>,
}

/// What a batch does to a table.
pub(crate) struct Changes<K, V> {
    pub inserted: Vec<(K, V)>,
    pub updated: Vec<(K, V)>,
    pub deleted: Vec<K>,
}

impl<K: Hash + Eq + Copy, V> Rows<K, V> {
    pub fn loaded(rows: impl IntoIterator<Item = (K, V)>) -> Self {
        let slots = rows
            .into_iter()
            .map(|(k, v)| {
                let slot = Slot {
                    stored: true,
                    row: Some(v),
                    dirty: false,
                };
                (k, slot)
            })
            .collect();
        Rows { slots }
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let slot = self.slots.get_mut(key)?;
        slot.dirty = true;
        slot.row.as_mut()
    }

    /// Adds a row; false (and no change) when one exists under the key.
    pub fn create(&mut self, key: K, row: V) -> bool {
        let slot = self.slots.entry(key).or_insert(Slot {
            stored: false,
            row: None,
            dirty: false,
        });
        if slot.row.is_some() {
            return false;
        }
        slot.row = Some(row);
        slot.dirty = true;
        true
    }

    pub fn remove(&mut self, key: &K) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.row = None;
            slot.dirty = true;
        }
    }

    pub fn into_changes(self) -> Changes<K, V> {
        let mut changes = Changes {
            inserted: Vec::new(),
            updated: Vec::new(),
            deleted: Vec::new(),
        };
        for (k, slot) in self.slots {
            match (slot.stored, slot.row) {
                (true, None) => changes.deleted.push(k),
                (true, Some(v)) if slot.dirty => changes.updated.push((k, v)),
                (false, Some(v)) => changes.inserted.push((k, v)),
                _ => {}
            }
        }
        changes
    }
}

/// The aggregates whose rows a batch must load: all it touches, but those it creates (their
/// first event in the batch is `created`): a batch of new users loads nothing.
pub(crate) fn to_load(events: &[&StoredEvent], created: &[&str]) -> Vec<Uuid> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|e| seen.insert(e.aggregate.id) && !created.contains(&e.event_type.as_str()))
        .map(|e| e.aggregate.id)
        .collect()
}

/// Loads the rows of `ids` in one query: `sql` selects them by `= ANY($1)`, the key first;
/// `row` makes each into the batch's row type.
pub(crate) async fn load<V>(
    tx: &Tx<'_>,
    sql: &str,
    ids: &[Uuid],
    row: impl Fn(&tokio_postgres::Row) -> Result<V, ReduceError>,
) -> Result<Rows<Uuid, V>, ReduceError> {
    if ids.is_empty() {
        return Ok(Rows::loaded([]));
    }
    let stmt = tx.prepare_cached(sql).await?;
    let mut loaded = Vec::with_capacity(ids.len());
    for r in tx.query(&stmt, &[&ids]).await? {
        loaded.push((r.get(0), row(&r)?));
    }
    Ok(Rows::loaded(loaded))
}
