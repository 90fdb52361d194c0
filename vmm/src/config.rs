//! The VM configuration: a JSON file and/or command-line flags, validated
//! before anything touches `/dev/kvm`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpu::ProfileChoice;

/// Smallest guest RAM we accept: a minimal kernel plus initrd needs this much.
pub const MIN_MEM_MIB: u32 = 32;
/// Guest RAM must end below the MMIO hole at 3 GiB.
pub const MAX_MEM_MIB: u32 = 3072;
/// vCPU count limit (the MP table and the APIC ids we hand out).
pub const MAX_VCPUS: u8 = 32;
/// virtio-fs tags are at most 36 bytes (virtio spec, `struct virtio_fs_config`).
pub const MAX_FS_TAG_LEN: usize = 36;

/// Errors in the configuration, each saying what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    ReadFile(PathBuf, #[source] std::io::Error),
    #[error("config file {0} is not valid JSON for husk-vmm: {1}")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("unknown flag {0}; see husk-vmm --help")]
    UnknownFlag(String),
    #[error("flag {0} needs a value")]
    MissingValue(String),
    #[error("flag {flag}: invalid value {value:?}: {why}")]
    BadValue {
        flag: String,
        value: String,
        why: String,
    },
    #[error("no kernel given; pass --kernel <vmlinux> or set \"kernel\" in the config")]
    NoKernel,
    #[error("kernel {0} not found; build it with guest-image/build.sh or pass another --kernel")]
    KernelMissing(PathBuf),
    #[error("kernel {0} is not an uncompressed ELF vmlinux (bad magic); pass the vmlinux, not a bzImage")]
    KernelNotElf(PathBuf),
    #[error("initrd {0} not found; build it or drop --initrd")]
    InitrdMissing(PathBuf),
    #[error("memory {0} MiB is too small; give at least {MIN_MEM_MIB} MiB")]
    MemoryTooSmall(u32),
    #[error("memory {0} MiB is too large; at most {MAX_MEM_MIB} MiB is supported")]
    MemoryTooLarge(u32),
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    BadVcpus(u8),
    #[error(
        "{what} socket path {path} already exists; is another husk-vmm running? remove it first"
    )]
    SocketExists { what: &'static str, path: PathBuf },
    #[error("virtio-fs vhost-user socket {0} does not exist; start virtiofsd first")]
    FsSocketMissing(PathBuf),
    #[error("virtio-fs tag {0:?} must be 1 to {MAX_FS_TAG_LEN} bytes")]
    BadFsTag(String),
    #[error("tap name {0:?} must be 1 to 15 bytes")]
    BadTapName(String),
    #[error("network namespace {0} does not exist; create it first (ip netns add)")]
    NetnsMissing(PathBuf),
    #[error("vsock guest cid {0} is reserved; use 3 or higher")]
    BadCid(u32),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleOutput {
    /// The VMM's stdout.
    #[default]
    Stdout,
    /// Discard the console.
    Off,
    /// Append to this file.
    #[serde(untagged)]
    File(PathBuf),
}

/// Hybrid vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockConfig {
    /// Unix socket the host connects to (`CONNECT <port>`); guest-initiated
    /// connections go to `<uds>_<port>`.
    pub uds: PathBuf,
    /// The guest's context id.
    #[serde(default = "default_cid")]
    pub cid: u32,
}

fn default_cid() -> u32 {
    3
}

/// virtio-fs device served by a vhost-user backend (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsConfig {
    pub socket: PathBuf,
    #[serde(default = "default_tag")]
    pub tag: String,
}

fn default_tag() -> String {
    "husk".to_string()
}

/// virtio-net device on a tap interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    pub tap: String,
    /// Network namespace (e.g. `/var/run/netns/x`) in which to open the tap.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The guest NIC's MAC address ("0a:58:0a:58:00:05", e.g. the CNI
    /// veth's); a random locally administered one when absent.
    #[serde(default)]
    pub mac: Option<MacAddr>,
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 == 1 {
            return Err(format!("{s} is a multicast address, not a NIC's"));
        }
        Ok(MacAddr(mac))
    }
}

impl TryFrom<String> for MacAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Everything husk-vmm needs to start one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(default)]
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Words appended to the kernel command line the VMM builds.
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_mem")]
    pub mem_mib: u32,
    #[serde(default)]
    pub cpu_profile: ProfileChoice,
    #[serde(default)]
    pub console: ConsoleOutput,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub fs: Option<FsConfig>,
    #[serde(default)]
    pub net: Option<NetConfig>,
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Debug only: run without seccomp filters.
    #[serde(default)]
    pub no_seccomp: bool,
}

fn default_vcpus() -> u8 {
    1
}
fn default_mem() -> u32 {
    128
}

impl Default for VmConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("empty config parses")
    }
}

