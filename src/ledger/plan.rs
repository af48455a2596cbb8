//! Planning the next pass from the ledgers: where each feature set starts
//! in each partition, and which feature sets run together.
//!
//! Feature sets of one pipeline normally stand at the same place. They
//! differ when a run stopped between two commits (Delta has no multi-table
//! transaction) or an INSERT was added later. Then the inputs are read
//! once, from the lowest position, and the feature sets are grouped by
//! where they stand: each group sees only the records at or after its own
//! positions and the files it has not read, and commits on its own. So
//! every record and file reaches every feature set once, in one pass.
//! `kiln run` and `kiln stream` both plan with these functions.

use std::collections::{BTreeMap, BTreeSet};

use super::Positions;
use crate::pipeline::{OnDataLoss, StartAt};
use crate::source::kafka::TopicPartition;

/// Where a feature set starts reading one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub from: i64,
    /// False when the feature set never read the partition (`from` comes
    /// from the source's `start`): its first commit must record it even if
    /// it read nothing, or a `latest` start would move on every run.
    pub recorded: bool,
    /// Offsets the broker no longer has that the feature set never read,
    /// skipped under `'on_data_loss' 'skip'`.
    pub lost: Option<(i64, i64)>,
}

/// Why a feature set cannot start where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// Retention deleted records it never read (`on_data_loss` fail).
    Lost(String),
    /// Its position is past the partition's end: the topic was created
    /// again, unless the broker's watermark lags behind what it serves
    /// (the caller checks that the last record read is still there).
    PastEnd { at: i64, message: String },
}

impl StartError {
    pub fn message(&self) -> &str {
        match self {
            StartError::Lost(m) | StartError::PastEnd { message: m, .. } => m,
        }
    }
}

/// Where `feature_set` starts in `tp`, given its recorded position and the
/// partition's low and high watermarks. A position the broker no longer
/// has fails (or, with `skip`, starts at the low watermark and says what
/// was lost); a position past the end means the topic was recreated, and
/// fails whatever `on_data_loss` says.
pub fn start_position(
    feature_set: &str,
    tp: &TopicPartition,
    recorded: Option<i64>,
    (low, high): (i64, i64),
    start: StartAt,
    on_loss: OnDataLoss,
) -> Result<Start, StartError> {
    let Some(at) = recorded else {
        let from = match start {
            StartAt::Earliest => low,
            StartAt::Latest => high,
        };
        return Ok(Start {
            from,
            recorded: false,
            lost: None,
        });
    };
    if at > high {
        return Err(StartError::PastEnd {
            at,
            message: format!(
                "feature set '{feature_set}' has read {tp} up to offset {at}, but the partition now ends at \
             {high}: the topic was deleted and created again, or this is another cluster; nothing was read \
             (point the pipeline at the right topic, or write into a new feature set)"
            ),
        });
    }
    if at >= low {
        return Ok(Start {
            from: at,
            recorded: true,
            lost: None,
        });
    }
    match on_loss {
        OnDataLoss::Fail => Err(StartError::Lost(format!(
            "feature set '{feature_set}' has read {tp} up to offset {at}, but the broker now keeps only \
             offsets {low}..{high}: the topic's retention deleted {at}..{low} before this pipeline read \
             them; nothing was read (set 'on_data_loss' 'skip' to record the gap in the lineage and go \
             on from {low})"
        ))),
        OnDataLoss::Skip => Ok(Start {
            from: low,
            recorded: true,
            lost: Some((at, low)),
        }),
    }
}

/// Where one feature set stands before a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub name: String,
    /// Where it starts in each partition of every Kafka source.
    pub kafka: BTreeMap<TopicPartition, Start>,
    /// Files of its incremental sources it has not read yet.
    pub new_files: BTreeSet<String>,
}

/// Feature sets that stand at the same place and run together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub targets: Vec<String>,
    pub kafka: Positions,
    pub new_files: BTreeSet<String>,
    /// Some target has a position it never recorded: commit even if
    /// nothing was read.
    pub first_positions: bool,
    /// Ranges retention deleted before they were read (`on_data_loss` skip).
    pub lost: BTreeMap<TopicPartition, (i64, i64)>,
}

