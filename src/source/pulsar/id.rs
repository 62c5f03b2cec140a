//! Pulsar message ids as the agent orders and checkpoints them.

use pulsar::message::proto::MessageIdData;

/// Bits of the entry id in a sequence.
const ENTRY_BITS: u32 = 22;
/// Bits of the batch index in a sequence.
const BATCH_BITS: u32 = 10;

/// A Pulsar message id as the agent orders it. Non-batched messages have
/// batch index 0, as pulsar-client-go (Milvus's client) numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PulsarMessageId {
    /// BookKeeper ledger id.
    pub ledger_id: u64,
    /// Entry id in the ledger.
    pub entry_id: u64,
    /// Index in a batched entry (0 for a non-batched message).
    pub batch_index: u32,
}

impl PulsarMessageId {
    /// Largest ledger id a sequence can hold.
    pub const MAX_LEDGER: u64 = (1 << (64 - ENTRY_BITS - BATCH_BITS)) - 1;
    /// Largest entry id a sequence can hold.
    pub const MAX_ENTRY: u64 = (1 << ENTRY_BITS) - 1;
    /// Largest batch index a sequence can hold.
    pub const MAX_BATCH: u32 = (1 << BATCH_BITS) - 1;

    /// The id from the fields of a `MessageIdData` (Pulsar's signed values
    /// as they travel, in `u64`). The placeholders "earliest" (-1) and
    /// "latest" are refused, as is a batch index below -1.
    pub fn from_raw(
        ledger_id: u64,
        entry_id: u64,
        batch_index: Option<i32>,
    ) -> Result<Self, String> {
        if i64::try_from(ledger_id).is_err() || i64::try_from(entry_id).is_err() {
            return Err(format!(
                "message id {}:{} is a placeholder (earliest/latest), not a message",
                ledger_id as i64, entry_id as i64
            ));
        }
        let batch_index = match batch_index {
            None | Some(-1) => 0,
            Some(b) => u32::try_from(b).map_err(|_| format!("batch index {b} is not valid"))?,
        };
        Ok(Self {
            ledger_id,
            entry_id,
            batch_index,
        })
    }

    /// The agent's sequence: `(ledger << 32 | entry << 10 | batch) + 1`,
    /// so that 0 still means "nothing" and the order of ids is kept. Ids
    /// whose parts do not fit (ledger ≥ 2^32, entry ≥ 2^22, batch index ≥
    /// 2^10) are refused: the agent cannot checkpoint them.
    pub fn sequence(&self) -> Result<u64, String> {
        if self.ledger_id > Self::MAX_LEDGER
            || self.entry_id > Self::MAX_ENTRY
            || self.batch_index > Self::MAX_BATCH
        {
            return Err(format!(
                "message id {}:{}:{} does not fit the agent's 64-bit sequence (ledger < 2^{}, \
                 entry < 2^{ENTRY_BITS}, batch index < 2^{BATCH_BITS})",
                self.ledger_id,
                self.entry_id,
                self.batch_index,
                64 - ENTRY_BITS - BATCH_BITS
            ));
        }
        let packed = (self.ledger_id << (ENTRY_BITS + BATCH_BITS))
            | (self.entry_id << BATCH_BITS)
            | u64::from(self.batch_index);
        packed
            .checked_add(1)
            .ok_or_else(|| format!("message id {self:?} is the largest id; it has no sequence"))
    }

    /// The id of sequence `seq`; `None` for 0 ("before the first message").
    pub fn from_sequence(seq: u64) -> Option<Self> {
        let packed = seq.checked_sub(1)?;
        Some(Self {
            ledger_id: packed >> (ENTRY_BITS + BATCH_BITS),
            entry_id: (packed >> BATCH_BITS) & Self::MAX_ENTRY,
            // Masked to BATCH_BITS, so it fits.
            batch_index: u32::try_from(packed & u64::from(Self::MAX_BATCH)).unwrap_or(0),
        })
    }

    pub(super) fn to_proto(self) -> MessageIdData {
        MessageIdData {
            ledger_id: self.ledger_id,
            entry_id: self.entry_id,
            partition: Some(-1),
            batch_index: Some(i32::try_from(self.batch_index).unwrap_or(i32::MAX)),
            ..Default::default()
        }
    }
}

/// Pulsar's "earliest" placeholder id (-1:-1).
pub(super) fn earliest_id() -> MessageIdData {
    MessageIdData {
        ledger_id: u64::MAX,
        entry_id: u64::MAX,
        partition: Some(-1),
        batch_index: Some(-1),
        ..Default::default()
    }
}

/// Pulsar's "latest" placeholder id (i64::MAX:i64::MAX).
pub(super) fn latest_id() -> MessageIdData {
    MessageIdData {
        ledger_id: i64::MAX as u64,
        entry_id: i64::MAX as u64,
        partition: Some(-1),
        batch_index: Some(-1),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ledger_id: u64, entry_id: u64, batch_index: u32) -> PulsarMessageId {
        PulsarMessageId {
            ledger_id,
            entry_id,
            batch_index,
        }
    }

    #[test]
    fn sequences_keep_the_order_of_message_ids() {
        let ids = [
            id(0, 0, 0),
            id(0, 0, 1),
            id(0, 1, 0),
            id(0, PulsarMessageId::MAX_ENTRY, PulsarMessageId::MAX_BATCH),
            id(1, 0, 0),
            id(1, 9, 0),
            id(11, 0, 0),
            id(123_456, 49_999, 999),
            id(PulsarMessageId::MAX_LEDGER, 7, 3),
        ];
        let seqs: Vec<u64> = ids.iter().map(|i| i.sequence().unwrap()).collect();
        assert_eq!(seqs[0], 1, "the first possible id is sequence 1");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        for (i, s) in ids.iter().zip(&seqs) {
            assert_eq!(PulsarMessageId::from_sequence(*s), Some(*i));
        }
        assert_eq!(PulsarMessageId::from_sequence(0), None);
        assert_eq!(id(1, 9, 0).sequence().unwrap(), (1 << 32) + (9 << 10) + 1);
    }

    #[test]
    fn ids_that_do_not_fit_are_refused() {
        for bad in [
            id(PulsarMessageId::MAX_LEDGER + 1, 0, 0),
            id(0, PulsarMessageId::MAX_ENTRY + 1, 0),
            id(0, 0, PulsarMessageId::MAX_BATCH + 1),
            id(
                PulsarMessageId::MAX_LEDGER,
                PulsarMessageId::MAX_ENTRY,
                PulsarMessageId::MAX_BATCH,
            ),
        ] {
            assert!(bad.sequence().is_err(), "{bad:?}");
        }
        let err = id(1 << 40, 0, 0).sequence().unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn raw_ids_map_batch_index_and_refuse_placeholders() {
        assert_eq!(PulsarMessageId::from_raw(1, 2, None), Ok(id(1, 2, 0)));
        assert_eq!(PulsarMessageId::from_raw(1, 2, Some(-1)), Ok(id(1, 2, 0)));
        assert_eq!(PulsarMessageId::from_raw(1, 2, Some(5)), Ok(id(1, 2, 5)));
        assert!(PulsarMessageId::from_raw(1, 2, Some(-2)).is_err());
        // An empty topic's last message id: entry -1.
        assert!(PulsarMessageId::from_raw(3, u64::MAX, None).is_err());
        let e = earliest_id();
        assert!(PulsarMessageId::from_raw(e.ledger_id, e.entry_id, e.batch_index).is_err());
        let l = latest_id();
        assert!(PulsarMessageId::from_raw(l.ledger_id, l.entry_id, l.batch_index).is_ok());
    }
}
