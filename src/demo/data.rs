//! Deterministic sample clickstream data: events, users and items.
//!
//! Shaped like real click data: users and items are Zipf-skewed (a few are
//! very active or popular), events spread over 30 days and land as one
//! Parquet file per day in hive-style `day=YYYY-MM-DD` folders.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{KilnError, Result};

pub const DAYS: i64 = 30;
/// 2026-10-01T00:00:00Z in microseconds.
const START_MICROS: i64 = 1_790_812_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
const SEGMENTS: &[&str] = &["new", "casual", "regular", "power"];
const COUNTRIES: &[&str] = &["DE", "FR", "GB", "US", "BR", "IN", "JP", "NG"];
const CATEGORIES: &[&str] = &[
    "books", "music", "games", "garden", "kitchen", "sports", "toys", "tools",
];
const EVENT_TYPES: &[&str] = &[
    "view",
    "view",
    "view",
    "view",
    "click",
    "click",
    "add_to_cart",
    "purchase",
];

/// SplitMix64: tiny, fast and the same on every platform and release.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Skewed towards 0: index `n * u^3`, so a few indices take most draws.
    fn skewed(&mut self, n: u64) -> u64 {
        ((n as f64) * self.unit().powi(3)) as u64
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len() as u64) as usize]
    }
}

/// How much sample data to make.
#[derive(Debug, Clone, Copy)]
pub struct DemoSize {
    pub events: u64,
}

impl DemoSize {
    pub fn users(&self) -> u64 {
        (self.events / 50).max(10)
    }
    pub fn items(&self) -> u64 {
        (self.events / 200).clamp(10, 50_000)
    }
}

/// What was written, for the summary.
#[derive(Debug, Clone)]
pub struct DemoData {
    pub events: u64,
    pub users: u64,
    pub items: u64,
    pub files: usize,
}

/// Write `raw/events/day=*/part-0.parquet`, `raw/users/users.parquet` and
/// `raw/items/items.parquet` under `raw`.
pub fn generate(raw: &Path, size: DemoSize) -> Result<DemoData> {
    let mut rng = Rng(0x6B69_6C6E);
    write_users(&raw.join("users"), size.users(), &mut rng)?;
    write_items(&raw.join("items"), size.items(), &mut rng)?;
    let per_day = size.events / DAYS as u64;
    let mut event_id = 0i64;
    for day in 0..DAYS {
        let n = if day == DAYS - 1 {
            size.events - per_day * (DAYS as u64 - 1)
        } else {
            per_day
        };
        let batch = events_for_day(day, n, &mut event_id, size, &mut rng)?;
        let date = chrono::DateTime::from_timestamp_micros(START_MICROS + day * MICROS_PER_DAY)
            .expect("demo dates are in range")
            .format("%Y-%m-%d");
        write_parquet(
            &raw.join(format!("events/day={date}")).join("part-0.parquet"),
            &batch,
        )?;
    }
    Ok(DemoData {
        events: size.events,
        users: size.users(),
        items: size.items(),
        files: DAYS as usize + 2,
    })
}

fn item_name(i: u64) -> String {
    format!("item-{i:06}")
}

fn write_users(dir: &Path, n: u64, rng: &mut Rng) -> Result<()> {
    let mut id = Int64Builder::new();
    let mut segment = StringBuilder::new();
    let mut country = StringBuilder::new();
    let mut signup = Date32Builder::new();
    let start_day = (START_MICROS / MICROS_PER_DAY) as i32;
    for u in 0..n {
        id.append_value(u as i64);
        segment.append_value(rng.pick(SEGMENTS));
        country.append_value(rng.pick(COUNTRIES));
        signup.append_value(start_day - rng.below(900) as i32);
    }
    let batch = batch(vec![
        ("user_id", Arc::new(id.finish()) as ArrayRef, false),
        ("segment", Arc::new(segment.finish()), false),
        ("country", Arc::new(country.finish()), false),
        ("signup_date", Arc::new(signup.finish()), false),
    ])?;
    write_parquet(&dir.join("users.parquet"), &batch)
}

