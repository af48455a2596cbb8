//! `kiln check`: everything a run does before it reads data, for one file
//! or a folder of them.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::engine::{self, Resources};
use crate::error::{KilnError, Result};
use crate::featureset::OpenTables;
use crate::pipeline::{Pipeline, Problem, Variables};

#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub file: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub files: Vec<FileCheck>,
}

impl CheckReport {
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.files.iter().flat_map(|f| f.problems.iter())
    }
}

/// The pipeline files named by `path`: the file itself, or every `*.sql`
/// in a folder, sorted.
pub fn pipeline_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| KilnError::Io(format!("reading {}: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(KilnError::Usage(format!("no .sql files in {}", path.display())));
    }
    Ok(files)
}

/// Parse, substitute and plan each pipeline without reading or writing data.
pub async fn check_paths(paths: &[PathBuf], vars: &Variables, resources: &Resources) -> Result<CheckReport> {
    let mut files = Vec::new();
    for path in paths {
        for file in pipeline_files(path)? {
            let problems = match Pipeline::load(&file, vars) {
                Err(problems) => problems,
                Ok(pipeline) => {
                    let ctx = engine::session(resources).map_err(|source| KilnError::DataFusion {
                        context: "creating the query session".into(),
                        source,
                    })?;
                    let mut problems = super::kafka::register_unread(&ctx, &pipeline).await;
                    problems.extend(
                        engine::plan_pipeline(&ctx, &pipeline, &OpenTables::default(), None)
                            .await
                            .err()
                            .unwrap_or_default(),
                    );
                    problems
                }
            };
            files.push(FileCheck {
                file: file.display().to_string(),
                problems,
            });
        }
    }
    Ok(CheckReport {
        ok: files.iter().all(|f| f.problems.is_empty()),
        files,
    })
}
