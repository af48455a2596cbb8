//! kiln's error type. Every variant carries enough context to say where and
//! why; the CLI prints it on one line.

use crate::pipeline::Problem;

pub type Result<T, E = KilnError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KilnError {
    /// Problems in a pipeline file, each with its `file:line:col`.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<Problem>),
    /// Wrong arguments or options on the command line.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing local files.
    #[error("{0}")]
    Io(String),
    /// Talking to Kafka brokers.
    #[error("{0}")]
    Kafka(String),
    /// Another writer committed an input this commit consumed (a partition
    /// moved to another worker, two runs of one pipeline overlapped): the
    /// commit was refused and the input is to be read again.
    #[error("{0}")]
    Conflict(String),
    /// A query failed while it executed over the data (a value it cannot
    /// handle), with where in the pipeline.
    #[error("{0}")]
    Execution(String),
    /// A run that failed, with where in the pipeline.
    #[error("{0}")]
    Run(String),
    #[error("{context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("{context}: {source}")]
    Delta {
        context: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

impl From<Vec<Problem>> for KilnError {
    fn from(problems: Vec<Problem>) -> Self {
        KilnError::Problems(problems)
    }
}

/// Attach a context line to DataFusion and Delta results.
pub trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, datafusion::error::DataFusionError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| KilnError::DataFusion {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, deltalake::DeltaTableError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| KilnError::Delta {
            context: context(),
            source,
        })
    }
}
