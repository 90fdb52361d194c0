//! husk-vmm: a KVM microVM monitor on the rust-vmm crates.
//!
//! One process per VM: it loads an ELF `vmlinux` through its PVH entry,
//! serves a serial console, an i8042 reset line and virtio-mmio devices,
//! and exits when the guest resets.

pub mod args;
pub mod boot;
pub mod config;
pub mod control;
pub mod cpu;
pub mod devices;
pub mod kvm;
pub mod memory;
pub mod runner;
pub mod seccomp;
pub mod vcpu;
pub mod vm;
pub mod vmm;
