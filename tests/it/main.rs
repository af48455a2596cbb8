//! End-to-end tests: the `kiln` binary against real files, a real
//! S3-compatible server, and an independent Delta reader (Python deltalake).
//! One test binary, so the stack is linked once.

mod common;

mod check_errors;
mod demo;
mod events;
mod failpoints;
mod functions;
mod incremental;
mod kafka;
mod ledger;
mod ops;
mod poison;
mod rebalance;
mod run_local;
mod s3;
mod secrets;
mod stream;
mod training;
mod wait;
mod worker;
