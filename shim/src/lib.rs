//! husk shim: containerd shim v2 task API over a `Sandbox` (microVM or host runc).