impl VmConfig {
    /// Reads a JSON config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::ReadFile(path.into(), e))?;
        serde_json::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), e))
    }

    /// Checks everything that can be checked before creating the VM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        check_elf(&self.kernel)?;
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall(self.mem_mib));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::MemoryTooLarge(self.mem_mib));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::BadVcpus(self.vcpus));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 {
                return Err(ConfigError::BadCid(v.cid));
            }
            check_free("vsock", &v.uds)?;
        }
        if let Some(c) = &self.control_socket {
            check_free("control", c)?;
        }
        if let Some(n) = &self.net {
            if n.tap.is_empty() || n.tap.len() > 15 || n.tap.contains(['/', '\0', ' ']) {
                return Err(ConfigError::BadTapName(n.tap.clone()));
            }
            if let Some(ns) = &n.netns {
                if !ns.exists() {
                    return Err(ConfigError::NetnsMissing(ns.clone()));
                }
            }
        }
        if let Some(fs) = &self.fs {
            if fs.tag.is_empty() || fs.tag.len() > MAX_FS_TAG_LEN {
                return Err(ConfigError::BadFsTag(fs.tag.clone()));
            }
            if !fs.socket.exists() {
                return Err(ConfigError::FsSocketMissing(fs.socket.clone()));
            }
        }
        Ok(())
    }
}

fn check_elf(path: &Path) -> Result<(), ConfigError> {
    let mut f =
        std::fs::File::open(path).map_err(|_| ConfigError::KernelMissing(path.to_path_buf()))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic) {
        Ok(()) if &magic == b"\x7fELF" => Ok(()),
        _ => Err(ConfigError::KernelNotElf(path.to_path_buf())),
    }
}

fn check_free(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.symlink_metadata().is_ok() {
        return Err(ConfigError::SocketExists {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_file(dir: &Path) -> PathBuf {
        let p = dir.join("vmlinux");
        std::fs::write(&p, b"\x7fELF\x02\x01\x01rest").unwrap();
        p
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-vmm-cfg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn json_defaults_and_fields() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel":"/k","mem_mib":256,"cpu_profile":"compat","console":"/tmp/c.log",
                "vsock":{"uds":"/run/v.sock"},"fs":{"socket":"/run/fs.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.mem_mib, 256);
        assert_eq!(c.cpu_profile, ProfileChoice::Compat);
        assert_eq!(c.console, ConsoleOutput::File("/tmp/c.log".into()));
        assert_eq!(c.vsock.unwrap().cid, 3);
        assert_eq!(c.fs.unwrap().tag, "husk");
        let d = VmConfig::default();
        assert_eq!(d.console, ConsoleOutput::Stdout);
        assert_eq!(d.cpu_profile, ProfileChoice::Auto);
    }

    #[test]
    fn unknown_json_field_is_rejected() {
        assert!(serde_json::from_str::<VmConfig>(r#"{"kernal":"/k"}"#).is_err());
    }

    #[test]
    fn missing_and_non_elf_kernel() {
        let d = tmpdir("elf");
        let mut c = VmConfig::default();
        assert!(matches!(c.validate(), Err(ConfigError::NoKernel)));
        c.kernel = d.join("nope");
        assert!(matches!(c.validate(), Err(ConfigError::KernelMissing(_))));
        std::fs::write(d.join("bz"), b"MZ\x00\x00notelf").unwrap();
        c.kernel = d.join("bz");
        let e = c.validate().unwrap_err();
        assert!(matches!(e, ConfigError::KernelNotElf(_)));
        assert!(e.to_string().contains("not an uncompressed ELF"));
        c.kernel = elf_file(&d);
        c.validate().unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn memory_and_vcpu_limits() {
        let d = tmpdir("mem");
        let mut c = VmConfig {
            kernel: elf_file(&d),
            mem_mib: 16,
            ..Default::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooSmall(16))));
        c.mem_mib = 4096;
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooLarge(_))));
        c.mem_mib = 128;
        c.vcpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::BadVcpus(0))));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn existing_socket_paths_are_refused() {
        let d = tmpdir("sock");
        let existing = d.join("vsock.sock");
        std::fs::write(&existing, b"").unwrap();
        let mut c = VmConfig {
            kernel: elf_file(&d),
            vsock: Some(VsockConfig {
                uds: existing.clone(),
                cid: 3,
            }),
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        c.vsock = None;
        c.control_socket = Some(existing);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::SocketExists {
                what: "control",
                ..
            })
        ));
        c.control_socket = None;
        c.fs = Some(FsConfig {
            socket: d.join("missing-fs.sock"),
            tag: "husk".into(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::FsSocketMissing(_))));
        c.fs = None;
        c.net = Some(NetConfig {
            tap: "much-too-long-tap-name".into(),
            netns: None,
            mac: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::BadTapName(_))));
        c.net = Some(NetConfig {
            tap: "tap0".into(),
            netns: Some(d.join("no-such-netns")),
            mac: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::NetnsMissing(_))));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn mac_addresses_parse_and_print() {
        let m: MacAddr = "0a:58:0A:58:00:05".parse().unwrap();
        assert_eq!(m.0, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        assert_eq!(m.to_string(), "0a:58:0a:58:00:05");
        for bad in [
            "",
            "0a:58:0a:58:00",
            "0a:58:0a:58:00:05:06",
            "0a-58-0a-58-00-05",
            "zz:58:0a:58:00:05",
            "a:58:0a:58:00:05",
            "01:00:5e:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} accepted");
        }
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, "\"0a:58:0a:58:00:05\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), m);
    }
}
