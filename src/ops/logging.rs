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
    let filter = EnvFilter::new(directives(
        std::env::var("KILN_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .ok()
            .as_deref(),
    ));
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

/// The filter for a `KILN_LOG` (or `RUST_LOG`) setting. The Delta kernel
/// logs, as errors, conditions kiln reports itself with more context (a
/// version that does not exist, say), and at info a line per snapshot it
/// reads: it stays off unless the setting names it.
fn directives(setting: Option<&str>) -> String {
    match setting.map(str::trim) {
        None | Some("") => "warn,buoyant_kernel=off".to_string(),
        Some(s) if s.contains("buoyant_kernel") => s.to_string(),
        Some(s) => format!("{s},buoyant_kernel=off"),
    }
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn the_delta_kernel_is_quiet_unless_asked_for() {
        assert_eq!(directives(None), "warn,buoyant_kernel=off");
        assert_eq!(directives(Some("info")), "info,buoyant_kernel=off");
        assert_eq!(
            directives(Some("debug,buoyant_kernel=info")),
            "debug,buoyant_kernel=info"
        );
    }
}
