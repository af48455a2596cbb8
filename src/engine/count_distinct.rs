//! `count(DISTINCT <string>)` with a grouped accumulator of kiln's own.
//!
//! DataFusion 55 has a grouped accumulator for distinct counts of integers
//! only. For strings, each group gets a row accumulator holding its own
//! pre-sized hash set (see `SplitDistinctAggregates` for what that costs),
//! and kiln's split rewrite works around it by computing the distinct
//! count in an aggregate of its own, joined back to the others on the group
//! keys: a second scan, two more hash aggregations and a join of every
//! group.
//!
//! [`GroupedCountDistinct`] instead replaces each string `count(DISTINCT x)`
//! by [`CountDistinctStrings`] over `x` as `Utf8View`, whose accumulator
//! keeps one hash table of the (group, value) pairs seen by every group and
//! the values' bytes in one buffer: no allocation per group or per value.
//! Its state is DataFusion's own for a distinct count (the group's values
//! as a list), so partial and final aggregation, skipping the partial
//! stage and spilling all work as for any other aggregate.

use std::hash::BuildHasher;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, StringViewBuilder};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Result, ScalarValue, internal_err};
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, Aggregate, AggregateUDF, AggregateUDFImpl, EmitTo, Expr, ExprSchemable, GroupsAccumulator,
    LogicalPlan, Signature, Volatility, cast,
};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use foldhash::fast::FixedState;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// The number of distinct non-null `Utf8View` values, per group.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CountDistinctStrings {
    signature: Signature,
}

impl CountDistinctStrings {
    pub fn udaf() -> Arc<AggregateUDF> {
        static UDAF: LazyLock<Arc<AggregateUDF>> = LazyLock::new(|| {
            Arc::new(AggregateUDF::from(CountDistinctStrings {
                signature: Signature::exact(vec![DataType::Utf8View], Volatility::Immutable),
            }))
        });
        Arc::clone(&UDAF)
    }
}

impl AggregateUDFImpl for CountDistinctStrings {
    fn name(&self) -> &str {
        "count_distinct"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn is_nullable(&self) -> bool {
        false
    }

    /// Without grouping (or wherever DataFusion asks for a row
    /// accumulator), DataFusion's own distinct count, whose state is the
    /// same list of values.
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        count_udaf().accumulator(AccumulatorArgs {
            is_distinct: true,
            ..args
        })
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        count_udaf().state_fields(StateFieldsArgs {
            is_distinct: true,
            ..args
        })
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(StringDistinctCounts::default()))
    }

    fn default_value(&self, _data_type: &DataType) -> Result<ScalarValue> {
        Ok(ScalarValue::Int64(Some(0)))
    }
}

/// One (group, value) pair seen: the value's bytes are
/// `bytes[offset..offset + len]`.
#[derive(Debug, Clone, Copy)]
struct Seen {
    hash: u64,
    offset: usize,
    len: u32,
    group: u32,
}

impl Seen {
    /// The pair of `group` and `value`, its bytes appended to `bytes`.
    fn appended(bytes: &mut Vec<u8>, hash: u64, group: u32, value: &[u8]) -> Self {
        let offset = bytes.len();
        bytes.extend_from_slice(value);
        Seen {
            hash,
            offset,
            len: value.len() as u32,
            group,
        }
    }
}

/// The distinct values of every group, in one table.
#[derive(Debug, Default)]
pub struct StringDistinctCounts {
    seen: HashTable<Seen>,
    bytes: Vec<u8>,
    counts: Vec<i64>,
}

/// The group is part of the hash: a value common to many groups (a popular
/// item) must not put all its pairs on one probe chain.
fn pair_hash(group: u32, value: &[u8]) -> u64 {
    FixedState::default().hash_one((group, value))
}

impl StringDistinctCounts {
    fn grow_to(&mut self, total_num_groups: usize) -> Result<()> {
        if total_num_groups > u32::MAX as usize {
            return internal_err!("count(DISTINCT) over more than {} groups", u32::MAX);
        }
        self.counts.resize(total_num_groups, 0);
        Ok(())
    }

    fn insert(&mut self, group: usize, value: &[u8]) {
        let group = group as u32;
        let hash = pair_hash(group, value);
        let Self { seen, bytes, counts } = self;
        let same = |s: &Seen| s.group == group && &bytes[s.offset..s.offset + s.len as usize] == value;
        if let Entry::Vacant(slot) = seen.entry(hash, same, |s| s.hash) {
            slot.insert(Seen::appended(bytes, hash, group, value));
            counts[group as usize] += 1;
        }
    }

