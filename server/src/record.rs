//! What the durable log's records hold. The format and its types live in the shard core
//! (`ingestd_shards::core::record`), which builds the records; this module re-exports them
//! for the log tools and the sinks.

pub use ingestd_shards::core::record::*;
