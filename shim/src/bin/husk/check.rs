//! `husk check`: one line per requirement, OK or FAIL with the fix.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use husk_shim::config::{Config, Mode};
use husk_shim::vm::binaries;

use crate::containerd;

const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The verdict on one requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
    pub fix: Option<String>,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Line {
    Line {
        what,
        ok: true,
        detail: detail.into(),
        fix: None,
    }
}

fn fail(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Line {
    Line {
        what,
        ok: false,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.ok { "OK  " } else { "FAIL" };
        write!(f, "{verdict} {:<11} {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            for (i, l) in fix.lines().enumerate() {
                let lead = if i == 0 { "fix: " } else { "     " };
                write!(f, "\n     {lead}{l}")?;
            }
        }
        Ok(())
    }
}

fn kvm() -> Line {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => {
            let pvm = Path::new("/sys/module/kvm_pvm").exists();
            let note = if pvm {
                " (nested PVM host: the compat CPU profile applies)"
            } else {
                ""
            };
            ok("kvm", format!("/dev/kvm opened read-write{note}"))
        }
        Err(e) => fail(
            "kvm",
            format!("cannot open /dev/kvm read-write: {e}"),
            "modprobe kvm_intel (or kvm_amd); add the user to the kvm group",
        ),
    }
}

fn magic(path: &Path, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open(path)?;
    let got = f.read(&mut buf)?;
    buf.truncate(got);
    Ok(buf)
}

const GUEST_FIX: &str = "run guest-image/build.sh and set [vm] kernel/initrd in husk.toml";

/// The guest kernel: an ELF file (husk-vmm loads the uncompressed vmlinux).
pub fn kernel(path: &Path) -> Line {
    match magic(path, 5) {
        Ok(m) if m.starts_with(b"\x7fELF") && m.get(4) == Some(&2) => {
            ok("kernel", format!("{} (ELF64)", path.display()))
        }
        Ok(_) => fail(
            "kernel",
            format!(
                "{} is not an ELF64 vmlinux (a bzImage will not do)",
                path.display()
            ),
            GUEST_FIX,
        ),
        Err(e) => fail("kernel", format!("{}: {e}", path.display()), GUEST_FIX),
    }
}

/// The initrd: a newc cpio archive, plain or compressed.
pub fn initrd(path: &Path) -> Line {
    let kind = match magic(path, 6) {
        Err(e) => return fail("initrd", format!("{}: {e}", path.display()), GUEST_FIX),
        Ok(m) if m.starts_with(b"07070") => "cpio",
        Ok(m) if m.starts_with(&[0x1f, 0x8b]) => "gzip",
        Ok(m) if m.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => "zstd",
        Ok(m) if m.starts_with(&[0xfd, b'7', b'z', b'X', b'Z']) => "xz",
        Ok(_) => {
            return fail(
                "initrd",
                format!("{} is not a cpio archive", path.display()),
                GUEST_FIX,
            )
        }
    };
    ok("initrd", format!("{} ({kind})", path.display()))
}

fn binary(what: &'static str, found: Result<PathBuf, binaries::NotFound>) -> Line {
    match found {
        Ok(p) => ok(what, p.display().to_string()),
        Err(e) => fail(
            what,
            format!("{} not found (looked in: {})", e.name.display(), e.looked),
            e.fix,
        ),
    }
}

/// The state root exists (or can be made) and takes a file.
pub fn state_root(dir: &Path) -> Line {
    let probe = dir.join(format!(".husk-check-{}", std::process::id()));
    let r = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .and_then(|()| std::fs::remove_file(&probe));
    match r {
        Ok(()) => ok("state_root", format!("{} writable", dir.display())),
        Err(e) => fail(
            "state_root",
            format!("{} not writable: {e}", dir.display()),
            "run as root, or set state_root in husk.toml to a writable directory",
        ),
    }
}

fn runc(cfg: &Config) -> Line {
    match husk_shim::runc::resolve_binary(&cfg.runc.binary) {
        Ok(bin) => {
            let version = Command::new(&bin)
                .arg("--version")
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default();
            ok("runc", format!("{} ({version})", bin.display()))
        }
        Err(e) => fail(
            "runc",
            e.to_string(),
            "apt-get install runc, or set [runc] binary in husk.toml",
        ),
    }
}

