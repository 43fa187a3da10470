//! What this process appended lately, as the log holds it: the events of its creating pushes
//! (known whole once the INSERT returned their positions and timestamps), and the positions of
//! pushes whose events it cannot tell without reading them. A reader that follows the log
//! live may apply the known events without reading them back, provided it checks in the
//! database that nothing else lies in between (`projections.known_round`, V27); this only
//! tells it when that check is worth a try. Bounded: the oldest entries go first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::position::Position;
use super::types::StoredEvent;

/// Entries kept: far more than a live round takes at once (`RunnerOptions::live_batch`).
const KEEP: usize = 256;
/// Known events kept in all: the record holds a bounded amount of memory.
pub(super) const KEEP_EVENTS: usize = 1024;
/// Known events of one push at most: a larger one (an import) counts as unknown.
pub(super) const PUSH_EVENTS: usize = 64;

#[derive(Default)]
pub(super) struct Recent {
    entries: Mutex<Entries>,
    /// Appends sent and not answered yet: one of them may hold the horizon below the rest.
    in_flight: AtomicUsize,
}

#[derive(Default)]
struct Entries {
    pushes: VecDeque<Entry>,
    /// The highest position among the entries dropped: below it the record is not whole.
    dropped_up_to: Position,
    /// Known events in `pushes`.
    events: usize,
}

impl Entries {
    fn drop_oldest(&mut self) {
        if let Some(old) = self.pushes.pop_front() {
            self.dropped_up_to = self.dropped_up_to.max(old.last);
            self.events -= old.events.as_ref().map_or(0, Vec::len);
        }
    }
}

struct Entry {
    last: Position,
    /// `None` for a push whose events are not known here (an update, an append inside a
    /// caller's transaction).
    events: Option<Vec<StoredEvent>>,
}

/// Counts an append as in flight until dropped.
pub(super) struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Recent {
    pub(super) fn sending(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(&self.in_flight)
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub(super) fn record(&self, last: Position, events: Option<Vec<StoredEvent>>) {
        let events = events.filter(|e| e.len() <= PUSH_EVENTS);
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.events += events.as_ref().map_or(0, Vec::len);
        e.pushes.push_back(Entry { last, events });
        while e.pushes.len() > KEEP || e.events > KEEP_EVENTS {
            e.drop_oldest();
        }
    }

    /// Every event this process appended after `after`, in log order, when all of them are
    /// known here; `None` when one is not, or when there are none.
    pub(super) fn after(&self, after: Position) -> Option<Vec<StoredEvent>> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if after < e.dropped_up_to {
            return None;
        }
        // Entries at or below `after` serve nobody any more: a reader asks from where it got.
        while e.pushes.front().is_some_and(|p| p.last <= after) {
            e.drop_oldest();
        }
        let mut out = Vec::new();
        for p in &e.pushes {
            if p.last > after {
                out.extend(p.events.as_ref()?.iter().cloned());
            }
        }
        drop(e);
        out.retain(|ev| ev.position > after);
        out.sort_by_key(|ev| ev.position);
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventstore::Aggregate;
    use serde_json::json;
    use uuid::Uuid;

    fn event(tx: u64, seq: i64) -> StoredEvent {
        StoredEvent {
            position: Position::new(tx, seq),
            org_id: Uuid::nil(),
            aggregate: Aggregate::new("user", Uuid::nil()),
            version: 1,
            event_type: "user.added".into(),
            payload: json!({}),
            metadata: json!({}),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn known_pushes_come_back_in_log_order() {
        let r = Recent::default();
        r.record(Position::new(12, 2), Some(vec![event(12, 2)]));
        r.record(Position::new(11, 1), Some(vec![event(11, 1)]));
        let got = r.after(Position::new(10, 0)).unwrap();
        let positions: Vec<_> = got.iter().map(|e| e.position).collect();
        assert_eq!(positions, [Position::new(11, 1), Position::new(12, 2)]);
        assert!(
            r.after(Position::new(12, 2)).is_none(),
            "nothing after the last"
        );
    }

    #[test]
    fn an_unknown_push_in_between_makes_the_rest_unknown() {
        let r = Recent::default();
        r.record(Position::new(11, 1), Some(vec![event(11, 1)]));
        r.record(Position::new(12, 1), None);
        r.record(Position::new(13, 1), Some(vec![event(13, 1)]));
        assert!(r.after(Position::new(10, 0)).is_none());
        assert!(
            r.after(Position::new(12, 1)).is_some(),
            "past the unknown one"
        );
    }

    #[test]
    fn below_what_was_dropped_nothing_is_known() {
        let r = Recent::default();
        for tx in 1..=(KEEP as u64 + 1) {
            r.record(Position::new(tx, 1), Some(vec![event(tx, 1)]));
        }
        assert!(r.after(Position::new(0, 0)).is_none());
        assert_eq!(r.after(Position::new(1, 1)).map(|v| v.len()), Some(KEEP));
    }

    #[test]
    fn the_events_kept_are_bounded() {
        let r = Recent::default();
        let big: Vec<_> = (1..=PUSH_EVENTS as i64 + 1).map(|s| event(1, s)).collect();
        r.record(Position::new(1, PUSH_EVENTS as i64 + 1), Some(big));
        assert!(
            r.after(Position::ZERO).is_none(),
            "a push that large is not kept"
        );
        for tx in 2..=(KEEP_EVENTS / PUSH_EVENTS + 2) as u64 {
            let push: Vec<_> = (1..=PUSH_EVENTS as i64).map(|s| event(tx, s)).collect();
            r.record(Position::new(tx, PUSH_EVENTS as i64), Some(push));
        }
        let kept = r.after(Position::new(3, PUSH_EVENTS as i64)).unwrap();
        assert!(kept.len() <= KEEP_EVENTS, "{} events kept", kept.len());
        assert!(
            r.after(Position::new(2, 1)).is_none(),
            "the oldest went first"
        );
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let r = Recent::default();
        let a = r.sending();
        let b = r.sending();
        assert_eq!(r.in_flight(), 2);
        drop(a);
        drop(b);
        assert_eq!(r.in_flight(), 0);
    }
}
