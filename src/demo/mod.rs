//! `kiln demo`: sample data in a local folder and the sample pipelines run
//! over it, with no server and no network.

mod data;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use data::{DemoData, DemoSize, generate};

use crate::error::{KilnError, Result};
use crate::featureset::{self, Lineage};
use crate::pipeline::{Pipeline, Variables};
use crate::run::{RunOptions, RunSummary, run_pipeline};

/// The sample pipelines, shipped inside the binary so `kiln demo` works
/// from any folder. The same files live in `pipelines/`.
pub const PIPELINES: &[(&str, &str)] = &[
    ("user_daily.sql", include_str!("../../pipelines/user_daily.sql")),
    ("item_daily.sql", include_str!("../../pipelines/item_daily.sql")),
    (
        "user_trailing_7d.sql",
        include_str!("../../pipelines/user_trailing_7d.sql"),
    ),
];

/// Marker written next to the data, so a second `kiln demo` reuses it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Marker {
    events: u64,
}

pub struct DemoReport {
    pub dir: PathBuf,
    /// None when the data was already there.
    pub generated: Option<DemoData>,
    pub runs: Vec<RunSummary>,
    /// The lineage of the newest `user_daily` version, read back from its
    /// Delta log: what a reader of the table sees.
    pub lineage: Option<(u64, Lineage)>,
}

/// Make (or reuse) the data under `dir/raw`, write the pipelines to
/// `dir/pipelines` and run them into `dir/features`.
pub async fn run_demo(dir: &Path, size: DemoSize, options: &RunOptions) -> Result<DemoReport> {
    let raw = dir.join("raw");
    let marker_path = raw.join("kiln-demo.json");
    let wanted = Marker { events: size.events };
    let existing: Option<Marker> = std::fs::read(&marker_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let generated = if existing.as_ref() == Some(&wanted) {
        None
    } else {
        if raw.exists() {
            std::fs::remove_dir_all(&raw).map_err(|e| io("clearing", &raw, e))?;
        }
        let made = generate(&raw, size)?;
        std::fs::write(&marker_path, serde_json::to_vec(&wanted)?)
            .map_err(|e| io("writing", &marker_path, e))?;
        Some(made)
    };

    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines).map_err(|e| io("creating", &pipelines, e))?;
    let vars = Variables::only(BTreeMap::from([
        ("RAW".to_string(), raw.display().to_string()),
        ("FEATURES".to_string(), dir.join("features").display().to_string()),
    ]));
    let mut runs = Vec::new();
    for (name, sql) in PIPELINES {
        let path = pipelines.join(name);
        std::fs::write(&path, sql).map_err(|e| io("writing", &path, e))?;
        let pipeline = Pipeline::load(&path, &vars)?;
        runs.push(run_pipeline(&pipeline, options).await?);
    }
    let user_daily = dir.join("features").join("user_daily");
    let table = featureset::open_existing(&user_daily.display().to_string(), None).await?;
    let latest = table.version().unwrap_or_default();
    let lineage = featureset::version_info(&table, latest)
        .await?
        .and_then(|v| v.lineage.map(|l| (v.version, l)));
    Ok(DemoReport {
        dir: dir.to_path_buf(),
        generated,
        runs,
        lineage,
    })
}

fn io(what: &str, path: &Path, e: std::io::Error) -> KilnError {
    KilnError::Io(format!("{what} {}: {e}", path.display()))
}
