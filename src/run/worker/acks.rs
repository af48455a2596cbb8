//! How far a trigger partition's group offset may move.
//!
//! Triggers of different pipelines in one partition run at the same time
//! and end in any order, but a group offset says "everything before this is
//! done". So the offset moves to the oldest trigger still running (or past
//! the newest delivered, when none runs), never beyond a trigger that has
//! not ended: a worker that dies re-delivers it, and whatever already ended
//! after it is found committed in the feature sets' ledgers.

use std::collections::{BTreeMap, BTreeSet};

use crate::source::kafka::TopicPartition;

#[derive(Debug, Default)]
pub(super) struct Acks {
    partitions: BTreeMap<TopicPartition, Partition>,
}

#[derive(Debug, Default)]
struct Partition {
    /// The holding of the partition these offsets came in (see
    /// `consumer::Delivery::epoch`): a partition that came back starts over.
    epoch: u64,
    /// Offsets delivered and not ended yet.
    open: BTreeSet<i64>,
    /// One past the newest offset delivered.
    next: i64,
    /// The offset last handed out to commit.
    committed: i64,
}

impl Acks {
    /// `offset` of `tp` was delivered in holding `epoch` (offsets arrive in
    /// order per partition).
    pub fn delivered(&mut self, tp: &TopicPartition, epoch: u64, offset: i64) {
        let p = self.partitions.entry(tp.clone()).or_default();
        if p.epoch != epoch {
            // The group's offset is where this holding began.
            *p = Partition {
                epoch,
                committed: offset,
                ..Partition::default()
            };
        }
        p.open.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// The trigger at `offset` ended; the offset to commit now, when it moved.
    pub fn ended(&mut self, tp: &TopicPartition, epoch: u64, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(tp).filter(|p| p.epoch == epoch)?;
        if !p.open.remove(&offset) {
            return None;
        }
        let at = p.open.first().copied().unwrap_or(p.next);
        (at > p.committed).then(|| {
            p.committed = at;
            at
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_never_passes_a_trigger_still_running() {
        let tp = TopicPartition {
            topic: "t".into(),
            partition: 0,
        };
        let mut acks = Acks::default();
        for offset in [4, 5, 6] {
            acks.delivered(&tp, 1, offset);
        }
        // 5 and 6 end first: 4 still runs, so nothing moves.
        assert_eq!(acks.ended(&tp, 1, 5), None);
        assert_eq!(acks.ended(&tp, 1, 6), None);
        // 4 ends: everything through 6 is done.
        assert_eq!(acks.ended(&tp, 1, 4), Some(7));
        // Ending twice, or an offset never delivered, moves nothing.
        assert_eq!(acks.ended(&tp, 1, 4), None);
        acks.delivered(&tp, 1, 7);
        acks.delivered(&tp, 1, 8);
        assert_eq!(acks.ended(&tp, 1, 7), Some(8));
        // The partition left and came back at its committed offset 8: the
        // old holding's offsets neither count nor block.
        acks.delivered(&tp, 2, 8);
        assert_eq!(
            acks.ended(&tp, 1, 8),
            None,
            "a run of the old holding commits nothing"
        );
        assert_eq!(acks.ended(&tp, 2, 8), Some(9));
    }
}
