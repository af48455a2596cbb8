//! Structured logs on stderr: human-readable on a terminal, JSON lines
//! otherwise (what log collectors on Kubernetes expect). A run's lines
//! carry its `pipeline` and `run_id` from the `run` span it runs in (in
//! JSON, under `span`); librdkafka's own log lines come through the `log`
//! bridge, at their own levels.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Install the global subscriber. `RUST_LOG` (or `KILN_LOG`) sets the level;
/// the default shows warnings and errors only, so command output stays clean.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KILN_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        // The Delta kernel logs, as errors, conditions kiln reports itself
        // with more context (a version that does not exist, say).
        .unwrap_or_else(|_| EnvFilter::new("warn,buoyant_kernel=off"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.with_target(false).try_init()
    };
}
