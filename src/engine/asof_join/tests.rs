//! `ASOF JOIN` held to DataFusion's own answer for the same rule written
//! with a join and MAX, on random data across partitions; the shapes a
//! FROM clause can put it in; ties; and the errors it reports.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch};
use arrow::array::{TimestampMicrosecondArray, TimestampNanosecondArray};
use arrow::util::pretty::pretty_format_batches;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::physical_plan::displayable;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement};

use super::partition::SideLimit;
use super::{AsOfJoinPlanner, fold_asof_joins};
use crate::engine::rule_testing::small_state;

fn session() -> SessionContext {
    let state = small_state(7, None)
        .with_relation_planners(vec![Arc::new(AsOfJoinPlanner)])
        .build();
    SessionContext::new_with_state(state)
}

/// `batch` as table `name`, split into three partitions.
fn register(ctx: &SessionContext, name: &str, batch: RecordBatch) {
    let n = batch.num_rows();
    let parts = (0..3)
        .map(|i| vec![batch.slice(i * n / 3, (i + 1) * n / 3 - i * n / 3)])
        .collect();
    let table = MemTable::try_new(batch.schema(), parts).unwrap();
    ctx.register_table(name, Arc::new(table)).unwrap();
}

/// The query planned the way a pipeline's statements are.
async fn sql(ctx: &SessionContext, text: &str) -> Result<DataFrame> {
    let mut statements = DFParser::parse_sql(text)?;
    let Some(Statement::Statement(mut statement)) = statements.pop_front() else {
        panic!("one SQL statement")
    };
    fold_asof_joins(statement.as_mut());
    let plan = ctx
        .state()
        .statement_to_plan(Statement::Statement(statement))
        .await?;
    ctx.execute_logical_plan(plan).await
}

async fn rows(ctx: &SessionContext, text: &str) -> String {
    let batches = sql(ctx, text).await.unwrap().collect().await.unwrap();
    pretty_format_batches(&batches).unwrap().to_string()
}

struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Labels `l(id, k INT, t TIMESTAMP(ns))` and features `f(k BIGINT, t
/// TIMESTAMP(µs), v)` with nulls in keys and times, keys on one side only,
/// times in no order, label times often exactly at a feature time, and
/// feature times unique (so that the reference's MAX finds one row).
fn random_tables(seed: u64, labels: usize, features: usize, keys: u64) -> (RecordBatch, RecordBatch) {
    let mut r = Random(seed);
    let (lk, lt): (Vec<_>, Vec<_>) = (0..labels)
        .map(|_| {
            let k = (r.below(9) != 0).then(|| r.below(keys - 2) as i32);
            let micros = r.below(features as u64) as i64;
            let nanos = if r.below(2) == 0 { 0 } else { 500 };
            let t = (r.below(9) != 0).then_some(micros * 1000 + nanos);
            (k, t)
        })
        .unzip();
    let l = RecordBatch::try_from_iter([
        (
            "id",
            Arc::new(Int64Array::from_iter_values(0..labels as i64)) as ArrayRef,
        ),
        ("k", Arc::new(Int32Array::from(lk))),
        ("t", Arc::new(TimestampNanosecondArray::from(lt))),
    ])
    .unwrap();
    let (fk, (ft, fv)): (Vec<_>, (Vec<_>, Vec<_>)) = (0..features)
        .map(|i| {
            let k = (r.below(11) != 0).then_some(i as i64 % keys as i64);
            // A permutation of 0..features (7907 is prime).
            let t = (r.below(13) != 0).then_some((i as i64 * 7907) % features as i64);
            (k, (t, Some(i as f64)))
        })
        .unzip();
    let f = RecordBatch::try_from_iter([
        ("k", Arc::new(Int64Array::from(fk)) as ArrayRef),
        ("t", Arc::new(TimestampMicrosecondArray::from(ft))),
        ("v", Arc::new(Float64Array::from(fv))),
    ])
    .unwrap();
    (l, f)
}

