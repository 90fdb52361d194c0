//! Helpers for the end-to-end tests: real containerd, runc, KVM.
