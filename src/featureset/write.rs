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

    /// One of `n` writers' equal shares, each as large as one writer needs
    /// at least.
    pub fn shared_by(self, n: usize) -> Self {
        let n = n.max(1);
        Self {
            hold_bytes: (self.hold_bytes / n).max(Self::within(0).hold_bytes),
            row_group_bytes: (self.row_group_bytes / n).max(Self::within(0).row_group_bytes),
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
        Ok(Self::empty(location.to_string(), schema, store, stats, buffers))
    }

    fn empty(
        location: String,
        schema: SchemaRef,
        store: ObjectStoreRef,
        stats: WriterStatsConfig,
        buffers: WriteBuffers,
    ) -> Self {
        Self {
            location,
            schema,
            store,
            stats,
            buffers,
            held: Vec::new(),
            held_rows: 0,
            held_bytes: 0,
            writer: None,
            rows: 0,
        }
    }

    /// A writer into the same feature set with nothing written yet, for
    /// another part of the same output (see [`finish_parts`]).
    pub fn sibling(&self, buffers: WriteBuffers) -> Self {
        Self::empty(
            self.location.clone(),
            self.schema.clone(),
            self.store.clone(),
            self.stats.clone(),
            buffers,
        )
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

/// Close the writers of the parts of one output (see
/// [`FileWriter::sibling`]). The rows of those still holding their first
/// rows back go into one file together: a small output written in parts
/// is one file, as it would be written whole.
pub async fn finish_parts(writers: Vec<FileWriter>) -> Result<WrittenFiles> {
    let mut written = WrittenFiles::default();
    let mut add = |files: WrittenFiles| {
        written.adds.extend(files.adds);
        written.rows += files.rows;
    };
    let mut pool: Option<FileWriter> = None;
    for mut part in writers {
        if part.writer.is_some() {
            add(part.finish().await?);
        } else if let Some(pool) = &mut pool {
            for batch in std::mem::take(&mut part.held) {
                pool.write(batch).await?;
            }
        } else {
            pool = Some(part);
        }
    }
    if let Some(pool) = pool {
        add(pool.finish().await?);
    }
    Ok(written)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;
    use crate::featureset::OpenTables;

    fn batch(schema: &SchemaRef, from: i64, rows: i64) -> RecordBatch {
        let values = Int64Array::from_iter_values(from..from + rows);
        RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap()
    }

    /// The values in the files of `written`, sorted.
    fn read_back(dir: &std::path::Path, written: &WrittenFiles) -> Vec<i64> {
        let mut values = Vec::new();
        for add in &written.adds {
            let file = std::fs::File::open(dir.join(&add.path)).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file)
                .unwrap()
                .build()
                .unwrap()
            {
                let batch = batch.unwrap();
                let column = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                values.extend(column.values().iter().copied());
            }
        }
        values.sort_unstable();
        values
    }

    /// Three writers of the parts of one output into a feature set in `dir`,
    /// each with the smallest buffers.
    async fn three_parts(dir: &std::path::Path) -> (SchemaRef, Vec<FileWriter>) {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let buffers = WriteBuffers::within(0);
        let location = dir.display().to_string();
        let first = FileWriter::open(&location, schema.clone(), &OpenTables::default(), buffers)
            .await
            .unwrap();
        (
            schema,
            vec![first.sibling(buffers), first.sibling(buffers), first],
        )
    }

    #[tokio::test]
    async fn parts_holding_their_first_rows_pool_into_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, mut parts) = three_parts(dir.path()).await;

        // Two small parts and one past what a writer holds back (1 MiB).
        parts[0].write(batch(&schema, 0, 10)).await.unwrap();
        parts[0].write(batch(&schema, 10, 5)).await.unwrap();
        parts[1].write(batch(&schema, 15, 20)).await.unwrap();
        parts[2].write(batch(&schema, 35, 200_000)).await.unwrap();
        assert!(parts[2].writer.is_some() && parts[0].writer.is_none());

        let written = finish_parts(parts).await.unwrap();
        assert_eq!(written.rows, 200_035);
        assert_eq!(
            written.adds.len(),
            2,
            "the large part's file and one for the rest"
        );
        assert_eq!(read_back(dir.path(), &written), (0..200_035).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_small_output_in_parts_is_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, mut parts) = three_parts(dir.path()).await;
        parts[1].write(batch(&schema, 0, 3)).await.unwrap();
        parts[2].write(batch(&schema, 3, 4)).await.unwrap();

        let written = finish_parts(parts).await.unwrap();
        assert_eq!(written.rows, 7);
        assert_eq!(written.adds.len(), 1);
        assert_eq!(read_back(dir.path(), &written), (0..7).collect::<Vec<_>>());

        // Parts that saw no rows write nothing.
        let (_, empty) = three_parts(dir.path()).await;
        let written = finish_parts(empty).await.unwrap();
        assert_eq!((written.rows, written.adds.len()), (0, 0));
    }

    #[test]
    fn shares_never_fall_below_what_one_writer_needs() {
        let whole = WriteBuffers::within(256 << 20);
        let half = whole.shared_by(2);
        assert_eq!(half.hold_bytes, whole.hold_bytes / 2);
        assert_eq!(half.row_group_bytes, whole.row_group_bytes / 2);
        let tiny = WriteBuffers::within(0).shared_by(64);
        assert_eq!(tiny.hold_bytes, WriteBuffers::within(0).hold_bytes);
        assert_eq!(tiny.row_group_bytes, WriteBuffers::within(0).row_group_bytes);
    }
}
