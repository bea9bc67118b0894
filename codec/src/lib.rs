//! ingestd's wire formats, as pure functions from bytes to types and back.
//!
//! - [`mqtt`]: MQTT 3.1.1 and 5.0 framing for every packet a device sends or receives,
//!   decoded incrementally from a read buffer ("need n more bytes" is an ordinary outcome),
//!   with PUBLISH payloads borrowed from that buffer.
//! - [`envelope`]: the versioned, ed25519-signed telemetry envelope (binary and JSON forms)
//!   specified in `docs/PROTOCOL.md`.
//! - [`credential`]: the CONNECT password by which a device proves it holds its registered key.
//!
//! Nothing here does I/O or reads the clock: time is an argument, so every rule is testable.

#![forbid(unsafe_code)]

pub mod credential;
pub mod envelope;
pub mod mqtt;
