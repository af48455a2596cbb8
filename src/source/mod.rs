//! Sources: files on local disk or an object store, as DataFusion tables.

mod files;
mod store;

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::catalog::TableProviderFactory;
use datafusion::datasource::listing_table_factory::ListingTableFactory;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;

pub use files::FileSourceTable;
pub use store::register_store_for;

use crate::pipeline::SourceDecl;

/// Build the table for a file source and register it under its name.
/// `skip` holds file URLs an incremental source has already committed.
pub async fn register_file_source(
    ctx: &SessionContext,
    decl: &SourceDecl,
    skip: HashSet<String>,
) -> Result<Arc<FileSourceTable>> {
    register_store_for(ctx, &decl.location)?;
    let state = ctx.state();
    // Let DataFusion turn the declaration into its own command (column
    // types, format options, partition columns), then build the listing
    // table exactly as its CREATE EXTERNAL TABLE would.
    let plan = state
        .statement_to_plan(DFStatement::CreateExternalTable(decl.create.clone()))
        .await?;
    let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) = plan else {
        return Err(DataFusionError::Internal(format!(
            "CREATE EXTERNAL TABLE {} did not plan as a table",
            decl.name
        )));
    };
    let inner = ListingTableFactory::new().create(&state, &cmd).await?;
    let table = Arc::new(FileSourceTable::new(decl.name.clone(), inner, skip));
    ctx.register_table(decl.name.as_str(), table.clone())?;
    Ok(table)
}
