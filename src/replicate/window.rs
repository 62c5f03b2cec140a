//! Time-tick windows of one DML channel.
//!
//! Milvus orders changes by timestamp, not by arrival: concurrent requests
//! reach a channel in any order, and a TimeTick `T` promises that every
//! message with a timestamp up to `T` has arrived. [`Windows`] holds a
//! channel's messages until such a tick, then releases those at or before it
//! in timestamp order; later ones wait for a later tick, as Milvus's own
//! consumers do.
//!
//! The checkpoint after a released window is a [`Cut`]: read on after
//! `resume_after` (the message before the oldest one still held), and skip
//! every change at or before `through_ts` (already applied). Replaying from a
//! cut rebuilds exactly the windows that follow it.

use crate::source::event::{Event, EventKind};

/// Where a channel stands after a released window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cut {
    /// Every message up to this sequence is applied or held (it has a
    /// timestamp after `through_ts`): a restart reads on after it.
    pub resume_after: u64,
    /// Every change of the channel at or before this timestamp is applied.
    pub through_ts: u64,
}

/// Changes released by a tick, in timestamp order, and the cut they reach.
#[derive(Debug, Default)]
pub struct Released {
    /// The changes (no ticks), by timestamp; an upsert's delete before its
    /// insert of the same timestamp; otherwise in arrival order.
    pub events: Vec<Event>,
    /// The channel's cut once they are applied.
    pub cut: Cut,
}

/// A DML channel's messages waiting for their tick.
#[derive(Debug)]
pub struct Windows {
    held: Vec<Event>,
    cut: Cut,
    last_sequence: u64,
}

impl Windows {
    /// Windows after `cut` (the channel's checkpoint; default from scratch).
    pub fn new(cut: Cut) -> Self {
        Self {
            held: Vec::new(),
            cut,
            last_sequence: cut.resume_after,
        }
    }

    /// Takes the next message of the channel. A tick releases what it
    /// closes (possibly nothing but a newer cut); a change that the
    /// checkpoint already covers is dropped; any other change is held.
    pub fn push(&mut self, ev: Event) -> Option<Released> {
        self.last_sequence = self.last_sequence.max(ev.position.sequence);
        if matches!(ev.kind, EventKind::TimeTick) {
            return Some(self.close(ev.timestamp));
        }
        if ev.timestamp != 0 && ev.timestamp <= self.cut.through_ts {
            // Applied before the checkpoint was taken (a replay).
            return None;
        }
        self.held.push(ev);
        None
    }

    /// Releases everything held, in timestamp order, without a tick: only
    /// for a channel that has gone silent with changes held while its
    /// stream has nothing more (no tick will come for them). The cut's
    /// timestamp does not move: no tick promised anything, so a change that
    /// still arrives later with an older timestamp is applied, not dropped
    /// as already applied.
    pub fn release_all(&mut self) -> Released {
        let mut ready = std::mem::take(&mut self.held);
        ready.sort_by_key(|e| (e.timestamp, order_rank(&e.kind)));
        self.cut.resume_after = self.cut.resume_after.max(self.last_sequence);
        Released {
            events: ready,
            cut: self.cut,
        }
    }

    /// Number of held messages.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The cut reached by the windows released so far.
    pub fn cut(&self) -> Cut {
        self.cut
    }

    fn close(&mut self, tick: u64) -> Released {
        let through_ts = tick.max(self.cut.through_ts);
        let (mut ready, later): (Vec<Event>, Vec<Event>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|e| e.timestamp <= through_ts);
        self.held = later;
        // Stable: equal keys keep their arrival order.
        ready.sort_by_key(|e| (e.timestamp, order_rank(&e.kind)));
        let resume_after = self
            .held
            .iter()
            .map(|e| e.position.sequence.saturating_sub(1))
            .min()
            .unwrap_or(self.last_sequence)
            .max(self.cut.resume_after);
        self.cut = Cut {
            resume_after,
            through_ts,
        };
        Released {
            events: ready,
            cut: self.cut,
        }
    }
}

