//! Registering owned file descriptors with the tokio reactor.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::eventfd::EventFd;
use tokio::io::unix::AsyncFd;

/// File descriptor owners whose `as_raw_fd` always returns the one fd they
/// own, open until they are dropped.
pub trait OwnsFd: AsRawFd {}
impl OwnsFd for OwnedFd {}
impl OwnsFd for EventFd {}

/// Registers `inner` with the current runtime's reactor.
pub fn register<T: OwnsFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: `T: OwnsFd` owns its fd: it stays open and is the same fd for
    // as long as the AsyncFd (which takes ownership of `inner`) lives.
    Ok(unsafe { AsyncFd::register(inner) }?)
}
