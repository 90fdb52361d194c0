//! `husk.toml`: which sandbox the shim runs and where it keeps its state.
//!
//! The path comes from containerd's runtime option `ConfigPath` (see
//! [`crate::options`]), else [`DEFAULT_CONFIG_PATH`]. Every key is documented
//! in `config/husk.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the shim looks when containerd passes no `ConfigPath`.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/husk.toml";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}; create it or point ConfigPath at one")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
}

/// Which sandbox implementation runs the containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Containers run on the host through a runc-compatible binary.
    Runc,
    /// Each pod runs in its own KVM microVM.
    #[default]
    Vm,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    pub log_level: String,
    /// Per-sandbox runtime state lives in `<state_root>/<sandbox-id>/`.
    pub state_root: PathBuf,
    pub runc: RuncConfig,
    pub vm: VmConfig,
}

/// `[runc]`: the host runtime used when `mode = "runc"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuncConfig {
    /// The runc-CLI compatible binary: a path, or a name searched on `PATH`.
    pub binary: PathBuf,
    /// runc's `--root`; the containerd namespace is appended.
    pub root: PathBuf,
    /// Pass `--systemd-cgroup` to runc.
    pub systemd_cgroup: bool,
}

/// `[vm]`: the microVM of each pod when `mode = "vm"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// husk-vmm: a path, or a name searched next to the shim binary, then on `PATH`.
    pub vmm: PathBuf,
    /// virtiofsd: a path, or a name searched like `vmm` (and in `~/.cargo/bin`).
    pub virtiofsd: PathBuf,
    /// Uncompressed guest kernel (ELF vmlinux with a PVH note).
    pub kernel: PathBuf,
    /// The guest initrd (newc cpio) whose `/init` is husk-agent.
    pub initrd: PathBuf,
    /// vCPUs of a pod without CRI CPU limits.
    pub vcpus: u32,
    /// Upper bound of vCPUs after adding the pod's CPU limit.
    pub max_vcpus: u32,
    /// Guest RAM in MiB on top of the pod's memory limit (all of it without one).
    pub mem_mib: u32,
    /// `host`, `compat` or `auto` (see husk-vmm `--cpu-profile`).
    pub cpu_profile: String,
    /// Extra words for the guest kernel command line.
    pub kernel_params: String,
    /// How long to wait for the guest agent to answer after starting the VM.
    pub boot_timeout_secs: u64,
    /// virtiofsd `--cache`: `auto`, `always` or `never`.
    pub virtiofs_cache: String,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            vmm: PathBuf::from("husk-vmm"),
            virtiofsd: PathBuf::from("virtiofsd"),
            kernel: PathBuf::from("/usr/share/husk/vmlinux"),
            initrd: PathBuf::from("/usr/share/husk/initrd.cpio"),
            vcpus: 1,
            max_vcpus: 1,
            mem_mib: 256,
            cpu_profile: "auto".to_string(),
            kernel_params: String::new(),
            boot_timeout_secs: 60,
            virtiofs_cache: "auto".to_string(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Vm,
            log_level: "info".to_string(),
            state_root: PathBuf::from("/run/husk"),
            runc: RuncConfig::default(),
            vm: VmConfig::default(),
        }
    }
}

impl Default for RuncConfig {
    fn default() -> Self {
        RuncConfig {
            binary: PathBuf::from("runc"),
            root: PathBuf::from("/run/husk/runc"),
            systemd_cgroup: false,
        }
    }
}

impl Config {
    /// Parses a configuration from TOML text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads `path`. A missing file at the default path yields the defaults
    /// (vm mode); a missing file that was asked for explicitly is an error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && path == Path::new(DEFAULT_CONFIG_PATH) =>
            {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.mode, Mode::Vm);
        assert_eq!(c.runc.binary, PathBuf::from("runc"));
    }

    #[test]
    fn parses_every_key() {
        let text = r#"
            mode = "vm"
            log_level = "debug"
            state_root = "/tmp/h"
            [runc]
            binary = "/usr/bin/crun"
            root = "/tmp/h/runc"
            systemd_cgroup = true
            [vm]
            vmm = "/opt/husk/husk-vmm"
            virtiofsd = "/usr/libexec/virtiofsd"
            kernel = "/k"
            initrd = "/i"
            vcpus = 2
            max_vcpus = 4
            mem_mib = 512
            cpu_profile = "compat"
            kernel_params = "quiet"
            boot_timeout_secs = 30
            virtiofs_cache = "never"
        "#;
        let c = Config::parse(text, Path::new("x")).unwrap();
        assert_eq!(c.mode, Mode::Vm);
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.state_root, PathBuf::from("/tmp/h"));
        assert_eq!(c.runc.binary, PathBuf::from("/usr/bin/crun"));
        assert_eq!(c.runc.root, PathBuf::from("/tmp/h/runc"));
        assert!(c.runc.systemd_cgroup);
        assert_eq!(c.vm.vmm, PathBuf::from("/opt/husk/husk-vmm"));
        assert_eq!(c.vm.virtiofsd, PathBuf::from("/usr/libexec/virtiofsd"));
        assert_eq!(c.vm.kernel, PathBuf::from("/k"));
        assert_eq!(c.vm.initrd, PathBuf::from("/i"));
        assert_eq!((c.vm.vcpus, c.vm.max_vcpus, c.vm.mem_mib), (2, 4, 512));
        assert_eq!(c.vm.cpu_profile, "compat");
        assert_eq!(c.vm.kernel_params, "quiet");
        assert_eq!(c.vm.boot_timeout_secs, 30);
        assert_eq!(c.vm.virtiofs_cache, "never");
    }

    #[test]
    fn shipped_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/husk.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn unknown_key_and_bad_mode_are_errors() {
        let e = Config::parse("moed = \"runc\"", Path::new("/x.toml")).unwrap_err();
        assert!(e.to_string().contains("/x.toml"), "{e}");
        assert!(Config::parse("mode = \"kvm\"", Path::new("x")).is_err());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(Path::new("/nonexistent/husk.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/husk.toml"), "{e}");
    }
}