    /// Forget groups `0..n` and number the rest from 0.
    fn drop_first(&mut self, n: usize) {
        let old_bytes = std::mem::take(&mut self.bytes);
        let old = std::mem::take(&mut self.seen);
        for s in old.into_iter().filter(|s| s.group as usize >= n) {
            let group = s.group - n as u32;
            let value = &old_bytes[s.offset..s.offset + s.len as usize];
            let hash = pair_hash(group, value);
            let kept = Seen::appended(&mut self.bytes, hash, group, value);
            self.seen.insert_unique(hash, kept, |s| s.hash);
        }
    }

    fn forget(&mut self, emit_to: EmitTo) {
        match emit_to {
            // A spilling aggregate emits everything and must then give the
            // memory back: keeping the capacity would keep the reservation.
            EmitTo::All => {
                self.seen = HashTable::new();
                self.bytes = Vec::new();
            }
            EmitTo::First(n) => self.drop_first(n),
        }
    }
}

fn list_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Utf8View, true))
}

/// Whether row `row` is counted: not null, and not filtered out.
fn counted(values: &impl Array, filter: Option<&BooleanArray>, row: usize) -> bool {
    values.is_valid(row) && filter.is_none_or(|f| f.is_valid(row) && f.value(row))
}

impl GroupsAccumulator for StringDistinctCounts {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow_to(total_num_groups)?;
        let strings = values[0].as_string_view();
        for (row, &group) in group_indices.iter().enumerate() {
            if counted(strings, opt_filter, row) {
                self.insert(group, strings.value(row).as_bytes());
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let counts = emit_to.take_needed(&mut self.counts);
        self.forget(emit_to);
        Ok(Arc::new(Int64Array::from(counts)))
    }

    /// Each group's values as a list, as DataFusion's distinct count keeps
    /// them.
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let emitted = match emit_to {
            EmitTo::All => self.counts.len(),
            EmitTo::First(n) => n,
        };
        let mut offsets = Vec::with_capacity(emitted + 1);
        offsets.push(0i32);
        let mut total = 0usize;
        for &c in &self.counts[..emitted] {
            total += c as usize;
            let Ok(end) = i32::try_from(total) else {
                return internal_err!("count(DISTINCT) state of more than {} values", i32::MAX);
            };
            offsets.push(end);
        }
        // Each group's values go to its slice of the list, in table order.
        let mut cursors: Vec<usize> = offsets[..emitted].iter().map(|&o| o as usize).collect();
        let mut slots: Vec<(usize, u32)> = vec![(0, 0); total];
        for s in self.seen.iter().filter(|s| (s.group as usize) < emitted) {
            let at = &mut cursors[s.group as usize];
            slots[*at] = (s.offset, s.len);
            *at += 1;
        }
        let mut values = StringViewBuilder::with_capacity(total);
        for (offset, len) in slots {
            match std::str::from_utf8(&self.bytes[offset..offset + len as usize]) {
                Ok(text) => values.append_value(text),
                Err(e) => return internal_err!("count(DISTINCT) kept a value that is not UTF-8: {e}"),
            }
        }
        let _ = emit_to.take_needed(&mut self.counts);
        self.forget(emit_to);
        let list = ListArray::try_new(
            list_field(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Arc::new(values.finish()),
            None,
        )?;
        Ok(vec![Arc::new(list)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow_to(total_num_groups)?;
        let lists = values[0].as_list::<i32>();
        let strings = lists.values().as_string_view();
        let offsets = lists.value_offsets();
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            for i in offsets[row] as usize..offsets[row + 1] as usize {
                if strings.is_valid(i) {
                    self.insert(group, strings.value(i).as_bytes());
                }
            }
        }
        Ok(())
    }

    /// Each counted row as a list of its one value; the others as empty
    /// lists.
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let strings = values[0].as_string_view();
        let keep: BooleanArray = (0..strings.len())
            .map(|row| Some(counted(strings, opt_filter, row)))
            .collect();
        let mut offsets = Vec::with_capacity(strings.len() + 1);
        offsets.push(0i32);
        let mut total = 0i32;
        for row in 0..strings.len() {
            total += i32::from(keep.value(row));
            offsets.push(total);
        }
        let kept = arrow::compute::filter(strings, &keep)?;
        let list = ListArray::try_new(
            list_field(),
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            kept,
            None,
        )?;
        Ok(vec![Arc::new(list)])
    }

    fn size(&self) -> usize {
        self.seen.capacity() * (size_of::<Seen>() + 1)
            + self.bytes.capacity()
            + self.counts.capacity() * size_of::<i64>()
    }
}

/// Replaces `count(DISTINCT x)` over a string `x` by
/// [`CountDistinctStrings`], keeping the aggregate's output names.
#[derive(Debug, Default)]
pub struct GroupedCountDistinct;

impl OptimizerRule for GroupedCountDistinct {
    fn name(&self) -> &str {
        "kiln_grouped_count_distinct"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let input_schema = aggregate.input.schema();
        let mut changed = false;
        let mut aggr_expr = Vec::with_capacity(aggregate.aggr_expr.len());
        for expr in &aggregate.aggr_expr {
            match string_count_distinct(expr, input_schema) {
                Some(replacement) => {
                    changed = true;
                    aggr_expr.push(replacement.alias(expr.schema_name().to_string()));
                }
                None => aggr_expr.push(expr.clone()),
            }
        }
        if !changed {
            return Ok(Transformed::no(plan));
        }
        let rewritten = Aggregate::try_new(
            Arc::clone(&aggregate.input),
            aggregate.group_expr.clone(),
            aggr_expr,
        )?;
        Ok(Transformed::yes(LogicalPlan::Aggregate(rewritten)))
    }
}

/// `count(DISTINCT x)` of one string `x`, with no ORDER BY, as
/// `count_distinct(CAST(x AS Utf8View))` with the same FILTER.
fn string_count_distinct(expr: &Expr, schema: &datafusion::common::DFSchema) -> Option<Expr> {
    let Expr::AggregateFunction(f) = expr else {
        return None;
    };
    let p = &f.params;
    if !(f.func.name() == "count" && p.distinct && p.order_by.is_empty() && p.args.len() == 1) {
        return None;
    }
    let arg = match p.args[0].get_type(schema) {
        Ok(DataType::Utf8View) => p.args[0].clone(),
        Ok(DataType::Utf8 | DataType::LargeUtf8) => cast(p.args[0].clone(), DataType::Utf8View),
        _ => return None,
    };
    Some(Expr::AggregateFunction(AggregateFunction::new_udf(
        CountDistinctStrings::udaf(),
        vec![arg],
        false,
        p.filter.clone(),
        vec![],
        p.null_treatment,
    )))
}

/// Runs an aggregate holding a [`CountDistinctStrings`] in one stage over
/// rows hashed to their group's partition, instead of a partial stage per
/// input partition and a final one.
///
/// A distinct count cannot shrink in a partial stage: every distinct
/// (group, value) pair goes on to the final stage as a list, where it is
/// looked up again. On feature data the groups are small and the pairs
/// nearly as many as the rows, so the partial stage is a second pass of
/// hash lookups for nothing. It runs before `EnforceDistribution`, which
/// then hashes the input on the group keys.
#[derive(Debug, Default)]
pub struct SingleStageCountDistinct;

impl PhysicalOptimizerRule for SingleStageCountDistinct {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(last) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            let single = match last.mode() {
                AggregateMode::Final => AggregateMode::Single,
                AggregateMode::FinalPartitioned => AggregateMode::SinglePartitioned,
                _ => return Ok(Transformed::no(node)),
            };
            let Some(first) = last.input().downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            // Not DataFusion's own distinct count of integers: after a spill
            // it keeps the capacity of its table, and a one-stage aggregate
            // then cannot give its memory back (at 100 M events in 4 GiB).
            let counts_distinct = first
                .aggr_expr()
                .iter()
                .any(|a| a.fun().inner().downcast_ref::<CountDistinctStrings>().is_some());
            if *first.mode() != AggregateMode::Partial
                || !counts_distinct
                || first.group_expr().has_grouping_set()
                || last.limit_options().is_some()
            {
                return Ok(Transformed::no(node));
            }
            let merged = AggregateExec::try_new(
                single,
                first.group_expr().clone(),
                first.aggr_expr().to_vec(),
                first.filter_expr().to_vec(),
                Arc::clone(first.input()),
                first.input_schema(),
            )?;
            Ok(Transformed::yes(Arc::new(merged) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "kiln_single_stage_count_distinct"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{StringArray, StringViewArray, UInt32Array};
    use arrow::datatypes::Schema;
    use arrow::record_batch::RecordBatch;

    use super::*;
    use crate::engine::rule_testing::{plan, run, session_with};

    /// Random (group, value) rows: values from a small alphabet, so that
    /// groups share values, some long enough to leave a view's inline bytes;
    /// a null now and then.
    fn rows(n: usize, groups: usize, seed: u64) -> (Vec<usize>, StringViewArray) {
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize
        };
        let mut group_of = Vec::new();
        let mut values = Vec::new();
        for _ in 0..n {
            group_of.push(next() % groups);
            let v = next() % 40;
            values.push(match v {
                0 => None,
                1 => Some(String::new()),
                v if v % 3 == 0 => Some(format!("a value longer than twelve bytes {v}")),
                v => Some(format!("v{v}")),
            });
        }
        (group_of, StringViewArray::from(values))
    }

    fn brute_force(group_of: &[usize], values: &StringViewArray, filter: Option<&BooleanArray>) -> Vec<i64> {
        let mut sets: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (row, &g) in group_of.iter().enumerate() {
            sets.entry(g).or_default();
            if counted(values, filter, row) {
                sets.get_mut(&g).unwrap().insert(values.value(row).to_string());
            }
        }
        let groups = group_of.iter().max().map_or(0, |m| m + 1);
        (0..groups)
            .map(|g| sets.get(&g).map_or(0, |s| s.len() as i64))
            .collect()
    }

    fn counts(array: ArrayRef) -> Vec<i64> {
        array
            .as_primitive::<arrow::datatypes::Int64Type>()
            .values()
            .to_vec()
    }

    #[test]
    fn counts_distinct_values_per_group_in_batches_with_a_filter() {
        let (group_of, values) = rows(3000, 50, 7);
        let groups = 50;
        let filter: BooleanArray = (0..values.len())
            .map(|i| (i % 7 != 0).then_some(i % 5 != 0))
            .collect();
        let mut acc = StringDistinctCounts::default();
        for start in (0..values.len()).step_by(256) {
            let len = 256.min(values.len() - start);
            let slice: ArrayRef = Arc::new(values.slice(start, len));
            let f = filter.slice(start, len);
            acc.update_batch(&[slice], &group_of[start..start + len], Some(&f), groups)
                .unwrap();
        }
        assert_eq!(
            counts(acc.evaluate(EmitTo::All).unwrap()),
            brute_force(&group_of, &values, Some(&filter))
        );
    }

    #[test]
    fn partial_states_merge_to_the_same_counts_and_emit_first_renumbers() {
        let (group_of, values) = rows(4000, 30, 11);
        let want = brute_force(&group_of, &values, None);
        // Two partial accumulators over halves, their states merged.
        let mut final_acc = StringDistinctCounts::default();
        for (lo, hi) in [(0, 1700), (1700, 4000)] {
            let mut partial = StringDistinctCounts::default();
            let slice: ArrayRef = Arc::new(values.slice(lo, hi - lo));
            // The partial stage's own group numbers: first appearance.
            let mut local: BTreeMap<usize, usize> = BTreeMap::new();
            let mut order = Vec::new();
            let idx: Vec<usize> = group_of[lo..hi]
                .iter()
                .map(|g| {
                    let n = local.len();
                    *local.entry(*g).or_insert_with(|| {
                        order.push(*g);
                        n
                    })
                })
                .collect();
            partial.update_batch(&[slice], &idx, None, local.len()).unwrap();
            // Emit the first 5 groups' state, then the rest.
            let first = partial.state(EmitTo::First(5)).unwrap();
            let rest = partial.state(EmitTo::All).unwrap();
            final_acc.merge_batch(&first, &order[..5], 30).unwrap();
            final_acc.merge_batch(&rest, &order[5..], 30).unwrap();
        }
        let got = counts(final_acc.evaluate(EmitTo::First(10)).unwrap());
        assert_eq!(got, want[..10]);
        let got = counts(final_acc.evaluate(EmitTo::All).unwrap());
        assert_eq!(got, want[10..]);
    }

    #[test]
    fn emitting_everything_gives_the_memory_back() {
        let (group_of, values) = rows(5000, 40, 13);
        let mut acc = StringDistinctCounts::default();
        acc.update_batch(&[Arc::new(values) as ArrayRef], &group_of, None, 40)
            .unwrap();
        let full = acc.size();
        // A spill emits every group's state, then the aggregate shrinks its
        // reservation to what the accumulator says it holds.
        acc.state(EmitTo::All).unwrap();
        assert!(acc.size() < full / 10, "{} of {full}", acc.size());
    }

    #[test]
    fn converted_rows_merge_to_the_same_counts() {
        let (group_of, values) = rows(2000, 20, 3);
        let filter: BooleanArray = (0..values.len()).map(|i| Some(i % 4 != 0)).collect();
        let acc = StringDistinctCounts::default();
        let state = acc
            .convert_to_state(&[Arc::new(values.clone()) as ArrayRef], Some(&filter))
            .unwrap();
        assert_eq!(state[0].len(), values.len());
        let mut merged = StringDistinctCounts::default();
        merged.merge_batch(&state, &group_of, 20).unwrap();
        assert_eq!(
            counts(merged.evaluate(EmitTo::All).unwrap()),
            brute_force(&group_of, &values, Some(&filter))
        );
    }

    fn events() -> RecordBatch {
        let (group_of, values) = rows(600, 12, 5);
        let schema = Arc::new(Schema::new(vec![
            Field::new("g", DataType::UInt32, false),
            Field::new("item", DataType::Utf8, true),
            Field::new("kind", DataType::Utf8, false),
        ]));
        let item: StringArray = values.iter().collect();
        let kind: StringArray = (0..600)
            .map(|i| Some(if i % 3 == 0 { "buy" } else { "view" }))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt32Array::from_iter_values(group_of.iter().map(|&g| g as u32))),
                Arc::new(item),
                Arc::new(kind),
            ],
        )
        .unwrap()
    }

    const QUERIES: &[&str] = &[
        "SELECT g, count(DISTINCT item) AS d, count(*) AS n, avg(g) AS a FROM t GROUP BY g ORDER BY g",
        "SELECT g, count(DISTINCT item) FILTER (WHERE kind = 'buy') AS d, count(DISTINCT kind) AS k \
         FROM t GROUP BY g ORDER BY g",
        "SELECT count(DISTINCT item) AS d, count(*) AS n FROM t",
        "SELECT kind, count(DISTINCT g) AS d, count(*) AS n, avg(g) AS a FROM t GROUP BY kind ORDER BY kind",
        "SELECT g % 3 AS h, count(DISTINCT upper(item)) AS d, count(*) AS n FROM t WHERE g > 2 \
         GROUP BY g % 3 ORDER BY h",
    ];

    #[tokio::test]
    async fn gives_datafusions_answers() {
        let rule: Arc<dyn OptimizerRule + Send + Sync> = Arc::new(GroupedCountDistinct);
        for sql in QUERIES {
            let plain = session_with("t", events(), None);
            let kiln = session_with("t", events(), Some(Arc::clone(&rule)));
            assert_eq!(run(&kiln, sql).await, run(&plain, sql).await, "{sql}");
            // Integers keep DataFusion's own grouped distinct count.
            let integer = sql.contains("DISTINCT g)");
            assert_eq!(
                plan(&kiln, sql).await.contains("count_distinct("),
                !integer,
                "{sql}"
            );
        }
    }

    /// A session with both rules, two partitions and small batches.
    fn single_stage_session() -> datafusion::prelude::SessionContext {
        let state = datafusion::execution::SessionStateBuilder::new()
            .with_config(
                datafusion::prelude::SessionConfig::new()
                    .with_target_partitions(2)
                    .with_batch_size(8),
            )
            .with_default_features();
        let state = crate::engine::with_kiln_physical_rules(state, false, true)
            .with_optimizer_rule(Arc::new(GroupedCountDistinct))
            .build();
        let ctx = datafusion::prelude::SessionContext::new_with_state(state);
        let batch = events();
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    #[tokio::test]
    async fn one_stage_gives_datafusions_answers() {
        for sql in QUERIES {
            let plain = session_with("t", events(), None);
            let kiln = single_stage_session();
            assert_eq!(run(&kiln, sql).await, run(&plain, sql).await, "{sql}");
            let physical = kiln.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
            let shown = datafusion::physical_plan::displayable(physical.as_ref())
                .indent(false)
                .to_string();
            // DataFusion's distinct count of integers keeps its two stages.
            let stages = !sql.contains("DISTINCT g)");
            assert_eq!(!shown.contains("mode=Partial"), stages, "{sql}: {shown}");
            assert_eq!(!shown.contains("mode=Final"), stages, "{sql}: {shown}");
        }
    }

    #[tokio::test]
    async fn leaves_other_distinct_aggregates_alone() {
        let kiln = session_with("t", events(), Some(Arc::new(GroupedCountDistinct)));
        let sql = "SELECT g, count(DISTINCT g) AS c, sum(DISTINCT g) AS s FROM t GROUP BY g";
        assert!(!plan(&kiln, sql).await.contains("count_distinct("));
    }
}
