//! The `ingestd` server around the pure logic of `ingestd-codec` and `ingestd-shards`: the
//! shards' driver (`serve`: executors, sockets, TLS, handoff, commits), the durable log
//! (`log`), the sinks (`egress`), the config, the device registry and the metrics. The
//! command line (`src/main.rs`) is a thin layer over it. docs/ARCHITECTURE.md shows how
//! the parts run together.

pub mod config;
pub mod egress;
pub mod fraud;
pub mod log;
pub mod metrics;
pub mod pg;
pub mod record;
pub mod registry;
pub mod serve;
