//! [`SharedSubqueryExec`]: one execution of a subquery, read by each of
//! the places that use it.
//!
//! The first place to execute a partition starts a task that runs the
//! subquery's partition once (in the copy of the subquery that ran first,
//! whichever place executes it) and queues every batch for each place. A
//! place reads its own queue at its own pace: the medians of an enrichment
//! pipeline read the whole subquery before the join that uses them starts
//! reading it again. What waits in a queue is counted by the memory pool;
//! when the pool refuses more, that place's later batches go to spill files
//! (DataFusion's spill pool, deleted as they are read), so no size of
//! subquery fails for memory. The task runs no further ahead of the place
//! reading fastest than a few batches.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet, SpillMetrics};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::spill::spill_pool::{SpillPoolSink, spsc_channel};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use tokio::sync::Notify;

/// Batches the task may queue for the place that reads fastest.
const AHEAD: usize = 4;
/// The share of a bounded memory pool that all the queues of one subquery
/// may hold: the operators around it need the rest.
const QUEUE_SHARE: usize = 8;
/// Spill files rotate at this size, so read ones are deleted early.
const SPILL_FILE_BYTES: usize = 128 << 20;

/// The execution shared by every place that reads one subquery, per
/// partition; one per physical plan.
pub struct Shared {
    pub id: u64,
    /// How many places read the subquery.
    pub readers: usize,
    /// The copy of the subquery that runs, every partition of it: the
    /// first one a reader executes. Operators coordinate their partitions
    /// (a join's dynamic filter waits for every partition's build side),
    /// so partitions of different copies would wait for each other.
    running: Mutex<Option<Arc<dyn ExecutionPlan>>>,
    feeds: Mutex<HashMap<usize, Arc<Feed>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .field("readers", &self.readers)
            .finish()
    }
}

impl Shared {
    pub fn new(id: u64, readers: usize) -> Self {
        Self {
            id,
            readers,
            running: Mutex::new(None),
            feeds: Mutex::new(HashMap::new()),
        }
    }
}

/// One partition of the subquery, running once for every reader.
struct Feed {
    state: Mutex<FeedState>,
    /// Per reader: a batch was queued, or the subquery ended.
    arrived: Vec<Notify>,
    /// A reader took a batch, or went away.
    taken: Notify,
    partitions: usize,
    /// Bytes one reader's queue may hold in memory.
    queue_bytes: usize,
}

struct FeedState {
    queues: Vec<Queue>,
    /// Set once the subquery's partition has ended.
    ended: Option<Result<(), Arc<DataFusionError>>>,
}

struct Queue {
    batches: VecDeque<RecordBatch>,
    reservation: MemoryReservation,
    /// Once the pool refused a batch, this reader's later batches go to
    /// spill files (the driver holds the writing end).
    spilling: bool,
    /// The reading end of those files, until the reader takes it.
    spilled: Option<SendableRecordBatchStream>,
    /// The reader has started reading.
    opened: bool,
    /// The reader dropped its stream: queue nothing more for it.
    gone: bool,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().expect("shared subquery lock")
    }
}

