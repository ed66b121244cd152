//! Bounds on produced bytes waiting for the disk.
//!
//! A produced batch is held in memory from the moment its frame is read until the partition's
//! writer has written and (under `fsync=always`) synced it. Producers faster than the disk
//! would otherwise grow that backlog without limit. Before a connection dispatches a produce
//! request it reserves the batch's size, first from its partition's budget
//! (`max_partition_queue_bytes`) and then from the broker's (`max_produce_queue_bytes`); the
//! reservation is released when the append is acknowledged or fails. While a reservation
//! waits, the connection reads nothing more, so TCP pushes back on the producer: memory stays
//! bounded and nobody is refused.
//!
//! The partition budget is taken first, so a connection waiting for a slow partition holds none
//! of the broker's budget meanwhile and other partitions keep flowing.

use rill_protocol::TopicName;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct ProduceBudget {
    broker: Arc<Semaphore>,
    capacity: usize,
    per_partition: usize,
    /// Per topic, a budget per partition, made the first time a partition is produced to.
    /// Looked up by borrowed name: nothing is allocated per produced batch.
    partitions: Mutex<HashMap<TopicName, Vec<Arc<Semaphore>>>>,
}

/// Bytes of one produced batch counted against both budgets until dropped.
#[derive(Debug)]
pub struct Reservation {
    _partition: OwnedSemaphorePermit,
    _broker: OwnedSemaphorePermit,
}

impl ProduceBudget {
    /// Budgets of `broker_bytes` for the whole broker and `partition_bytes` per partition; both
    /// must be at least the largest frame, or a batch could wait forever.
    pub fn new(broker_bytes: usize, partition_bytes: usize) -> Self {
        let capacity = broker_bytes.min(Semaphore::MAX_PERMITS);
        ProduceBudget {
            broker: Arc::new(Semaphore::new(capacity)),
            capacity,
            per_partition: partition_bytes.min(Semaphore::MAX_PERMITS),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// The budget of one partition.
    fn partition(&self, topic: &TopicName, partition: u32) -> Arc<Semaphore> {
        let mut map = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        let i = partition as usize;
        if let Some(s) = map.get(topic).and_then(|v| v.get(i)) {
            return s.clone();
        }
        let slots = map.entry(topic.clone()).or_default();
        while slots.len() <= i {
            slots.push(Arc::new(Semaphore::new(self.per_partition)));
        }
        slots[i].clone()
    }

    /// Waits until `bytes` fit in the partition's budget and the broker's, and reserves them.
    pub async fn reserve(
        &self,
        topic: &TopicName,
        partition: u32,
        bytes: usize,
    ) -> Option<Reservation> {
        let part = self.partition(topic, partition);
        let n = u32::try_from(bytes.min(self.per_partition)).unwrap_or(u32::MAX);
        let partition = part.acquire_many_owned(n).await.ok()?;
        let broker = self.broker.clone().acquire_many_owned(n).await.ok()?;
        Some(Reservation {
            _partition: partition,
            _broker: broker,
        })
    }

    /// Bytes reserved now across the broker.
    pub fn queued(&self) -> usize {
        self.capacity
            .saturating_sub(self.broker.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_partition_waits_while_others_flow_and_release_frees_room() {
        let budget = Arc::new(ProduceBudget::new(300, 200));
        let t = TopicName::new("t").unwrap();
        let a1 = budget.reserve(&t, 0, 150).await.unwrap();
        // t-0 is nearly full: the next reservation for it waits...
        let (b, t2) = (budget.clone(), t.clone());
        let mut waiting = tokio::spawn(async move { b.reserve(&t2, 0, 100).await });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        // ...while another partition still gets room from the broker's budget.
        let other = budget.reserve(&t, 1, 100).await.unwrap();
        assert_eq!(budget.queued(), 250);
        drop(a1);
        let a2 = waiting.await.unwrap().unwrap();
        assert_eq!(budget.queued(), 200);
        drop((a2, other));
        assert_eq!(budget.queued(), 0);
    }
}
