//! Handing a connection to its home shard.
//!
//! SO_REUSEPORT spreads connections over the shards' listeners by address hash, which knows
//! nothing of devices. After CONNECT names the device, a connection accepted elsewhere is
//! passed to `home_shard(device_id)`: a duplicate of its socket descriptor plus every byte
//! already read from it (the CONNECT and anything pipelined behind it), over a bounded SPSC
//! ring per (from, to) pair of shards. The home shard continues exactly where the
//! accepting shard stopped reading.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

/// A connection in transit between shards: plain data only, so it may cross threads.
#[derive(Debug)]
pub struct Handoff {
    pub fd: OwnedFd,
    /// Bytes read from the socket and not yet consumed: at least the whole CONNECT.
    pub buffered: Vec<u8>,
    pub peer: SocketAddr,
    /// The shard that accepted it (for metrics and the ownership assertion's message).
    pub from_shard: usize,
    /// The device id the CONNECT named; the receiving shard asserts it is the home.
    pub device_id: String,
    /// The TLS session, for a TLS connection: handshake done, keys and buffered records
    /// move with it.
    pub tls: Option<Box<rustls::ServerConnection>>,
}

/// Takes a descriptor of `stream`'s socket that survives dropping the stream.
pub fn detach(stream: &glommio::net::TcpStream) -> std::io::Result<OwnedFd> {
    let fd = nix::unistd::dup(stream.as_raw_fd()).map_err(std::io::Error::from)?;
    // SAFETY: dup returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Rebuilds a glommio stream on the current shard from a handed-off descriptor.
pub fn attach(fd: OwnedFd) -> glommio::net::TcpStream {
    // SAFETY: the OwnedFd is a connected TCP socket we own; ownership moves to the stream.
    unsafe { glommio::net::TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// The rings of a node: `producers[from][to]` and `consumers[to][from]`, `None` on the
/// diagonal (a shard never hands to itself).
pub struct Rings {
    pub producers: Vec<Vec<Option<rtrb::Producer<Handoff>>>>,
    pub consumers: Vec<Vec<Option<rtrb::Consumer<Handoff>>>>,
}

impl Rings {
    /// Rings for `shards` shards, each holding up to `capacity` connections in transit.
    #[must_use]
    pub fn new(shards: usize, capacity: usize) -> Self {
        let mut producers: Vec<Vec<Option<rtrb::Producer<Handoff>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        let mut consumers: Vec<Vec<Option<rtrb::Consumer<Handoff>>>> = (0..shards)
            .map(|_| (0..shards).map(|_| None).collect())
            .collect();
        for from in 0..shards {
            for to in 0..shards {
                if from != to {
                    let (producer, consumer) = rtrb::RingBuffer::new(capacity);
                    producers[from][to] = Some(producer);
                    consumers[to][from] = Some(consumer);
                }
            }
        }
        Self {
            producers,
            consumers,
        }
    }
}
