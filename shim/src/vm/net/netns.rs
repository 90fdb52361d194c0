//! Running netlink work inside another network namespace.
//!
//! A network namespace is per thread: each call gets a thread of its own
//! that enters the namespace, runs the work on a small runtime with an
//! rtnetlink connection opened there, and ends. No thread of the shim's
//! runtime ever changes namespace.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use rtnetlink::Handle;

use super::NetError;

/// Runs `work` with a netlink handle inside the network namespace at
/// `netns`. `Ok(None)` when the namespace no longer exists.
pub fn in_netns<T, F, Fut>(netns: &Path, work: F) -> Result<Option<T>, NetError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let path = netns.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || run_in(path, work))
        .map_err(|source| NetError::Netns {
            path: netns.to_path_buf(),
            source,
        })?;
    thread.join().unwrap_or_else(|_| {
        Err(NetError::Netns {
            path: netns.to_path_buf(),
            source: std::io::Error::other("the netlink thread panicked"),
        })
    })
}

fn run_in<T, F, Fut>(path: PathBuf, work: F) -> Result<Option<T>, NetError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, NetError>>,
{
    let ns_err = |source| NetError::Netns {
        path: path.clone(),
        source,
    };
    let ns = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ns_err(e)),
    };
    // SAFETY: setns on an open namespace fd changes the namespace of this
    // thread only; the thread ends when the work is done.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(ns_err(std::io::Error::last_os_error()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(ns_err)?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(ns_err)?;
        tokio::spawn(conn);
        work(handle).await.map(Some)
    })
}
