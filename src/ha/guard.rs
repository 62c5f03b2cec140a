//! The lease guard: whether this replica may still write as leader, judged
//! from its own clock.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Whether this replica may still act as leader, judged from its own clock:
/// valid until the last acknowledged keep-alive's send time plus the renew
/// deadline. Cheap to clone and to check before every write.
#[derive(Clone, Debug)]
pub struct LeaseGuard {
    valid_until: Arc<Mutex<Option<Instant>>>,
    /// How long after `valid_until` a write sent before it may still run
    /// (see [`LeaseGuard::write_deadline`]).
    write_grace: Duration,
}

impl Default for LeaseGuard {
    fn default() -> Self {
        Self::always_valid()
    }
}

impl LeaseGuard {
    /// A guard that never expires (single replica without election, tests).
    pub fn always_valid() -> Self {
        Self {
            valid_until: Arc::new(Mutex::new(None)),
            write_grace: Duration::ZERO,
        }
    }

    pub(super) fn until(at: Instant, write_grace: Duration) -> Self {
        Self {
            valid_until: Arc::new(Mutex::new(Some(at))),
            write_grace,
        }
    }

    pub(super) fn extend(&self, at: Instant) {
        let mut g = self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cur) = g.as_mut() {
            *cur = (*cur).max(at);
        }
    }

    /// Makes the guard refuse from now on.
    pub fn expire_now(&self) {
        self.expire();
    }

    pub(super) fn expire(&self) {
        let mut g = self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *g = Some(Instant::now());
    }

    /// Whether leadership is still valid now.
    pub fn is_valid(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|t| Instant::now() < t)
    }

    /// Time left before the renew deadline (None: never expires).
    pub fn remaining(&self) -> Option<Duration> {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// The latest moment a target write sent now may still run (None: no
    /// limit): the renew deadline (2/3 of the TTL after the last renewal)
    /// plus two TTLs. A successor takes over at the earliest one TTL after
    /// that renewal and replays its takeover window `2 · TTL + 2 s` later,
    /// so every write of a deposed leader has ended before that replay.
    pub fn write_deadline(&self) -> Option<tokio::time::Instant> {
        self.valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map(|t| tokio::time::Instant::from_std(t + self.write_grace))
    }
}
