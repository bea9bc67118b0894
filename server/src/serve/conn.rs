//! One device connection's driver: reading the CONNECT, handing the connection to its
//! home shard, then the MQTT session's socket until the connection ends. Every decision
//! (authentication, takeover, keep-alive, what to answer, when to stop reading) is the
//! shard core's; this file moves bytes.
//!
//! An accepted connection is two tasks on its home shard: this reader, which decodes
//! packets from the socket and gives them to the core; and a writer, which sends what
//! the core put in the connection's output (CONNACK, PINGRESP, PUBCOMP right away;
//! PUBACK and PUBREC only once the record is durable). The reader stops reading when the
//! core says so (`inflight_max` messages waiting, or the shard overloaded): TCP flow
//! control then slows the device down instead of anything being dropped.

use super::handoff::{self, Handoff};
use super::notify::Notify;
use super::shard::{device_entry, Shard};
use super::tls::{self, TlsStream};
use futures_lite::future;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use ingestd_codec::mqtt::{self, Decoded, Origin, Packet, Protocol};
use ingestd_shards::core::connect::ConnectInfo;
use ingestd_shards::core::{Action, ConnId, Event, ReadGate};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

/// A device's byte stream: plain TCP or TLS over TCP.
/// A device's byte stream: plain TCP or TLS over TCP.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.tcp(),
        }
    }

    /// The device id of a verified client certificate, if the device presented one.
    fn certificate_device_id(&self) -> Option<String> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => tls::certificate_device_id(tls.session()),
        }
    }
}

impl futures_lite::AsyncRead for Transport {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_read(cx, buf),
        }
    }
}

impl futures_lite::AsyncWrite for Transport {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_flush(cx),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => std::pin::Pin::new(tcp).poll_close(cx),
            Transport::Tls(tls) => std::pin::Pin::new(&mut **tls).poll_close(cx),
        }
    }
}

/// Bytes asked of the socket per read adapt between these: a read that fills its buffer
/// doubles the next one (a busy device pipelining PUBLISHes), a read that uses under a
/// quarter halves it. The buffer is freed whenever it is drained, so an idle device's
/// connection holds only a smallest-size buffer for its pending read.
const READ_CHUNK_MIN: usize = 256;
const READ_CHUNK_MAX: usize = 64 * 1024;

/// The driver's side of a connection: what the shard's other tasks reach.
pub struct ConnIo {
    pub id: ConnId,
    fd: RawFd,
    /// The core queued output (or the connection is finishing).
    pub out_notify: Notify,
    /// Woken when the reader may read again.
    pub resume: Notify,
    /// The core's answer to the CONNECT (`Accept`, `Refuse` or `HandOff`).
    pub outcome: RefCell<Option<Action>>,
    /// The socket is still open: `fd` may be shut down. Cleared before the stream drops,
    /// so a recycled descriptor number is never touched.
    open: Cell<bool>,
    /// Nothing more is written.
    finished: Cell<bool>,
}

impl ConnIo {
    fn new(id: ConnId, fd: RawFd) -> Self {
        Self {
            id,
            fd,
            out_notify: Notify::default(),
            resume: Notify::default(),
            outcome: RefCell::new(None),
            open: Cell::new(true),
            finished: Cell::new(false),
        }
    }

    /// Stops reading (the reader then learns from the core that it is closing).
    pub fn close(&self) {
        if self.open.get() {
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Read);
        }
        self.resume.notify();
    }

    /// Closes at once, sending nothing more (the log failed: nothing may be acknowledged).
    pub fn abort(&self) {
        self.finished.set(true);
        if self.open.get() {
            let _ = nix::sys::socket::shutdown(self.fd, nix::sys::socket::Shutdown::Both);
        }
        self.resume.notify();
        self.out_notify.notify();
    }
}