#[tokio::test]
async fn agrees_with_a_join_and_max_on_random_data() {
    for (seed, inclusive) in [(1, false), (2, true), (3, false), (4, true)] {
        let ctx = session();
        let (l, f) = random_tables(seed, 300, 2000, 9);
        register(&ctx, "l", l);
        register(&ctx, "f", f);
        let (op, below) = if inclusive { (">=", "<=") } else { (">", "<") };
        let asof = rows(
            &ctx,
            &format!(
                "SELECT l.id, f.t AS ft, f.v FROM l ASOF JOIN f MATCH_CONDITION (l.t {op} f.t) ON l.k = f.k ORDER BY l.id"
            ),
        )
        .await;
        let reference = rows(
            &ctx,
            &format!(
                "WITH m AS (SELECT l.id, l.k, MAX(f.t) AS ft FROM l LEFT JOIN f ON l.k = f.k AND f.t {below} l.t \
                 GROUP BY l.id, l.k) \
                 SELECT m.id, f.t AS ft, f.v FROM m LEFT JOIN f ON m.k = f.k AND m.ft = f.t ORDER BY m.id"
            ),
        )
        .await;
        assert_eq!(asof, reference, "seed {seed}, inclusive {inclusive}");
        // Most labels find a row, and equal times change some matches.
        let matched = rows(
            &ctx,
            "SELECT count(f.v) AS n FROM l ASOF JOIN f MATCH_CONDITION (l.t > f.t) ON l.k = f.k",
        )
        .await;
        let matched: usize = matched
            .lines()
            .nth(3)
            .unwrap()
            .trim_matches(['|', ' '])
            .parse()
            .unwrap();
        assert!(matched > 150, "{matched} of 300 labels matched");
        let query = |op: &str| {
            format!(
                "SELECT l.id, f.v FROM l ASOF JOIN f MATCH_CONDITION (l.t {op} f.t) ON l.k = f.k ORDER BY l.id"
            )
        };
        let (strict, with_equal) = (rows(&ctx, &query(">")).await, rows(&ctx, &query(">=")).await);
        assert_ne!(strict, with_equal);
    }
}

#[tokio::test]
async fn the_row_exactly_at_the_time_matches_only_with_greater_or_equal() {
    let ctx = session();
    ctx.sql("CREATE TABLE l AS VALUES (1, TIMESTAMP '2026-01-02 00:00:00')")
        .await
        .unwrap();
    ctx.sql(
        "CREATE TABLE f AS VALUES (1, TIMESTAMP '2026-01-01 00:00:00', 'before'), \
         (1, TIMESTAMP '2026-01-02 00:00:00', 'at'), (1, TIMESTAMP '2026-01-03 00:00:00', 'after')",
    )
    .await
    .unwrap();
    let strict = rows(
        &ctx,
        "SELECT f.column3 FROM l ASOF JOIN f MATCH_CONDITION (l.column2 > f.column2) ON l.column1 = f.column1",
    )
    .await;
    assert!(strict.contains("before") && !strict.contains("| at"), "{strict}");
    // Written from the right side's point of view: the same rule.
    let inclusive = rows(
        &ctx,
        "SELECT f.column3 FROM l ASOF JOIN f MATCH_CONDITION (f.column2 <= l.column2) ON f.column1 = l.column1",
    )
    .await;
    assert!(inclusive.contains("| at"), "{inclusive}");
}

#[tokio::test]
async fn ties_are_broken_by_the_right_sides_columns_and_unmatched_rows_stay() {
    let ctx = session();
    ctx.sql(
        "CREATE TABLE l AS VALUES (1, 10, 'a'), (2, 10, 'b'), (NULL, 10, 'c'), (1, NULL, 'd'), (1, 5, 'e')",
    )
    .await
    .unwrap();
    // Key 1 has three rows at time 4: the one whose columns sort last wins.
    ctx.sql("CREATE TABLE f AS VALUES (1, 4, 7.0), (1, 4, NULL), (1, 4, 9.0), (1, 2, 100.0), (3, 1, 1.0)")
        .await
        .unwrap();
    let text = rows(
        &ctx,
        "SELECT l.column3 AS label, f.column3 AS v FROM l \
         ASOF JOIN f MATCH_CONDITION (l.column2 > f.column2) ON l.column1 = f.column1 ORDER BY label",
    )
    .await;
    let expected = "\
+-------+-----+
| label | v   |
+-------+-----+
| a     | 9.0 |
| b     |     |
| c     |     |
| d     |     |
| e     | 9.0 |
+-------+-----+";
    assert_eq!(text, expected);
}

