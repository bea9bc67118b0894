//! The `ingestd` server: executors, sockets, files, sinks and the CLI around the pure
//! logic of `ingestd-codec` and `ingestd-shards`.

pub mod config;
pub mod egress;
pub mod log;
pub mod metrics;
pub mod pg;
pub mod record;
pub mod registry;
pub mod serve;
