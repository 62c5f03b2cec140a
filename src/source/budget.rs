//! A byte budget for the events queued between a channel's reader and its
//! pipeline: the reader takes an event's size before queueing it and the
//! pipeline gives it back when it takes the event out, so a channel of large
//! inserts holds at most the budget in its queue (plus one message larger
//! than the whole budget, which is let through alone).

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::event::{Event, EventKind};

/// Bytes a queue may hold. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ByteBudget {
    sem: Arc<Semaphore>,
    cap: usize,
}

impl ByteBudget {
    /// A budget of `bytes` (at least 1).
    pub fn new(bytes: usize) -> Self {
        let cap = bytes.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            sem: Arc::new(Semaphore::new(cap)),
            cap,
        }
    }

    /// Waits until `bytes` fit, then takes them.
    pub async fn take(&self, bytes: usize) {
        let n = u32::try_from(bytes.min(self.cap)).unwrap_or(u32::MAX);
        // The semaphore is never closed: acquiring cannot fail.
        if let Ok(p) = self.sem.acquire_many(n).await {
            p.forget();
        }
    }

    /// Gives `bytes` back.
    pub fn give_back(&self, bytes: usize) {
        let n = bytes.min(self.cap).min(u32::MAX as usize);
        self.sem.add_permits(n);
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }
}

/// The bytes an event counts for: its rows' encoded size (inserts and
/// deletes), a small constant otherwise.
pub fn event_bytes(ev: &Event) -> usize {
    match &ev.kind {
        EventKind::Insert(m) => prost::Message::encoded_len(m.as_ref()),
        EventKind::Delete(m) => prost::Message::encoded_len(m.as_ref()),
        _ => 64,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn takes_wait_for_give_backs_and_a_huge_one_passes_alone() {
        let b = ByteBudget::new(100);
        b.take(60).await;
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.take(60)).await;
        assert!(waiting.is_err(), "60 + 60 > 100 waits");
        b.give_back(60);
        b.take(60).await;
        b.give_back(60);
        // Larger than the whole budget: takes all of it, once.
        b.take(1_000).await;
        assert_eq!(b.available(), 0);
        b.give_back(1_000);
        assert_eq!(b.available(), 100);
    }
}
