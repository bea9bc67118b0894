//! MQTT over TLS: rustls over glommio's TCP streams, written here rather than taken from
//! futures-rustls because a connection must be able to move between shards mid-session:
//! [`TlsStream::into_parts`] and [`TlsStream::from_parts`] split it into the socket and
//! rustls' `ServerConnection` (which is `Send`) and join them again on the home shard.
//!
//! The read/write logic follows futures-rustls' `common::Stream`.

use crate::config::TlsConfig;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Builds the server's TLS configuration from the `[tls]` config section.
pub fn server_config(config: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_path = config
        .cert_path
        .as_deref()
        .ok_or("config key `tls.cert_path`: required when tls.listen is set")?;
    let key_path = config
        .key_path
        .as_deref()
        .ok_or("config key `tls.key_path`: required when tls.listen is set")?;
    let certs = read_certs(cert_path, "tls.cert_path")?;
    let key = read_key(key_path)?;
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_version.as_str() {
        "1.3" => &[&rustls::version::TLS13],
        "1.2" => &[&rustls::version::TLS13, &rustls::version::TLS12],
        other => {
            return Err(format!(
                "config key `tls.min_version`: {other:?} is not \"1.2\" or \"1.3\""
            ))
        }
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match config.client_ca_path.as_deref() {
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_path, "tls.client_ca_path")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("config key `tls.client_ca_path`: {e}"))?;
            }
            // Devices may present a certificate (mutual TLS) or, without one, prove
            // themselves with the CONNECT credential.
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("config key `tls.client_ca_path`: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("config keys `tls.cert_path`/`tls.key_path`: {e}"))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("config key `{key}`: {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut io::BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("config key `{key}`: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "config key `{key}`: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("config key `tls.key_path`: {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut io::BufReader::new(file))
        .map_err(|e| format!("config key `tls.key_path`: {}: {e}", path.display()))?
        .ok_or_else(|| {
            format!(
                "config key `tls.key_path`: {} holds no PEM private key",
                path.display()
            )
        })
}

/// The device id a verified client certificate names: its subject common name.
pub fn certificate_device_id(conn: &ServerConnection) -> Option<String> {
    let leaf = conn.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// A TLS session over a glommio TCP stream.
pub struct TlsStream {
    io: TcpStream,
    conn: ServerConnection,
    eof: bool,
}

impl TlsStream {
    /// Joins a socket and a rustls session (new, or carried over from another shard).
    pub fn from_parts(io: TcpStream, conn: ServerConnection) -> Self {
        Self {
            io,
            conn,
            eof: false,
        }
    }

    /// Splits into the socket and the session, to hand the connection to another shard.
    pub fn into_parts(self) -> (TcpStream, ServerConnection) {
        (self.io, self.conn)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }

    pub fn session(&self) -> &ServerConnection {
        &self.conn
    }

    /// Completes the handshake.
    pub async fn handshake(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_handshake(cx)).await
    }

    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut blocked = false;
            while self.conn.wants_write() {
                match self.write_io(cx) {
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        blocked = true;
                        break;
                    }
                }
            }
            if !self.conn.is_handshaking() && !self.conn.wants_write() {
                return Poll::Ready(Ok(()));
            }
            while !self.eof && self.conn.is_handshaking() && self.conn.wants_read() {
                match self.read_io(cx) {
                    Poll::Ready(Ok(0)) => self.eof = true,
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        blocked = true;
                        break;
                    }
                }
            }
            if self.eof && self.conn.is_handshaking() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS handshake: peer closed",
                )));
            }
            if blocked {
                return Poll::Pending;
            }
        }
    }

    fn read_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut reader = SyncRead {
            io: &mut self.io,
            cx,
        };
        let n = match self.conn.read_tls(&mut reader) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        };
        if let Err(error) = self.conn.process_new_packets() {
            // Send the alert that explains the failure before giving up.
            let _ = self.write_io(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, error)));
        }
        Poll::Ready(Ok(n))
    }

    fn write_io(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut writer = SyncWrite {
            io: &mut self.io,
            cx,
        };
        match self.conn.write_tls(&mut writer) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
            result => Poll::Ready(result),
        }
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut io_pending = false;
        while !this.eof && this.conn.wants_read() {
            match this.read_io(cx) {
                Poll::Ready(Ok(0)) => {
                    this.eof = true;
                    break;
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    io_pending = true;
                    break;
                }
            }
        }
        match this.conn.reader().read(buf) {
            Ok(n) => Poll::Ready(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if this.eof {
                    // The peer closed without close_notify: treat as end of stream.
                    return Poll::Ready(Ok(0));
                }
                if !io_pending {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let mut pos = 0;
        while pos != buf.len() {
            pos += this.conn.writer().write(&buf[pos..])?;
            let mut blocked = false;
            while this.conn.wants_write() {
                match this.write_io(cx) {
                    Poll::Ready(Ok(0)) | Poll::Pending => {
                        blocked = true;
                        break;
                    }
                    Poll::Ready(Ok(_)) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            if blocked {
                return if pos == 0 {
                    Poll::Pending
                } else {
                    Poll::Ready(Ok(pos))
                };
            }
        }
        Poll::Ready(Ok(pos))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.conn.writer().flush()?;
        while this.conn.wants_write() {
            match this.write_io(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.conn.send_close_notify();
        while this.conn.wants_write() {
            match this.write_io(cx) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut this.io).poll_close(cx)
    }
}

struct SyncRead<'a, 'b> {
    io: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Read for SyncRead<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_read(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

struct SyncWrite<'a, 'b> {
    io: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for SyncWrite<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
