//! Wire types of the husk agent API, shared by the shim (client) and
//! husk-agent (server).
//!
//! - [`pb`]: the protobuf messages and the tonic client/server generated from
//!   `proto/agent.proto` (`pb::agent_client::AgentClient`,
//!   `pb::agent_server::{Agent, AgentServer}`).
//! - [`connect`]: dial an agent at `unix:/path` or
//!   `hybrid-vsock:/path/vsock.sock:PORT` and get a gRPC client.
//! - [`stdio`]: the header that opens each raw stdio stream on the second
//!   listener, and [`connect::open_stdio`] to open one.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use husk_agent_api::{connect, pb};
//! let mut agent = connect::connect("hybrid-vsock:/run/husk/pod1/vsock.sock:1024").await?;
//! let v = agent.version(pb::VersionRequest {}).await?.into_inner();
//! println!("agent {} on kernel {}", v.agent_version, v.kernel_release);
//! # Ok(()) }
//! ```

pub mod connect;
pub mod ids;
pub mod stdio;

/// Generated protobuf types and tonic services (package `husk.agent.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("husk.agent.v1");
}

/// vsock port of the gRPC service in the guest.
pub const GRPC_VSOCK_PORT: u32 = 1024;
/// vsock port of the raw stdio streams in the guest.
pub const STDIO_VSOCK_PORT: u32 = 1025;
/// API revision reported by `Version`; bumped on incompatible changes.
pub const API_REVISION: u32 = 1;
