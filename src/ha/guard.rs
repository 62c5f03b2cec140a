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

    /// Moves the deadline to `at` if that is later. A guard whose deadline
    /// has passed stays expired: a renewal acknowledged too late cannot
    /// revive a term that may already have been handed over.
    pub(super) fn extend(&self, at: Instant) {
        let mut g = self
            .valid_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(cur) = g.as_mut() {
            if *cur > Instant::now() {
                *cur = (*cur).max(at);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_is_valid_until_its_deadline_and_never_shrinks() {
        let g = LeaseGuard::until(Instant::now() + Duration::from_secs(60), Duration::ZERO);
        assert!(g.is_valid());
        let left = g.remaining().unwrap();
        assert!(left > Duration::from_secs(59) && left <= Duration::from_secs(60));
        // An older renewal arriving late does not pull the deadline in.
        g.extend(Instant::now() + Duration::from_secs(1));
        assert!(g.remaining().unwrap() > Duration::from_secs(59));
        g.extend(Instant::now() + Duration::from_secs(120));
        assert!(g.remaining().unwrap() > Duration::from_secs(119));
    }

    #[test]
    fn an_expired_guard_refuses_and_cannot_be_revived() {
        let g = LeaseGuard::until(Instant::now() + Duration::from_secs(60), Duration::ZERO);
        let clone = g.clone();
        g.expire_now();
        assert!(!clone.is_valid(), "clones share the state");
        assert_eq!(clone.remaining(), Some(Duration::ZERO));
        g.extend(Instant::now() + Duration::from_secs(60));
        assert!(!clone.is_valid(), "a late renewal does not revive it");
    }

    #[test]
    fn the_write_deadline_adds_the_grace_to_the_renew_deadline() {
        let at = Instant::now() + Duration::from_secs(10);
        let g = LeaseGuard::until(at, Duration::from_secs(20));
        let d = g.write_deadline().unwrap();
        assert_eq!(
            d,
            tokio::time::Instant::from_std(at + Duration::from_secs(20))
        );
        let always = LeaseGuard::always_valid();
        assert!(always.is_valid());
        assert_eq!(always.remaining(), None);
        assert_eq!(always.write_deadline(), None);
    }
}
