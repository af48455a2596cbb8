//! What `/healthz` and `/readyz` answer.
//!
//! Liveness: every loop the process runs (a stream worker's batch loop,
//! its Kafka poll thread, a trigger worker's loop) has turned within its
//! allowance; a loop stuck past it is what a restart cures. Readiness: the
//! process has joined its consumer group, reaches a broker, and its last
//! commit did not fail; a worker that is not ready is one to look at, not
//! yet one to restart.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Statistics;

/// How long a Kafka poll thread may go without polling (each poll waits at
/// most 100 ms; a rebalance callback waits for runs to end, up to the drain
/// timeout, which is inside `max.poll.interval.ms`).
pub(crate) const POLL_ALLOWANCE: Duration = Duration::from_secs(600);

#[derive(Default)]
struct State {
    /// Per loop: when it last turned, and how long it may go without.
    loops: BTreeMap<&'static str, (Instant, Duration)>,
    /// For a consumer-group member (stream, worker): whether it has joined.
    joined: Option<bool>,
    /// From the last statistics of a Kafka client: whether a broker was up.
    broker_up: Option<bool>,
    /// Why the last commit failed, when it did.
    commit_failure: Option<String>,
}

static STATE: LazyLock<Mutex<State>> = LazyLock::new(Mutex::default);

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic elsewhere while holding the lock leaves nothing half-updated
    // that matters here: go on with what is there.
    STATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The loop `name` turned; it counts as stuck if it does not turn again
/// within `allowance`.
pub(crate) fn beat(name: &'static str, allowance: Duration) {
    state().loops.insert(name, (Instant::now(), allowance));
}

/// The loop `name` ended on purpose (shutdown): it no longer counts.
pub(crate) fn stopped(name: &'static str) {
    state().loops.remove(name);
}

/// The process is to join a consumer group: not ready until it has.
pub(crate) fn expect_group() {
    state().joined.get_or_insert(false);
}

/// The consumer group gave this process its first assignment (which may
/// hold no partitions: more workers than partitions).
pub(crate) fn joined_group() {
    state().joined = Some(true);
}

/// A Kafka client's statistics: is any broker connection up?
pub(crate) fn kafka_statistics(statistics: &Statistics) {
    let up = statistics
        .brokers
        .values()
        .any(|b| b.source != "internal" && b.state == "UP");
    state().broker_up = Some(up);
}

/// The outcome of a commit: a failure makes the process unready until a
/// commit succeeds.
pub(crate) fn commit_attempted(failure: Option<String>) {
    state().commit_failure = failure;
}

/// Ok, or why the process is not alive.
pub fn liveness() -> Result<(), String> {
    let state = state();
    let now = Instant::now();
    let stuck: Vec<String> = state
        .loops
        .iter()
        .filter(|(_, (at, allowance))| now.duration_since(*at) > *allowance)
        .map(|(name, (at, _))| format!("{name} has not turned for {}s", now.duration_since(*at).as_secs()))
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        Err(stuck.join("; "))
    }
}

/// Ok, or why the process is not ready.
pub fn readiness() -> Result<(), String> {
    liveness()?;
    let state = state();
    let mut why = Vec::new();
    if state.joined == Some(false) {
        why.push("not yet a member of its consumer group".to_string());
    }
    // A group member must have seen a broker up; anything else must not
    // have seen them all down.
    let broker_missing = match state.joined {
        Some(_) => state.broker_up != Some(true),
        None => state.broker_up == Some(false),
    };
    if broker_missing {
        why.push("no Kafka broker connection is up".to_string());
    }
    if let Some(failure) = &state.commit_failure {
        why.push(format!("the last commit failed: {failure}"));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}