#[tokio::test]
async fn as_of_joins_sit_among_other_joins_in_views_and_subqueries() {
    let ctx = session();
    ctx.sql("CREATE TABLE l AS VALUES (1, 10), (2, 10)")
        .await
        .unwrap();
    ctx.sql("CREATE TABLE f AS VALUES (1, 3, 'f1'), (2, 8, 'f2')")
        .await
        .unwrap();
    ctx.sql("CREATE TABLE g AS VALUES (1, 9, 'g1'), (2, 11, 'g2')")
        .await
        .unwrap();
    ctx.sql("CREATE TABLE d AS VALUES (1, 'one'), (2, 'two')")
        .await
        .unwrap();
    let text = rows(
        &ctx,
        "WITH x AS (SELECT column1 AS k, column2 * 1 AS t, column3 AS name FROM g) \
         SELECT d.column2 AS entity, f.column3 AS f, x.name AS g FROM l \
         JOIN d ON d.column1 = l.column1 \
         ASOF JOIN f MATCH_CONDITION (l.column2 > f.column2) ON l.column1 = f.column1 \
         ASOF JOIN x MATCH_CONDITION (l.column2 >= x.t) ON x.k = l.column1 \
         WHERE l.column1 IN (SELECT l2.column1 FROM l l2 ASOF JOIN f f2 \
                             MATCH_CONDITION (l2.column2 > f2.column2) ON l2.column1 = f2.column1) \
         ORDER BY entity",
    )
    .await;
    let expected = "\
+--------+----+----+
| entity | f  | g  |
+--------+----+----+
| one    | f1 | g1 |
| two    | f2 |    |
+--------+----+----+";
    assert_eq!(text, expected);
}

#[tokio::test]
async fn times_of_different_units_and_zones_compare_as_instants() {
    let ctx = session();
    // 01:00 at +01:00 is midnight UTC: the feature row at midnight UTC is
    // exactly at the label's time.
    ctx.sql("CREATE TABLE l AS SELECT 1 AS k, arrow_cast('2026-01-02T01:00:00+01:00', 'Timestamp(Second, Some(\"+01:00\"))') AS t")
        .await
        .unwrap();
    ctx.sql("CREATE TABLE f AS SELECT 1 AS k, arrow_cast(TIMESTAMP '2026-01-02 00:00:00', 'Timestamp(Nanosecond, None)') AS t, 'at' AS v")
        .await
        .unwrap();
    let strict = rows(
        &ctx,
        "SELECT f.v FROM l ASOF JOIN f MATCH_CONDITION (l.t > f.t) ON l.k = f.k",
    )
    .await;
    assert!(!strict.contains("at"), "{strict}");
    let inclusive = rows(
        &ctx,
        "SELECT f.v FROM l ASOF JOIN f MATCH_CONDITION (l.t >= f.t) ON l.k = f.k",
    )
    .await;
    assert!(inclusive.contains("at"), "{inclusive}");
}

#[tokio::test]
async fn a_day_counts_once_it_is_over() {
    let ctx = session();
    ctx.sql(
        "CREATE TABLE l AS VALUES (1, TIMESTAMP '2026-01-03 00:00:00'), (1, TIMESTAMP '2026-01-02 23:59:59')",
    )
    .await
    .unwrap();
    ctx.sql("CREATE TABLE f AS VALUES (1, DATE '2026-01-01', 'day1'), (1, DATE '2026-01-02', 'day2')")
        .await
        .unwrap();
    let text = rows(
        &ctx,
        "SELECT l.column2 AS t, f.column3 AS day FROM l ASOF JOIN f \
         MATCH_CONDITION (l.column2 >= f.column2 + INTERVAL '1 day') ON l.column1 = f.column1 ORDER BY t",
    )
    .await;
    assert!(text.contains("| 2026-01-02T23:59:59 | day1 |"), "{text}");
    assert!(text.contains("| 2026-01-03T00:00:00 | day2 |"), "{text}");
}

#[tokio::test]
async fn the_plan_shows_the_join_partitioned_by_key_and_reads_only_needed_columns() {
    let ctx = session();
    let (l, f) = random_tables(5, 30, 60, 9);
    register(&ctx, "l", l);
    register(&ctx, "f", f);
    let df = sql(
        &ctx,
        "SELECT l.id FROM l ASOF JOIN f MATCH_CONDITION (l.t > f.t) ON l.k = f.k",
    )
    .await
    .unwrap();
    let logical = format!("{}", df.clone().into_optimized_plan().unwrap().display_indent());
    assert!(
        logical.contains("AsOfJoin: l.t > f.t, on=[CAST(l.k AS Int64) = f.k]"),
        "{logical}"
    );
    assert!(logical.contains("TableScan: f projection=[k, t]"), "{logical}");
    let physical = df.create_physical_plan().await.unwrap();
    let physical = displayable(physical.as_ref()).indent(true).to_string();
    assert!(physical.contains("AsOfJoinExec: t@"), "{physical}");
    assert!(
        physical.contains("RepartitionExec: partitioning=Hash"),
        "{physical}"
    );
}

