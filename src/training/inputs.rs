//! Reading what a training set joins: the labels (files of any format kiln
//! reads, or a feature set) and each feature set at one version.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::catalog::{TableProvider, TableProviderFactory};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};
use futures::TryStreamExt;

use crate::error::{Context, KilnError, Result};
use crate::featureset::{self, OpenTables};
use crate::source::{FileSourceTable, plan_declaration, register_store_for};

/// Where the labels come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// Parquet, CSV or JSON files: a file, a folder, a glob, on local disk
    /// or an object store. `format` is found from the file names when `None`.
    Files {
        location: String,
        format: Option<LabelFormat>,
    },
    /// A feature set, at `version` or its latest.
    FeatureSet { location: String, version: Option<u64> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelFormat {
    Parquet,
    Csv,
    Json,
}

impl LabelFormat {
    pub fn name(self) -> &'static str {
        match self {
            LabelFormat::Parquet => "parquet",
            LabelFormat::Csv => "csv",
            LabelFormat::Json => "json",
        }
    }

    fn of_file(path: &str) -> Option<Self> {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        let ext = name.rsplit_once('.')?.1;
        match ext {
            "parquet" | "parq" => Some(LabelFormat::Parquet),
            "csv" => Some(LabelFormat::Csv),
            "json" | "ndjson" | "jsonl" => Some(LabelFormat::Json),
            _ => None,
        }
    }
}

impl LabelSource {
    /// `URL@V` and folders holding a Delta log are feature sets; anything
    /// else is files.
    pub async fn resolve(text: &str, format: Option<LabelFormat>) -> Result<Self> {
        let (location, version) = featureset::split_version(text);
        if version.is_some() {
            return Ok(LabelSource::FeatureSet { location, version });
        }
        let glob = location.contains(['*', '?', '[']);
        if format.is_none() && !glob && LabelFormat::of_file(&location).is_none() {
            // A folder: a feature set when it has a Delta log. On an object
            // store, ask deltalake; a failure there means "not a table"
            // often enough that the files reading below reports the rest.
            if let Ok(Some(_)) = featureset::open(&location).await {
                return Ok(LabelSource::FeatureSet {
                    location,
                    version: None,
                });
            }
        }
        Ok(LabelSource::Files { location, format })
    }
}

/// The labels, as a table to scan.
pub(super) struct Labels {
    pub table: Arc<dyn TableProvider>,
    /// The files' table, which knows after the scan which files it read
    /// (labels from files only).
    pub files: Option<Arc<FileSourceTable>>,
    pub format: String,
    pub version: Option<u64>,
}

pub(super) async fn open_labels(
    ctx: &SessionContext,
    tables: &OpenTables,
    source: &LabelSource,
) -> Result<Labels> {
    match source {
        LabelSource::FeatureSet { location, version } => {
            let table = tables.at(location, *version).await?;
            let version = table.version();
            Ok(Labels {
                table: featureset::table_provider(tables, location, version).await?,
                files: None,
                format: "features".into(),
                version,
            })
        }
        LabelSource::Files { location, format } => {
            let context = || format!("reading the labels at '{location}'");
            register_store_for(ctx, location).context(context)?;
            let (format, location) = locate(ctx, &folder_url(location), *format).await?;
            let options = match format {
                LabelFormat::Csv => " OPTIONS ('format.has_header' 'true')",
                _ => "",
            };
            let sql = format!(
                "CREATE EXTERNAL TABLE labels STORED AS {} LOCATION '{}'{options}",
                format.name().to_uppercase(),
                location.replace('\'', "''")
            );
            let mut statements = DFParser::parse_sql(&sql).context(context)?;
            let Some(Statement::CreateExternalTable(create)) = statements.pop_front() else {
                return Err(KilnError::Run(format!(
                    "the labels declaration did not parse: {sql}"
                )));
            };
            let cmd = plan_declaration(ctx, &create).await.context(context)?;
            let inner = ListingTableFactory::new()
                .create(&ctx.state(), &cmd)
                .await
                .context(context)?;
            let table = Arc::new(FileSourceTable::new("labels".into(), inner, None));
            if table.list_files(&ctx.state()).await.context(context)?.is_empty() {
                return Err(KilnError::Usage(format!(
                    "no {} files at '{location}'",
                    format.name()
                )));
            }
            Ok(Labels {
                table: table.clone(),
                files: Some(table),
                format: format.name().into(),
                version: None,
            })
        }
    }
}

/// A folder on local disk or an object store, written the way DataFusion
/// lists it: with a trailing `/`.
fn folder_url(location: &str) -> String {
    let glob = location.contains(['*', '?', '[']);
    if glob || location.ends_with('/') || LabelFormat::of_file(location).is_some() {
        return location.to_string();
    }
    let local_dir = !location.contains("://") && std::path::Path::new(location).is_dir();
    if local_dir || location.contains("://") {
        format!("{location}/")
    } else {
        location.to_string()
    }
}

/// The format of the files at `location`, and the location to read them
/// from. DataFusion lists a folder's files by the extension of their format
/// (`.parquet`, `.csv`, `.json`); a folder of `.ndjson`, `.jsonl` or
/// `.parq` files is read through a glob of their extension instead.
async fn locate(
    ctx: &SessionContext,
    location: &str,
    format: Option<LabelFormat>,
) -> Result<(LabelFormat, String)> {
    let context = || format!("listing the labels at '{location}'");
    if let Some(named) = LabelFormat::of_file(location) {
        return Ok((format.unwrap_or(named), location.to_string()));
    }
    let url = ListingTableUrl::parse(location).context(context)?;
    let store = ctx
        .runtime_env()
        .object_store(url.object_store())
        .context(context)?;
    let state = ctx.state();
    let files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), "")
        .await
        .context(context)?
        .try_collect()
        .await
        .context(context)?;
    let typed: Vec<(LabelFormat, &str)> = files
        .iter()
        .filter_map(|f| {
            let path = f.location.as_ref();
            let found = LabelFormat::of_file(path)?;
            let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
            format
                .is_none_or(|wanted| wanted == found)
                .then_some((found, ext))
        })
        .collect();
    let formats: BTreeSet<&str> = typed.iter().map(|(f, _)| f.name()).collect();
    let extensions: BTreeSet<&str> = typed.iter().map(|(_, e)| *e).collect();
    let (found, ext) = match typed.first() {
        None => {
            let wanted = format.map_or("Parquet, CSV or JSON".to_string(), |f| f.name().to_string());
            return Err(KilnError::Usage(format!(
                "no {wanted} files at '{location}' ({} other files)",
                files.len()
            )));
        }
        Some(_) if formats.len() > 1 => {
            return Err(KilnError::Usage(format!(
                "the labels at '{location}' are files of several formats ({}): give --labels-format, or a glob",
                formats.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        Some(&first) => first,
    };
    let glob = location.contains(['*', '?', '[']);
    if glob || ext.eq_ignore_ascii_case(found.name()) && extensions.len() == 1 {
        return Ok((found, location.to_string()));
    }
    if extensions.len() > 1 {
        return Err(KilnError::Usage(format!(
            "the labels at '{location}' are {} files named *.{}: give a glob of one, or rename them",
            found.name(),
            extensions.into_iter().collect::<Vec<_>>().join(", *.")
        )));
    }
    Ok((found, format!("{location}*.{ext}")))
}
