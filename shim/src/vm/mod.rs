//! microVM mode: each pod in its own KVM microVM (husk-vmm + virtiofsd).

pub mod binaries;
pub mod cleanup;
pub mod mountinfo;
pub mod pidfile;
pub mod podcg;
