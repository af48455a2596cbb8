//! Trigger messages: what `kiln worker` consumes and `kiln trigger` sends.
//!
//! A message is a trigger, a JSON object `{"id": ..., "pipeline": ...,
//! "set": {...}}`, or an S3 event notification (`{"Records": [...]}`) that
//! names created objects. Every message is checked against the JSON Schema
//! published in `schemas/trigger.schema.json` (compiled into kiln, so the
//! file and the check never disagree). A trigger's key on the topic is its
//! pipeline's name: every trigger of one pipeline lands in one partition,
//! which one worker of the group owns at a time.

mod send;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

pub use send::{Sent, send};

/// The JSON Schema every trigger message is checked against.
pub const TRIGGER_SCHEMA: &str = include_str!("../../schemas/trigger.schema.json");

/// Schema errors reported for one message.
const ERRORS_SHOWN: usize = 3;

static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    let schema: serde_json::Value = serde_json::from_str(TRIGGER_SCHEMA).expect("the trigger schema is JSON");
    jsonschema::validator_for(&schema).expect("the trigger schema is a valid JSON Schema")
});

/// Run `pipeline` once, with these variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub id: String,
    pub pipeline: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
}

/// What one message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Run(Trigger),
    /// Objects created in a bucket (an S3 event notification): their
    /// `s3://bucket/key` URLs, in the order given, once each.
    Created(Vec<String>),
}

/// A message that is not a trigger, with what could be read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTrigger {
    pub id: Option<String>,
    pub pipeline: Option<String>,
    pub reason: String,
}

impl Message {
    /// Read and check one message's value. The reason given for a bad one
    /// never quotes its values (a variable may hold a secret).
    pub fn parse(payload: Option<&[u8]>) -> Result<Self, BadTrigger> {
        let bad = |reason: String, value: Option<&serde_json::Value>| BadTrigger {
            id: value.and_then(|v| v.get("id")?.as_str().map(str::to_string)),
            pipeline: value.and_then(|v| v.get("pipeline")?.as_str().map(str::to_string)),
            reason,
        };
        let Some(payload) = payload else {
            return Err(bad("the message has no value".into(), None));
        };
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| bad(format!("not JSON: {}", json_error(&e)), None))?;
        let errors: Vec<String> = VALIDATOR
            .iter_errors(&value)
            .map(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                format!("at {at}: {}", e.masked())
            })
            .collect();
        if !errors.is_empty() {
            let mut reason = format!(
                "does not match the trigger schema: {}",
                errors
                    .iter()
                    .take(ERRORS_SHOWN)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            if errors.len() > ERRORS_SHOWN {
                reason.push_str(&format!(" (and {} more)", errors.len() - ERRORS_SHOWN));
            }
            return Err(bad(reason, Some(&value)));
        }
        if value.get("Records").is_some() {
            let notification: Notification = serde_json::from_value(value.clone()).map_err(|e| {
                bad(
                    format!("does not match the notification schema: {e}"),
                    Some(&value),
                )
            })?;
            return Ok(Message::Created(notification.created()));
        }
        serde_json::from_value(value.clone())
            .map(Message::Run)
            .map_err(|e| bad(format!("does not match the trigger schema: {e}"), Some(&value)))
    }
}

/// The parts of an S3 event notification kiln reads.
#[derive(Debug, Deserialize)]
struct Notification {
    #[serde(rename = "Records")]
    records: Vec<Record>,
}

#[derive(Debug, Deserialize)]
struct Record {
    #[serde(rename = "eventName")]
    event_name: String,
    s3: S3Entity,
}

