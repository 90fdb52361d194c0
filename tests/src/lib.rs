//! Harness for the end-to-end tests: real containerd (1.6 and 2.x, started by
//! `scripts/test-env.sh up`), real runc, and the husk shim in runc mode, with
//! containerd's own `io.containerd.runc.v2` as the reference runtime; and
//! husk's microVM mode (real KVM, husk-vmm, virtiofsd, guest kernel, agent).
//!
//! Every test runs once per [`Target`] (containerd version × runtime) through
//! the [`matrix!`] macro (microVM tests: [`vm_matrix!`], once per containerd);
//! after each run [`Case`] checks that no shim, runc, container, husk-vmm or
//! virtiofsd process, no mount and no cgroup of the test is left.

pub mod case;
pub mod cmd;
pub mod cri;
pub mod ctr;
pub mod leftovers;
pub mod net;
pub mod target;
pub mod vm;

pub use case::Case;
pub use target::{Containerd, Runtime, Target};

/// Declares one `#[test]` per target for a test body `fn(&mut Case) -> anyhow::Result<()>`.
///
/// ```ignore
/// fn prints_output(case: &mut Case) -> anyhow::Result<()> { ... }
/// husk_e2e::matrix!(prints_output);
/// ```
#[macro_export]
macro_rules! matrix {
    ($body:ident) => {
        mod $body {
            use $crate::{Containerd, Runtime, Target};

            #[test]
            fn containerd16_runc_v2() {
                $crate::case::run(
                    Target::new(Containerd::V16, Runtime::RuncV2),
                    stringify!($body),
                    super::$body,
                );
            }

            #[test]
            fn containerd16_husk_runc() {
                $crate::case::run(
                    Target::new(Containerd::V16, Runtime::HuskRunc),
                    stringify!($body),
                    super::$body,
                );
            }

            #[test]
            fn containerd2_runc_v2() {
                $crate::case::run(
                    Target::new(Containerd::V2, Runtime::RuncV2),
                    stringify!($body),
                    super::$body,
                );
            }

            #[test]
            fn containerd2_husk_runc() {
                $crate::case::run(
                    Target::new(Containerd::V2, Runtime::HuskRunc),
                    stringify!($body),
                    super::$body,
                );
            }
        }
    };
}

/// Declares one `#[test]` per containerd release for a microVM test body
/// (husk in vm mode, CRI handler `husk`). The bodies run one at a time.
#[macro_export]
macro_rules! vm_matrix {
    ($body:ident) => {
        mod $body {
            use $crate::{Containerd, Runtime, Target};

            #[test]
            fn containerd16_husk_vm() {
                $crate::case::run(
                    Target::new(Containerd::V16, Runtime::HuskVm),
                    stringify!($body),
                    super::$body,
                );
            }

            #[test]
            fn containerd2_husk_vm() {
                $crate::case::run(
                    Target::new(Containerd::V2, Runtime::HuskVm),
                    stringify!($body),
                    super::$body,
                );
            }
        }
    };
}
