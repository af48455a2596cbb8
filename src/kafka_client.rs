//! Kafka client settings given on the command line (`kiln worker`, `kiln
//! trigger`, `--events`), spelled as kcat spells them: `-b BROKERS` and
//! `-X PROPERTY=VALUE` for any librdkafka property.
//!
//! The environment can set them too, so that a Kubernetes Secret becomes an
//! environment variable and never an argument: `KILN_KAFKA_BROKERS` is the
//! brokers, and `KILN_KAFKA_<PROPERTY>` is any property, named upper-case
//! with `_` for `.` (`KILN_KAFKA_SASL_PASSWORD` is `sasl.password`).
//! `-b` and `-X` win over the environment. Values of properties that hold
//! credentials ([`crate::pipeline::secret_option`]) are never shown:
//! [`ClientSettings::scrub`] masks them in any text that may quote them.

use std::collections::BTreeMap;

use rdkafka::ClientConfig;

use crate::pipeline::secret_option;

/// The brokers when neither `-b` nor `KILN_KAFKA_BROKERS` names them.
pub const DEFAULT_BROKERS: &str = "localhost:9092";

const ENV_PREFIX: &str = "KILN_KAFKA_";

/// librdkafka properties for the clients of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    properties: BTreeMap<String, String>,
}

impl ClientSettings {
    /// From the process environment, then `brokers` (`-b`) and `overrides`
    /// (`-X`, in order: a later one wins).
    pub fn from_env(brokers: Option<&str>, overrides: &[(String, String)]) -> Self {
        Self::from_parts(std::env::vars(), brokers, overrides)
    }

    fn from_parts(
        env: impl IntoIterator<Item = (String, String)>,
        brokers: Option<&str>,
        overrides: &[(String, String)],
    ) -> Self {
        let mut properties = BTreeMap::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let property = if rest == "BROKERS" {
                "bootstrap.servers".to_string()
            } else {
                rest.to_ascii_lowercase().replace('_', ".")
            };
            if !property.is_empty() {
                properties.insert(property, value);
            }
        }
        properties
            .entry("bootstrap.servers".to_string())
            .or_insert_with(|| DEFAULT_BROKERS.to_string());
        if let Some(brokers) = brokers {
            properties.insert("bootstrap.servers".into(), brokers.to_string());
        }
        for (key, value) in overrides {
            properties.insert(key.clone(), value.clone());
        }
        Self { properties }
    }

    /// A client configuration with every property set.
    pub fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    pub fn brokers(&self) -> &str {
        self.get("bootstrap.servers").unwrap_or(DEFAULT_BROKERS)
    }

    /// `text` with the value of every credential property masked: what
    /// librdkafka says about a property may quote its value.
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (key, value) in &self.properties {
            if secret_option(key) && !value.is_empty() {
                out = out.replace(value.as_str(), "***");
            }
        }
        out
    }
}

/// Parse `-X PROPERTY=VALUE`. The error never repeats the argument: it
/// may be a password given without its name.
pub fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok((key.trim().to_string(), value.to_string())),
        Some(_) => Err("expected PROPERTY=VALUE, got no property name before '='".into()),
        None => Err(
            "expected PROPERTY=VALUE (a librdkafka property, e.g. security.protocol=SASL_SSL), got no '='"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_environment_sets_any_property_and_flags_win() {
        let settings = ClientSettings::from_parts(
            env(&[
                ("KILN_KAFKA_BROKERS", "k1:9092"),
                ("KILN_KAFKA_SASL_PASSWORD", "hunter2"),
                ("KILN_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KILN_TEST_KAFKA", "ignored:1"),
                ("HOME", "/root"),
            ]),
            None,
            &[("security.protocol".into(), "SASL_PLAINTEXT".into())],
        );
        assert_eq!(settings.brokers(), "k1:9092");
        assert_eq!(settings.get("sasl.password"), Some("hunter2"));
        assert_eq!(settings.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(settings.properties.len(), 3, "{settings:?}");
        let flagged = ClientSettings::from_parts(env(&[("KILN_KAFKA_BROKERS", "k1:9092")]), Some("b:1"), &[]);
        assert_eq!(flagged.brokers(), "b:1");
        assert_eq!(
            ClientSettings::from_parts(Vec::new(), None, &[]).brokers(),
            DEFAULT_BROKERS
        );
    }

    #[test]
    fn credentials_are_masked_in_what_is_shown() {
        let settings = ClientSettings::from_parts(
            Vec::new(),
            Some("b:1"),
            &[
                ("sasl.password".into(), "s3cr3t!".into()),
                ("sasl.username".into(), "kiln".into()),
            ],
        );
        assert_eq!(
            settings.scrub("Invalid value \"s3cr3t!\" for sasl.password (user kiln)"),
            "Invalid value \"***\" for sasl.password (user kiln)"
        );
    }

    #[test]
    fn a_property_needs_a_name_and_a_value() {
        assert_eq!(
            parse_property("sasl.password=a=b").unwrap(),
            ("sasl.password".into(), "a=b".into())
        );
        let err = parse_property("=x").unwrap_err();
        assert!(err.contains("no property name"), "{err}");
        // Not echoed: it may be a password typed without its name.
        let err = parse_property("hunter2").unwrap_err();
        assert!(err.contains("no '='") && !err.contains("hunter2"), "{err}");
    }
}
