//! The live round: following writes as they commit, for every projection this process runs
//! at once. One read of the log below the horizon serves them all; one transaction applies
//! what each needs and moves every position, so a projection whose event types a commit did
//! not write costs no statement of its own, and its position (in projections.health too)
//! still moves to the horizon. Anything out of the ordinary (a projection far behind, a
//! failing event, a reducer error, a lost race) goes back to the projection's own runner.
//! A round is three round trips, since every write waits for one: BEGIN with the read and
//! the locks; the projections' statements with the positions' UPDATE; COMMIT, with the reads
//! that ride along it (`ride`). Under a stream of writes the next round's first trip goes out
//! behind that COMMIT too, so rounds follow one another every two round trips; when every
//! projection's writes go out at once, the COMMIT goes with them (`commit`): one round trip
//! a round. A round whose events this process appended itself skips the read, and with it
//! the first trip (`known`).

mod commit;
mod known;
mod trip;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use self::commit::apply_and_commit;
use self::known::Known;
use self::trip::{end_early, of_types, open, Heard, LockedState, Opened, Plan};
use super::context::{Inner, RemoteWake};
use super::ProjectionError;
use crate::backoff::Backoff;
use crate::eventstore::{self, Position};

pub(super) async fn run(inner: Arc<Inner>, remote: watch::Receiver<RemoteWake>) {
    let mut wakes = Wakes {
        local: inner.store.subscribe(),
        remote,
        commits: inner.commits.subscribe(),
    };
    let heard = Heard {
        local: wakes.local.clone(),
        remote: wakes.remote.clone(),
    };
    let mut target = Position::ZERO;
    // Where the last round read up to: a commit announced below it was in that read.
    let mut read_up_to = Position::ZERO;
    let mut horizon_wait = Duration::from_millis(1);
    let mut errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut opened = None;
    loop {
        let mut wake_in = inner.opts.fallback_tick;
        let mut behind = false;
        match round(&inner, &heard, target, opened.take()).await {
            Ok((reached, next)) => {
                errors.reset();
                read_up_to = reached;
                if next.is_some() {
                    // The next round is under way already, for what was heard meanwhile
                    // (see `Heard`).
                    target = target.max(heard.newest());
                    opened = next;
                    continue;
                }
                if reached < target {
                    // An open transaction holds the horizon below what we were told exists:
                    // ours wake us when they end, another process's are waited out.
                    behind = true;
                    wake_in = horizon_wait;
                    horizon_wait = (horizon_wait * 2).min(Duration::from_millis(100));
                } else {
                    horizon_wait = Duration::from_millis(1);
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "live projection round failed; the runners take over");
                inner.poke_all();
                wake_in = errors.next_delay();
            }
        }
        let deadline = tokio::time::Instant::now() + wake_in;
        target = target.max(wakes.news(deadline, read_up_to, behind).await);
    }
}

/// What wakes the live round between rounds.
struct Wakes {
    /// This process's pushes.
    local: watch::Receiver<Position>,
    /// Other processes' commits (and ours, coming back).
    remote: watch::Receiver<RemoteWake>,
    /// Batch commits of the runners.
    commits: watch::Receiver<u64>,
}