/// Reads one subquery for one of the places that use it.
#[derive(Debug)]
pub struct SharedSubqueryExec {
    input: Arc<dyn ExecutionPlan>,
    shared: Arc<Shared>,
    reader: usize,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedSubqueryExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, shared: Arc<Shared>, reader: usize) -> Self {
        Self {
            input,
            shared,
            reader,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The partition's feed, started by the first reader to ask.
    fn feed(&self, partition: usize, context: &Arc<TaskContext>) -> Result<Arc<Feed>> {
        let mut feeds = self.shared.feeds.lock().expect("shared subquery feeds lock");
        if let Some(feed) = feeds.get(&partition) {
            return Ok(Arc::clone(feed));
        }
        let input = Arc::clone(
            self.shared
                .running
                .lock()
                .expect("shared subquery plan lock")
                .get_or_insert_with(|| Arc::clone(&self.input)),
        );
        let schema = input.schema();
        let queues = (0..self.shared.readers)
            .map(|r| {
                let reservation =
                    MemoryConsumer::new(format!("SharedSubquery[{}] reader {r}", self.shared.id))
                        .with_can_spill(true)
                        .register(context.memory_pool());
                Queue {
                    batches: VecDeque::new(),
                    reservation,
                    spilling: false,
                    spilled: None,
                    opened: false,
                    gone: false,
                }
            })
            .collect();
        let partitions = input.output_partitioning().partition_count();
        let feed = Arc::new(Feed {
            state: Mutex::new(FeedState { queues, ended: None }),
            arrived: (0..self.shared.readers).map(|_| Notify::new()).collect(),
            taken: Notify::new(),
            partitions,
            queue_bytes: match context.memory_pool().memory_limit() {
                MemoryLimit::Finite(bytes) => bytes / QUEUE_SHARE / (self.shared.readers * partitions).max(1),
                MemoryLimit::Infinite | MemoryLimit::Unknown => usize::MAX,
            },
        });
        let spill = Arc::new(SpillManager::new(
            context.runtime_env(),
            SpillMetrics::new(&self.metrics, partition),
            schema,
        ));
        let batches = input.execute(partition, Arc::clone(context))?;
        let task = drive(Arc::clone(&feed), batches, spill);
        // The task ends with the subquery; a query dropped early drops its
        // readers, and a feed with no reader left stops queueing.
        tokio::spawn(task);
        feeds.insert(partition, Arc::clone(&feed));
        Ok(feed)
    }
}

/// Run the subquery's partition, queueing each batch for every reader.
async fn drive(feed: Arc<Feed>, mut input: SendableRecordBatchStream, spill: Arc<SpillManager>) {
    // The writing ends of the readers' spill files, kept out of the lock so
    // that no reader waits on a disk write.
    let mut sinks: Vec<Option<SpillPoolSink>> = (0..feed.arrived.len()).map(|_| None).collect();
    let outcome = loop {
        // Run at most AHEAD batches ahead of the reader that reads fastest
        // (readers whose batches go to disk do not hold memory, and do not
        // count).
        loop {
            let taken = feed.taken.notified();
            let ahead = {
                let state = feed.lock();
                let live = state.queues.iter().filter(|q| !q.gone && !q.spilling);
                live.map(|q| q.batches.len()).min().is_some_and(|n| n >= AHEAD)
            };
            if !ahead {
                break;
            }
            taken.await;
        }
        if feed.lock().queues.iter().all(|q| q.gone) {
            break Ok(());
        }
        match input.next().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(Arc::new(e)),
            Some(Ok(batch)) => {
                if let Err(e) = queue(&feed, &batch, &spill, &mut sinks) {
                    break Err(Arc::new(e));
                }
            }
        }
    };
    feed.lock().ended = Some(outcome);
    // Only now finish the spill files: a reader that reaches their end
    // finds how the subquery ended, an error included.
    drop(sinks);
    for arrived in &feed.arrived {
        arrived.notify_one();
    }
}

/// Queue `batch` for every reader still reading: in memory while its
/// share allows, in its spill files after that.
fn queue(
    feed: &Feed,
    batch: &RecordBatch,
    spill: &Arc<SpillManager>,
    sinks: &mut [Option<SpillPoolSink>],
) -> Result<()> {
    let size = batch.get_array_memory_size();
    let mut to_disk = Vec::new();
    {
        let mut state = feed.lock();
        for (r, q) in state.queues.iter_mut().enumerate() {
            if q.gone {
                sinks[r] = None;
                continue;
            }
            if !q.spilling
                && q.reservation.size() + size <= feed.queue_bytes
                && q.reservation.try_grow(size).is_ok()
            {
                q.batches.push_back(batch.clone());
                continue;
            }
            if !q.spilling {
                let (sink, stream) = spsc_channel(SPILL_FILE_BYTES, Arc::clone(spill));
                sinks[r] = Some(sink);
                q.spilled = Some(stream);
                q.spilling = true;
            }
            to_disk.push(r);
        }
    }
    for &r in &to_disk {
        if let Some(sink) = &sinks[r] {
            sink.push_batch(batch)?;
        }
    }
    for arrived in &feed.arrived {
        arrived.notify_one();
    }
    Ok(())
}

