//! SIGTERM and SIGINT, handled by kiln itself: in a container kiln is PID
//! 1, which the kernel sends no default-handled signal, so without a
//! handler a pod would only stop when its grace period ran out.

use tokio::signal::unix::{SignalKind, signal};

/// Which signal asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Terminate,
    Interrupt,
}

impl Stop {
    pub fn name(self) -> &'static str {
        match self {
            Stop::Terminate => "SIGTERM",
            Stop::Interrupt => "SIGINT",
        }
    }

    /// The exit status of a process that stopped for this signal, as a
    /// shell reports one killed by it (128 + the signal's number).
    pub fn exit_status(self) -> u8 {
        match self {
            Stop::Terminate => 143,
            Stop::Interrupt => 130,
        }
    }
}

/// Resolves at the first SIGTERM or SIGINT.
pub async fn stop_requested() -> Stop {
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops kiln");
            let _ = tokio::signal::ctrl_c().await;
            return Stop::Interrupt;
        }
    };
    tokio::select! {
        _ = term.recv() => Stop::Terminate,
        _ = int.recv() => Stop::Interrupt,
    }
}