#[tokio::test]
async fn a_join_without_keys_matches_on_time_alone() {
    let ctx = session();
    ctx.sql("CREATE TABLE l AS VALUES (5), (1), (12)").await.unwrap();
    ctx.sql("CREATE TABLE f AS VALUES (4, 'four'), (10, 'ten')")
        .await
        .unwrap();
    let text = rows(
        &ctx,
        "SELECT l.column1 AS t, f.column2 AS v FROM l ASOF JOIN f MATCH_CONDITION (l.column1 > f.column1) ORDER BY t",
    )
    .await;
    assert!(text.contains("| 1  |      |"), "{text}");
    assert!(text.contains("| 5  | four |"), "{text}");
    assert!(text.contains("| 12 | ten  |"), "{text}");
}

/// The message and the (line, column) of the planning error.
async fn error_of(text: &str) -> (String, Option<(u64, u64)>) {
    let ctx = session();
    ctx.sql("CREATE TABLE l AS VALUES (1, TIMESTAMP '2026-01-02 00:00:00', 3)")
        .await
        .unwrap();
    ctx.sql("CREATE TABLE f AS VALUES (1, TIMESTAMP '2026-01-01 00:00:00', 4)")
        .await
        .unwrap();
    let e = sql(&ctx, text).await.expect_err("a planning error");
    let span = e
        .iter()
        .find_map(|e| e.diagnostic().and_then(|d| d.span))
        .map(|s| (s.start.line, s.start.column));
    (e.to_string(), span)
}

#[tokio::test]
async fn what_cannot_be_planned_is_reported_at_its_place() {
    let from = "SELECT * FROM l\nASOF JOIN f";
    let (msg, at) = error_of(&format!("{from} MATCH_CONDITION (l.column2 < f.column2)")).await;
    assert!(msg.contains("backward as-of joins only"), "{msg}");
    assert_eq!(at, Some((2, 30)));

    let (msg, at) = error_of(&format!(
        "{from} MATCH_CONDITION (l.column2 > f.column2)\n  ON l.column1 = f.column1 AND l.column3 > f.column3"
    ))
    .await;
    assert!(msg.contains("holds only equal keys"), "{msg}");
    assert_eq!(at, Some((3, 6)));

    let (msg, _) = error_of(&format!("{from} MATCH_CONDITION (l.column3 > f.column2)")).await;
    assert!(
        msg.contains("both be TIMESTAMP or DATE") && msg.contains("Int64"),
        "{msg}"
    );

    let (msg, _) = error_of(&format!("{from} MATCH_CONDITION (l.column2 > l.column2)")).await;
    assert!(msg.contains("one side of the join only"), "{msg}");

    let (msg, _) = error_of(&format!(
        "{from} MATCH_CONDITION (l.column2 > f.column2) USING (column1)"
    ))
    .await;
    assert!(msg.contains("USING and NATURAL are not supported"), "{msg}");

    let (msg, _) = error_of(&format!("{from} MATCH_CONDITION (l.column2 = f.column2)")).await;
    assert!(msg.contains("with > or >="), "{msg}");
}

fn session_with_pool(bytes: usize) -> SessionContext {
    let state = small_state(64, Some(bytes))
        .with_relation_planners(vec![Arc::new(AsOfJoinPlanner)])
        .build();
    SessionContext::new_with_state(state)
}

/// The query's rows and the number of spill files its plan wrote.
async fn rows_and_spills(ctx: &SessionContext, text: &str) -> Result<(String, usize)> {
    let (rows, spills, _) = rows_spills_and_buckets(ctx, text).await?;
    Ok((rows, spills))
}

/// The query's rows, the spill files the as-of join wrote and the buckets
/// it matched.
async fn rows_spills_and_buckets(ctx: &SessionContext, text: &str) -> Result<(String, usize, usize)> {
    let df = sql(ctx, text).await?;
    let task = Arc::new(df.task_ctx());
    let plan = df.create_physical_plan().await?;
    let batches = datafusion::physical_plan::collect(Arc::clone(&plan), task).await?;
    fn of_join(
        plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        metric: &dyn Fn(&datafusion::physical_plan::metrics::MetricsSet) -> Option<usize>,
    ) -> usize {
        let own = if plan.name() == "AsOfJoinExec" {
            plan.metrics().and_then(|m| metric(&m)).unwrap_or(0)
        } else {
            0
        };
        own + plan
            .children()
            .into_iter()
            .map(|c| of_join(c, metric))
            .sum::<usize>()
    }
    Ok((
        pretty_format_batches(&batches)?.to_string(),
        of_join(&plan, &|m| m.spill_count()),
        of_join(&plan, &|m| {
            m.sum_by_name(super::exec::BUCKETS).map(|v| v.as_usize())
        }),
    ))
}

