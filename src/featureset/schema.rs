//! Arrow types as Delta can store them, and the schema rules of a feature
//! set: a new one takes the query's schema, an existing one only accepts
//! the same columns (and new ones when the pipeline allows it).
//!
//! Decisions, written down in the README too:
//! - Timestamps are stored as Delta `timestamp` (UTC, microseconds). A
//!   timestamp without a time zone is taken to be UTC. This keeps the table
//!   at the oldest Delta protocol every reader supports, where
//!   `timestamp_ntz` would demand reader version 3 with table features.
//! - Delta has no unsigned integers: they widen to the next signed type
//!   (UInt64 to Int64, failing on values that do not fit).
//! - Every column is nullable, so a later run whose query is less certain
//!   about nulls still fits the table.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::{KilnError, Result};

fn unsupported(column: &str, t: &DataType, hint: &str) -> KilnError {
    KilnError::Usage(format!(
        "column '{column}' has type {t}, which a feature set cannot store: {hint}"
    ))
}

/// The type a column of type `t` is stored as.
pub fn storable_type(column: &str, t: &DataType) -> Result<DataType> {
    use DataType::*;
    Ok(match t {
        Boolean | Int8 | Int16 | Int32 | Int64 | Float32 | Float64 | Utf8 | Binary | Date32 => t.clone(),
        Decimal128(p, s) if *p <= 38 => Decimal128(*p, *s),
        UInt8 => Int16,
        UInt16 => Int32,
        UInt32 | UInt64 => Int64,
        Float16 => Float32,
        Utf8View | LargeUtf8 => Utf8,
        BinaryView | LargeBinary | FixedSizeBinary(_) => Binary,
        Date64 => Date32,
        Timestamp(_, _) => Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Dictionary(_, value) => storable_type(column, value)?,
        List(f) | LargeList(f) | ListView(f) | LargeListView(f) | FixedSizeList(f, _) => {
            List(storable_field(column, f)?)
        }
        Struct(fields) => Struct(
            fields
                .iter()
                .map(|f| storable_field(&format!("{column}.{}", f.name()), f))
                .collect::<Result<Fields>>()?,
        ),
        Map(entries, sorted) => Map(storable_field(column, entries)?, *sorted),
        Null => return Err(unsupported(column, t, "give it a type with CAST(NULL AS <type>)")),
        _ => return Err(unsupported(column, t, "CAST it to a number, string or timestamp")),
    })
}

fn storable_field(column: &str, f: &FieldRef) -> Result<FieldRef> {
    Ok(Arc::new(Field::new(
        f.name(),
        storable_type(column, f.data_type())?,
        true,
    )))
}

