//! What every consumer-group member of kiln does in a rebalance callback,
//! whichever protocol the group runs: the cooperative one moves only the
//! partitions named, the eager one replaces the whole assignment.

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;

use super::positions::TopicPartition;

/// The partitions a rebalance names.
pub fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition {
            topic: e.topic().to_string(),
            partition: e.partition(),
        })
        .collect()
}

pub fn is_cooperative<C: ConsumerContext>(consumer: &impl Consumer<C>) -> bool {
    matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative)
}

/// Start reading `tpl` (at the offsets set in it, if any).
pub fn take<C: ConsumerContext>(consumer: &impl Consumer<C>, tpl: &TopicPartitionList) -> KafkaResult<()> {
    if is_cooperative(consumer) {
        consumer.incremental_assign(tpl)
    } else {
        consumer.assign(tpl)
    }
}

/// Stop reading `tpl`.
pub fn give_up<C: ConsumerContext>(consumer: &impl Consumer<C>, tpl: &TopicPartitionList) -> KafkaResult<()> {
    if is_cooperative(consumer) {
        consumer.incremental_unassign(tpl)
    } else {
        consumer.unassign()
    }
}
