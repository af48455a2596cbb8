//! Kafka topics as pipeline sources.
//!
//! A run reads, per topic-partition, the offsets between where its feature
//! sets stopped (recorded in their Delta commits, see [`positions`]) and the
//! high watermark seen when it started ([`read`]), decodes the values into
//! the declared columns ([`decode`]) and hands them to DataFusion as a
//! table with one partition per topic-partition: fetched while the query
//! runs ([`fetch`]), or already in memory (a stream worker's batch).

pub mod buffer;
pub mod decode;
pub mod fetch;
pub mod group;
pub mod positions;
pub mod read;
pub mod rebalance;
pub mod records;
pub mod repeats;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use rdkafka::ClientConfig;
use rdkafka::consumer::BaseConsumer;

pub use decode::{BadKind, BadRecord, METADATA_COLUMNS, RawRecord, RecordDecoder};
pub use fetch::{FetchBuffers, RangeFetch};
pub use positions::{PartitionRange, TopicPartition};
pub use read::PartitionRead;

use crate::pipeline::{KafkaSourceDecl, Pipeline};

/// A Kafka source ready to read: its decoder and client settings.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    pub decl: KafkaSourceDecl,
    pub decoder: RecordDecoder,
    /// The librdkafka settings every client of this source starts from.
    pub client: ClientConfig,
    /// The consumer group offsets are reported to (`group.id`, or
    /// `kiln.<pipeline>`).
    pub group_id: String,
}

/// Why a Kafka source cannot be used, and which option (if any) is to blame.
#[derive(Debug)]
pub struct SourceError {
    pub option: Option<String>,
    pub message: String,
}

impl KafkaSource {
    /// Resolve the declared schema and check the client settings; touches
    /// no broker.
    pub async fn prepare(
        ctx: &SessionContext,
        pipeline: &Pipeline,
        decl: &KafkaSourceDecl,
    ) -> Result<Self, SourceError> {
        let declared = declared_schema(ctx, decl).await.map_err(|e| SourceError {
            option: None,
            message: format!("source '{}': {e}", decl.name),
        })?;
        let decoder =
            RecordDecoder::new(decl.format, &declared, decl.options.max_record_bytes).map_err(|m| {
                SourceError {
                    option: None,
                    message: format!("source '{}': {m}", decl.name),
                }
            })?;
        let mut client = ClientConfig::new();
        for (key, value) in &decl.options.client {
            client.set(key, value);
        }
        let group_id = client
            .get("group.id")
            .map(str::to_string)
            .unwrap_or_else(|| format!("kiln.{}", pipeline.name));
        client
            .set("group.id", &group_id)
            .set("client.id", format!("kiln-{}", pipeline.name))
            // Positions live in the feature sets; the group only mirrors them.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true");
        // librdkafka checks every property when a client is made, without
        // connecting to anything yet.
        if let Err(e) = client.create::<BaseConsumer>() {
            let message = e.to_string();
            let option = decl
                .options
                .client
                .iter()
                .map(|(k, _)| k)
                .find(|k| message.contains(k.as_str()))
                .cloned();
            return Err(SourceError {
                option,
                message: format!("source '{}': Kafka client settings: {message}", decl.name),
            });
        }
        Ok(Self {
            decl: decl.clone(),
            decoder,
            client,
            group_id,
        })
    }

    pub fn schema(&self) -> SchemaRef {
        self.decoder.schema()
    }

    /// Register the source under its name, holding `batches` (one list per
    /// topic-partition; none for planning only).
    pub fn register(&self, ctx: &SessionContext, batches: Vec<Vec<RecordBatch>>) -> DfResult<()> {
        let partitions = if batches.is_empty() { vec![vec![]] } else { batches };
        let table = MemTable::try_new(self.schema(), partitions)?;
        ctx.deregister_table(self.decl.name.as_str())?;
        ctx.register_table(self.decl.name.as_str(), Arc::new(table))?;
        Ok(())
    }

    /// Register the source under its name as `ranges`, fetched while the
    /// queries run, one partition each.
    pub fn register_fetches(&self, ctx: &SessionContext, ranges: Vec<RangeFetch>) -> DfResult<()> {
        if ranges.is_empty() {
            return self.register(ctx, Vec::new());
        }
        let partitions = ranges
            .into_iter()
            .map(|r| Arc::new(r) as Arc<dyn PartitionStream>)
            .collect();
        let table = StreamingTable::try_new(self.schema(), partitions)?;
        ctx.deregister_table(self.decl.name.as_str())?;
        ctx.register_table(self.decl.name.as_str(), Arc::new(table))?;
        Ok(())
    }
}

/// The columns as written in the declaration, typed by DataFusion.
async fn declared_schema(ctx: &SessionContext, decl: &KafkaSourceDecl) -> DfResult<Schema> {
    Ok(super::plan_declaration(ctx, &decl.create)
        .await?
        .schema
        .as_arrow()
        .clone())
}
