//! husk shim: containerd shim v2 task API over a `Sandbox` (microVM or host runc).

pub mod cgroup;
pub mod config;
pub mod fd;
pub mod logging;
pub mod manager;
pub mod options;
pub mod reaper;
pub mod runc;
pub mod sandbox;
pub mod service;
pub mod spec;
pub mod stdio;
pub mod vm;
