//! The signed telemetry envelope (being written).
