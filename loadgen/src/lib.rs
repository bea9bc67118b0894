//! `loadgen`: the load generator of ingestd. See `loadgen --help` and `loadgen/README.md`.

pub mod cli;
pub mod conn;
pub mod devices;
pub mod eval;
pub mod net;
pub mod payload;
pub mod report;
pub mod run;
pub mod scenario;
pub mod schedule;
pub mod sim;
pub mod stats;
