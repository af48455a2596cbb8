//! Planning a pipeline: register its sources, open its feature sets, plan
//! each INSERT's query and check it against the feature set it writes. This
//! is all of `kiln check`, and the first half of `kiln run`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::Column;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::source_as_provider;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::tokenizer::Token;
use deltalake::DeltaTable;

use crate::featureset::{self, FeatureSetRead, Fit, OpenTables};
use crate::pipeline::{FeatureSetDecl, InsertDecl, Pipeline, Problem, SourceDecl, Statement, StatementKind};
use crate::source::{FileSourceTable, register_file_source};

/// A file source as planned.
pub struct PlannedSource {
    pub table: Arc<FileSourceTable>,
    pub incremental: bool,
}

/// One INSERT, ready to execute.
#[derive(Clone)]
pub struct PlannedInsert {
    pub feature_set: FeatureSetDecl,
    pub df: DataFrame,
    /// The storable schema, in the feature set's column order.
    pub target_schema: SchemaRef,
    /// Whether the query adds columns to the feature set.
    pub add_columns: bool,
    /// The feature sets the query reads, each at the version it reads.
    pub feature_sets_read: Vec<FeatureSetRead>,
}

pub struct PlannedPipeline {
    pub sources: Vec<PlannedSource>,
    pub inserts: Vec<PlannedInsert>,
}

/// Every file (URL) the incremental sources of `pipeline` would read now.
pub async fn list_incremental_files(
    ctx: &SessionContext,
    pipeline: &Pipeline,
) -> Result<BTreeSet<String>, Vec<Problem>> {
    let mut files = BTreeSet::new();
    let mut problems = Vec::new();
    for (stmt, decl) in pipeline.sources().filter(|(_, d)| d.options.incremental) {
        let listed = match register_file_source(ctx, decl, None).await {
            Ok(table) => table.list_files(&ctx.state()).await,
            Err(e) => Err(e),
        };
        match listed {
            Ok(listed) => files.extend(listed),
            Err(e) => problems.push(source_problem(pipeline, stmt, decl, &e)),
        }
    }
    if problems.is_empty() {
        Ok(files)
    } else {
        Err(problems)
    }
}

/// Plan `pipeline` in `ctx`; incremental sources read only `files` (URLs)
/// when given, every file otherwise. Every problem found is returned.
pub async fn plan_pipeline(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    tables: &OpenTables,
    files: Option<&BTreeSet<String>>,
) -> Result<PlannedPipeline, Vec<Problem>> {
    let mut problems = Vec::new();

    let mut sinks: Vec<(&Statement, &FeatureSetDecl, Option<DeltaTable>)> = Vec::new();
    for (stmt, decl) in pipeline.feature_sets() {
        match tables.latest(&decl.location).await {
            Ok(table) => sinks.push((stmt, decl, table)),
            Err(e) => {
                problems.push(at_location(pipeline, stmt, &decl.location, e.to_string()));
                sinks.push((stmt, decl, None));
            }
        }
    }
    // Written by this pipeline (perhaps by an INSERT another pass runs):
    // a feature set that does not exist yet is not an error.
    let targets: HashSet<&str> = pipeline.writes.iter().map(String::as_str).collect();

    let mut sources = Vec::new();
    for (stmt, decl) in pipeline.sources() {
        match plan_source(ctx, pipeline, stmt, decl, files).await {
            Ok(s) => sources.push(s),
            Err(p) => problems.push(p),
        }
    }

    // Feature sets that exist can be read by the queries (as of the run's start).
    let mut readable = Vec::new();
    for (stmt, decl, table) in &sinks {
        if table.is_none() {
            if !targets.contains(decl.name.as_str()) {
                problems.push(at_location(
                    pipeline,
                    stmt,
                    &decl.location,
                    format!("no feature set at '{}' to read", decl.location),
                ));
            }
            continue;
        }
        // Pinned to the version just loaded unless the pipeline names one,
        // so the log is not looked at a second time.
        let version = decl
            .options
            .version
            .map(|v| v as u64)
            .or(table.as_ref().and_then(|t| t.version()));
        match featureset::table_provider(tables, &decl.location, version).await {
            Ok(provider) => {
                if let Err(e) = ctx.register_table(decl.name.as_str(), provider) {
                    problems.push(df_problem(pipeline, stmt, &e));
                }
                if let Some(version) = version {
                    readable.push(FeatureSetRead {
                        name: decl.name.clone(),
                        location: decl.location.clone(),
                        version,
                    });
                }
            }
            Err(e) => problems.push(at_location(pipeline, stmt, &decl.location, e.to_string())),
        }
    }

    let mut inserts = Vec::new();
    for stmt in &pipeline.statements {
        match &stmt.kind {
            StatementKind::View(view) => {
                if let Err(e) = create_view(ctx, view).await {
                    problems.push(df_problem(pipeline, stmt, &e));
                }
            }
            StatementKind::Insert(insert) => {
                let (_, decl, table) = sinks
                    .iter()
                    .find(|(_, d, _)| d.name == insert.target)
                    .expect("inserts target declared feature sets (checked when parsed)");
                match plan_insert(ctx, pipeline, stmt, insert, decl, table.as_ref()).await {
                    Ok(mut planned) => {
                        planned.feature_sets_read = reads_of(planned.df.logical_plan(), &readable);
                        inserts.push(planned)
                    }
                    Err(mut p) => problems.append(&mut p),
                }
            }
            _ => {}
        }
    }
    if problems.is_empty() {
        Ok(PlannedPipeline { sources, inserts })
    } else {
        Err(problems)
    }
}

