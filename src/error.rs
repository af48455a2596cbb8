//! kiln's error type. Every variant carries enough context to say where and
//! why; the CLI prints it on one line. [`KilnError::fault`] says who is at
//! fault, which decides whether a failure is worth retrying.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;

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
    /// Reading or writing local files or an object store.
    #[error("{0}")]
    Io(String),
    /// Talking to Kafka brokers.
    #[error("{0}")]
    Kafka(String),
    /// Records a feature set never read are gone from the broker
    /// (retention), or its topic was created again.
    #[error("{0}")]
    DataLoss(String),
    /// Another writer committed an input this commit consumed (a partition
    /// moved to another worker, two runs of one pipeline overlapped): the
    /// commit was refused and the input is to be read again.
    #[error("{0}")]
    Conflict(String),
    /// A query failed while it executed over the data, at `place` in the
    /// pipeline: a value it cannot handle, or a store that failed under it.
    #[error("{place}: {source}")]
    Execution {
        place: String,
        #[source]
        source: Box<KilnError>,
    },
    /// What kiln was doing when `source` failed.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<KilnError>,
    },
    /// A run that failed, with where in the pipeline.
    #[error("{0}")]
    Run(String),
    #[error("{context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: DataFusionError,
    },
    #[error("{context}: {source}")]
    Delta {
        context: String,
        #[source]
        source: DeltaTableError,
    },
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Who is at fault for an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The pipeline, its options, or its data: retrying changes nothing.
    User,
    /// A broker, an object store or the network: worth retrying with backoff.
    External,
    /// Another writer consumed the same input first: read it again.
    Conflict,
    /// kiln itself.
    Internal,
}

impl KilnError {
    /// Who is at fault, looking through contexts to the first cause.
    pub fn fault(&self) -> Fault {
        match self {
            KilnError::Problems(_) | KilnError::Usage(_) | KilnError::DataLoss(_) => Fault::User,
            KilnError::Io(_) | KilnError::Kafka(_) => Fault::External,
            KilnError::Conflict(_) => Fault::Conflict,
            KilnError::Execution { source, .. } | KilnError::Context { source, .. } => source.fault(),
            KilnError::Run(_) | KilnError::Json(_) => Fault::Internal,
            KilnError::Arrow(_) => Fault::User,
            KilnError::DataFusion { source, .. } => datafusion_fault(source),
            KilnError::Delta { source, .. } => delta_fault(source),
        }
    }

    /// Whether records the run was reading are gone (retention, a topic
    /// made again), looking through contexts and query errors.
    pub fn is_data_loss(&self) -> bool {
        match self {
            KilnError::DataLoss(_) => true,
            KilnError::Execution { source, .. } | KilnError::Context { source, .. } => source.is_data_loss(),
            KilnError::DataFusion { source, .. } => {
                datafusion_kiln_error(source).is_some_and(KilnError::is_data_loss)
            }
            _ => false,
        }
    }

    /// Worth trying again after a wait (a broker or store failure).
    pub fn is_retriable(&self) -> bool {
        self.fault() == Fault::External
    }

