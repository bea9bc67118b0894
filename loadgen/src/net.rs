//! Sockets: TCP (optionally bound to a chosen source address) and TLS over it.

use futures_lite::io::{AsyncRead, AsyncWrite};
use futures_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use futures_rustls::rustls::{self, ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A connection to the broker, plain or TLS.
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(s) => Pin::new(s).poll_close(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
        }
    }
}

/// TLS client settings shared by every connection.
#[derive(Clone)]
pub struct TlsSetup {
    pub connector: TlsConnector,
    pub name: ServerName<'static>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Builds the TLS client config: roots from `ca` (PEM), optional client certificate chain and
/// key for mutual TLS, server name from `server_name` or the target host.
pub fn tls_setup(
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    server_name: &str,
) -> Result<TlsSetup, String> {
    let mut roots = RootCertStore::empty();
    let Some(ca) = ca else {
        return Err("--tls needs --ca FILE (no system roots are loaded)".to_string());
    };
    let pem = read_pem(ca)?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: bad CA certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificate found", ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let pem = read_pem(cert)?;
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let pem = read_pem(key)?;
            let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
                .map_err(|e| format!("{}: {e}", key.display()))?
                .ok_or_else(|| format!("{}: no private key found", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("client certificate: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("bad TLS server name {server_name:?}: {e}"))?;
    Ok(TlsSetup {
        connector: TlsConnector::from(Arc::new(config)),
        name,
    })
}

/// The source address for connection `n` when spreading over `count` loopback addresses.
pub fn source_addr(n: usize, count: usize) -> Option<Ipv4Addr> {
    if count <= 1 {
        return None;
    }
    let k = (n % count) as u32;
    // 127.0.0.1 .. 127.0.0.N, continuing into 127.0.1.x past 254.
    let host = 1 + k + k / 254 * 2;
    Some(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 0)) + host,
    ))
}

/// Opens TCP (TCP_NODELAY on), then TLS if configured. Errors are short kinds for the
/// report ("connect_refused", "connect_timeout", "tls_handshake", ...).
pub async fn open(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    tls: Option<&TlsSetup>,
    timeout: Duration,
) -> Result<Io, String> {
    let stream = match source {
        None => glommio::timer::timeout(timeout, async {
            TcpStream::connect(target)
                .await
                .map_err(|e| glommio::GlommioError::IoError(io_of(e)))
        })
        .await
        .map_err(|e| connect_error_kind(&io_of(e)))?,
        Some(ip) => connect_from(target, ip, timeout).map_err(|e| connect_error_kind(&e))?,
    };
    stream
        .set_nodelay(true)
        .map_err(|_| "set_nodelay".to_string())?;
    match tls {
        None => Ok(Io::Tcp(stream)),
        Some(tls) => {
            let handshake = tls.connector.connect(tls.name.clone(), stream);
            let s = glommio::timer::timeout(timeout, async {
                handshake.await.map_err(glommio::GlommioError::IoError)
            })
            .await
            .map_err(|_| "tls_handshake".to_string())?;
            Ok(Io::Tls(Box::new(s)))
        }
    }
}

fn io_of(e: glommio::GlommioError<()>) -> io::Error {
    match e {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::TimedOut(_) => io::Error::new(io::ErrorKind::TimedOut, "timeout"),
        other => io::Error::other(other.to_string()),
    }
}

fn connect_error_kind(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connect_refused".to_string(),
        io::ErrorKind::TimedOut => "connect_timeout".to_string(),
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => {
            "connect_no_local_port".to_string()
        }
        _ => format!("connect_error_{:?}", e.kind()).to_lowercase(),
    }
}

/// Connects from a chosen source address (glommio cannot bind before connecting). The
/// connect is blocking with a timeout: on loopback it completes at once.
fn connect_from(target: SocketAddr, ip: Ipv4Addr, timeout: Duration) -> io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nodelay(true)?;
    socket.bind(&SockAddr::from(SocketAddr::new(IpAddr::V4(ip), 0)))?;
    socket.connect_timeout(&SockAddr::from(target), timeout)?;
    socket.set_nonblocking(true)?;
    Ok(into_glommio(socket))
}

#[allow(unsafe_code)]
fn into_glommio(socket: socket2::Socket) -> TcpStream {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor comes from `into_raw_fd` of a connected TCP socket that nothing
    // else owns, so the TcpStream becomes its only owner.
    unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses() {
        assert_eq!(source_addr(5, 1), None);
        assert_eq!(source_addr(0, 4), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_addr(3, 4), Some(Ipv4Addr::new(127, 0, 0, 4)));
        assert_eq!(source_addr(4, 4), Some(Ipv4Addr::new(127, 0, 0, 1)));
        assert_eq!(source_addr(253, 300), Some(Ipv4Addr::new(127, 0, 0, 254)));
        assert_eq!(source_addr(254, 300), Some(Ipv4Addr::new(127, 0, 1, 1)));
    }
}
