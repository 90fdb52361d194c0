//! The header that opens a raw stdio stream.
//!
//! Each stdio stream of a process is its own connection to the agent's stdio
//! listener (vsock port 1025, or the second unix socket on a host). The
//! client writes a [`StreamHeader`]; the agent answers with one reply
//! (`0` = attached, or `1` + a message); after that the connection carries
//! only the stream's bytes:
//!
//! - `Stdin`: client → process. Shutting down the write half (or closing)
//!   delivers EOF to the process.
//! - `Stdout` / `Stderr`: process → client, until the process (and every
//!   process sharing the pipe) has closed it; then the agent closes.
//! - `Tty`: both directions of a terminal process on one connection.
//!
//! Wire format (all integers big endian):
//! `"HSK1" | kind: u8 | id_len: u8 | container id | exec_len: u8 | exec id`
//! and the reply `status: u8 | msg_len: u16 | msg` (msg empty on success).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 4] = b"HSK1";
/// Longest reply message the reader accepts.
const MAX_REPLY_MSG: usize = 4096;

/// Which stream of a process a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StreamKind {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    Tty = 3,
}

impl TryFrom<u8> for StreamKind {
    type Error = StdioError;
    fn try_from(b: u8) -> Result<Self, StdioError> {
        Ok(match b {
            0 => StreamKind::Stdin,
            1 => StreamKind::Stdout,
            2 => StreamKind::Stderr,
            3 => StreamKind::Tty,
            other => return Err(StdioError::BadKind(other)),
        })
    }
}

/// Names the process and stream a connection is for. `exec_id` empty means
/// the container's init process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub container_id: String,
    pub exec_id: String,
    pub kind: StreamKind,
}

/// Errors of the stdio header exchange.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("stdio stream i/o")]
    Io(#[from] std::io::Error),
    #[error("stdio stream does not start with the husk magic; connect to the stdio listener, not the grpc one")]
    BadMagic,
    #[error("unknown stdio stream kind {0}")]
    BadKind(u8),
    #[error("stdio header id longer than 255 bytes")]
    IdTooLong,
    #[error("stdio header id is not utf-8")]
    NotUtf8,
    #[error("agent refused the stdio stream: {0}")]
    Refused(String),
}

impl StreamHeader {
    /// The header as bytes on the wire.
    pub fn encode(&self) -> Result<Vec<u8>, StdioError> {
        let (c, e) = (self.container_id.as_bytes(), self.exec_id.as_bytes());
        if c.len() > 255 || e.len() > 255 {
            return Err(StdioError::IdTooLong);
        }
        let mut v = Vec::with_capacity(7 + c.len() + e.len());
        v.extend_from_slice(MAGIC);
        v.push(self.kind as u8);
        v.push(c.len() as u8);
        v.extend_from_slice(c);
        v.push(e.len() as u8);
        v.extend_from_slice(e);
        Ok(v)
    }

    /// Writes the header (client side).
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> Result<(), StdioError> {
        w.write_all(&self.encode()?).await?;
        w.flush().await?;
        Ok(())
    }

    /// Reads a header (agent side). Reads exactly the header's bytes.
    pub async fn read_from<R: AsyncRead + Unpin>(r: &mut R) -> Result<Self, StdioError> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).await?;
        if &magic != MAGIC {
            return Err(StdioError::BadMagic);
        }
        let kind = StreamKind::try_from(r.read_u8().await?)?;
        let container_id = read_str(r).await?;
        let exec_id = read_str(r).await?;
        Ok(StreamHeader {
            container_id,
            exec_id,
            kind,
        })
    }
}

async fn read_str<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, StdioError> {
    let len = r.read_u8().await? as usize;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    String::from_utf8(buf).map_err(|_| StdioError::NotUtf8)
}

/// Writes the agent's answer to a header: `Ok(())` = attached.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    result: Result<(), &str>,
) -> Result<(), StdioError> {
    let mut v = Vec::new();
    match result {
        Ok(()) => v.extend_from_slice(&[0, 0, 0]),
        Err(msg) => {
            let msg = &msg.as_bytes()[..msg.len().min(MAX_REPLY_MSG)];
            v.push(1);
            v.extend_from_slice(&(msg.len() as u16).to_be_bytes());
            v.extend_from_slice(msg);
        }
    }
    w.write_all(&v).await?;
    w.flush().await?;
    Ok(())
}

/// Reads the agent's answer (client side); `Err(Refused)` carries its reason.
pub async fn read_reply<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), StdioError> {
    let status = r.read_u8().await?;
    let len = r.read_u16().await? as usize;
    if len > MAX_REPLY_MSG {
        return Err(StdioError::Refused("reply message too long".into()));
    }
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg).await?;
    match status {
        0 => Ok(()),
        _ => Err(StdioError::Refused(
            String::from_utf8_lossy(&msg).into_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_round_trips_and_leaves_payload() {
        let h = StreamHeader {
            container_id: "c1".into(),
            exec_id: "e-7".into(),
            kind: StreamKind::Stderr,
        };
        let mut wire = h.encode().unwrap();
        assert_eq!(&wire[..5], b"HSK1\x02");
        wire.extend_from_slice(b"payload");
        let mut r = &wire[..];
        assert_eq!(StreamHeader::read_from(&mut r).await.unwrap(), h);
        assert_eq!(r, b"payload");
    }

    #[tokio::test]
    async fn rejects_bad_magic_and_kind() {
        let mut r = &b"HTTP/1.1"[..];
        assert!(matches!(
            StreamHeader::read_from(&mut r).await,
            Err(StdioError::BadMagic)
        ));
        let mut r = &b"HSK1\x09\x00\x00"[..];
        assert!(matches!(
            StreamHeader::read_from(&mut r).await,
            Err(StdioError::BadKind(9))
        ));
    }

    #[tokio::test]
    async fn reply_round_trips() {
        let mut ok = Vec::new();
        write_reply(&mut ok, Ok(())).await.unwrap();
        read_reply(&mut &ok[..]).await.unwrap();
        let mut bad = Vec::new();
        write_reply(&mut bad, Err("no such container"))
            .await
            .unwrap();
        match read_reply(&mut &bad[..]).await {
            Err(StdioError::Refused(m)) => assert_eq!(m, "no such container"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn long_id_is_refused() {
        let h = StreamHeader {
            container_id: "x".repeat(256),
            exec_id: String::new(),
            kind: StreamKind::Stdin,
        };
        assert!(matches!(h.encode(), Err(StdioError::IdTooLong)));
    }
}
