//! `--features` and the flags that follow it on the command line: each
//! `--feature-time`, `--prefix` and `--entity-map` belongs to the
//! `--features` before it.

use super::FeaturesSpec;
use crate::featureset::split_version;

/// One occurrence of a per-feature-set flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeaturesFlag {
    Features(String),
    Time(String),
    Prefix(String),
    /// One `LABELCOL=FEATURECOL`.
    EntityMap(String),
}

impl FeaturesFlag {
    fn name(&self) -> &'static str {
        match self {
            FeaturesFlag::Features(_) => "--features",
            FeaturesFlag::Time(_) => "--feature-time",
            FeaturesFlag::Prefix(_) => "--prefix",
            FeaturesFlag::EntityMap(_) => "--entity-map",
        }
    }
}

/// The feature sets to join, from the flags with their positions on the
/// command line.
pub fn features_specs(mut flags: Vec<(usize, FeaturesFlag)>) -> Result<Vec<FeaturesSpec>, String> {
    flags.sort_by_key(|(at, _)| *at);
    let mut specs: Vec<FeaturesSpec> = Vec::new();
    for (_, flag) in flags {
        let name = flag.name();
        if let FeaturesFlag::Features(url) = flag {
            let (location, version) = split_version(&url);
            specs.push(FeaturesSpec {
                location,
                version,
                ..Default::default()
            });
            continue;
        }
        let Some(spec) = specs.last_mut() else {
            return Err(format!("{name} must come after the --features it applies to"));
        };
        match flag {
            FeaturesFlag::Time(t) => set_once(&mut spec.time, t, name, &spec.location)?,
            FeaturesFlag::Prefix(p) => set_once(&mut spec.prefix, p, name, &spec.location)?,
            FeaturesFlag::EntityMap(pair) => {
                let Some((label, feature)) = pair
                    .split_once('=')
                    .filter(|(l, f)| !l.is_empty() && !f.is_empty())
                else {
                    return Err(format!("--entity-map '{pair}' is not LABELCOL=FEATURECOL"));
                };
                if spec
                    .entity_map
                    .insert(label.to_string(), feature.to_string())
                    .is_some()
                {
                    return Err(format!(
                        "--entity-map maps '{label}' twice for --features {}",
                        spec.location
                    ));
                }
            }
            FeaturesFlag::Features(_) => unreachable!("handled above"),
        }
    }
    Ok(specs)
}

fn set_once(slot: &mut Option<String>, value: String, flag: &str, location: &str) -> Result<(), String> {
    match slot.replace(value) {
        Some(_) => Err(format!("{flag} is given twice for --features {location}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::FeaturesFlag::*;
    use super::*;

    #[test]
    fn flags_belong_to_the_features_before_them() {
        let specs = features_specs(vec![
            (9, Prefix("i_".into())),
            (1, Features("f/user_daily@3".into())),
            (3, Time("day".into())),
            (5, EntityMap("uid=user_id".into())),
            (7, Features("f/item_daily".into())),
            (2, Prefix("u_".into())),
        ])
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(
            (specs[0].location.as_str(), specs[0].version),
            ("f/user_daily", Some(3))
        );
        assert_eq!(specs[0].prefix.as_deref(), Some("u_"));
        assert_eq!(specs[0].time.as_deref(), Some("day"));
        assert_eq!(
            specs[0].entity_map.get("uid").map(String::as_str),
            Some("user_id")
        );
        assert_eq!(
            (
                specs[1].version,
                specs[1].prefix.as_deref(),
                specs[1].time.as_deref()
            ),
            (None, Some("i_"), None)
        );
    }

    #[test]
    fn misplaced_flags_are_refused() {
        let e = features_specs(vec![(1, Prefix("p".into())), (2, Features("f".into()))]).unwrap_err();
        assert!(e.contains("--prefix must come after the --features"), "{e}");
        let e = features_specs(vec![
            (1, Features("f".into())),
            (2, Time("a".into())),
            (3, Time("b".into())),
        ])
        .unwrap_err();
        assert!(
            e.contains("--feature-time is given twice for --features f"),
            "{e}"
        );
        let e = features_specs(vec![(1, Features("f".into())), (2, EntityMap("uid".into()))]).unwrap_err();
        assert!(e.contains("not LABELCOL=FEATURECOL"), "{e}");
    }
}
