//! The CONNECT credential (being written).