/// The schema a query's output is stored with.
pub fn storable_schema(schema: &Schema) -> Result<SchemaRef> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            Ok(Field::new(
                f.name(),
                storable_type(f.name(), f.data_type())?,
                true,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Cast a batch to `target` (same column names, storable types). Values
/// that do not fit (a UInt64 above i64::MAX) fail rather than turn into nulls.
pub fn to_storable(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    let columns = target
        .fields()
        .iter()
        .map(|f| {
            let column = batch
                .column_by_name(f.name())
                .ok_or_else(|| KilnError::Usage(format!("the query gives no column '{}'", f.name())))?;
            if column.data_type() == f.data_type() {
                return Ok(column.clone());
            }
            cast_with_options(column, f.data_type(), &options).map_err(|e| {
                KilnError::Usage(format!(
                    "column '{}': cannot store {} as {}: {e}",
                    f.name(),
                    column.data_type(),
                    f.data_type()
                ))
            })
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(target.clone(), columns)?)
}

/// How a query's schema fits an existing feature set.
#[derive(Debug, PartialEq)]
pub enum Fit {
    /// Same columns; the query's columns are reordered to the table's.
    Same(SchemaRef),
    /// The query adds these columns (allowed only with `allow_new_columns`).
    AddsColumns(SchemaRef, Vec<String>),
}

/// A column that does not fit: its name and why.
pub type Misfit = (String, String);

/// Compare the storable schema of a query with the table's. Every mismatch
/// is returned with the column it is about.
pub fn fit(table: &Schema, query: &Schema, feature_set: &str) -> std::result::Result<Fit, Vec<Misfit>> {
    let mut problems = Vec::new();
    let mut ordered: Vec<Field> = Vec::new();
    for tf in table.fields() {
        match query.field_with_name(tf.name()) {
            Err(_) => problems.push((
                tf.name().clone(),
                format!(
                    "column '{}' of feature set '{feature_set}' is missing from the query",
                    tf.name()
                ),
            )),
            Ok(qf) if !same_type(qf.data_type(), tf.data_type()) => problems.push((
                tf.name().clone(),
                format!(
                    "type mismatch: column '{}' is {} in feature set '{feature_set}' but the query gives {}",
                    tf.name(),
                    tf.data_type(),
                    qf.data_type()
                ),
            )),
            Ok(qf) => ordered.push(qf.clone()),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let added: Vec<Field> = query
        .fields()
        .iter()
        .filter(|qf| table.field_with_name(qf.name()).is_err())
        .map(|f| f.as_ref().clone())
        .collect();
    let names: Vec<String> = added.iter().map(|f| f.name().clone()).collect();
    ordered.extend(added);
    let schema = Arc::new(Schema::new(ordered));
    Ok(if names.is_empty() {
        Fit::Same(schema)
    } else {
        Fit::AddsColumns(schema, names)
    })
}

/// Types equal up to nullability of nested fields and timestamp zone
/// spelling, which Delta does not keep.
fn same_type(a: &DataType, b: &DataType) -> bool {
    use DataType::*;
    match (a, b) {
        (Timestamp(ua, za), Timestamp(ub, zb)) => {
            ua == ub && za.as_deref().map(is_utc) == zb.as_deref().map(is_utc)
        }
        (List(fa), List(fb)) => same_type(fa.data_type(), fb.data_type()),
        (Struct(fa), Struct(fb)) => {
            fa.len() == fb.len()
                && fa
                    .iter()
                    .zip(fb.iter())
                    .all(|(x, y)| x.name() == y.name() && same_type(x.data_type(), y.data_type()))
        }
        _ => a == b,
    }
}

fn is_utc(tz: &str) -> bool {
    matches!(tz, "UTC" | "+00:00" | "Z" | "Etc/UTC")
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, UInt64Array};

    use super::*;

    #[test]
    fn storable_types() {
        let t = storable_type("c", &DataType::Timestamp(TimeUnit::Nanosecond, None)).unwrap();
        assert_eq!(t, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())));
        assert_eq!(storable_type("c", &DataType::UInt64).unwrap(), DataType::Int64);
        assert_eq!(storable_type("c", &DataType::Utf8View).unwrap(), DataType::Utf8);
        let err = storable_type("c", &DataType::Null).unwrap_err().to_string();
        assert!(err.contains("column 'c'") && err.contains("CAST"), "{err}");
    }

    #[test]
    fn unsigned_overflow_fails_instead_of_nulling() {
        let schema = Arc::new(Schema::new(vec![Field::new("r", DataType::UInt64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(UInt64Array::from(vec![1, u64::MAX]))],
        )
        .unwrap();
        let target = storable_schema(&schema).unwrap();
        let err = to_storable(&batch, &target).unwrap_err().to_string();
        assert!(err.contains("column 'r'"), "{err}");
        let ok = RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![1, 2]))]).unwrap();
        let stored = to_storable(&ok, &target).unwrap();
        assert_eq!(
            stored
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values(),
            &[1, 2]
        );
    }

    #[test]
    fn fit_names_the_mismatched_columns() {
        let table = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
        ]);
        let reordered = Schema::new(vec![
            Field::new("b", DataType::Utf8, true),
            Field::new("a", DataType::Int64, true),
        ]);
        match fit(&table, &reordered, "fs").unwrap() {
            Fit::Same(s) => assert_eq!(s.field(0).name(), "a"),
            other => panic!("{other:?}"),
        }
        let wrong = Schema::new(vec![
            Field::new("a", DataType::Float64, true),
            Field::new("c", DataType::Utf8, true),
        ]);
        let err = fit(&table, &wrong, "fs").unwrap_err();
        assert_eq!(err[0].0, "a");
        assert!(err[0].1.contains("column 'a' is Int64"), "{err:?}");
        assert!(
            err[1].1.contains("column 'b' of feature set 'fs' is missing"),
            "{err:?}"
        );
        let wider = Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("c", DataType::Utf8, true),
        ]);
        assert!(matches!(fit(&table, &wider, "fs").unwrap(), Fit::AddsColumns(_, c) if c == vec!["c"]));
    }
}