async fn plan_source(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    stmt: &Statement,
    decl: &SourceDecl,
    files: Option<&BTreeSet<String>>,
) -> Result<PlannedSource, Problem> {
    let only = if decl.options.incremental {
        files.cloned()
    } else {
        None
    };
    let table = register_file_source(ctx, decl, only)
        .await
        .map_err(|e| source_problem(pipeline, stmt, decl, &e))?;
    let files = table
        .list_files(&ctx.state())
        .await
        .map_err(|e| source_problem(pipeline, stmt, decl, &e))?;
    if files.is_empty() && !decl.options.incremental {
        return Err(at_location(
            pipeline,
            stmt,
            &decl.location,
            format!(
                "no input files found at '{}' for source '{}'",
                decl.location, decl.name
            ),
        ));
    }
    Ok(PlannedSource {
        table,
        incremental: decl.options.incremental,
    })
}

/// Errors while building a source are about its location or its options.
fn source_problem(pipeline: &Pipeline, stmt: &Statement, decl: &SourceDecl, e: &DataFusionError) -> Problem {
    let msg = clean(e);
    // DataFusion names an unknown format option as `format.<key>`.
    if let Some(key) = decl.create.options.iter().map(|(k, _)| k).find(|k| {
        msg.contains(&format!("\"{}\"", k.to_lowercase()))
            || msg.contains(&format!("format.{}", k.to_lowercase()))
    }) {
        return pipeline.problem_at_option(stmt, key, format!("source '{}': {msg}", decl.name));
    }
    at_location(
        pipeline,
        stmt,
        &decl.location,
        format!("source '{}': {msg}", decl.name),
    )
}

async fn create_view(ctx: &SessionContext, view: &SqlStatement) -> datafusion::error::Result<()> {
    let plan = plan_statement(ctx, view.clone()).await?;
    ctx.execute_logical_plan(plan).await?;
    Ok(())
}

/// The feature sets of `readable` that `plan` scans, through its views.
fn reads_of(plan: &LogicalPlan, readable: &[FeatureSetRead]) -> Vec<FeatureSetRead> {
    let mut names = BTreeSet::new();
    scanned_tables(plan, &mut names);
    readable
        .iter()
        .filter(|r| names.contains(r.name.as_str()))
        .cloned()
        .collect()
}

