//! What a commit records about the run that made it. Stored in the Delta
//! commit info under the key [`LINEAGE_KEY`], so any Delta reader can see it.

use serde::{Deserialize, Serialize};

/// The commit-info key that holds kiln's lineage.
pub const LINEAGE_KEY: &str = "kiln";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    pub pipeline: String,
    /// sha256 of the pipeline SQL after variable substitution (for a
    /// training set: of its inputs, versions and options).
    pub sql_sha256: String,
    pub kiln_version: String,
    pub run_id: String,
    /// What started the run: `manual`, `demo`, `kafka://TOPIC`, ...
    pub trigger: String,
    /// The trigger's identity, when the run was started by one (`kiln
    /// worker`, `kiln run --trigger-id`): each trigger commits once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger_id: Option<String>,
    pub mode: String,
    /// The feature set's entity key columns, as its pipeline declares them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// Its event-time column, as declared: what `kiln training-set` matches
    /// label times against unless told otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// Every input file the run read.
    pub inputs: Vec<InputFile>,
    /// Every feature set the query read, at the exact version it read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_sets_read: Vec<FeatureSetRead>,
    /// Every Kafka offset range the run read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kafka: Vec<KafkaInput>,
    /// Offsets the topic's retention deleted before this pipeline read them,
    /// skipped under `'on_data_loss' 'skip'`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<LostRange>,
    pub rows_written: u64,
    pub columns: Vec<ColumnStats>,
    /// From the start of the run to this commit's staging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// For a version written by `kiln training-set`: what it joined, and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_set: Option<TrainingSetLineage>,
}

/// A feature set a pipeline's query read (as a table of its FROM clause).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSetRead {
    /// The name the pipeline declares it under.
    pub name: String,
    pub location: String,
    pub version: u64,
}

/// How a training set was made: its labels, each feature set at the exact
/// version joined, and the matching rule. The label files (when the labels
/// are files) are the lineage's `inputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSetLineage {
    pub labels: LabelsInput,
    pub entity: Vec<String>,
    pub label_time: String,
    /// A feature row at the label's time matches too.
    pub inclusive: bool,
    /// The oldest a matched feature row may be (`7d`, `1h 30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    pub features: Vec<FeaturesInput>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelsInput {
    pub location: String,
    /// `parquet`, `csv`, `json`, or `features` for a feature set.
    pub format: String,
    /// The feature set version read, when the labels are a feature set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    pub rows: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeaturesInput {
    pub location: String,
    /// The version joined (resolved once, at the start, when none was pinned).
    pub version: u64,
    /// The feature time column.
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Feature entity column for each label entity column, in `entity` order.
    pub entity: Vec<String>,
    /// Feature rows in the version.
    pub rows: u64,
    /// Label rows that found a feature row.
    pub matched: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InputFile {
    /// The source table it was read for.
    pub source: String,
    /// The object-store URL of the file.
    pub path: String,
    pub size: u64,
    /// RFC 3339.
    pub last_modified: String,
}

/// Offsets `from..to` (the next offset to read) of one topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaInput {
    /// The source table it was read for.
    pub source: String,
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    /// Records read, and of those the ones sent to the dead letters.
    pub records: u64,
    pub bad_records: u64,
}

/// Offsets `from..to` of one topic-partition that were never read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRange {
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    pub name: String,
    pub data_type: String,
    /// Non-null values.
    pub count: u64,
    pub null_count: u64,
    pub min: Option<String>,
    pub max: Option<String>,
    /// For numeric columns only.
    pub mean: Option<f64>,
}
