//! kiln's own table options, parsed and validated before anything runs.
//!
//! Options a source does not claim here are DataFusion format options
//! (`'has_header' 'true'`, `'delimiter' ';'`) and are checked by DataFusion
//! when the source is planned.

use datafusion::sql::sqlparser::ast::Value;

/// An option error: the offending key (to locate it) and the message.
pub type OptionError = (String, String);

/// How a run's rows enter a feature set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkMode {
    /// Add this run's rows as a new version.
    Append,
    /// Replace the whole feature set with this run's rows.
    Overwrite,
}

impl SinkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkMode::Append => "append",
            SinkMode::Overwrite => "overwrite",
        }
    }
}

/// OPTIONS of a `STORED AS FEATURES` table.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSetOptions {
    /// Entity key columns; required for a table that is written.
    pub key: Vec<String>,
    /// The event-time column, if the feature set has one.
    pub timestamp: Option<String>,
    pub mode: SinkMode,
    /// When read as a source: the version to read (latest if unset).
    pub version: Option<i64>,
    /// Whether a run may add columns to an existing feature set.
    pub allow_new_columns: bool,
}

const FEATURE_SET_KEYS: &[&str] = &["key", "timestamp", "mode", "version", "allow_new_columns"];

fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
        Value::Number(n, _) => Some(n.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_bool(key: &str, text: &str) -> Result<bool, OptionError> {
    match text.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err((
            key.to_string(),
            format!("option '{key}' must be 'true' or 'false', got '{text}'"),
        )),
    }
}

fn split_columns(text: &str) -> Vec<String> {
    text.split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

impl FeatureSetOptions {
    pub fn parse(options: &[(String, Value)]) -> Result<Self, OptionError> {
        let mut parsed = FeatureSetOptions {
            key: Vec::new(),
            timestamp: None,
            mode: SinkMode::Append,
            version: None,
            allow_new_columns: false,
        };
        for (key, value) in options {
            let k = key.to_ascii_lowercase();
            let text = value_text(value)
                .ok_or_else(|| (key.clone(), format!("option '{key}' needs a quoted value")))?;
            match k.as_str() {
                "key" => parsed.key = split_columns(&text),
                "timestamp" => parsed.timestamp = Some(text.trim().to_string()),
                "mode" => {
                    parsed.mode = match text.to_ascii_lowercase().as_str() {
                        "append" => SinkMode::Append,
                        "overwrite" => SinkMode::Overwrite,
                        "upsert" => {
                            return Err((
                                key.clone(),
                                "mode 'upsert' is not available in this version of kiln: use 'append' or 'overwrite'"
                                    .into(),
                            ));
                        }
                        other => {
                            return Err((
                                key.clone(),
                                format!("unknown mode '{other}': expected 'append' or 'overwrite'"),
                            ));
                        }
                    }
                }
                "version" => {
                    parsed.version = Some(text.trim().parse().map_err(|_| {
                        (
                            key.clone(),
                            format!("option 'version' must be a version number, got '{text}'"),
                        )
                    })?)
                }
                "allow_new_columns" => parsed.allow_new_columns = parse_bool(key, &text)?,
                _ => {
                    return Err((
                        key.clone(),
                        format!(
                            "unknown option '{key}' for a feature set: expected one of {}",
                            FEATURE_SET_KEYS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(parsed)
    }
}

/// kiln's own OPTIONS of a file source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceOptions {
    /// Read only files that no earlier commit of this pipeline has read.
    pub incremental: bool,
}

impl SourceOptions {
    /// Take kiln's options out; return the rest for DataFusion.
    pub fn parse(options: &[(String, Value)]) -> Result<(Self, Vec<(String, Value)>), OptionError> {
        let mut parsed = SourceOptions::default();
        let mut rest = Vec::new();
        for (key, value) in options {
            if key.eq_ignore_ascii_case("incremental") {
                let text = value_text(value)
                    .ok_or_else(|| (key.clone(), format!("option '{key}' needs a quoted value")))?;
                parsed.incremental = parse_bool(key, &text)?;
            } else {
                rest.push((key.clone(), value.clone()));
            }
        }
        Ok((parsed, rest))
    }
}

/// How a Kafka source's record values are written (its STORED AS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaFormat {
    /// One JSON object per record.
    Json,
    /// One CSV line per record, no header.
    Csv,
    /// The value as it is, in a `value` BINARY column.
    Bytes,
}

impl KafkaFormat {
    pub const NAMES: &[&str] = &["JSON", "CSV", "BYTES"];

    pub fn parse(stored_as: &str) -> Option<Self> {
        match stored_as.to_uppercase().as_str() {
            "JSON" => Some(Self::Json),
            "CSV" => Some(Self::Csv),
            "BYTES" => Some(Self::Bytes),
            _ => None,
        }
    }
}

/// Where a feature set that has never consumed a topic starts reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    #[default]
    Earliest,
    Latest,
}

/// What a run does when a feature set's position in a partition is older
/// than the oldest offset the broker still keeps (retention deleted records
/// it never read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDataLoss {
    /// Fail, naming the partition and the lost range.
    #[default]
    Fail,
    /// Record the lost range in the lineage and go on from the oldest offset.
    Skip,
}

/// How many undecodable records a run tolerates before it fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BadRecordLimit {
    Count(u64),
    /// Of the records the run read.
    Fraction(f64),
}

impl BadRecordLimit {
    pub fn exceeded(&self, bad: u64, read: u64) -> bool {
        match *self {
            Self::Count(n) => bad > n,
            Self::Fraction(f) => read > 0 && bad as f64 > f * read as f64,
        }
    }
}

impl std::fmt::Display for BadRecordLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count(n) => write!(f, "{n}"),
            Self::Fraction(x) => write!(f, "{x}"),
        }
    }
}

