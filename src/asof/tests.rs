//! The Polars match held to the brute-force rule on random data with
//! every awkward case at once: ties on time, duplicate feature rows,
//! nulls in keys, times and payloads, keys on one side only, unsorted
//! inputs, both strictness modes and a maximum age.

use std::sync::Arc;

use arrow::array::make_comparator;
use arrow::array::{Array, ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::compute::kernels::sort::SortOptions;

use super::{self as asof, Rule, Side, brute_force};

/// A small deterministic generator (xorshift64*), so a failure repeats.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `None` one time in `one_in`.
    fn maybe<T>(&mut self, one_in: u64, value: T) -> Option<T> {
        (self.below(one_in) != 0).then_some(value)
    }
}

struct Table {
    keys: Vec<ArrayRef>,
    time: Int64Array,
    payload: Vec<ArrayRef>,
}

/// Rows over `entities` entities (two key columns) and `times` distinct times.
fn table(random: &mut Random, rows: usize, entities: u64, times: i64) -> Table {
    let mut user = Vec::new();
    let mut region = Vec::new();
    let mut time = Vec::new();
    let mut score = Vec::new();
    let mut tag = Vec::new();
    for _ in 0..rows {
        let e = random.below(entities);
        user.push(random.maybe(20, e as i64 / 2));
        region.push(random.maybe(20, ["eu", "us"][(e % 2) as usize].to_string()));
        let t = random.below(times as u64) as i64 * 10;
        time.push(random.maybe(15, t));
        let s = random.below(4) as f64 / 2.0;
        score.push(random.maybe(5, s));
        let g = ["a", "b", "c"][random.below(3) as usize].to_string();
        tag.push(random.maybe(5, g));
    }
    Table {
        keys: vec![
            Arc::new(Int64Array::from(user)),
            Arc::new(StringArray::from(region)),
        ],
        time: Int64Array::from(time),
        payload: vec![
            Arc::new(Float64Array::from(score)),
            Arc::new(StringArray::from(tag)),
        ],
    }
}

/// Two feature rows are the same answer when all their columns are equal.
fn same_row(features: &Table, a: u32, b: u32) -> bool {
    let (a, b) = (a as usize, b as usize);
    let columns: Vec<ArrayRef> = features
        .keys
        .iter()
        .chain(&features.payload)
        .cloned()
        .chain([Arc::new(features.time.clone()) as ArrayRef])
        .collect();
    columns
        .iter()
        .all(|c| make_comparator(c.as_ref(), c.as_ref(), SortOptions::default()).unwrap()(a, b).is_eq())
}

#[test]
fn polars_matches_the_brute_force_rule() {
    let mut random = Random(0x9E37_79B9_7F4A_7C15);
    let mut matched_somewhere = 0;
    for round in 0..16 {
        // Labels see entities the features lack and the other way round.
        let labels = table(&mut random, 200 + round * 7, 14, 12);
        let features = table(&mut random, 300 + round * 11, 12, 10);
        for (inclusive, max_age) in [(false, None), (true, None), (false, Some(25)), (true, Some(0))] {
            let rule = Rule { inclusive, max_age };
            let label_side = Side {
                keys: &labels.keys,
                time: &labels.time,
            };
            let feature_side = Side {
                keys: &features.keys,
                time: &features.time,
            };
            let got = asof::match_rows(label_side, feature_side, &features.payload, rule).unwrap();
            let want = brute_force(label_side, feature_side, &features.payload, rule);
            assert_eq!(got.len(), want.len());
            for (i, want) in want.into_iter().enumerate() {
                let got = got.is_valid(i).then(|| got.value(i));
                match (got, want) {
                    (None, None) => {}
                    (Some(g), Some(w)) => {
                        matched_somewhere += 1;
                        assert!(
                            same_row(&features, g, w),
                            "round {round} {rule:?} label {i}: feature row {g}, brute force {w}"
                        );
                    }
                    (g, w) => panic!("round {round} {rule:?} label {i}: got {g:?}, brute force {w:?}"),
                }
            }
        }
    }
    assert!(
        matched_somewhere > 3_000,
        "the data should match often: {matched_somewhere}"
    );
}

#[test]
fn a_feature_at_the_label_time_is_not_seen_in_strict_mode() {
    let keys: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["u", "u", "u"]))];
    let label_keys: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["u", "u"]))];
    // Unsorted on purpose: the row at 100 comes first.
    let feature_time = Int64Array::from(vec![100, 50, 101]);
    let label_time = Int64Array::from(vec![100, 101]);
    let features = Side {
        keys: &keys,
        time: &feature_time,
    };
    let labels = Side {
        keys: &label_keys,
        time: &label_time,
    };
    let strict = asof::match_rows(
        labels,
        features,
        &[],
        Rule {
            inclusive: false,
            max_age: None,
        },
    )
    .unwrap();
    assert_eq!(strict, vec![Some(1), Some(0)].into());
    let inclusive = asof::match_rows(
        labels,
        features,
        &[],
        Rule {
            inclusive: true,
            max_age: None,
        },
    )
    .unwrap();
    assert_eq!(inclusive, vec![Some(0), Some(2)].into());
    let young = asof::match_rows(
        labels,
        features,
        &[],
        Rule {
            inclusive: false,
            max_age: Some(0),
        },
    )
    .unwrap();
    assert_eq!(young, vec![None, None].into());
    let a_second = asof::match_rows(
        labels,
        features,
        &[],
        Rule {
            inclusive: false,
            max_age: Some(1),
        },
    )
    .unwrap();
    assert_eq!(a_second, vec![None, Some(0)].into());
}
