//! Sources: files on local disk or an object store, as DataFusion tables.

mod files;
pub mod kafka;
mod store;

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::catalog::TableProviderFactory;
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{CreateExternalTable as CreateExternalTableCmd, DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{CreateExternalTable, Statement as DFStatement};

pub use files::FileSourceTable;
pub use store::register_store_for;

use crate::pipeline::SourceDecl;

/// Build the table for a file source and register it under its name.
/// `only`, for an incremental source, holds the file URLs it may read.
pub async fn register_file_source(
    ctx: &SessionContext,
    decl: &SourceDecl,
    only: Option<BTreeSet<String>>,
) -> Result<Arc<FileSourceTable>> {
    register_store_for(ctx, &decl.location)?;
    let state = ctx.state();
    // Let DataFusion turn the declaration into its own command (column
    // types, format options, partition columns), then build the listing
    // table exactly as its CREATE EXTERNAL TABLE would.
    let cmd = plan_declaration(ctx, &decl.create).await?;
    let inner = ListingTableFactory::new().create(&state, &cmd).await?;
    let table = Arc::new(FileSourceTable::new(decl.name.clone(), inner, only));
    ctx.register_table(decl.name.as_str(), table.clone())?;
    Ok(table)
}

/// DataFusion's own reading of a CREATE EXTERNAL TABLE: typed columns
/// (NOT NULL included), format options, partition columns.
pub async fn plan_declaration(
    ctx: &SessionContext,
    create: &CreateExternalTable,
) -> Result<CreateExternalTableCmd> {
    let plan = ctx
        .state()
        .statement_to_plan(DFStatement::CreateExternalTable(create.clone()))
        .await?;
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) => Ok(*cmd),
        _ => Err(DataFusionError::Internal(format!(
            "CREATE EXTERNAL TABLE {} did not plan as a table",
            create.name
        ))),
    }
}
