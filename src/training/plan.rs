//! The training set as one DataFusion plan: the labels' scan, one as-of
//! join per feature set (the [`AsOfJoinNode`] that `ASOF JOIN` plans to:
//! partitioned by entity, matched in Polars, spilling past the memory
//! pool), and a sort into the output order. Nothing is held whole but
//! what a partition of the join or the sort needs, and the rows are
//! written as they leave the sort.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use datafusion::catalog::TableProvider;
use datafusion::common::Column;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, LogicalPlanBuilder, SortExpr, cast, col};

use super::keys::common_type;
use super::{FeaturesSpec, TrainingSetRequest};
use crate::asof::time;
use crate::engine::AsOfJoinNode;
use crate::error::{Context, KilnError, Result};

/// The relation name of the labels in the plan.
const LABELS: &str = "labels";

/// A feature set, resolved to one version and its time column.
pub(super) struct FeatureInput<'a> {
    pub spec: &'a FeaturesSpec,
    pub time: String,
    pub table: Arc<dyn TableProvider>,
}

pub(super) struct Planned {
    pub plan: LogicalPlan,
    /// For each feature set, its entity columns in `--entity` order.
    pub entities: Vec<Vec<String>>,
}

pub(super) fn plan(
    request: &TrainingSetRequest,
    labels: Arc<dyn TableProvider>,
    features: &[FeatureInput],
) -> Result<Planned> {
    let label_schema = labels.schema();
    for name in &request.entity {
        field(&label_schema, name, "the labels", "--entity")?;
    }
    let label_time = field(&label_schema, &request.label_time, "the labels", "--label-time")?;
    time::unit_of(
        &format!("label time column '{}'", request.label_time),
        &label_time,
    )?;
    let labels_column = |name: &str| col(Column::new(Some(LABELS), name));

    // Every output column, and who gives it (for the error on a clash).
    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut output: Vec<Expr> = Vec::new();
    for f in label_schema.fields() {
        owners.insert(f.name().clone(), "the labels".to_string());
        output.push(labels_column(f.name()));
    }

    let mut plan =
        df(LogicalPlanBuilder::scan(LABELS, provider_as_source(labels), None).and_then(|b| b.build()))?;
    let mut entities = Vec::new();
    for (i, input) in features.iter().enumerate() {
        let spec = input.spec;
        let alias = format!("f{i}");
        let what = format!("feature set '{}'", spec.location);
        let schema = input.table.schema();
        let entity: Vec<String> = request
            .entity
            .iter()
            .map(|e| spec.entity_map.get(e).cloned().unwrap_or_else(|| e.clone()))
            .collect();
        let time_type = field(
            &schema,
            &input.time,
            &what,
            "--feature-time or its declared timestamp",
        )?;
        time::unit_of(
            &format!("feature time column '{}' of {what}", input.time),
            &time_type,
        )?;

        // The right side: its keys in the type they are compared in (under
        // names of their own), then every other column, prefixed.
        let mut right = Vec::new();
        let mut on = Vec::new();
        for (j, (label_name, feature_name)) in request.entity.iter().zip(&entity).enumerate() {
            let feature_type = field(&schema, feature_name, &what, "--entity / --entity-map")?;
            let label_type = field(&label_schema, label_name, "the labels", "--entity")?;
            let common = common_type(
                label_name,
                &label_type,
                feature_name,
                &feature_type,
                &spec.location,
            )?;
            let key = format!("__kiln_key_{j}");
            right.push(
                cast(
                    col(Column::new(Some(alias.as_str()), feature_name)),
                    common.clone(),
                )
                .alias(&key),
            );
            on.push((
                cast(labels_column(label_name), common),
                col(Column::new(Some(alias.as_str()), key)),
            ));
        }
        let prefix = spec.prefix.as_deref().unwrap_or("");
        for f in schema.fields().iter().filter(|f| !entity.contains(f.name())) {
            let name = format!("{prefix}{}", f.name());
            if let Some(owner) = owners.insert(name.clone(), what.clone()) {
                return Err(KilnError::Usage(format!(
                    "column '{name}' comes from both {owner} and {what}: give that --features a --prefix"
                )));
            }
            right.push(col(Column::new(Some(alias.as_str()), f.name())).alias(&name));
            output.push(col(Column::new(Some(alias.as_str()), name)));
        }
        let right =
            df(
                LogicalPlanBuilder::scan(alias.as_str(), provider_as_source(Arc::clone(&input.table)), None)
                    .and_then(|b| b.project(right))
                    .and_then(|b| b.alias(alias.as_str()))
                    .and_then(|b| b.build()),
            )?;
        let node = df(AsOfJoinNode::new(
            Arc::new(plan),
            Arc::new(right),
            on,
            labels_column(&request.label_time),
            col(Column::new(
                Some(alias.as_str()),
                format!("{prefix}{}", input.time),
            )),
            request.inclusive,
            request.max_age,
        ))?;
        plan = LogicalPlan::Extension(Extension { node: Arc::new(node) });
        entities.push(entity);
    }

    let plan = df(LogicalPlanBuilder::from(plan)
        .project(output)
        .and_then(|b| b.sort(output_order(request, &label_schema, &label_time)))
        .and_then(|b| b.build()))?;
    Ok(Planned { plan, entities })
}

/// By label time, then the entity columns, then the label's other columns
/// (those that have an order), ascending, nulls last.
fn output_order(request: &TrainingSetRequest, labels: &Schema, label_time: &DataType) -> Vec<SortExpr> {
    let column = |name: &str| col(Column::new(Some(LABELS), name));
    // Strings (CSV and JSON labels) are ordered as the instants they name.
    let time = match label_time {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            datafusion::functions::expr_fn::to_timestamp_micros(vec![column(&request.label_time)])
        }
        _ => column(&request.label_time),
    };
    let others = labels
        .fields()
        .iter()
        .filter(|f| !request.entity.contains(f.name()) && f.name() != &request.label_time)
        .filter(|f| !f.data_type().is_nested())
        .map(|f| f.name().clone());
    std::iter::once(time)
        .chain(request.entity.iter().map(|e| column(e)))
        .chain(others.map(|name| column(&name)))
        .map(|e| e.sort(true, false))
        .collect()
}

fn df<T>(planned: datafusion::error::Result<T>) -> Result<T> {
    planned.context(|| "planning the training set".to_string())
}

/// The type of column `name`, or an error listing the columns there are.
fn field(schema: &Schema, name: &str, what: &str, flag: &str) -> Result<DataType> {
    match schema.field_with_name(name) {
        Ok(f) => Ok(f.data_type().clone()),
        Err(_) => {
            let names: Vec<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
            Err(KilnError::Usage(format!(
                "no column '{name}' (given by {flag}) in {what}, whose columns are: {}",
                names.join(", ")
            )))
        }
    }
}
