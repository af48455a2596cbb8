//! A feature set's rows written as Parquet files while its query runs.
//!
//! A run's output never waits in memory for the commit: each INSERT's
//! batches go to data files in the feature set's folder as they arrive,
//! and what the run commits at the end (see [`super::commit`]) is the list
//! of those files. Files of a run that fails before its commit are in no
//! version, so no reader sees them: the run stays all or nothing.
//!
//! The first rows are held back (up to one row group's rows, or a share of
//! the write buffers) before the Parquet writer is made, so that a small
//! write, the usual stream batch, gets the dictionary limit its row count
//! calls for (see [`super::encoding`]); a large one gets the limit of a
//! full row group.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use deltalake::DeltaTableBuilder;
use deltalake::kernel::Add;
use deltalake::logstore::ObjectStoreRef;
use deltalake::operations::write::WriterStatsConfig;
use deltalake::operations::write::writer::{DeltaWriter, WriterConfig};
use deltalake::table::config::DEFAULT_TARGET_FILE_SIZE;
use parquet::file::properties::DEFAULT_MAX_ROW_GROUP_ROW_COUNT;

use super::{encoding, table_url};
use crate::error::{Context, KilnError, Result};

/// What a writer may hold in memory, from the bytes it is given (see
/// `Resources::buffer_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct WriteBuffers {
    /// Rows held back before the Parquet writer is made.
    pub hold_bytes: usize,
    /// The row group being built.
    pub row_group_bytes: usize,
}

impl WriteBuffers {
    pub fn within(bytes: usize) -> Self {
        const MIB: usize = 1 << 20;
        Self {
            hold_bytes: (bytes / 4).clamp(MIB, 32 * MIB),
            row_group_bytes: (bytes / 2).clamp(4 * MIB, 64 * MIB),
        }
    }
}

/// Data files written for one feature set and not committed yet.
#[derive(Debug, Default)]
pub struct WrittenFiles {
    pub adds: Vec<Add>,
    pub rows: u64,
}

/// Writes the rows of one INSERT into data files of its feature set.
pub struct FileWriter {
    location: String,
    schema: SchemaRef,
    store: ObjectStoreRef,
    stats: WriterStatsConfig,
    buffers: WriteBuffers,
    held: Vec<RecordBatch>,
    held_rows: usize,
    held_bytes: usize,
    writer: Option<DeltaWriter>,
    rows: u64,
}

impl FileWriter {
    /// A writer of rows of `schema` (storable, see [`super::to_storable`])
    /// into the feature set at `location`, which may not exist yet.
    pub async fn open(
        location: &str,
        schema: SchemaRef,
        tables: &super::OpenTables,
        buffers: WriteBuffers,
    ) -> Result<Self> {
        let context = || format!("opening feature set at '{location}' for writing");
        // The latest commits are read at the commit; a stream worker's
        // batch should not list the log twice.
        let (store, stats) = match tables.held(location).await? {
            Some(table) => {
                let snapshot = table.snapshot().context(context)?;
                (
                    table.log_store().object_store(None),
                    WriterStatsConfig::from_config(snapshot.snapshot().table_configuration()),
                )
            }
            None => {
                let url = table_url(location)?;
                if let Ok(dir) = url.to_file_path() {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| KilnError::Io(format!("creating {}: {e}", dir.display())))?;
                }
                let table = DeltaTableBuilder::from_url(url)
                    .and_then(|b| b.build())
                    .context(context)?;
                (
                    table.log_store().object_store(None),
                    WriterStatsConfig::new(Default::default(), None),
                )
            }
        };
        Ok(Self {
            location: location.to_string(),
            schema,
            store,
            stats,
            buffers,
            held: Vec::new(),
            held_rows: 0,
            held_bytes: 0,
            writer: None,
            rows: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Write one batch of the feature set's schema.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        self.rows += batch.num_rows() as u64;
        if let Some(writer) = &mut self.writer {
            return writer.write(&batch).await.map_err(|e| self.failed(e));
        }
        self.held_rows += batch.num_rows();
        self.held_bytes += batch.get_array_memory_size();
        self.held.push(batch);
        if self.held_rows >= DEFAULT_MAX_ROW_GROUP_ROW_COUNT || self.held_bytes >= self.buffers.hold_bytes {
            self.start(DEFAULT_MAX_ROW_GROUP_ROW_COUNT).await?;
        }
        Ok(())
    }

    /// Write what is held and close the files: they are ready to commit.
    pub async fn finish(mut self) -> Result<WrittenFiles> {
        if self.writer.is_none() && !self.held.is_empty() {
            self.start(self.held_rows).await?;
        }
        let adds = match self.writer.take() {
            Some(writer) => writer.close().await.map_err(|e| self.failed(e))?,
            None => Vec::new(),
        };
        Ok(WrittenFiles {
            adds,
            rows: self.rows,
        })
    }

    /// Make the Parquet writer for a write of about `rows` rows and hand it
    /// what was held back.
    async fn start(&mut self, rows: usize) -> Result<()> {
        let config = WriterConfig::new(
            self.schema.clone(),
            Vec::new(),
            Some(encoding::writer_properties(
                rows,
                self.buffers.row_group_bytes,
                &self.held,
            )),
            Some(DEFAULT_TARGET_FILE_SIZE),
            None,
            self.stats.num_indexed_cols,
            self.stats.stats_columns.clone(),
        );
        let mut writer = DeltaWriter::new(self.store.clone(), config);
        for batch in std::mem::take(&mut self.held) {
            writer.write(&batch).await.map_err(|e| self.failed(e))?;
        }
        self.held_bytes = 0;
        self.writer = Some(writer);
        Ok(())
    }

    fn failed(&self, source: deltalake::DeltaTableError) -> KilnError {
        KilnError::Delta {
            context: format!("writing data files of feature set at '{}'", self.location),
            source,
        }
    }
}

/// Write `batches` (all of them already in memory: dead letters, tests)
/// into data files of the feature set at `location`.
pub async fn write_batches(
    location: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    tables: &super::OpenTables,
) -> Result<WrittenFiles> {
    let buffers = WriteBuffers::within(64 << 20);
    let mut writer = FileWriter::open(location, schema, tables, buffers).await?;
    for batch in batches {
        writer.write(batch).await?;
    }
    writer.finish().await
}