/// Group feature sets by where they stand, in the order given.
pub fn group(standings: &[Standing]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for s in standings {
        let kafka: Positions = s.kafka.iter().map(|(tp, st)| (tp.clone(), st.from)).collect();
        let lost: BTreeMap<_, _> = s
            .kafka
            .iter()
            .filter_map(|(tp, st)| Some((tp.clone(), st.lost?)))
            .collect();
        let first = s.kafka.values().any(|st| !st.recorded);
        match groups
            .iter_mut()
            .find(|g| g.kafka == kafka && g.new_files == s.new_files)
        {
            Some(g) => {
                g.targets.push(s.name.clone());
                g.first_positions |= first;
                g.lost.extend(lost);
            }
            None => groups.push(Group {
                targets: vec![s.name.clone()],
                kafka,
                new_files: s.new_files.clone(),
                first_positions: first,
                lost,
            }),
        }
    }
    groups
}

/// The lowest position of any group in each partition: where reading starts.
pub fn read_from(groups: &[Group]) -> Positions {
    let mut lowest = Positions::new();
    for g in groups {
        for (tp, &at) in &g.kafka {
            let entry = lowest.entry(tp.clone()).or_insert(at);
            *entry = (*entry).min(at);
        }
    }
    lowest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition {
            topic: "t".into(),
            partition: p,
        }
    }

    #[test]
    fn start_positions() {
        use OnDataLoss::*;
        use StartAt::*;
        let at = |recorded, marks, start, loss| start_position("fs", &tp(0), recorded, marks, start, loss);
        let plain = |from, recorded| {
            Ok(Start {
                from,
                recorded,
                lost: None,
            })
        };
        // (recorded, watermarks, start, on_data_loss) -> start
        assert_eq!(at(None, (5, 50), Earliest, Fail), plain(5, false));
        assert_eq!(at(None, (5, 50), Latest, Fail), plain(50, false));
        assert_eq!(at(Some(20), (5, 50), Latest, Fail), plain(20, true));
        assert_eq!(at(Some(5), (5, 50), Earliest, Fail), plain(5, true));
        assert_eq!(at(Some(50), (5, 50), Earliest, Fail), plain(50, true));
        let lost = at(Some(2), (5, 50), Earliest, Fail).unwrap_err();
        assert!(matches!(lost, StartError::Lost(_)), "{lost:?}");
        let text = lost.message();
        assert!(
            text.contains("t/0") && text.contains("2..5") && text.contains("on_data_loss"),
            "{text}"
        );
        assert_eq!(
            at(Some(2), (5, 50), Earliest, Skip),
            Ok(Start {
                from: 5,
                recorded: true,
                lost: Some((2, 5))
            })
        );
        for loss in [Fail, Skip] {
            let recreated = at(Some(80), (0, 10), Earliest, loss).unwrap_err();
            assert!(
                matches!(recreated, StartError::PastEnd { at: 80, .. }),
                "{recreated:?}"
            );
            assert!(recreated.message().contains("created again"), "{recreated:?}");
        }
    }

    fn standing(name: &str, kafka: &[(i32, i64, bool)], files: &[&str]) -> Standing {
        Standing {
            name: name.into(),
            kafka: kafka
                .iter()
                .map(|&(p, from, recorded)| {
                    (
                        tp(p),
                        Start {
                            from,
                            recorded,
                            lost: None,
                        },
                    )
                })
                .collect(),
            new_files: files.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn feature_sets_at_one_place_run_together() {
        let groups = group(&[
            standing("a", &[(0, 10, true), (1, 4, true)], &[]),
            standing("b", &[(0, 10, true), (1, 4, true)], &[]),
        ]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].targets, ["a", "b"]);
        assert!(!groups[0].first_positions);
        assert_eq!(read_from(&groups), Positions::from([(tp(0), 10), (tp(1), 4)]));
    }

    #[test]
    fn feature_sets_apart_are_grouped_and_read_from_the_lowest() {
        // c was added later with 'start' 'latest'; b stopped between two
        // commits; positions that cross (a ahead in 0, b in 1) are fine.
        let groups = group(&[
            standing("a", &[(0, 10, true), (1, 4, true)], &[]),
            standing("b", &[(0, 8, true), (1, 6, true)], &[]),
            standing("c", &[(0, 30, false), (1, 30, false)], &[]),
        ]);
        assert_eq!(groups.len(), 3);
        assert!(groups[2].first_positions && !groups[0].first_positions);
        assert_eq!(read_from(&groups), Positions::from([(tp(0), 8), (tp(1), 4)]));
    }

    #[test]
    fn files_not_yet_read_split_groups_too() {
        let groups = group(&[
            standing("a", &[], &["f2"]),
            standing("b", &[], &["f1", "f2"]),
            standing("c", &[], &["f2"]),
        ]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].targets, ["a", "c"]);
        assert_eq!(
            groups[1].new_files,
            BTreeSet::from(["f1".to_string(), "f2".to_string()])
        );
    }
}