/// containerd's config has a husk runtime containerd reads.
pub fn containerd_config(path: &Path) -> Line {
    let add = |snippet: (&str, &str)| {
        format!(
            "add the husk runtimes ({}) to {} and restart containerd:\n{}",
            snippet.0,
            path.display(),
            snippet
                .1
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
        )
    };
    let report = match containerd::inspect(path) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                "containerd",
                format!("{e:#}"),
                format!(
                    "create it (`containerd config default > {}`), then {}",
                    path.display(),
                    add(("config/containerd-1.6.toml", containerd::SNIPPET_1_6))
                ),
            )
        }
    };
    let live: Vec<String> = report
        .runtimes
        .iter()
        .filter(|r| r.effective)
        .map(|r| match &r.config_path {
            Some(c) => format!("{} (ConfigPath {c})", r.name),
            None => r.name.clone(),
        })
        .collect();
    if !live.is_empty() {
        return ok(
            "containerd",
            format!("{}: runtime {}", path.display(), live.join(", ")),
        );
    }
    let ignored = if report.runtimes.is_empty() {
        String::new()
    } else {
        format!(
            " (runtime {} is under the plugin key of the other config version, which containerd ignores)",
            report.runtimes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    fail(
        "containerd",
        format!(
            "{} (version {}) has no runtime with runtime_type {}{ignored}",
            path.display(),
            report.version,
            containerd::RUNTIME_TYPE
        ),
        add(report.snippet()),
    )
}

/// Every check for `cfg`, in order.
pub fn lines(cfg: &Config, containerd_cfg: Option<&Path>) -> Vec<Line> {
    let mut out = Vec::new();
    match cfg.mode {
        Mode::Vm => {
            out.push(kvm());
            out.push(kernel(&cfg.vm.kernel));
            out.push(initrd(&cfg.vm.initrd));
            out.push(binary("husk-vmm", binaries::vmm(&cfg.vm)));
            out.push(binary("virtiofsd", binaries::virtiofsd(&cfg.vm)));
        }
        Mode::Runc => out.push(runc(cfg)),
    }
    out.push(state_root(&cfg.state_root));
    out.push(containerd_config(
        containerd_cfg.unwrap_or(Path::new(CONTAINERD_CONFIG)),
    ));
    out
}

/// Prints the report; returns whether everything passed.
pub fn run(cfg: &Config, config_path: &Path, containerd_cfg: Option<&Path>) -> bool {
    let cgroups = if husk_shim::cgroup::is_unified() {
        "v2"
    } else {
        "v1"
    };
    println!(
        "config: {} (mode {:?}, host cgroups {cgroups})",
        config_path.display(),
        cfg.mode
    );
    let lines = lines(cfg, containerd_cfg);
    for l in &lines {
        println!("{l}");
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        println!("ready");
    } else {
        println!("{failed} check(s) failed");
    }
    failed == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_must_be_elf64() {
        let t = tempfile::tempdir().unwrap();
        let elf = t.path().join("vmlinux");
        std::fs::write(&elf, b"\x7fELF\x02\x01\x01rest").unwrap();
        assert!(kernel(&elf).ok);
        let bz = t.path().join("bzImage");
        std::fs::write(&bz, b"MZ\x00\x00bzimage").unwrap();
        let l = kernel(&bz);
        assert!(!l.ok);
        assert!(
            l.to_string().contains("fix: run guest-image/build.sh"),
            "{l}"
        );
        let l = kernel(&t.path().join("missing"));
        assert!(!l.ok && l.detail.contains("No such file"), "{l}");
    }

    #[test]
    fn initrd_kinds() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("i");
        for (bytes, kind) in [
            (&b"070701000"[..], "cpio"),
            (&[0x1f, 0x8b, 8, 0][..], "gzip"),
        ] {
            std::fs::write(&p, bytes).unwrap();
            let l = initrd(&p);
            assert!(l.ok && l.detail.ends_with(&format!("({kind})")), "{l}");
        }
        std::fs::write(&p, b"hello").unwrap();
        assert!(!initrd(&p).ok);
    }

    #[test]
    fn state_root_probe() {
        let t = tempfile::tempdir().unwrap();
        let l = state_root(&t.path().join("a/b"));
        assert!(l.ok, "{l}");
        assert_eq!(std::fs::read_dir(t.path().join("a/b")).unwrap().count(), 0);
        let file = t.path().join("file");
        std::fs::write(&file, "").unwrap();
        let l = state_root(&file.join("sub"));
        assert!(!l.ok && l.fix.is_some(), "{l}");
    }

    #[test]
    fn containerd_fix_prints_the_snippet() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("config.toml");
        std::fs::write(&p, "version = 3\n").unwrap();
        let l = containerd_config(&p);
        assert!(!l.ok);
        let text = l.to_string();
        assert!(text.contains("config/containerd-2.toml"), "{text}");
        assert!(
            text.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.husk]"),
            "{text}"
        );
        std::fs::write(&p, format!("version = 3\n{}", containerd::SNIPPET_2)).unwrap();
        let l = containerd_config(&p);
        assert!(l.ok, "{l}");
        assert!(
            l.detail.contains("husk (ConfigPath /etc/husk/husk.toml)"),
            "{l}"
        );
        let l = containerd_config(&t.path().join("none.toml"));
        assert!(
            !l.ok && l.to_string().contains("containerd config default"),
            "{l}"
        );
    }

    #[test]
    fn a_line_with_a_fix_reads_well() {
        let l = fail("kvm", "cannot open /dev/kvm", "first\nsecond");
        assert_eq!(
            l.to_string(),
            "FAIL kvm         cannot open /dev/kvm\n     fix: first\n          second"
        );
        assert_eq!(ok("kvm", "fine").to_string(), "OK   kvm         fine");
    }
}