fn write_items(dir: &Path, n: u64, rng: &mut Rng) -> Result<()> {
    let mut id = StringBuilder::new();
    let mut category = StringBuilder::new();
    let mut price = Float64Builder::new();
    for i in 0..n {
        id.append_value(item_name(i));
        category.append_value(rng.pick(CATEGORIES));
        price.append_value((rng.unit() * 200.0 * 100.0).round() / 100.0 + 0.99);
    }
    let batch = batch(vec![
        ("item_id", Arc::new(id.finish()) as ArrayRef, false),
        ("category", Arc::new(category.finish()), false),
        ("price", Arc::new(price.finish()), false),
    ])?;
    write_parquet(&dir.join("items.parquet"), &batch)
}

fn events_for_day(
    day: i64,
    n: u64,
    event_id: &mut i64,
    size: DemoSize,
    rng: &mut Rng,
) -> Result<RecordBatch> {
    let mut ids = Int64Builder::with_capacity(n as usize);
    let mut users = Int64Builder::with_capacity(n as usize);
    let mut items = StringBuilder::with_capacity(n as usize, n as usize * 11);
    let mut kinds = StringBuilder::with_capacity(n as usize, n as usize * 5);
    let mut times = TimestampMicrosecondBuilder::with_capacity(n as usize).with_timezone("UTC");
    let mut dwell = Float64Builder::with_capacity(n as usize);
    let mut times_raw: Vec<i64> = (0..n)
        .map(|_| START_MICROS + day * MICROS_PER_DAY + rng.below(MICROS_PER_DAY as u64) as i64)
        .collect();
    times_raw.sort_unstable();
    for t in times_raw {
        ids.append_value(*event_id);
        *event_id += 1;
        users.append_value(rng.skewed(size.users()) as i64);
        items.append_value(item_name(rng.skewed(size.items())));
        kinds.append_value(rng.pick(EVENT_TYPES));
        times.append_value(t);
        // About 3% of events lose their dwell time, as real trackers do.
        if rng.below(100) < 3 {
            dwell.append_null();
        } else {
            dwell.append_value((rng.unit() * rng.unit() * 60_000.0).round());
        }
    }
    batch(vec![
        ("event_id", Arc::new(ids.finish()) as ArrayRef, false),
        ("user_id", Arc::new(users.finish()), false),
        ("item_id", Arc::new(items.finish()), false),
        ("event_type", Arc::new(kinds.finish()), false),
        ("event_time", Arc::new(times.finish()), false),
        ("dwell_ms", Arc::new(dwell.finish()), true),
    ])
}

fn batch(columns: Vec<(&str, ArrayRef, bool)>) -> Result<RecordBatch> {
    let schema = Schema::new(
        columns
            .iter()
            .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
            .collect::<Vec<_>>(),
    );
    let arrays = columns.into_iter().map(|(_, a, _)| a).collect();
    Ok(RecordBatch::try_new(Arc::new(schema), arrays)?)
}

fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let context = |e: &dyn std::fmt::Display| KilnError::Io(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| context(&e))?;
    }
    let file = File::create(path).map_err(|e| context(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| context(&e))?;
    writer.write(batch).map_err(|e| context(&e))?;
    writer.close().map_err(|e| context(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, TimeUnit};

    use super::*;

    #[test]
    fn generation_is_deterministic_and_skewed() {
        let size = DemoSize { events: 3000 };
        let mut a = Rng(1);
        let mut b = Rng(1);
        let ba = events_for_day(0, 100, &mut 0, size, &mut a).unwrap();
        let bb = events_for_day(0, 100, &mut 0, size, &mut b).unwrap();
        assert_eq!(ba, bb);
        let mut rng = Rng(7);
        let low = (0..10_000).filter(|_| rng.skewed(100) < 10).count();
        // u^3 < 0.1 happens for u < 0.464: far more than a uniform 10%.
        assert!(low > 4000, "{low}");
        assert_eq!(
            ba.schema().field(4).data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }
}
