//! The conflict rule: a commit is refused when any commit made since the
//! position of one of its inputs was read wrote that same input.
//!
//! Each input carries the version at which its position was read (None:
//! the feature set did not exist, so every commit counts, the first one
//! included). Delta's own check only looks at commits after the snapshot a
//! write starts from, which is one version for the whole commit, and it
//! does not check a table's first commit at all. kiln therefore checks the
//! commits between each input's read version and the latest version
//! itself, then commits against that latest version, and Delta checks any
//! commit that lands after it.

use std::collections::BTreeMap;

use deltalake::DeltaTable;

use super::log::{CommitTxns, commits};
use crate::error::{KilnError, Result};

/// One input of a commit: its app id and the version its position was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadInput {
    pub app_id: String,
    pub read_at: Option<u64>,
}

/// The first commit in `commits` that wrote an input after its position
/// was read: (version, app id).
pub fn first_conflict<'a>(commits: &'a [CommitTxns], inputs: &'a [ReadInput]) -> Option<(u64, &'a str)> {
    let read_at: BTreeMap<&str, Option<u64>> =
        inputs
            .iter()
            .map(|i| (i.app_id.as_str(), i.read_at))
            .fold(BTreeMap::new(), |mut acc, (id, at)| {
                // The same input read twice: the older read decides.
                let entry = acc.entry(id).or_insert(at);
                *entry = (*entry).min(at);
                acc
            });
    commits.iter().find_map(|c| {
        c.txns.iter().find_map(|(app_id, _)| {
            let read = read_at.get(app_id.as_str())?;
            read.is_none_or(|r| c.version > r)
                .then_some((c.version, app_id.as_str()))
        })
    })
}

/// Check `inputs` against every commit of `table` (loaded at its latest
/// version) since each was read. `name` names the feature set in the error.
pub async fn check_since(table: &DeltaTable, name: &str, inputs: &[ReadInput]) -> Result<()> {
    let Some(latest) = table.version() else {
        return Ok(());
    };
    let Some(first) = inputs.iter().map(|i| i.read_at.map_or(0, |v| v + 1)).min() else {
        return Ok(());
    };
    if first > latest {
        return Ok(());
    }
    let since = commits(table.log_store().as_ref(), first, latest)
        .await
        .map_err(|e| {
            KilnError::Conflict(format!(
                "feature set '{name}': cannot check the commits made since its inputs were read: {e}"
            ))
        })?;
    match first_conflict(&since, inputs) {
        None => Ok(()),
        Some((version, app_id)) => Err(KilnError::Conflict(format!(
            "feature set '{name}': version {version} already consumed input {app_id} after this run read its position"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(version: u64, ids: &[&str]) -> CommitTxns {
        CommitTxns {
            version,
            txns: ids.iter().map(|id| (id.to_string(), 1)).collect(),
        }
    }

    fn input(id: &str, read_at: Option<u64>) -> ReadInput {
        ReadInput {
            app_id: id.into(),
            read_at,
        }
    }

    #[test]
    fn each_input_is_checked_from_its_own_read_version() {
        // P moved to us and was read at v5; the old owner committed P at v6;
        // we committed Q alone at v7 (so Q is known at v7).
        let log = [commit(5, &["P", "Q"]), commit(6, &["P"]), commit(7, &["Q"])];
        let ours = [input("P", Some(5)), input("Q", Some(7))];
        assert_eq!(first_conflict(&log, &ours), Some((6, "P")));
        // Read P after the old owner's commit: no conflict, and our own Q
        // commit at v7 is not one either.
        let ours = [input("P", Some(6)), input("Q", Some(7))];
        assert_eq!(first_conflict(&log, &ours), None);
    }

    #[test]
    fn a_feature_set_that_did_not_exist_is_checked_from_its_first_commit() {
        let log = [commit(0, &["P"])];
        assert_eq!(first_conflict(&log, &[input("P", None)]), Some((0, "P")));
        // Another pipeline's first commit is no conflict.
        assert_eq!(
            first_conflict(&[commit(0, &["other"])], &[input("P", None)]),
            None
        );
    }

    #[test]
    fn commits_at_or_before_the_read_are_not_conflicts() {
        let log = [commit(3, &["F"]), commit(4, &["G"])];
        assert_eq!(first_conflict(&log, &[input("F", Some(3))]), None);
        assert_eq!(first_conflict(&log, &[input("F", Some(2))]), Some((3, "F")));
        // The older of two reads of one input decides.
        assert_eq!(
            first_conflict(&log, &[input("G", Some(4)), input("G", Some(1))]),
            Some((4, "G"))
        );
    }
}