/// Serves one connection from its first byte (or from `buffered`, when handed in).
pub async fn serve(
    shard: Rc<Shard>,
    mut stream: Transport,
    mut buf: Vec<u8>,
    peer: SocketAddr,
    handed_in: bool,
) {
    let max_packet = shard.config.mqtt.packet_bytes_max;
    let connect_timeout = Duration::from_millis(shard.config.mqtt.connect_timeout_ms);
    let _ = stream.tcp().set_read_timeout(Some(connect_timeout));
    let fd = stream.tcp().as_raw_fd();

    // CONNECT: the first packet, whatever the version [MQTT-3.1.0-1].
    let info = loop {
        match mqtt::decode_from(&buf, Protocol::V5, max_packet, Origin::Client) {
            Ok(Decoded::Packet {
                packet: Packet::Connect(connect),
                len,
            }) => break ConnectInfo::new(&connect, len),
            Ok(Decoded::Packet { .. }) => {
                let io = shard.open_conn(|id| ConnIo::new(id, fd));
                shard.run(Event::BadFirstPacket {
                    conn: io.id,
                    error: None,
                });
                shard.close_conn(io.id);
                return;
            }
            Ok(Decoded::NeedMore { bytes }) => {
                if !read_more(&mut stream, &mut buf, bytes).await {
                    return;
                }
            }
            Err(error) => {
                let io = shard.open_conn(|id| ConnIo::new(id, fd));
                shard.run(Event::BadFirstPacket {
                    conn: io.id,
                    error: Some((&error, &buf[..])),
                });
                write_output(&shard, &io, &mut stream).await;
                shard.close_conn(io.id);
                return;
            }
        }
    };

    let io = shard.open_conn(|id| ConnIo::new(id, fd));
    let cert_device = stream.certificate_device_id();
    {
        let registry = shard.shared.registry();
        let lookup = |id: &str| registry.get(id).map(device_entry);
        shard.run(Event::Connect {
            conn: io.id,
            info: &info,
            peer,
            cert_device: cert_device.as_deref(),
            handed_in,
            registry: &lookup,
        });
    }
    // A CONNECT with a credential is answered once the credential's record is durable.
    let outcome = loop {
        if let Some(outcome) = io.outcome.borrow_mut().take() {
            break Some(outcome);
        }
        if io.finished.get() {
            break None;
        }
        io.resume.notified().await;
    };
    match outcome {
        Some(Action::Accept {
            read_timeout_ms, ..
        }) => {
            let _ = stream
                .tcp()
                .set_read_timeout(Some(Duration::from_millis(read_timeout_ms)));
            buf.drain(..info.len);
            // The session runs as a task of its own, so that what a long-lived connection
            // keeps allocated is the session's state only, not the CONNECT phase's.
            glommio::spawn_local(session(shard, io, stream, buf)).detach();
        }
        Some(Action::HandOff {
            home, device_id, ..
        }) => {
            hand_off(&shard, &io, stream, buf, peer, home, device_id, &info).await;
            shard.close_conn(io.id);
        }
        Some(Action::Refuse { why, delay_ms, .. }) => {
            refuse(&shard, &io, &mut stream, &info, peer, why, delay_ms).await;
            shard.close_conn(io.id);
        }
        // Aborted while held: the log failed.
        None => shard.close_conn(io.id),
        Some(_) => {
            debug_assert!(false, "the core did not answer a CONNECT");
            shard.close_conn(io.id);
        }
    }
}

/// Hands the connection to its home shard; refuses it here when that shard's ring is full.
#[allow(clippy::too_many_arguments)]
async fn hand_off(
    shard: &Rc<Shard>,
    io: &ConnIo,
    stream: Transport,
    buf: Vec<u8>,
    peer: SocketAddr,
    home: usize,
    device_id: String,
    info: &ConnectInfo,
) {
    let (tcp, tls) = match stream {
        Transport::Plain(tcp) => (tcp, None),
        Transport::Tls(tls) => {
            let (tcp, session) = tls.into_parts();
            (tcp, Some(Box::new(session)))
        }
    };
    let fd = match handoff::detach(&tcp) {
        Ok(fd) => fd,
        Err(error) => {
            tracing::warn!(%error, "cannot hand off connection");
            return;
        }
    };
    let handoff = Handoff {
        fd,
        buffered: buf,
        peer,
        from_shard: shard.id,
        device_id,
        tls,
    };
    if let Err(handoff) = shard.hand_off(home, handoff) {
        // The home shard's ring is full: refuse here, over the original socket.
        let mut stream = match handoff.tls {
            Some(session) => Transport::Tls(Box::new(TlsStream::from_parts(tcp, *session))),
            None => Transport::Plain(tcp),
        };
        shard.run(Event::HandOffFailed { conn: io.id });
        let outcome = io.outcome.borrow_mut().take();
        if let Some(Action::Refuse { why, delay_ms, .. }) = outcome {
            refuse(shard, io, &mut stream, info, peer, why, delay_ms).await;
        }
    }
    // The stream drops here; the home shard holds the duplicated descriptor.
}

/// Refuses a CONNECT: waits out the failure throttle, then writes the CONNACK.
async fn refuse(
    shard: &Shard,
    io: &ConnIo,
    stream: &mut Transport,
    info: &ConnectInfo,
    peer: SocketAddr,
    why: &'static str,
    delay_ms: u64,
) {
    tracing::info!(peer = %peer, username = ?info.username, why, "CONNECT refused");
    if delay_ms > 0 {
        glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
    }
    write_output(shard, io, stream).await;
}

/// Writes what the core queued for a connection that has no writer task.
async fn write_output(shard: &Shard, io: &ConnIo, stream: &mut Transport) {
    let mut out = Vec::new();
    let _ = shard.core.borrow_mut().take_output(io.id, &mut out);
    if !out.is_empty() {
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
    }
}

/// An accepted connection, from after the CONNACK to its close.
async fn session(shard: Rc<Shard>, io: Rc<ConnIo>, stream: Transport, buf: Vec<u8>) {
    let (reader, writer) = futures_lite::io::split(stream);
    let writer_task = glommio::spawn_local(write_loop(Rc::clone(&shard), Rc::clone(&io), writer));
    // The CONNACK.
    io.out_notify.notify();
    read_loop(&shard, &io, reader, buf).await;

    // Let the committer deliver what is in flight, then close.
    let deadline =
        std::time::Instant::now() + Duration::from_millis(shard.config.shutdown.drain_timeout_ms);
    while shard
        .core
        .borrow()
        .conn(io.id)
        .is_some_and(|c| c.inflight > 0)
        && std::time::Instant::now() < deadline
        && !io.finished.get()
    {
        future::or(io.resume.notified(), async {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        })
        .await;
    }
    shard.run(Event::Finish { conn: io.id });
    io.finished.set(true);
    io.out_notify.notify();
    let reader_and_writer = writer_task.await;
    io.open.set(false);
    drop(reader_and_writer);
    shard.close_conn(io.id);
}