fn scanned_tables(plan: &LogicalPlan, names: &mut BTreeSet<String>) {
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            names.insert(scan.table_name.table().to_string());
            if let Some(view) = source_as_provider(&scan.source)
                .ok()
                .and_then(|p| p.get_logical_plan().map(|plan| plan.into_owned()))
            {
                scanned_tables(&view, names);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// DataFusion's plan of a pipeline statement, with kiln's SQL extensions
/// (`ASOF JOIN`).
pub(crate) async fn plan_statement(
    ctx: &SessionContext,
    mut statement: SqlStatement,
) -> datafusion::error::Result<datafusion::logical_expr::LogicalPlan> {
    super::fold_asof_joins(&mut statement);
    let plan = ctx
        .state()
        .statement_to_plan(DFStatement::Statement(Box::new(statement)))
        .await?;
    // What the feature functions' types cannot say (a window function's
    // constant argument), checked now so that `kiln check` reports it.
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| crate::functions::check_call(e).map(|_| TreeNodeRecursion::Continue))
        })
    })?;
    Ok(plan)
}

async fn plan_insert(
    ctx: &SessionContext,
    pipeline: &Pipeline,
    stmt: &Statement,
    insert: &InsertDecl,
    decl: &FeatureSetDecl,
    table: Option<&DeltaTable>,
) -> Result<PlannedInsert, Vec<Problem>> {
    let plan = plan_statement(ctx, SqlStatement::Query(insert.query.clone()))
        .await
        .map_err(|e| vec![df_problem(pipeline, stmt, &e)])?;
    let mut df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| vec![df_problem(pipeline, stmt, &e)])?;
    if !insert.columns.is_empty() {
        df = rename_columns(df, &insert.columns).map_err(|m| vec![pipeline.problem(stmt, m)])?;
    }
    let query_schema = featureset::storable_schema(df.schema().as_arrow())
        .map_err(|e| vec![pipeline.problem(stmt, e.to_string())])?;

    let mut problems = Vec::new();
    for key in &decl.options.key {
        if query_schema.field_with_name(key).is_err() {
            problems.push(pipeline.problem(
                stmt,
                format!(
                    "key column '{key}' of feature set '{}' is not in the query's output ({})",
                    decl.name,
                    column_list(&query_schema)
                ),
            ));
        }
    }
    if let Some(ts) = &decl.options.timestamp {
        match query_schema.field_with_name(ts) {
            Err(_) => problems.push(pipeline.problem(
                stmt,
                format!(
                    "timestamp column '{ts}' of feature set '{}' is not in the query's output ({})",
                    decl.name,
                    column_list(&query_schema)
                ),
            )),
            Ok(f) if !matches!(f.data_type(), DataType::Timestamp(_, _) | DataType::Date32) => {
                problems.push(pipeline.problem_at_word(
                    stmt,
                    ts,
                    format!(
                        "timestamp column '{ts}' must be a TIMESTAMP or DATE, but the query gives {}",
                        f.data_type()
                    ),
                ))
            }
            Ok(_) => {}
        }
    }

    let base_version = table.and_then(|t| t.version());
    let (target_schema, add_columns) = match (table, base_version) {
        (Some(table), Some(_)) => {
            let existing =
                featureset::arrow_schema(table).map_err(|e| vec![pipeline.problem(stmt, e.to_string())])?;
            match featureset::fit(&existing, &query_schema, &decl.name) {
                Ok(Fit::Same(schema)) => (schema, false),
                Ok(Fit::AddsColumns(schema, _)) if decl.options.allow_new_columns => (schema, true),
                Ok(Fit::AddsColumns(_, added)) => {
                    for column in added {
                        problems.push(pipeline.problem_at_word(
                            stmt,
                            &column,
                            format!(
                                "the query adds column '{column}' to feature set '{}': allow it with OPTIONS ('allow_new_columns' 'true')",
                                decl.name
                            ),
                        ));
                    }
                    (query_schema.clone(), false)
                }
                Err(misfits) => {
                    for (column, msg) in misfits {
                        problems.push(pipeline.problem_at_word(stmt, &column, msg));
                    }
                    (query_schema.clone(), false)
                }
            }
        }
        _ => (query_schema.clone(), false),
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(PlannedInsert {
        feature_set: decl.clone(),
        df,
        target_schema,
        add_columns,
        feature_sets_read: Vec::new(),
    })
}