/// What a reader does next.
enum Next {
    Batch(RecordBatch),
    Spilled(SendableRecordBatchStream),
    Ended(Result<(), Arc<DataFusionError>>),
    Wait,
}

/// The reader's end of its queue: memory first, then its spill files.
struct Reader {
    feed: Arc<Feed>,
    reader: usize,
    spilled: Option<SendableRecordBatchStream>,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            if let Some(stream) = &mut self.spilled {
                match stream.next().await {
                    Some(batch) => return Some(batch),
                    // The files end after the subquery did: how it ended
                    // is known below.
                    None => self.spilled = None,
                }
            }
            let arrived = self.feed.arrived[self.reader].notified();
            let next = {
                let mut state = self.feed.lock();
                let ended = state.ended.clone();
                let q = &mut state.queues[self.reader];
                if let Some(batch) = q.batches.pop_front() {
                    q.reservation.shrink(batch.get_array_memory_size());
                    Next::Batch(batch)
                } else if let Some(stream) = q.spilled.take() {
                    Next::Spilled(stream)
                } else if let Some(ended) = ended {
                    Next::Ended(ended)
                } else {
                    Next::Wait
                }
            };
            match next {
                Next::Batch(batch) => {
                    self.feed.taken.notify_one();
                    return Some(Ok(batch));
                }
                Next::Spilled(stream) => self.spilled = Some(stream),
                Next::Ended(Ok(())) => return None,
                Next::Ended(Err(e)) => return Some(Err(DataFusionError::Shared(e))),
                Next::Wait => arrived.await,
            }
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.feed.lock();
        let q = &mut state.queues[self.reader];
        q.gone = true;
        q.batches.clear();
        q.reservation.free();
        q.spilled = None;
        drop(state);
        self.feed.taken.notify_one();
    }
}

impl DisplayAs for SharedSubqueryExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "SharedSubqueryExec: id={}, reader {} of {}",
            self.shared.id,
            self.reader + 1,
            self.shared.readers
        )
    }
}

