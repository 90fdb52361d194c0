//! Dialing the agent: `unix:/path` (agent on a host, tests) or
//! `hybrid-vsock:/run/husk/<id>/vsock.sock:PORT` (Firecracker-style hybrid
//! vsock: connect to the unix socket, send `CONNECT PORT\n`, read
//! `OK <host_port>\n`, then the stream is the guest port).

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::pb::agent_client::AgentClient;
use crate::stdio::{read_reply, StdioError, StreamHeader};

/// Longest `OK ...` line accepted from the hybrid vsock muxer.
const MAX_HANDSHAKE_LINE: usize = 64;

/// Errors of dialing the agent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("agent address {0:?} is neither unix:/path nor hybrid-vsock:/path:port")]
    BadAddress(String),
    #[error("cannot connect to {path}; is the agent (or the vmm) running?")]
    Dial {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake failed: {0}; is the agent listening on that port?")]
    Handshake(String),
    #[error("grpc channel to the agent")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Stdio(#[from] StdioError),
}

/// A parsed agent address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket the agent listens on directly.
    Unix(PathBuf),
    /// The VMM's hybrid vsock socket and the guest port behind it.
    HybridVsock(PathBuf, u32),
}

impl std::str::FromStr for Address {
    type Err = ConnectError;
    fn from_str(s: &str) -> Result<Self, ConnectError> {
        let bad = || ConnectError::BadAddress(s.to_string());
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(Address::Unix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("hybrid-vsock:") {
            let (p, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            let port = port.parse().map_err(|_| bad())?;
            if p.is_empty() {
                return Err(bad());
            }
            return Ok(Address::HybridVsock(PathBuf::from(p), port));
        }
        Err(bad())
    }
}

impl Address {
    /// Opens one byte stream to the address (handshake done).
    pub async fn dial(&self) -> Result<UnixStream, ConnectError> {
        let path = match self {
            Address::Unix(p) | Address::HybridVsock(p, _) => p,
        };
        let mut s = UnixStream::connect(path)
            .await
            .map_err(|source| ConnectError::Dial {
                path: path.clone(),
                source,
            })?;
        if let Address::HybridVsock(_, port) = self {
            hybrid_handshake(&mut s, *port).await?;
        }
        Ok(s)
    }
}

/// `CONNECT port\n` → `OK n\n`, reading byte by byte so no stream data is
/// consumed.
async fn hybrid_handshake(s: &mut UnixStream, port: u32) -> Result<(), ConnectError> {
    let hs = |e: std::io::Error| ConnectError::Handshake(e.to_string());
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(hs)?;
    let mut line = Vec::new();
    loop {
        let b = s.read_u8().await.map_err(hs)?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(ConnectError::Handshake("reply line too long".into()));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if !line.starts_with("OK ") {
        return Err(ConnectError::Handshake(format!("got {line:?}")));
    }
    Ok(())
}

/// A gRPC client for the agent at `addr` (see [`Address`]).
pub async fn connect(addr: &str) -> Result<AgentClient<Channel>, ConnectError> {
    let addr: Address = addr.parse()?;
    // Probe once so a wrong path fails here with a clear message, not on the
    // first RPC.
    drop(addr.dial().await?);
    // The URI is required by tonic but unused: the connector dials `addr`.
    let channel = Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let addr = addr.clone();
            async move {
                addr.dial()
                    .await
                    .map(TokioIo::new)
                    .map_err(std::io::Error::other)
            }
        }))
        .await?;
    Ok(AgentClient::new(channel))
}

/// Opens one stdio stream at the stdio address `addr` and waits until the
/// agent has attached it; the returned stream then carries only the bytes.
pub async fn open_stdio(addr: &str, header: &StreamHeader) -> Result<UnixStream, ConnectError> {
    let addr: Address = addr.parse()?;
    let mut s = addr.dial().await?;
    header.write_to(&mut s).await?;
    read_reply(&mut s).await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            "unix:/tmp/a.sock".parse::<Address>().unwrap(),
            Address::Unix("/tmp/a.sock".into())
        );
        assert_eq!(
            "hybrid-vsock:/run/husk/p/vsock.sock:1024"
                .parse::<Address>()
                .unwrap(),
            Address::HybridVsock("/run/husk/p/vsock.sock".into(), 1024)
        );
        for bad in [
            "",
            "unix:",
            "tcp:1.2.3.4:5",
            "hybrid-vsock:/x",
            "hybrid-vsock:/x:y",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }

    /// A stand-in for the VMM's hybrid-vsock muxer: accepts one connection
    /// on a fresh socket in `dir`, checks the `CONNECT` line and answers
    /// `reply`.
    fn fake_muxer(
        dir: &std::path::Path,
        expect: &'static [u8; 13],
        reply: &'static [u8],
    ) -> (PathBuf, tokio::task::JoinHandle<()>) {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("v.sock");
        let _ = std::fs::remove_file(&sock);
        let l = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, expect);
            s.write_all(reply).await.unwrap();
        });
        (sock, server)
    }

    #[tokio::test]
    async fn hybrid_handshake_consumes_only_the_ok_line() {
        let dir = std::env::temp_dir().join(format!("husk-api-hs-{}", std::process::id()));
        let (sock, server) = fake_muxer(&dir, b"CONNECT 1025\n", b"OK 99\nDATA");
        let addr = Address::HybridVsock(sock, 1025);
        let mut s = addr.dial().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"DATA");
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn refused_handshake_is_an_error() {
        let dir = std::env::temp_dir().join(format!("husk-api-hs2-{}", std::process::id()));
        let (sock, server) = fake_muxer(&dir, b"CONNECT 1024\n", b"ERR nope\n");
        let addr = Address::HybridVsock(sock, 1024);
        assert!(matches!(addr.dial().await, Err(ConnectError::Handshake(_))));
        server.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
