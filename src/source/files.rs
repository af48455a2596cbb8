//! A file source as a DataFusion table that knows which files it read.
//!
//! DataFusion's `ListingTable` does the listing, globbing, hive partitions
//! and format work. This wrapper sits on its `scan`: an incremental source
//! keeps only the files its pass was planned with (the ones its feature
//! sets have not read, as listed when the run planned it, so a file that
//! lands mid-run waits for the next run), and every file handed to the
//! scan is recorded, which becomes the commit's lineage and ledger.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{Result, Statistics};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig, FileScanConfigBuilder};
use datafusion::datasource::source::DataSourceExec;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use object_store::ObjectMeta;

use crate::featureset::InputFile;

#[derive(Debug)]
pub struct FileSourceTable {
    name: String,
    inner: Arc<dyn TableProvider>,
    /// For an incremental source: the only files (URLs) to read.
    only: Option<BTreeSet<String>>,
    /// Files handed to scans, by URL.
    read: Mutex<BTreeMap<String, ObjectMeta>>,
}

impl FileSourceTable {
    pub fn new(name: String, inner: Arc<dyn TableProvider>, only: Option<BTreeSet<String>>) -> Self {
        Self {
            name,
            inner,
            only,
            read: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of every file at the source's location now, before
    /// incremental filtering.
    pub async fn list_files(&self, state: &dyn Session) -> Result<Vec<String>> {
        let plan = self.inner.scan(state, None, &[], None).await?;
        let mut files = Vec::new();
        plan.apply(|node| {
            if let Some(config) = file_scan_config(node) {
                files.extend(
                    config
                        .file_groups
                        .iter()
                        .flat_map(|g| g.files().iter().map(|f| file_url(config, &f.object_meta))),
                );
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(files)
    }

    /// Whether this pass reads the file at `path`.
    pub fn is_selected(&self, path: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(path))
    }

    /// The files scans have read since the last call, as lineage.
    pub fn take_files_read(&self) -> Vec<InputFile> {
        std::mem::take(&mut *self.read.lock().expect("file list lock"))
            .iter()
            .map(|(url, m)| InputFile {
                source: self.name.clone(),
                path: url.clone(),
                size: m.size,
                last_modified: m.last_modified.to_rfc3339(),
            })
            .collect()
    }
}

/// The full URL of a file: the store's URL and the path inside it, so that
/// lineage tells `s3://a/x` from `s3://b/x`.
fn file_url(config: &FileScanConfig, meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        config.object_store_url.as_str().trim_end_matches('/'),
        meta.location
    )
}

fn file_scan_config(node: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    node.downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()
}

#[async_trait]
impl TableProvider for FileSourceTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        plan.transform_down(|node| {
            let Some(config) = file_scan_config(&node) else {
                return Ok(Transformed::no(node));
            };
            let mut read = self.read.lock().expect("file list lock");
            let mut dropped = false;
            let groups: Vec<FileGroup> = config
                .file_groups
                .iter()
                .map(|g| {
                    let kept: Vec<_> = g
                        .files()
                        .iter()
                        .filter(|f| {
                            let url = file_url(config, &f.object_meta);
                            let selected = self.is_selected(&url);
                            if selected {
                                read.insert(url, f.object_meta.clone());
                            } else {
                                dropped = true;
                            }
                            selected
                        })
                        .map(|f| {
                            // Per-file statistics go with the table's (below).
                            let mut f = f.clone();
                            f.statistics = None;
                            f
                        })
                        .collect();
                    FileGroup::new(kept)
                })
                .filter(|g| !g.is_empty())
                .collect();
            if !dropped {
                // Every file is read: DataFusion's exact statistics stay, and
                // with them its choice of join (a small dimension table is
                // broadcast rather than both sides repartitioned).
                return Ok(Transformed::no(node));
            }
            // Statistics were computed over all files; with some dropped they
            // would be wrong, and the optimizer answers COUNT(*) from exact ones.
            let table_schema = config.file_source().table_schema().table_schema().clone();
            let rebuilt = FileScanConfigBuilder::from(config.clone())
                .with_file_groups(groups)
                .with_statistics(Statistics::new_unknown(&table_schema))
                .build();
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(rebuilt) as Arc<dyn ExecutionPlan>
            ))
        })
        .data()
    }
}