/// At one timestamp, a delete goes first: an upsert is an insert and a
/// delete with the same timestamp, and its delete removes only older rows.
fn order_rank(kind: &EventKind) -> u8 {
    match kind {
        EventKind::Delete(_) => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        proto::msg::{DeleteRequest, InsertRequest},
        source::event::Position,
    };

    fn ev(seq: u64, ts: u64, kind: EventKind) -> Event {
        Event {
            position: Position {
                channel: Arc::from("dml_0"),
                sequence: seq,
            },
            timestamp: ts,
            kind,
        }
    }

    fn ins(seq: u64, ts: u64) -> Event {
        ev(seq, ts, EventKind::Insert(Box::default()))
    }

    fn del(seq: u64, ts: u64) -> Event {
        ev(seq, ts, EventKind::Delete(Box::<DeleteRequest>::default()))
    }

    fn tick(seq: u64, ts: u64) -> Event {
        ev(seq, ts, EventKind::TimeTick)
    }

    fn seqs(r: &Released) -> Vec<u64> {
        r.events.iter().map(|e| e.position.sequence).collect()
    }

    #[test]
    fn a_tick_releases_its_window_in_timestamp_order() {
        let mut w = Windows::new(Cut::default());
        assert!(w.push(ins(1, 20)).is_none());
        assert!(w.push(ins(2, 10)).is_none());
        assert!(w.push(del(3, 20)).is_none());
        let r = w.push(tick(4, 25)).expect("a tick releases");
        // Delete before the insert of the same timestamp (an upsert's halves).
        assert_eq!(seqs(&r), vec![2, 3, 1]);
        assert_eq!(
            r.cut,
            Cut {
                resume_after: 4,
                through_ts: 25
            }
        );
    }

    #[test]
    fn later_messages_wait_and_the_cut_stays_before_them() {
        let mut w = Windows::new(Cut::default());
        w.push(ins(1, 10));
        w.push(ins(2, 40)); // after the next tick
        w.push(ins(3, 12));
        let r = w.push(tick(4, 30)).unwrap();
        assert_eq!(seqs(&r), vec![1, 3]);
        assert_eq!(
            r.cut,
            Cut {
                resume_after: 1,
                through_ts: 30
            }
        );
        assert_eq!(w.held(), 1);
        w.push(ins(5, 35));
        let r = w.push(tick(6, 50)).unwrap();
        assert_eq!(seqs(&r), vec![5, 2]);
        assert_eq!(r.cut.resume_after, 6);
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn a_replay_from_the_cut_skips_what_was_applied() {
        // First run: 1(ts10) 2(ts40) 3(ts12) tick(30) -> cut (1, 30).
        let mut w = Windows::new(Cut {
            resume_after: 1,
            through_ts: 30,
        });
        // Replay reads 2, 3, 4(tick 30), 5, 6(tick 50).
        assert!(w.push(ins(2, 40)).is_none());
        assert!(w.push(ins(3, 12)).is_none()); // applied: dropped
        let r = w.push(tick(4, 30)).unwrap();
        assert!(r.events.is_empty());
        assert_eq!(r.cut.resume_after, 1, "2 is still held");
        w.push(ins(5, 35));
        let r = w.push(tick(6, 50)).unwrap();
        assert_eq!(seqs(&r), vec![5, 2]);
    }

    #[test]
    fn the_cut_never_moves_back() {
        let mut w = Windows::new(Cut {
            resume_after: 10,
            through_ts: 100,
        });
        let r = w.push(tick(11, 90)).unwrap();
        assert_eq!(
            r.cut,
            Cut {
                resume_after: 11,
                through_ts: 100
            }
        );
    }

    #[test]
    fn release_all_empties_a_silent_channel() {
        let mut w = Windows::new(Cut::default());
        w.push(ins(1, 10));
        w.push(ev(
            2,
            12,
            EventKind::Insert(Box::<InsertRequest>::default()),
        ));
        let r = w.release_all();
        assert_eq!(seqs(&r), vec![1, 2]);
        assert_eq!(
            r.cut,
            Cut {
                resume_after: 2,
                through_ts: 0
            },
            "no tick: the cut's time stays"
        );
        assert_eq!(w.held(), 0);
        // A change with an older timestamp that still arrives is applied,
        // not dropped as covered by the cut.
        w.push(ins(3, 11));
        let r = w.push(tick(4, 20)).unwrap();
        assert_eq!(seqs(&r), vec![3]);
    }
}
