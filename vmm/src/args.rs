//! Command-line flags. `--config FILE` is read first; every other flag
//! overrides the file's value.

use std::path::PathBuf;

use crate::config::{
    ConfigError, ConsoleOutput, FsConfig, MacAddr, NetConfig, VmConfig, VsockConfig,
};

/// Usage text for `--help`.
pub const USAGE: &str = "\
usage: husk-vmm [--config vm.json] [flags]
  --kernel PATH          uncompressed ELF vmlinux with a PVH entry note
  --initrd PATH          uncompressed newc cpio
  --cmdline WORDS        words appended to the kernel command line
  --vcpus N              (default 1)
  --mem-mib N            guest RAM in MiB (default 128)
  --cpu-profile P        host | compat | auto (default auto)
  --console PATH|stdout|off
  --vsock-uds PATH       hybrid vsock unix socket (guest cid 3)
  --vsock-cid N
  --fs-socket PATH       virtiofsd vhost-user socket
  --fs-tag TAG           (default husk)
  --tap NAME             tap device for virtio-net
  --netns PATH           network namespace in which to open the tap
  --mac MAC              the guest NIC's MAC address (default: random)
  --control-socket PATH  unix socket for ping/pause/resume/shutdown/metrics
  --no-seccomp           DEBUG ONLY: run without seccomp filters
";

/// What the command line asked for.
#[derive(Debug)]
pub enum Command {
    Help,
    Run(Box<VmConfig>),
}

/// Parses `args` (without the program name).
pub fn parse(args: &[String]) -> Result<Command, ConfigError> {
    let mut cfg = VmConfig::default();
    if let Some(i) = args.iter().position(|a| a == "--config") {
        let path = args
            .get(i + 1)
            .ok_or_else(|| ConfigError::MissingValue("--config".into()))?;
        cfg = VmConfig::from_file(path.as_ref())?;
    }
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let flag = flag.as_str();
        if flag == "--help" || flag == "-h" {
            return Ok(Command::Help);
        }
        if flag == "--no-seccomp" {
            cfg.no_seccomp = true;
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| ConfigError::MissingValue(flag.into()))?;
        apply(&mut cfg, flag, value)?;
    }
    Ok(Command::Run(Box::new(cfg)))
}

fn apply(cfg: &mut VmConfig, flag: &str, value: &str) -> Result<(), ConfigError> {
    let path = || PathBuf::from(value);
    match flag {
        "--config" => {}
        "--kernel" => cfg.kernel = path(),
        "--initrd" => cfg.initrd = Some(path()),
        "--cmdline" => cfg.cmdline = value.to_string(),
        "--vcpus" => cfg.vcpus = number(flag, value)?,
        "--mem-mib" => cfg.mem_mib = number(flag, value)?,
        "--cpu-profile" => {
            cfg.cpu_profile = serde_json::from_value(serde_json::Value::String(value.into()))
                .map_err(|_| bad(flag, value, "expected host, compat or auto"))?
        }
        "--console" => {
            cfg.console = match value {
                "stdout" => ConsoleOutput::Stdout,
                "off" => ConsoleOutput::Off,
                _ => ConsoleOutput::File(path()),
            }
        }
        "--vsock-uds" => {
            let cid = cfg.vsock.as_ref().map_or(3, |v| v.cid);
            cfg.vsock = Some(VsockConfig { uds: path(), cid });
        }
        "--vsock-cid" => {
            let cid = number(flag, value)?;
            match &mut cfg.vsock {
                Some(v) => v.cid = cid,
                None => return Err(bad(flag, value, "give --vsock-uds first")),
            }
        }
        "--fs-socket" => {
            let tag = cfg.fs.as_ref().map_or("husk".into(), |f| f.tag.clone());
            cfg.fs = Some(FsConfig {
                socket: path(),
                tag,
            });
        }
        "--fs-tag" => match &mut cfg.fs {
            Some(f) => f.tag = value.to_string(),
            None => return Err(bad(flag, value, "give --fs-socket first")),
        },
        "--tap" => {
            let (netns, mac) = cfg
                .net
                .as_ref()
                .map_or((None, None), |n| (n.netns.clone(), n.mac));
            cfg.net = Some(NetConfig {
                tap: value.to_string(),
                netns,
                mac,
            });
        }
        "--mac" => match &mut cfg.net {
            Some(n) => n.mac = Some(value.parse::<MacAddr>().map_err(|e| bad(flag, value, &e))?),
            None => return Err(bad(flag, value, "give --tap first")),
        },
        "--netns" => match &mut cfg.net {
            Some(n) => n.netns = Some(path()),
            None => return Err(bad(flag, value, "give --tap first")),
        },
        "--control-socket" => cfg.control_socket = Some(path()),
        _ => return Err(ConfigError::UnknownFlag(flag.to_string())),
    }
    Ok(())
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| bad(flag, value, "expected a number"))
}

fn bad(flag: &str, value: &str, why: &str) -> ConfigError {
    ConfigError::BadValue {
        flag: flag.into(),
        value: value.into(),
        why: why.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ProfileChoice;

    fn run(args: &[&str]) -> Result<VmConfig, ConfigError> {
        let v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&v)? {
            Command::Run(c) => Ok(*c),
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn flags_fill_the_config() {
        let c = run(&[
            "--kernel",
            "/k",
            "--vcpus",
            "2",
            "--mem-mib",
            "256",
            "--cpu-profile",
            "host",
            "--vsock-uds",
            "/v.sock",
            "--fs-socket",
            "/fs.sock",
            "--fs-tag",
            "t",
            "--console",
            "off",
            "--no-seccomp",
        ])
        .unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!((c.vcpus, c.mem_mib), (2, 256));
        assert_eq!(c.cpu_profile, ProfileChoice::Host);
        assert_eq!(c.vsock.unwrap().uds, PathBuf::from("/v.sock"));
        assert_eq!(c.fs.unwrap().tag, "t");
        assert_eq!(c.console, ConsoleOutput::Off);
        assert!(c.no_seccomp);
    }

    #[test]
    fn flags_override_the_file() {
        let p = std::env::temp_dir().join(format!("husk-vmm-args-{}.json", std::process::id()));
        std::fs::write(&p, r#"{"kernel":"/file-k","mem_mib":64}"#).unwrap();
        let c = run(&["--config", p.to_str().unwrap(), "--mem-mib", "96"]).unwrap();
        assert_eq!(c.kernel, PathBuf::from("/file-k"));
        assert_eq!(c.mem_mib, 96);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(matches!(
            run(&["--bogus", "1"]),
            Err(ConfigError::UnknownFlag(_))
        ));
        assert!(matches!(
            run(&["--kernel"]),
            Err(ConfigError::MissingValue(_))
        ));
        assert!(matches!(
            run(&["--vcpus", "two"]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["--cpu-profile", "fast"]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["--mac", "0a:58:0a:58:00:05"]),
            Err(ConfigError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["--tap", "t0", "--mac", "0a:58:0a:58:00"]),
            Err(ConfigError::BadValue { .. })
        ));
    }

    #[test]
    fn tap_netns_and_mac() {
        let c = run(&[
            "--tap",
            "t0",
            "--mac",
            "0a:58:0a:58:00:05",
            "--netns",
            "/run/netns/x",
        ])
        .unwrap();
        let n = c.net.unwrap();
        assert_eq!(n.tap, "t0");
        assert_eq!(n.mac.unwrap().0, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        assert_eq!(n.netns.unwrap(), PathBuf::from("/run/netns/x"));
    }
}
