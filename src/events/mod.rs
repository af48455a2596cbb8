//! Events for what happens downstream of kiln: one CloudEvents 1.0 event
//! (structured mode: the whole event is the JSON message value) for every
//! commit, and one for every failed run or trigger, so Argo Events, Knative
//! and plain Kafka consumers react to a new version without custom code.
//!
//! A version event is keyed by the feature set's URL, so each feature set's
//! versions arrive in order, and its id names the version: publishing is
//! at-least-once (a retried send, a trigger run again after a crash), and a
//! consumer de-duplicates by id or by (location, version). The `data` of
//! both kinds is described by `schemas/event-data.schema.json`.

mod kafka;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use kafka::KafkaEvents;

use crate::error::Result;
use crate::featureset::{self, ColumnStats, Lineage, table_url};
use crate::kafka_client::ClientSettings;

/// Commits looked at, newest first, for versions left unannounced.
const CATCH_UP_COMMITS: u64 = 100;

/// The type of a new-version event.
pub const VERSION: &str = "dev.kiln.featureset.version";
/// The type of a failed-run event.
pub const RUN_FAILED: &str = "dev.kiln.run.failed";
/// The JSON Schema of the events' `data`.
pub const DATA_SCHEMA: &str = include_str!("../../schemas/event-data.schema.json");

/// A CloudEvents 1.0 event in structured mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloudEvent<T> {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub datacontenttype: String,
    pub data: T,
}

/// The data of a new-version event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionData {
    pub feature_set: String,
    /// The feature set's URL.
    pub location: String,
    pub version: u64,
    pub rows: u64,
    pub mode: String,
    pub pipeline: String,
    pub sql_sha256: String,
    pub run_id: String,
    pub trigger: String,
    pub trigger_id: Option<String>,
    /// From the start of the run to this commit (None for a commit made
    /// before kiln recorded it).
    pub duration_ms: Option<u64>,
    pub statistics: Vec<ColumnSummary>,
}

impl VersionData {
    /// The event data of `version` of the feature set `feature_set` at
    /// `location`, from what its commit recorded.
    pub fn of_commit(feature_set: &str, location: &str, version: u64, lineage: &Lineage) -> Self {
        Self {
            feature_set: feature_set.to_string(),
            location: table_url(location).map_or_else(|_| location.to_string(), |u| u.to_string()),
            version,
            rows: lineage.rows_written,
            mode: lineage.mode.clone(),
            pipeline: lineage.pipeline.clone(),
            sql_sha256: lineage.sql_sha256.clone(),
            run_id: lineage.run_id.clone(),
            trigger: lineage.trigger.clone(),
            trigger_id: lineage.trigger_id.clone(),
            duration_ms: lineage.duration_ms,
            statistics: lineage.columns.iter().map(ColumnSummary::from).collect(),
        }
    }
}

/// One column of a version's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSummary {
    pub name: String,
    pub count: u64,
    pub null_count: u64,
    pub min: Option<String>,
    pub max: Option<String>,
    pub mean: Option<f64>,
}

impl From<&ColumnStats> for ColumnSummary {
    fn from(c: &ColumnStats) -> Self {
        Self {
            name: c.name.clone(),
            count: c.count,
            null_count: c.null_count,
            min: c.min.clone(),
            max: c.max.clone(),
            mean: c.mean,
        }
    }
}

/// The data of a failed-run event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureData {
    /// Why, on one line.
    pub reason: String,
    pub pipeline: Option<String>,
    pub run_id: Option<String>,
    pub trigger: String,
    pub trigger_id: Option<String>,
    /// For a trigger: where its message is.
    pub message: Option<MessageAt>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageAt {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Where events go: a Kafka topic in kiln, anything in a test.
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Deliver one event's bytes under `key`, retrying what is worth it;
    /// an error means it was not delivered.
    async fn send(&self, key: &str, value: Vec<u8>) -> Result<()>;

    /// The newest version announced for each of `locations` (feature set
    /// URLs) among the sink's recent events; none known by default.
    async fn announced(&self, _locations: &BTreeSet<String>) -> Result<BTreeMap<String, u64>> {
        Ok(BTreeMap::new())
    }
}