impl Wakes {
    /// Waits for a commit the last round, which read up to `read_up_to`, did not see (or a
    /// runner's commit, when `behind`), or for `deadline`; returns the newest commit heard of.
    async fn news(
        &mut self,
        deadline: tokio::time::Instant,
        read_up_to: Position,
        behind: bool,
    ) -> Position {
        let mut newest = Position::ZERO;
        loop {
            tokio::select! {
                changed = self.local.changed() => {
                    if changed.is_err() {
                        // The store is gone (shutting down): the timers still apply, no spinning.
                        tokio::time::sleep_until(deadline).await;
                        return newest;
                    }
                    // Every push wakes a round, also one the last round read already: a
                    // projection that was catching up then was left out of that round.
                    return newest.max(*self.local.borrow_and_update());
                }
                changed = self.remote.changed() => {
                    if changed.is_err() {
                        // The listener is gone (shutting down): likewise.
                        tokio::time::sleep_until(deadline).await;
                        return newest;
                    }
                    let announced = self.remote.borrow_and_update().position;
                    newest = newest.max(announced);
                    // Our own commits come back this way too: only news wakes a round. A
                    // round read up to an event's position (a round from known events) or
                    // to the horizon (seq 0, which no event has): one announced at exactly
                    // that position was in it.
                    if announced > read_up_to {
                        return newest;
                    }
                }
                changed = self.commits.changed(), if behind => {
                    let _ = changed;
                    return newest;
                }
                // A backoff or the fallback tick; never a wait for state that has a signal.
                _ = tokio::time::sleep_until(deadline) => return newest,
            }
        }
    }
}

/// One round; returns how far every live projection has got (the horizon it read to, or
/// less when one of them could not be moved now: its lock was taken), so the loop comes
/// back, and the next round when it began already. `target` is the newest commit this
/// process heard of.
async fn round(
    inner: &Inner,
    heard: &Heard,
    target: Position,
    opened: Option<Opened>,
) -> Result<(Position, Option<Opened>), ProjectionError> {
    let opened = match opened {
        Some(o) => o,
        None => match known::round(inner, heard).await? {
            Known::Applied(reached) => return Ok((reached, None)),
            Known::Read => match open(inner).await? {
                Some(o) => o,
                None => return Ok((Position::ZERO, None)),
            },
        },
    };
    let Opened {
        begun,
        live,
        from,
        read,
        states,
    } = opened;
    let limit = inner.opts.live_batch;
    if read.events.len() as i64 >= limit {
        // More than one live batch behind: each runner catches up on its own.
        inner.poke_all();
        end_early(begun);
        return Ok((from, None));
    }
    let reached = read.read_up_to(from, limit);
    let (plans, held_back) = plan(inner, &live, from, reached, &read, &states);
    // Positions ride along with applied events: a round that would move nothing but
    // positions costs no transaction, unless one of them is behind a commit someone may wait
    // for (it missed the round that applied it).
    if plans
        .iter()
        .all(|p| p.events.is_empty() && p.from >= target)
    {
        end_early(begun);
        return Ok((held_back, None));
    }
    let (moved, next) = apply_and_commit(inner, heard, begun, &plans, reached).await?;
    Ok((moved.min(held_back), next))
}

/// What each live projection takes from the read, and how far those the round leaves to
/// their runners hold it back.
fn plan<'a>(
    inner: &Inner,
    live: &[usize],
    from: Position,
    reached: Position,
    read: &'a eventstore::Batch,
    states: &[LockedState],
) -> (Vec<Plan<'a>>, Position) {
    let name = |i: usize| inner.projections[i].0.name();
    let mut plans = Vec::new();
    let mut held_back = reached;
    for &i in live {
        let Some(state) = states.iter().find(|s| s.name == name(i)) else {
            continue;
        };
        if state.position >= reached {
            continue;
        }
        if !state.locked {
            // A runner has it now; it may have read before the newest commit.
            held_back = held_back.min(state.position);
            continue;
        }
        // A model at zero (new or reset) is its runner's: over a long log it asks for a rebuild.
        if state.failing || state.position < from || state.position == Position::ZERO {
            inner.projections[i].1.notify_one(); // its runner knows what to do
            continue;
        }
        let types = inner.projections[i].0.event_types();
        let events = read
            .events
            .iter()
            .filter(|e| e.position > state.position)
            .filter(|e| of_types(&types, e))
            .collect();
        plans.push(Plan {
            index: i,
            name: name(i),
            from: state.position,
            resets: inner.hub.resets(name(i)),
            events,
        });
    }
    (plans, held_back)
}