    /// The message on one line (problems and causes joined by spaces): for
    /// the CLI's error line, a report or an event.
    pub fn one_line(&self) -> String {
        self.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// `self`, with what kiln was doing when it happened.
    pub fn context(self, context: impl Into<String>) -> KilnError {
        KilnError::Context {
            context: context.into(),
            source: Box::new(self),
        }
    }
}

fn datafusion_fault(e: &DataFusionError) -> Fault {
    use DataFusionError as D;
    match e {
        D::ObjectStore(_) | D::IoError(_) => Fault::External,
        D::Context(_, inner) | D::Diagnostic(_, inner) => datafusion_fault(inner),
        D::Shared(inner) => datafusion_fault(inner),
        D::Collection(all) => all.first().map_or(Fault::Internal, datafusion_fault),
        D::External(inner) => {
            if let Some(e) = inner.downcast_ref::<KilnError>() {
                e.fault()
            } else if let Some(e) = inner.downcast_ref::<DeltaTableError>() {
                delta_fault(e)
            } else if let Some(e) = inner.downcast_ref::<DataFusionError>() {
                datafusion_fault(e)
            } else if inner.downcast_ref::<object_store::Error>().is_some()
                || inner.downcast_ref::<std::io::Error>().is_some()
            {
                Fault::External
            } else {
                Fault::Internal
            }
        }
        D::ParquetError(p) => match p.as_ref() {
            parquet::errors::ParquetError::External(inner)
                if inner.downcast_ref::<object_store::Error>().is_some() =>
            {
                Fault::External
            }
            _ => Fault::User,
        },
        D::Internal(_) | D::Substrait(_) | D::Ffi(_) => Fault::Internal,
        // Plans, schemas, SQL, casts and arithmetic on the data.
        _ => Fault::User,
    }
}

/// The kiln error a query failed with (a source's fetch), if it was one.
fn datafusion_kiln_error(e: &DataFusionError) -> Option<&KilnError> {
    use DataFusionError as D;
    match e {
        D::Context(_, inner) | D::Diagnostic(_, inner) => datafusion_kiln_error(inner),
        D::Shared(inner) => datafusion_kiln_error(inner),
        D::Collection(all) => all.first().and_then(datafusion_kiln_error),
        D::External(inner) => inner.downcast_ref::<KilnError>().or_else(|| {
            inner
                .downcast_ref::<DataFusionError>()
                .and_then(datafusion_kiln_error)
        }),
        _ => None,
    }
}

fn delta_fault(e: &DeltaTableError) -> Fault {
    use DeltaTableError as D;
    use deltalake::kernel::transaction::TransactionError as T;
    match e {
        D::ObjectStore { source } => match source {
            object_store::Error::NotFound { .. } => Fault::User,
            _ => Fault::External,
        },
        D::Io { .. } => Fault::External,
        D::Transaction { source } => match source {
            T::CommitConflict(_) | T::VersionAlreadyExists(_) | T::MaxCommitAttempts(_) => Fault::Conflict,
            T::ObjectStore { .. } | T::LogStoreError { .. } => Fault::External,
            _ => Fault::User,
        },
        D::VersionAlreadyExists(_) => Fault::Conflict,
        D::KernelError(_) | D::Kernel { .. } | D::GenericError { .. } | D::SerializeLogJson { .. } => {
            Fault::Internal
        }
        // Schemas, table features, data and locations the user chose.
        _ => Fault::User,
    }
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

impl<T> Context<T> for std::result::Result<T, DataFusionError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| KilnError::DataFusion {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, DeltaTableError> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| KilnError::Delta {
            context: context(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_failure() -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: "503 Slow Down".into(),
        }
    }

    #[test]
    fn faults_are_found_through_contexts() {
        // An S3 5xx during execution is retried, as it is at commit.
        let during_execution = KilnError::Execution {
            place: "p.sql:3:1: while running this INSERT".into(),
            source: Box::new(KilnError::DataFusion {
                context: "computing 'fs'".into(),
                source: DataFusionError::Context(
                    "reading".into(),
                    Box::new(DataFusionError::ObjectStore(Box::new(store_failure()))),
                ),
            }),
        };
        assert_eq!(during_execution.fault(), Fault::External);
        assert!(during_execution.is_retriable());
        let at_commit = KilnError::Delta {
            context: "committing".into(),
            source: DeltaTableError::ObjectStore {
                source: store_failure(),
            },
        };
        assert!(at_commit.context("batch 7").is_retriable());

        // A schema mismatch or a bad value is never retried.
        let schema = KilnError::Delta {
            context: "committing".into(),
            source: DeltaTableError::Generic("Schema of data does not match table schema".into()),
        };
        assert_eq!(schema.fault(), Fault::User);
        let cast = KilnError::Execution {
            place: "p.sql:3:1".into(),
            source: Box::new(KilnError::DataFusion {
                context: "computing 'fs'".into(),
                source: DataFusionError::ArrowError(
                    Box::new(arrow::error::ArrowError::CastError(
                        "Cannot cast string 'abc'".into(),
                    )),
                    None,
                ),
            }),
        };
        assert_eq!(cast.fault(), Fault::User);
        assert!(!cast.is_retriable());
        assert_eq!(
            KilnError::Conflict("lost".into()).context("x").fault(),
            Fault::Conflict
        );
        assert_eq!(KilnError::DataLoss("gone".into()).fault(), Fault::User);
    }
}