type Reader = futures_lite::io::ReadHalf<Transport>;
type Writer = futures_lite::io::WriteHalf<Transport>;

async fn read_loop(shard: &Rc<Shard>, io: &ConnIo, mut reader: Reader, mut buf: Vec<u8>) {
    let max_packet = shard.config.mqtt.packet_bytes_max;
    let Some(protocol) = shard.core.borrow().conn(io.id).map(|c| c.protocol) else {
        return;
    };
    let conn = io.id;
    let mut need = 1;
    let mut chunk = READ_CHUNK_MIN;
    'connection: loop {
        let mut pos = 0;
        while pos < buf.len() {
            match mqtt::decode_from(&buf[pos..], protocol, max_packet, Origin::Client) {
                Ok(Decoded::Packet { packet, len }) => {
                    pos += len;
                    shard.run(Event::Packet { conn, packet });
                    let closing = shard.core.borrow().conn(conn).is_none_or(|c| c.closing);
                    if closing {
                        break 'connection;
                    }
                }
                Ok(Decoded::NeedMore { bytes }) => {
                    need = bytes;
                    break;
                }
                Err(error) => {
                    tracing::debug!(conn = conn.0, %error, "malformed packet");
                    shard.run(Event::Malformed {
                        conn,
                        reason: error.reason_code(),
                    });
                    break 'connection;
                }
            }
        }
        buf.drain(..pos);
        if pos > 0 && buf.is_empty() {
            need = 1;
            buf = Vec::new();
        }
        // Back-pressure: wait for acknowledgements or for the log to catch up.
        loop {
            let gate = shard.core.borrow_mut().read_gate(conn);
            match gate {
                ReadGate::Read => break,
                ReadGate::Stop => break 'connection,
                ReadGate::Wait => {
                    future::or(io.resume.notified(), async {
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                    })
                    .await;
                }
            }
        }
        let room = need.max(chunk);
        match read_into(&mut reader, &mut buf, room).await {
            ReadOutcome::Data(n) => {
                if n == room {
                    chunk = (chunk * 2).min(READ_CHUNK_MAX);
                } else if n < chunk / 4 {
                    chunk = (chunk / 2).max(READ_CHUNK_MIN);
                }
            }
            ReadOutcome::Eof => {
                shard.run(Event::ReadEnded { conn });
                break;
            }
            ReadOutcome::TimedOut => {
                shard.run(Event::ReadTimedOut { conn });
                break;
            }
        }
    }
}

async fn write_loop(shard: Rc<Shard>, io: Rc<ConnIo>, mut writer: Writer) -> Writer {
    let mut sending = Vec::new();
    loop {
        io.out_notify.notified().await;
        if shard.core.borrow_mut().take_output(io.id, &mut sending) {
            // The reader waited for this output to drain.
            io.resume.notify();
        }
        if !sending.is_empty() && writer.write_all(&sending).await.is_err() {
            io.finished.set(true);
            shard.run(Event::ReadEnded { conn: io.id });
            io.resume.notify();
            break;
        }
        if io.finished.get() {
            // Anything queued while the last write was in flight, and the DISCONNECT.
            let _ = shard.core.borrow_mut().take_output(io.id, &mut sending);
            if !sending.is_empty() {
                let _ = writer.write_all(&sending).await;
            }
            let _ = writer.flush().await;
            break;
        }
    }
    writer
}

enum ReadOutcome {
    Data(usize),
    Eof,
    TimedOut,
}

/// Reads once into `room` bytes of new space at the end of `buf`.
async fn read_into(reader: &mut Reader, buf: &mut Vec<u8>, room: usize) -> ReadOutcome {
    let filled = buf.len();
    buf.resize(filled + room, 0);
    let result = reader.read(&mut buf[filled..]).await;
    match result {
        Ok(0) => {
            buf.truncate(filled);
            ReadOutcome::Eof
        }
        Ok(n) => {
            buf.truncate(filled + n);
            ReadOutcome::Data(n)
        }
        Err(error) => {
            buf.truncate(filled);
            if error.kind() == std::io::ErrorKind::TimedOut {
                ReadOutcome::TimedOut
            } else {
                ReadOutcome::Eof
            }
        }
    }
}

/// Reads more of the CONNECT from an unsplit stream.
async fn read_more(stream: &mut Transport, buf: &mut Vec<u8>, need: usize) -> bool {
    let filled = buf.len();
    buf.resize(filled + need.max(512), 0);
    match stream.read(&mut buf[filled..]).await {
        Ok(n) if n > 0 => {
            buf.truncate(filled + n);
            true
        }
        _ => false,
    }
}
