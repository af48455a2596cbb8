//! SIGTERM and SIGINT, handled by kiln itself: in a container kiln is PID
//! 1, which the kernel sends no default-handled signal, so without a
//! handler a pod would only stop when its grace period ran out.

use std::sync::{Once, OnceLock};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

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

/// The first stop asked for, once one has been.
fn stops() -> &'static watch::Sender<Option<Stop>> {
    static STOPS: OnceLock<watch::Sender<Option<Stop>>> = OnceLock::new();
    STOPS.get_or_init(|| watch::channel(None).0)
}

/// Takes over SIGTERM and SIGINT from here on, remembering the first, so
/// that a signal that arrives while a command is still starting (before it
/// waits for one) stops it as cleanly as one that arrives later. Called
/// first thing in the runtime; later calls do nothing.
pub fn listen() {
    static LISTENING: Once = Once::new();
    LISTENING.call_once(
        || match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::spawn(async move {
                    let stop = tokio::select! {
                        _ = term.recv() => Stop::Terminate,
                        _ = int.recv() => Stop::Interrupt,
                    };
                    stops().send_replace(Some(stop));
                });
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops kiln");
                tokio::spawn(async {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        stops().send_replace(Some(Stop::Interrupt));
                    }
                });
            }
        },
    );
}

/// Resolves at the first SIGTERM or SIGINT, at once if one came already.
pub async fn stop_requested() -> Stop {
    listen();
    let mut seen = stops().subscribe();
    loop {
        if let Some(stop) = *seen.borrow_and_update() {
            return stop;
        }
        if seen.changed().await.is_err() {
            // The sender is a static: it is never dropped.
            std::future::pending::<()>().await;
        }
    }
}