/// Publishes kiln's events to a sink.
#[derive(Debug, Clone)]
pub struct Events {
    sink: Arc<dyn EventSink>,
    /// The CloudEvents `source` of everything this process publishes.
    source: String,
}

impl Events {
    /// Events onto the Kafka topic `topic`, when one is given.
    pub fn to_kafka(settings: &ClientSettings, topic: Option<&str>) -> Result<Option<Self>> {
        topic
            .map(|topic| Ok(Self::new(Arc::new(KafkaEvents::new(settings, topic)?))))
            .transpose()
    }

    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Self {
            sink,
            source: format!("//kiln/{host}"),
        }
    }

    /// Announce a new version. A failure to publish is logged, never an
    /// error of the run: the version is committed either way, and `kiln
    /// wait` reads it from the Delta log.
    pub async fn version(&self, data: VersionData) {
        let event = CloudEvent {
            specversion: "1.0".into(),
            id: format!("{}@{}", data.location, data.version),
            source: format!("{}/{}", self.source, data.pipeline),
            kind: VERSION.into(),
            time: now(),
            subject: Some(data.location.clone()),
            datacontenttype: "application/json".into(),
            data,
        };
        let key = event.data.location.clone();
        self.publish(&key, &event).await;
    }

    /// Announce a failed run or trigger.
    pub async fn failed(&self, data: FailureData) {
        let subject = data
            .pipeline
            .clone()
            .or_else(|| data.trigger_id.clone())
            .unwrap_or_else(|| data.trigger.clone());
        let event = CloudEvent {
            specversion: "1.0".into(),
            id: uuid::Uuid::new_v4().to_string(),
            source: format!("{}/{}", self.source, data.pipeline.as_deref().unwrap_or("-")),
            kind: RUN_FAILED.into(),
            time: now(),
            subject: Some(subject.clone()),
            datacontenttype: "application/json".into(),
            data,
        };
        self.publish(&subject, &event).await;
    }

    /// Announce the versions of `feature_sets` (name, location) that
    /// `pipeline` committed and the sink has no event for yet: a process
    /// killed between a commit and its event left them unannounced. Those
    /// newer than the newest version the sink holds, among the last commits;
    /// when it holds none, the newest (consumers de-duplicate).
    pub async fn catch_up(&self, pipeline: &str, feature_sets: &[(String, String)]) {
        let urls: BTreeMap<String, (String, String)> = feature_sets
            .iter()
            .filter_map(|(name, location)| {
                let url = table_url(location).ok()?.to_string();
                Some((url, (name.clone(), location.clone())))
            })
            .collect();
        let announced = match self.sink.announced(&urls.keys().cloned().collect()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "reading the events already published; announcing nothing again");
                return;
            }
        };
        for (url, (name, location)) in &urls {
            let commits = match featureset::recent_commits(location, CATCH_UP_COMMITS).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(feature_set = %name, error = %e, "reading recent commits to announce");
                    continue;
                }
            };
            let mine = commits.into_iter().filter(|(_, l)| l.pipeline == pipeline);
            let missing: Vec<(u64, Lineage)> = match announced.get(url) {
                Some(&newest) => mine.filter(|(v, _)| *v > newest).collect(),
                None => mine.take(1).collect(),
            };
            for (version, lineage) in missing.into_iter().rev() {
                tracing::info!(feature_set = %name, version, "announcing a version that may not have been announced");
                self.version(VersionData::of_commit(name, location, version, &lineage))
                    .await;
            }
        }
    }

    async fn publish<T: Serialize>(&self, key: &str, event: &CloudEvent<T>) {
        let value = serde_json::to_vec(event).expect("events serialize");
        if let Err(e) = self.sink.send(key, value).await {
            tracing::error!(event = %event.id, kind = %event.kind, error = %e, "publishing an event failed; it is lost");
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
