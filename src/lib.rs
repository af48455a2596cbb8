//! kiln: SQL pipelines that turn raw events and files into versioned,
//! training-ready feature sets (Delta Lake tables).
//!
//! Data flows one way through the modules: [`pipeline`] reads a SQL file,
//! [`engine`] builds the DataFusion session and plans the pipeline against
//! [`source`] tables, [`ledger`] keeps what each feature set consumed,
//! [`featureset`] writes and commits the results, and
//! [`run`] ties a whole run together ([`trigger`] messages start runs of
//! `kiln worker`; [`events`] announce new versions and failures;
//! [`kafka_client`] holds the Kafka settings of the command line). [`demo`] makes sample data and runs
//! the sample pipelines; [`report`] renders results for people. [`training`]
//! builds point-in-time training sets; [`asof`] is the as-of match (in
//! Polars) under it and under the SQL `ASOF JOIN`. [`functions`] are kiln's
//! feature functions (hashing, bucketing, scaling, MinHash, vectors).

pub mod asof;
pub mod demo;
pub mod engine;
pub mod error;
pub mod events;
pub mod featureset;
pub mod functions;
pub mod kafka_client;
pub mod ledger;
pub mod ops;
pub mod pipeline;
pub mod report;
pub mod run;
pub mod source;
pub mod training;
pub mod trigger;

pub use error::{KilnError, Result};
