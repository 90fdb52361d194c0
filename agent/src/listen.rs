//! Listeners: gRPC and stdio, on vsock (guest) or unix sockets (host).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use husk_agent_api::stdio::{write_reply, StreamHeader};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::engine::Engine;
use crate::service::error_chain;

/// How long a new stdio connection may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A listen address: `unix:/path` or `vsock:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(std::path::PathBuf),
    Vsock(u32),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(ListenAddr::Unix(p.into()));
        }
        if let Some(p) = s.strip_prefix("vsock:") {
            return p
                .parse()
                .map(ListenAddr::Vsock)
                .map_err(|_| format!("bad vsock port in {s:?}"));
        }
        Err(format!(
            "listen address {s:?} is neither unix:/path nor vsock:PORT"
        ))
    }
}

/// One accepted connection, whatever the transport.
pub enum Conn {
    Unix(tokio::net::UnixStream),
    Vsock(tokio_vsock::VsockStream),
}

impl Conn {
    /// The socket as a plain fd (deregistered from tokio), for splice.
    fn into_fd(self) -> std::io::Result<std::os::fd::OwnedFd> {
        match self {
            Conn::Unix(s) => Ok(s.into_std()?.into()),
            Conn::Vsock(s) => Ok(s.into()),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Unix($s) => $e,
            Conn::Vsock($s) => $e,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        delegate!(self, s => Pin::new(s).poll_write(cx, b))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        delegate!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

pub type Incoming = Pin<Box<dyn Stream<Item = std::io::Result<Conn>> + Send>>;

/// Binds `addr` (a stale unix socket file is replaced).
pub fn bind(addr: &ListenAddr) -> std::io::Result<Incoming> {
    match addr {
        ListenAddr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let l = tokio::net::UnixListener::bind(p)?;
            let s = tokio_stream::wrappers::UnixListenerStream::new(l).map(|r| r.map(Conn::Unix));
            Ok(Box::pin(s))
        }
        ListenAddr::Vsock(port) => {
            let l = tokio_vsock::VsockListener::bind(tokio_vsock::VsockAddr::new(
                libc::VMADDR_CID_ANY,
                *port,
            ))?;
            Ok(Box::pin(l.incoming().map(|r| r.map(Conn::Vsock))))
        }
    }
}

/// Serves stdio connections forever.
pub async fn serve_stdio(engine: Arc<Engine>, mut incoming: Incoming) {
    while let Some(conn) = incoming.next().await {
        let Ok(conn) = conn else { continue };
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut conn = conn;
            let header = match tokio::time::timeout(
                HEADER_TIMEOUT,
                StreamHeader::read_from(&mut conn),
            )
            .await
            {
                Ok(Ok(h)) => h,
                _ => return,
            };
            match engine.attach(&header) {
                Ok(att) => {
                    if write_reply(&mut conn, Ok(())).await.is_ok() {
                        if let Ok(fd) = conn.into_fd() {
                            att.run(fd).await;
                        }
                    }
                }
                Err(e) => {
                    let _ = write_reply(&mut conn, Err(&error_chain(&e))).await;
                }
            }
        });
    }
}