#[tokio::test]
async fn sides_larger_than_the_memory_pool_spill_and_give_the_same_answer() {
    let (l, f) = random_tables(6, 5000, 200_000, 2000);
    let query = "SELECT l.id, f.t AS ft, f.v FROM l ASOF JOIN f MATCH_CONDITION (l.t >= f.t) ON l.k = f.k ORDER BY l.id";
    let unbounded = session();
    register(&unbounded, "l", l.clone());
    register(&unbounded, "f", f.clone());
    let (want, spilled) = rows_and_spills(&unbounded, query).await.unwrap();
    assert_eq!(spilled, 0);
    // The feature side alone is about 5 MiB.
    let small = session_with_pool(1 << 20);
    register(&small, "l", l);
    register(&small, "f", f);
    let (got, spilled) = rows_and_spills(&small, query).await.unwrap();
    assert!(spilled > 0, "the join spilled");
    assert_eq!(got, want);
}

#[tokio::test]
async fn sides_split_into_buckets_that_the_pool_holds_stay_in_memory() {
    let (l, f) = random_tables(7, 5000, 200_000, 2000);
    let query = "SELECT l.id, f.t AS ft, f.v FROM l ASOF JOIN f MATCH_CONDITION (l.t > f.t) ON l.k = f.k ORDER BY l.id";
    let whole = session();
    register(&whole, "l", l.clone());
    register(&whole, "f", f.clone());
    let want = rows_and_spills(&whole, query).await.unwrap().0;
    // Each partition's feature side (about 2.5 MiB) is read in buckets of
    // at most 256 KiB, twice split; the pool holds them all.
    let mut state = small_state(7, None)
        .with_relation_planners(vec![Arc::new(AsOfJoinPlanner)])
        .build();
    state.config_mut().set_extension(Arc::new(SideLimit(256 << 10)));
    let split = SessionContext::new_with_state(state);
    register(&split, "l", l);
    register(&split, "f", f);
    let (got, spilled, buckets) = rows_spills_and_buckets(&split, query).await.unwrap();
    assert!(buckets > 16, "the partitions were split twice: {buckets} buckets");
    assert_eq!(spilled, 0, "the buckets were held in memory");
    assert_eq!(got, want);
}

#[tokio::test]
async fn one_key_larger_than_the_memory_pool_is_a_clear_error() {
    let ctx = session_with_pool(64 << 10);
    ctx.sql("CREATE TABLE l AS SELECT 1 AS k, value AS t FROM generate_series(1, 100)")
        .await
        .unwrap();
    ctx.sql("CREATE TABLE f AS SELECT 1 AS k, value AS t, value * 2 AS v FROM generate_series(1, 50000)")
        .await
        .unwrap();
    let e = sql(
        &ctx,
        "SELECT * FROM l ASOF JOIN f MATCH_CONDITION (l.t > f.t) ON l.k = f.k",
    )
    .await
    .unwrap()
    .collect()
    .await
    .expect_err("one key does not fit");
    assert!(
        e.to_string().contains("the rows of one ASOF JOIN key do not fit"),
        "{e}"
    );
    assert!(e.to_string().contains("KILN_MEMORY_LIMIT"), "{e}");
}

#[test]
fn folding_twice_changes_nothing() {
    let text = "SELECT * FROM a JOIN b ON a.x = b.x ASOF JOIN c MATCH_CONDITION (a.t > c.t) ON a.k = c.k \
                JOIN d ON d.k = a.k ASOF JOIN e MATCH_CONDITION (a.t > e.t)";
    let mut statements = DFParser::parse_sql(text).unwrap();
    let Some(Statement::Statement(mut statement)) = statements.pop_front() else {
        panic!()
    };
    fold_asof_joins(statement.as_mut());
    let once = statement.to_string();
    fold_asof_joins(statement.as_mut());
    assert_eq!(statement.to_string(), once);
    assert!(
        once.contains(
            "FROM ((a JOIN b ON a.x = b.x ASOF JOIN c MATCH_CONDITION (a.t > c.t) ON a.k = c.k) JOIN d"
        ),
        "{once}"
    );
}
