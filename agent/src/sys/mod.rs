//! The syscall layer: everything that runs between clone(2) and execve(2)
//! in a new container or exec process, plus the path helpers it shares with
//! the agent. Unsafe code of the agent lives here.
//!
//! The agent runs a current-thread tokio runtime and never starts other
//! threads, so after clone the child may allocate and use std freely (no
//! lock can be held by a thread that does not exist in the child).

pub mod child;
pub mod fs;
pub mod plan;
pub mod pty;
pub mod seccomp;
pub mod spawn;