impl ExecutionPlan for SharedSubqueryExec {
    fn name(&self) -> &str {
        "SharedSubqueryExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("SharedSubqueryExec takes one input, got {}", children.len());
        }
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            Arc::clone(&self.shared),
            self.reader,
        )))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let feed = self.feed(partition, &context)?;
        // A reader whose plan came out with other partitions, or that reads
        // a partition twice, runs its own copy of the subquery: slower, the
        // same rows.
        let own = feed.partitions != self.input.output_partitioning().partition_count() || {
            let mut state = feed.lock();
            std::mem::replace(&mut state.queues[self.reader].opened, true)
        };
        if own {
            return self.input.execute(partition, context);
        }
        let reader = Reader {
            feed,
            reader: self.reader,
            spilled: None,
        };
        let batches = futures::stream::unfold(reader, |mut reader| async move {
            reader.next().await.map(|batch| (batch, reader))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.input.schema(),
            batches,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use datafusion::execution::memory_pool::FairSpillPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

    use super::*;

    /// 40 batches of 64 rows, then an error.
    #[derive(Debug)]
    struct FailsAtTheEnd(SchemaRef);

    impl PartitionStream for FailsAtTheEnd {
        fn schema(&self) -> &SchemaRef {
            &self.0
        }

        fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
            let schema = Arc::clone(&self.0);
            let batches = (0..40i64)
                .map(move |b| {
                    let values = Int64Array::from_iter_values(b * 64..(b + 1) * 64);
                    Ok(RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)])?)
                })
                .chain([Err(DataFusionError::Execution("the source broke".into()))]);
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.0),
                futures::stream::iter(batches),
            ))
        }
    }

    async fn read_all(mut stream: SendableRecordBatchStream) -> (usize, Option<String>) {
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            match batch {
                Ok(b) => rows += b.num_rows(),
                Err(e) => return (rows, Some(e.to_string())),
            }
        }
        (rows, None)
    }

    /// Ten rows per partition, noting which copy of the plan ran it.
    #[derive(Debug)]
    struct Noted {
        schema: SchemaRef,
        copy: &'static str,
        partition: usize,
        ran: Arc<Mutex<Vec<(&'static str, usize)>>>,
    }

    impl PartitionStream for Noted {
        fn schema(&self) -> &SchemaRef {
            &self.schema
        }

        fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
            self.ran.lock().unwrap().push((self.copy, self.partition));
            let values = Int64Array::from_iter_values(0..10);
            let batch = RecordBatch::try_new(Arc::clone(&self.schema), vec![Arc::new(values)]);
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::iter([batch.map_err(DataFusionError::from)]),
            ))
        }
    }

    #[tokio::test]
    async fn every_partition_runs_in_the_copy_that_ran_first() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let ran = Arc::new(Mutex::new(Vec::new()));
        let copy = |copy: &'static str| -> Arc<dyn ExecutionPlan> {
            let partitions: Vec<Arc<dyn PartitionStream>> = (0..2)
                .map(|partition| {
                    Arc::new(Noted {
                        schema: Arc::clone(&schema),
                        copy,
                        partition,
                        ran: Arc::clone(&ran),
                    }) as Arc<dyn PartitionStream>
                })
                .collect();
            Arc::new(
                StreamingTableExec::try_new(Arc::clone(&schema), partitions, None, vec![], false, None)
                    .unwrap(),
            )
        };
        let shared = Arc::new(Shared::new(1, 2));
        let a = SharedSubqueryExec::new(copy("a"), Arc::clone(&shared), 0);
        let b = SharedSubqueryExec::new(copy("b"), shared, 1);
        let context = Arc::new(TaskContext::default());
        // Each reader opens a different partition first.
        let streams = [
            a.execute(0, Arc::clone(&context)).unwrap(),
            b.execute(1, Arc::clone(&context)).unwrap(),
            a.execute(1, Arc::clone(&context)).unwrap(),
            b.execute(0, Arc::clone(&context)).unwrap(),
        ];
        for stream in streams {
            assert_eq!(read_all(stream).await, (10, None));
        }
        let mut ran = ran.lock().unwrap().clone();
        ran.sort();
        assert_eq!(ran, [("a", 0), ("a", 1)]);
    }

    #[tokio::test]
    async fn every_reader_sees_the_error_even_one_reading_from_spill_files() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let source: Arc<dyn PartitionStream> = Arc::new(FailsAtTheEnd(Arc::clone(&schema)));
        let input: Arc<dyn ExecutionPlan> =
            Arc::new(StreamingTableExec::try_new(schema, vec![source], None, vec![], false, None).unwrap());
        let shared = Arc::new(Shared::new(1, 2));
        let first = SharedSubqueryExec::new(Arc::clone(&input), Arc::clone(&shared), 0);
        let second = SharedSubqueryExec::new(input, shared, 1);
        // A pool so small that the second reader's queue goes to disk.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(64 << 10)))
            .build_arc()
            .unwrap();
        let context = Arc::new(TaskContext::default().with_runtime(runtime));

        let (rows, error) = read_all(first.execute(0, Arc::clone(&context)).unwrap()).await;
        assert_eq!(rows, 40 * 64);
        assert!(error.is_some_and(|e| e.contains("the source broke")));
        // Only now does the second reader start: its rows wait on disk.
        let (rows, error) = read_all(second.execute(0, context).unwrap()).await;
        assert_eq!(rows, 40 * 64);
        assert!(error.is_some_and(|e| e.contains("the source broke")));
        let spills = second.metrics().and_then(|m| m.spill_count()).unwrap_or(0)
            + first.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
        assert!(spills > 0, "the second reader's rows were to go to disk");
    }
}