#[derive(Debug, Deserialize)]
struct S3Entity {
    bucket: Named,
    object: Key,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Key {
    key: String,
}

impl Notification {
    /// The URLs of the objects its ObjectCreated records name.
    fn created(&self) -> Vec<String> {
        let mut urls: Vec<String> = Vec::new();
        for r in &self.records {
            // `ObjectCreated:Put` from S3, `s3:ObjectCreated:Put` from MinIO.
            if !r.event_name.contains("ObjectCreated") {
                continue;
            }
            let url = format!("s3://{}/{}", r.s3.bucket.name, object_key(&r.s3.object.key));
            if !urls.contains(&url) {
                urls.push(url);
            }
        }
        urls
    }
}

/// An object key as S3 notifications spell it: form-encoded (`+` for a
/// space, `%XX` for the rest).
fn object_key(encoded: &str) -> String {
    percent_encoding::percent_decode_str(&encoded.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

impl Trigger {
    /// A new trigger with a generated id.
    pub fn new(pipeline: &str, set: BTreeMap<String, String>, id: Option<String>) -> Self {
        Self {
            id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            pipeline: pipeline.to_string(),
            set,
        }
    }

    /// Whether this trigger, with all its values, matches the schema (the
    /// check the worker makes), as a reason when it does not.
    pub fn check(&self) -> Result<(), String> {
        let bytes = serde_json::to_vec(self).expect("a trigger serializes");
        Message::parse(Some(&bytes)).map(|_| ()).map_err(|b| b.reason)
    }
}

/// Where serde_json stopped, without the text it stopped in.
fn json_error(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Eof => "it ends early",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Trigger, BadTrigger> {
        match Message::parse(Some(text.as_bytes()))? {
            Message::Run(t) => Ok(t),
            other => panic!("not a trigger: {other:?}"),
        }
    }

    #[test]
    fn a_trigger_names_its_id_pipeline_and_values() {
        let t = parse(r#"{"id": "t-1", "pipeline": "user_daily", "set": {"DATE": "2026-11-28"}}"#).unwrap();
        assert_eq!(t.id, "t-1");
        assert_eq!(t.pipeline, "user_daily");
        assert_eq!(t.set["DATE"], "2026-11-28");
        assert!(parse(r#"{"id": "t-2", "pipeline": "p"}"#).unwrap().set.is_empty());
    }

    #[test]
    fn bad_messages_say_why_without_quoting_values() {
        let no_id = parse(r#"{"pipeline": "p"}"#).unwrap_err();
        assert!(
            no_id.reason.contains("\"id\" is a required property"),
            "{}",
            no_id.reason
        );
        assert_eq!(no_id.pipeline.as_deref(), Some("p"));

        let number = parse(r#"{"id": "t", "pipeline": "p", "set": {"PASSWORD": 12345678}}"#).unwrap_err();
        assert!(number.reason.contains("/set/PASSWORD"), "{}", number.reason);
        assert!(!number.reason.contains("12345678"), "{}", number.reason);
        assert_eq!(number.id.as_deref(), Some("t"));

        let path = parse(r#"{"id": "t", "pipeline": "../etc/passwd"}"#).unwrap_err();
        assert!(path.reason.contains("/pipeline"), "{}", path.reason);

        let typo = parse(r#"{"id": "t", "pipeline": "p", "sets": {}}"#).unwrap_err();
        assert!(typo.reason.contains("sets"), "{}", typo.reason);

        let text = Message::parse(Some(b"run user_daily please")).unwrap_err();
        assert!(
            text.reason.starts_with("not JSON: syntax error at line 1"),
            "{}",
            text.reason
        );
        assert!(!text.reason.contains("please"), "{}", text.reason);
        assert_eq!(
            Message::parse(None).unwrap_err().reason,
            "the message has no value"
        );
        assert!(parse(r#"["id", "p"]"#).unwrap_err().reason.contains("schema"));
    }

    #[test]
    fn a_notification_names_the_created_objects_once_each() {
        let text = r#"{"EventName": "s3:ObjectCreated:Put", "Key": "landing/a b.csv", "Records": [
            {"eventVersion": "2.1", "eventName": "ObjectCreated:Put",
             "s3": {"bucket": {"name": "landing"}, "object": {"key": "day%3D1/a+b.csv", "size": 12}}},
            {"eventName": "s3:ObjectCreated:CompleteMultipartUpload",
             "s3": {"bucket": {"name": "landing"}, "object": {"key": "day%3D1/c.csv"}}},
            {"eventName": "ObjectRemoved:Delete",
             "s3": {"bucket": {"name": "landing"}, "object": {"key": "old.csv"}}},
            {"eventName": "ObjectCreated:Put",
             "s3": {"bucket": {"name": "landing"}, "object": {"key": "day%3D1/a+b.csv"}}}]}"#;
        assert_eq!(
            Message::parse(Some(text.as_bytes())).unwrap(),
            Message::Created(vec![
                "s3://landing/day=1/a b.csv".to_string(),
                "s3://landing/day=1/c.csv".to_string()
            ])
        );
        let no_key = Message::parse(Some(br#"{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}]}"#)).unwrap_err();
        assert!(
            no_key.reason.contains("/Records/0/s3/object"),
            "{}",
            no_key.reason
        );
    }

    #[test]
    fn a_made_trigger_gets_an_id_and_is_checked_like_a_received_one() {
        let t = Trigger::new("user_daily", BTreeMap::new(), None);
        assert_eq!(t.id.len(), 36);
        assert!(t.check().is_ok());
        let bad = Trigger::new("a/b", BTreeMap::new(), Some("x".into()));
        assert!(bad.check().unwrap_err().contains("/pipeline"));
    }
}