fn column_list(schema: &SchemaRef) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    format!("columns: {}", names.join(", "))
}

/// `INSERT INTO fs (a, b) SELECT ...`: name the query's columns a, b.
fn rename_columns(df: DataFrame, names: &[String]) -> Result<DataFrame, String> {
    let fields = df.schema().columns();
    if fields.len() != names.len() {
        return Err(format!(
            "INSERT names {} columns but the query gives {}",
            names.len(),
            fields.len()
        ));
    }
    let exprs: Vec<Expr> = fields
        .into_iter()
        .zip(names)
        .map(|(c, name): (Column, &String)| Expr::Column(c).alias(name))
        .collect();
    df.select(exprs).map_err(|e| clean(&e))
}

/// A problem pointing at a statement's LOCATION string.
fn at_location(pipeline: &Pipeline, stmt: &Statement, location: &str, msg: String) -> Problem {
    pipeline.problem_near(
        stmt,
        |t| matches!(t, Token::SingleQuotedString(s) if s == location),
        msg,
    )
}

const COERCION_FAILED: &str = "coercion failed with: ";

/// DataFusion's message without its backtrace and category prefix.
fn clean(e: &DataFusionError) -> String {
    let text = e.to_string();
    let mut msg = text.as_str();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Execution error: ",
    ] {
        msg = msg.strip_prefix(prefix).unwrap_or(msg);
    }
    // A function's own complaint about its arguments, without DataFusion's
    // wrapping and its generic advice after it.
    if let Some(at) = msg.find(COERCION_FAILED) {
        msg = &msg[at + COERCION_FAILED.len()..];
        msg = msg.strip_prefix("Error during planning: ").unwrap_or(msg);
        msg = msg.split(". No function matches").next().unwrap_or(msg);
    }
    // Tables live in DataFusion's default catalog; the prefix is noise.
    msg.lines()
        .next()
        .unwrap_or_default()
        .replace("'datafusion.public.", "'")
}

/// A planning error as a problem: at the span DataFusion gives, else at the
/// name it complains about, else at the statement.
pub(crate) fn df_problem(pipeline: &Pipeline, stmt: &Statement, e: &DataFusionError) -> Problem {
    let msg = clean(e);
    for inner in e.iter() {
        if let Some(span) = inner.diagnostic().and_then(|d| d.span)
            && span.start.line > 0
        {
            return pipeline.problem_at(span.start.line, span.start.column, msg);
        }
    }
    if let Some(name) =
        quoted_name_after(&msg, "No field named ").or_else(|| quoted_name_after(&msg, "table '"))
    {
        let last = name.rsplit('.').next().unwrap_or(&name).to_string();
        return pipeline.problem_at_word(stmt, &last, msg);
    }
    if let Some(function) = function_named(&msg) {
        return pipeline.problem_at_word(stmt, &function, msg);
    }
    pipeline.problem(stmt, msg)
}

/// The function a message is about: DataFusion's `call to 'f'`, or one
/// of kiln's feature functions, whose messages start `f(args): `.
fn function_named(msg: &str) -> Option<String> {
    if let Some(name) = quoted_name_after(msg, "call to '") {
        return Some(name);
    }
    crate::functions::names()
        .into_iter()
        .filter_map(|f| msg.find(&format!("{f}(")).map(|at| (at, f)))
        .filter(|(at, _)| !msg[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .min()
        .map(|(_, f)| f)
}

/// The identifier that follows `marker` in a DataFusion message, without
/// quotes: `No field named foo.` gives `foo`.
fn quoted_name_after(msg: &str, marker: &str) -> Option<String> {
    let rest = &msg[msg.find(marker)? + marker.len()..];
    let name: String = rest
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
        .collect();
    (!name.is_empty()).then_some(name)
}