/// The OPTIONS of a Kafka source: kiln's own, and every other one passed to
/// librdkafka as a client property.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaOptions {
    pub start: StartAt,
    pub on_data_loss: OnDataLoss,
    /// None: every bad record goes to the dead letters and the run goes on.
    pub max_bad_records: Option<BadRecordLimit>,
    /// Values longer than this are bad records, not rows.
    pub max_record_bytes: usize,
    /// Send bad records to this topic instead of the `_dead_letters` table.
    pub dead_letter_topic: Option<String>,
    /// librdkafka properties (`bootstrap.servers`, `security.protocol`, ...).
    pub client: Vec<(String, String)>,
}

/// Default `max.record.bytes`: Kafka's own default largest message.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

impl KafkaOptions {
    pub fn parse(options: &[(String, Value)]) -> Result<Self, OptionError> {
        let mut parsed = KafkaOptions {
            start: StartAt::default(),
            on_data_loss: OnDataLoss::default(),
            max_bad_records: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            dead_letter_topic: None,
            client: Vec::new(),
        };
        for (key, value) in options {
            let text = value_text(value)
                .ok_or_else(|| (key.clone(), format!("option '{key}' needs a quoted value")))?;
            let bad = |what: &str| {
                (
                    key.clone(),
                    format!("option '{key}' must be {what}, got '{text}'"),
                )
            };
            match key.to_ascii_lowercase().as_str() {
                "start" => {
                    parsed.start = match text.to_ascii_lowercase().as_str() {
                        "earliest" => StartAt::Earliest,
                        "latest" => StartAt::Latest,
                        _ => return Err(bad("'earliest' or 'latest'")),
                    }
                }
                "on_data_loss" => {
                    parsed.on_data_loss = match text.to_ascii_lowercase().as_str() {
                        "fail" => OnDataLoss::Fail,
                        "skip" => OnDataLoss::Skip,
                        _ => return Err(bad("'fail' or 'skip'")),
                    }
                }
                "max.bad.records" => {
                    let limit = if let Ok(n) = text.parse::<u64>() {
                        BadRecordLimit::Count(n)
                    } else {
                        match text.parse::<f64>() {
                            Ok(f) if (0.0..1.0).contains(&f) => BadRecordLimit::Fraction(f),
                            _ => return Err(bad("a count like 100 or a fraction like 0.01")),
                        }
                    };
                    parsed.max_bad_records = Some(limit);
                }
                "max.record.bytes" => {
                    parsed.max_record_bytes = text
                        .parse::<usize>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a positive number of bytes"))?;
                }
                "dead_letter.topic" => {
                    if text.trim().is_empty() {
                        return Err(bad("a topic name"));
                    }
                    parsed.dead_letter_topic = Some(text);
                }
                "incremental" => {
                    return Err((
                        key.clone(),
                        "option 'incremental' is for file sources; a Kafka source always reads on from \
                         where its feature sets stopped"
                            .into(),
                    ));
                }
                _ => parsed.client.push((key.clone(), text)),
            }
        }
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::SingleQuotedString(v.to_string())))
            .collect()
    }

    #[test]
    fn feature_set_options() {
        let o = FeatureSetOptions::parse(&opts(&[
            ("key", "user_id, day"),
            ("timestamp", "day"),
            ("mode", "overwrite"),
        ]))
        .unwrap();
        assert_eq!(o.key, vec!["user_id", "day"]);
        assert_eq!(o.timestamp.as_deref(), Some("day"));
        assert_eq!(o.mode, SinkMode::Overwrite);
    }

    #[test]
    fn bad_feature_set_options_name_the_key() {
        let e = FeatureSetOptions::parse(&opts(&[("mode", "sideways")])).unwrap_err();
        assert_eq!(e.0, "mode");
        assert!(e.1.contains("unknown mode 'sideways'"));
        let e = FeatureSetOptions::parse(&opts(&[("version", "x")])).unwrap_err();
        assert!(e.1.contains("version number"));
        let e = FeatureSetOptions::parse(&opts(&[("colour", "red")])).unwrap_err();
        assert!(e.1.starts_with("unknown option 'colour'"));
    }

    #[test]
    fn source_options_pass_the_rest_through() {
        let (o, rest) =
            SourceOptions::parse(&opts(&[("incremental", "true"), ("has_header", "true")])).unwrap();
        assert!(o.incremental);
        assert_eq!(rest.len(), 1);
        assert!(SourceOptions::parse(&opts(&[("incremental", "yes")])).is_err());
    }
}
