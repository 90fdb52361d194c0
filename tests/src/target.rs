//! What a test runs against: which containerd, which runtime, and the paths
//! `scripts/test-env.sh` gives them.

use std::fmt;
use std::path::PathBuf;

/// Root of everything `scripts/test-env.sh` creates at run time.
pub const TEST_RUN_DIR: &str = "/run/husk-test";

/// The two containerd releases the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// Debian bookworm's containerd 1.6 (task API v2, config version 2).
    V16,
    /// containerd 2.x from Debian unstable (task API v3, config version 3).
    V2,
}

impl Containerd {
    /// Short name used in directory names and test ids.
    pub fn label(self) -> &'static str {
        match self {
            Containerd::V16 => "1.6",
            Containerd::V2 => "2",
        }
    }

    /// This containerd's private directory under [`TEST_RUN_DIR`].
    pub fn dir(self) -> PathBuf {
        PathBuf::from(TEST_RUN_DIR).join(format!("containerd-{}", self.label()))
    }

    /// Its gRPC socket.
    pub fn socket(self) -> PathBuf {
        self.dir().join("containerd.sock")
    }

    /// The `ctr` binary of the same release.
    pub fn ctr_binary(self) -> PathBuf {
        match self {
            Containerd::V16 => PathBuf::from("/usr/bin/ctr"),
            Containerd::V2 => PathBuf::from("/opt/husk-test/containerd2/usr/bin/ctr"),
        }
    }
}

/// The runtime under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's own runc shim: the reference every test also passes on.
    RuncV2,
    /// husk's shim in host runc mode.
    HuskRunc,
    /// husk's shim in microVM mode (each pod in its own KVM guest).
    HuskVm,
}

impl Runtime {
    /// The containerd runtime type (`ctr run --runtime`).
    pub fn runtime_type(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "io.containerd.runc.v2",
            Runtime::HuskRunc | Runtime::HuskVm => "io.containerd.husk.v2",
        }
    }

    /// Short name for messages: the runtime type, plus the mode for husk.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "io.containerd.runc.v2",
            Runtime::HuskRunc => "io.containerd.husk.v2",
            Runtime::HuskVm => "io.containerd.husk.v2 (vm)",
        }
    }

    /// The CRI runtime handler configured by test-env.sh.
    pub fn cri_handler(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "runc",
            Runtime::HuskRunc => "husk-runc",
            Runtime::HuskVm => "husk",
        }
    }

    /// The shim binary containerd starts for this runtime.
    pub fn shim_binary_name(self) -> &'static str {
        match self {
            Runtime::RuncV2 => "containerd-shim-runc-v2",
            Runtime::HuskRunc | Runtime::HuskVm => "containerd-shim-husk-v2",
        }
    }

    /// True for husk (the runtime whose error codes the issue specifies).
    pub fn is_husk(self) -> bool {
        matches!(self, Runtime::HuskRunc | Runtime::HuskVm)
    }

    /// True for husk's microVM mode.
    pub fn is_vm(self) -> bool {
        self == Runtime::HuskVm
    }
}

/// One cell of the test matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Which containerd.
    pub containerd: Containerd,
    /// Which runtime.
    pub runtime: Runtime,
}

impl Target {
    /// A target.
    pub fn new(containerd: Containerd, runtime: Runtime) -> Self {
        Target {
            containerd,
            runtime,
        }
    }

    /// The husk config file test-env.sh wrote for this containerd and mode
    /// (`husk.toml` for vm mode, `husk-runc.toml` otherwise).
    pub fn husk_config(self) -> PathBuf {
        let file = if self.runtime.is_vm() {
            "husk.toml"
        } else {
            "husk-runc.toml"
        };
        self.containerd.dir().join(file)
    }

    /// husk's `state_root` in test-env.sh's config for this mode. vm mode
    /// keeps each pod's directory there (`<state_root>/<sandbox-id>/`, with
    /// unix sockets in it: hence the short path).
    pub fn husk_state_root(self) -> PathBuf {
        if self.runtime.is_vm() {
            PathBuf::from(TEST_RUN_DIR).join(format!("vm-{}", self.containerd.label()))
        } else {
            self.containerd.dir().join("husk")
        }
    }

    /// The directories where runc (containerd's runc root, husk's runc
    /// root) and husk (`state_root`) keep per-container state: nothing of a
    /// test may be left in them (as `<dir>/<id>` or `<dir>/<namespace>/<id>`).
    pub fn state_roots(self) -> Vec<PathBuf> {
        let d = self.containerd.dir();
        vec![
            d.join("runc"),
            d.join("husk-runc"),
            d.join("husk"),
            PathBuf::from(TEST_RUN_DIR).join(format!("vm-{}", self.containerd.label())),
        ]
    }

    /// Runtime flags for `ctr run`.
    pub fn ctr_runtime_args(self) -> Vec<String> {
        let mut args = vec!["--runtime".to_string(), self.runtime.runtime_type().into()];
        match self.runtime {
            Runtime::RuncV2 => {
                // containerd's runc shim keeps its state under the runc root
                // named by the namespace; keep it inside our test directory.
                args.push("--runc-root".into());
                args.push(self.containerd.dir().join("runc").display().to_string());
            }
            Runtime::HuskRunc | Runtime::HuskVm => {
                args.push("--runtime-config-path".into());
                args.push(self.husk_config().display().to_string());
            }
        }
        args
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "containerd {} / {}",
            self.containerd.label(),
            self.runtime.label()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_test_env_contract() {
        assert_eq!(
            Containerd::V16.socket(),
            PathBuf::from("/run/husk-test/containerd-1.6/containerd.sock")
        );
        assert_eq!(
            Containerd::V2.socket(),
            PathBuf::from("/run/husk-test/containerd-2/containerd.sock")
        );
    }

    #[test]
    fn husk_gets_its_config_path() {
        let t = Target::new(Containerd::V2, Runtime::HuskRunc);
        let args = t.ctr_runtime_args();
        assert_eq!(args[1], "io.containerd.husk.v2");
        assert_eq!(args[2], "--runtime-config-path");
        assert!(args[3].ends_with("containerd-2/husk-runc.toml"));
    }

    #[test]
    fn vm_mode_uses_the_husk_handler_and_config() {
        let t = Target::new(Containerd::V16, Runtime::HuskVm);
        assert_eq!(t.runtime.cri_handler(), "husk");
        assert!(t.ctr_runtime_args()[3].ends_with("containerd-1.6/husk.toml"));
        assert!(t.runtime.is_husk() && t.runtime.is_vm());
        assert!(!Runtime::HuskRunc.is_vm());
        // a 64-character CRI sandbox id plus /vsock.sock fits a unix socket path
        let sock = t.husk_state_root().join("a".repeat(64)).join("vsock.sock");
        assert!(sock.as_os_str().len() < 108, "{}", sock.display());
        assert!(t.state_roots().contains(&t.husk_state_root()));
    }
}
