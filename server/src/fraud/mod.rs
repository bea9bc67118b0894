//! Fraud scoring around the pure engine (`ingestd_shards::fraud`): the config section, the
//! per-shard checkpoint of the scoring state, its rebuild from the log at start, and the
//! operators' tools (`fraud explain`, `fraud backtest`). docs/FRAUD.md describes it all.

pub mod backtest;
pub mod checkpoint;
pub mod config;
pub mod rebuild;
