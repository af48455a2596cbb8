//! Label and feature times as one comparable integer: instants in the finer
//! of the two sides' units, so that nothing is rounded and a feature row
//! can never look older than it was.
//!
//! Decisions (written down in the README too):
//! - A timestamp with a time zone is an instant; two zones compare as
//!   instants. A timestamp without one is taken to be UTC, as kiln stores
//!   it in feature sets.
//! - A DATE is midnight UTC of that day.
//! - Strings are parsed as ISO 8601 / RFC 3339 timestamps (CSV and JSON
//!   labels); one that does not parse is an error naming the value.
//! - Numbers are refused: whether 1700000000 is seconds or milliseconds is
//!   a guess kiln does not make.

use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Date32Type, Date64Type, TimeUnit, TimestampMicrosecondType};
use arrow::datatypes::{TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType};
use arrow::util::display::FormatOptions;

use crate::error::{KilnError, Result};

/// The unit a column's values are exact in; `what` names the column in errors.
pub(crate) fn unit_of(what: &str, data_type: &DataType) -> Result<TimeUnit> {
    match data_type {
        DataType::Timestamp(unit, _) => Ok(*unit),
        DataType::Date32 => Ok(TimeUnit::Second),
        DataType::Date64 => Ok(TimeUnit::Millisecond),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Ok(TimeUnit::Microsecond),
        other => Err(not_a_time(what, other)),
    }
}

fn not_a_time(what: &str, t: &DataType) -> KilnError {
    KilnError::Usage(format!(
        "{what} has type {t}: it must be a TIMESTAMP, a DATE or an ISO 8601 string"
    ))
}

/// The finer of two units.
pub(crate) fn finer(a: TimeUnit, b: TimeUnit) -> TimeUnit {
    if per_second(a) >= per_second(b) { a } else { b }
}

fn per_second(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    }
}

/// `array`'s instants as integers in `unit` since the Unix epoch, nulls
/// kept. Fails when a value does not fit 64 bits in that unit (a date
/// centuries away in nanoseconds).
pub(crate) fn instants(what: &str, array: &ArrayRef, unit: TimeUnit) -> Result<Int64Array> {
    let (values, from): (Int64Array, TimeUnit) = match array.data_type() {
        DataType::Timestamp(from, _) => (as_i64(array, *from), *from),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>();
            (days.unary(|d| i64::from(d) * 86_400), TimeUnit::Second)
        }
        DataType::Date64 => (
            array.as_primitive::<Date64Type>().reinterpret_cast(),
            TimeUnit::Millisecond,
        ),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let parsed = parse_strings(what, array)?;
            (parsed, TimeUnit::Microsecond)
        }
        other => return Err(not_a_time(what, other)),
    };
    let factor = per_second(unit) / per_second(from);
    if factor == 1 {
        return Ok(values);
    }
    values
        .try_unary::<_, arrow::datatypes::Int64Type, _>(|v| v.checked_mul(factor).ok_or(()))
        .map_err(|()| {
            KilnError::Usage(format!(
                "{what} holds a time that does not fit 64 bits in {}",
                unit_name(unit)
            ))
        })
}

fn as_i64(array: &ArrayRef, unit: TimeUnit) -> Int64Array {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().reinterpret_cast(),
        TimeUnit::Millisecond => array
            .as_primitive::<TimestampMillisecondType>()
            .reinterpret_cast(),
        TimeUnit::Microsecond => array
            .as_primitive::<TimestampMicrosecondType>()
            .reinterpret_cast(),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().reinterpret_cast(),
    }
}

fn parse_strings(what: &str, array: &ArrayRef) -> Result<Int64Array> {
    let options = CastOptions {
        safe: true,
        format_options: FormatOptions::default(),
    };
    let parsed = cast_with_options(array, &DataType::Timestamp(TimeUnit::Microsecond, None), &options)?;
    // A value that did not parse is a null the string did not have.
    if parsed.null_count() != array.null_count() {
        let bad = (0..array.len())
            .find(|&i| array.is_valid(i) && parsed.is_null(i))
            .expect("a value that failed to parse");
        let text = arrow::util::display::ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?
            .value(bad)
            .to_string();
        return Err(KilnError::Usage(format!(
            "{what}: '{text}' (row {}) is not an ISO 8601 timestamp",
            bad + 1
        )));
    }
    Ok(as_i64(&parsed, TimeUnit::Microsecond))
}

/// A duration in `unit`, rounded down (a `--max-age` finer than the unit
/// cannot be told apart from the next smaller value).
pub(crate) fn duration_in(duration: Duration, unit: TimeUnit) -> i64 {
    let nanos = duration.as_nanos();
    let per_unit = (1_000_000_000 / per_second(unit)) as u128;
    i64::try_from(nanos / per_unit).unwrap_or(i64::MAX)
}

pub(crate) fn unit_name(unit: TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "seconds",
        TimeUnit::Millisecond => "milliseconds",
        TimeUnit::Microsecond => "microseconds",
        TimeUnit::Nanosecond => "nanoseconds",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, StringArray, TimestampMillisecondArray, TimestampNanosecondArray};

    use super::*;

    #[test]
    fn zones_and_units_become_the_same_instants() {
        // 2024-01-01T00:00:00Z three ways.
        let utc_ms: ArrayRef = Arc::new(
            TimestampMillisecondArray::from(vec![Some(1_704_067_200_000), None]).with_timezone("UTC"),
        );
        let paris_ns: ArrayRef = Arc::new(
            TimestampNanosecondArray::from(vec![Some(1_704_067_200_000_000_000), None])
                .with_timezone("Europe/Paris"),
        );
        let day: ArrayRef = Arc::new(Date32Array::from(vec![Some(19_723), None]));
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("2024-01-01T01:00:00+01:00"), None]));
        let unit = TimeUnit::Nanosecond;
        let expected = Int64Array::from(vec![Some(1_704_067_200_000_000_000), None]);
        for array in [utc_ms, paris_ns, day, text] {
            assert_eq!(
                instants("t", &array, unit).unwrap(),
                expected,
                "{}",
                array.data_type()
            );
        }
    }

    #[test]
    fn the_finer_unit_is_chosen() {
        assert_eq!(
            finer(TimeUnit::Second, TimeUnit::Nanosecond),
            TimeUnit::Nanosecond
        );
        assert_eq!(
            finer(TimeUnit::Microsecond, TimeUnit::Millisecond),
            TimeUnit::Microsecond
        );
        assert_eq!(duration_in(Duration::from_millis(1500), TimeUnit::Second), 1);
        assert_eq!(
            duration_in(Duration::from_secs(1), TimeUnit::Nanosecond),
            1_000_000_000
        );
    }

    #[test]
    fn bad_times_are_named() {
        let text: ArrayRef = Arc::new(StringArray::from(vec!["2024-01-01", "yesterday"]));
        let e = instants("label time column 'ts'", &text, TimeUnit::Microsecond).unwrap_err();
        assert!(e.to_string().contains("'yesterday' (row 2)"), "{e}");
        let far: ArrayRef = Arc::new(Date32Array::from(vec![1_000_000]));
        let e = instants("feature time column 'day'", &far, TimeUnit::Nanosecond).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e = unit_of("label time column 'ts'", &DataType::Int64).unwrap_err();
        assert!(e.to_string().contains("must be a TIMESTAMP"), "{e}");
    }
}
