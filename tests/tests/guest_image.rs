//! The guest image built by `guest-image/build.sh`: its kernel config carries
//! every option the agent and the VMM rely on, its initrd is reproducible and
//! holds the static agent as `/init`, an unchanged kernel comes from the cache,
//! and the kernel + initrd boot under QEMU's microvm machine to the agent's
//! start line.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use husk_testutil::{find_on_path, kvm_available, require};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn guest_dir() -> PathBuf {
    repo_root().join("target/guest")
}

/// The built image, or `None` (skipped / failed via `require`) when absent.
fn built(file: &str) -> Option<PathBuf> {
    let path = guest_dir().join(file);
    require(
        path.is_file(),
        &format!("{} (run guest-image/build.sh)", path.display()),
    )
    .then_some(path)
}

/// Options the agent (containers: namespaces, cgroup v2, seccomp, overlayfs,
/// ptys, mqueue) and the VMM (PVH boot, virtio-mmio devices, serial console)
/// rely on.
const REQUIRED: &[&str] = &[
    "CONFIG_64BIT",
    "CONFIG_SMP",
    "CONFIG_PVH",
    "CONFIG_KVM_GUEST",
    "CONFIG_PARAVIRT",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_SERIAL_8250",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_PRINTK",
    "CONFIG_DEVTMPFS",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    "CONFIG_TMPFS",
    "CONFIG_BINFMT_ELF",
    "CONFIG_BINFMT_SCRIPT",
    "CONFIG_FUTEX",
    "CONFIG_EPOLL",
    "CONFIG_SIGNALFD",
    "CONFIG_TIMERFD",
    "CONFIG_EVENTFD",
    "CONFIG_VIRTIO",
    "CONFIG_VIRTIO_MMIO",
    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
    "CONFIG_VIRTIO_BLK",
    "CONFIG_VIRTIO_NET",
    "CONFIG_HW_RANDOM_VIRTIO",
    "CONFIG_FUSE_FS",
    "CONFIG_VIRTIO_FS",
    "CONFIG_VSOCKETS",
    "CONFIG_VIRTIO_VSOCKETS",
    "CONFIG_NET",
    "CONFIG_UNIX",
    "CONFIG_INET",
    "CONFIG_OVERLAY_FS",
    "CONFIG_EXT4_FS",
    "CONFIG_NAMESPACES",
    "CONFIG_UTS_NS",
    "CONFIG_IPC_NS",
    "CONFIG_USER_NS",
    "CONFIG_PID_NS",
    "CONFIG_NET_NS",
    "CONFIG_SYSVIPC",
    "CONFIG_POSIX_MQUEUE",
    "CONFIG_CGROUPS",
    "CONFIG_CGROUP_SCHED",
    "CONFIG_FAIR_GROUP_SCHED",
    "CONFIG_CFS_BANDWIDTH",
    "CONFIG_MEMCG",
    "CONFIG_CGROUP_PIDS",
    "CONFIG_CPUSETS",
    "CONFIG_BLK_CGROUP",
    "CONFIG_CGROUP_FREEZER",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_CGROUP_BPF",
    "CONFIG_SECCOMP",
    "CONFIG_SECCOMP_FILTER",
    "CONFIG_UNIX98_PTYS",
    "CONFIG_MULTIUSER",
];

/// Options that must stay off: modules (everything is built in) and the
/// boot-time costs TESTING.md measured.
const FORBIDDEN: &[&str] = &[
    "CONFIG_MODULES",
    "CONFIG_LEGACY_PTYS",
    "CONFIG_VT",
    "CONFIG_PCI",
    "CONFIG_RANDOMIZE_BASE",
];

fn config_value<'a>(config: &'a str, opt: &str) -> Option<&'a str> {
    config
        .lines()
        .find_map(|l| l.strip_prefix(opt).and_then(|rest| rest.strip_prefix('=')))
}

#[test]
fn kernel_config_has_every_option_the_agent_and_vmm_need() {
    let Some(path) = built("config") else { return };
    let config = std::fs::read_to_string(&path).expect("read kernel config");
    let missing: Vec<String> = REQUIRED
        .iter()
        .filter(|o| config_value(&config, o) != Some("y"))
        .map(|o| format!("{o}={:?}", config_value(&config, o)))
        .collect();
    assert!(
        missing.is_empty(),
        "not =y in {}: {missing:?}",
        path.display()
    );
    let present: Vec<&&str> = FORBIDDEN
        .iter()
        .filter(|o| config_value(&config, o).is_some())
        .collect();
    assert!(present.is_empty(), "must be unset: {present:?}");
    assert_eq!(
        config_value(&config, "CONFIG_LOCALVERSION"),
        Some("\"-husk\"")
    );
    assert_eq!(config_value(&config, "CONFIG_HZ"), Some("100"));
}

/// One newc cpio entry.
struct CpioEntry {
    name: String,
    mode: u32,
    uid: u32,
    mtime: u32,
    data: Vec<u8>,
}

fn parse_newc(bytes: &[u8]) -> Vec<CpioEntry> {
    let field = |at: usize, i: usize| -> u32 {
        let s = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).expect("hex field");
        u32::from_str_radix(s, 16).expect("hex field")
    };
    let align = |n: usize| (n + 3) & !3;
    let mut at = 0;
    let mut entries = Vec::new();
    loop {
        assert_eq!(&bytes[at..at + 6], b"070701", "newc magic at offset {at}");
        let (size, namesize) = (field(at, 6) as usize, field(at, 11) as usize);
        let name_at = at + 110;
        let name =
            String::from_utf8(bytes[name_at..name_at + namesize - 1].to_vec()).expect("name");
        let data_at = align(name_at + namesize);
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push(CpioEntry {
            name,
            mode: field(at, 1),
            uid: field(at, 2),
            mtime: field(at, 5),
            data: bytes[data_at..data_at + size].to_vec(),
        });
        at = align(data_at + size);
    }
}

#[test]
fn initrd_holds_the_static_agent_as_init_and_is_reproducible() {
    let Some(path) = built("initrd.cpio") else {
        return;
    };
    let bytes = std::fs::read(&path).expect("read initrd");
    let entries = parse_newc(&bytes);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are written in sorted order");
    for e in &entries {
        assert_eq!((e.uid, e.mtime), (0, 0), "{}: owner 0, mtime 0", e.name);
    }
    let init = entries
        .iter()
        .find(|e| e.name == "init")
        .expect("/init in the initrd");
    assert_eq!(init.mode, 0o100755, "/init is an executable regular file");
    assert_eq!(&init.data[..4], b"\x7fELF", "/init is an ELF binary");
    assert!(
        !init
            .data
            .windows(b"/lib64/ld-linux".len())
            .any(|w| w == b"/lib64/ld-linux"),
        "/init is static (no dynamic loader named)"
    );
    let console = entries
        .iter()
        .find(|e| e.name == "dev/console")
        .expect("/dev/console");
    assert_eq!(
        console.mode & 0o170000,
        0o020000,
        "/dev/console is a char device"
    );

    // Same input, same bytes: rebuild it from the extracted /init.
    let dir = std::env::temp_dir().join(format!("husk-initrd-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("init"), &init.data).expect("write init");
    let status = Command::new("python3")
        .arg(repo_root().join("guest-image/mkinitrd.py"))
        .arg(dir.join("init"))
        .arg(dir.join("again.cpio"))
        .status()
        .expect("run python3 guest-image/mkinitrd.py");
    let again = std::fs::read(dir.join("again.cpio"));
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    assert!(status.success(), "mkinitrd.py failed");
    assert!(
        again.expect("rebuilt initrd") == bytes,
        "rebuilding the initrd gave different bytes"
    );
}

#[test]
fn unchanged_kernel_is_taken_from_the_cache_in_seconds() {
    let Some(vmlinux) = built("vmlinux") else {
        return;
    };
    let out = std::env::temp_dir().join(format!("husk-kernel-cache-test-{}", std::process::id()));
    let start = Instant::now();
    let output = Command::new(repo_root().join("guest-image/build.sh"))
        .args(["--kernel-only", "--cached-only", "--out"])
        .arg(&out)
        .output()
        .expect("run guest-image/build.sh");
    let took = start.elapsed();
    let rebuilt = std::fs::read(out.join("vmlinux"));
    let _ = std::fs::remove_dir_all(&out);
    if output.status.code() == Some(3) {
        require(
            false,
            "the guest kernel in the build cache (run guest-image/build.sh)",
        );
        return;
    }
    assert!(
        output.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        took < Duration::from_secs(30),
        "cached kernel took {took:?}"
    );
    let original = std::fs::read(&vmlinux).expect("read vmlinux");
    assert!(
        rebuilt.expect("vmlinux from the cache") == original,
        "cache gave another kernel"
    );
}

/// True on an emulating nested KVM host ("PVM", see TESTING.md).
fn emulating_kvm_host() -> bool {
    std::fs::read_to_string("/sys/module/kvm_pvm/parameters/pvm_native")
        .map(|v| v.trim() == "Y")
        .unwrap_or(false)
}

/// Kills the VM when the test ends, however it ends.
struct Vm(Child);

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boot_args(vmlinux: &Path, initrd: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("guest-image/boot-args"))
        .expect("read guest-image/boot-args");
    let section = if emulating_kvm_host() {
        "compat"
    } else {
        "plain"
    };
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("guest-image/boot-args has no {key}="))
            .to_string()
    };
    let cmdline = value(&format!("{section}_cmdline"));
    let cpu = value(&format!("{section}_qemu_cpu"));
    let mut args: Vec<String> = [
        "-M",
        "microvm,acpi=off,x-option-roms=off,rtc=off,pic=off,pit=off",
        "-enable-kvm",
        "-cpu",
        &cpu,
        "-m",
        "128M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-append",
        &cmdline,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["-kernel".into(), vmlinux.display().to_string()]);
    args.extend(["-initrd".into(), initrd.display().to_string()]);
    args
}

#[test]
fn kernel_and_initrd_boot_to_the_agent_under_qemu_microvm() {
    let Some(vmlinux) = built("vmlinux") else {
        return;
    };
    let Some(initrd) = built("initrd.cpio") else {
        return;
    };
    if !require(kvm_available(), "/dev/kvm") {
        return;
    }
    let Some(qemu) = find_on_path("qemu-system-x86_64") else {
        require(
            false,
            "qemu-system-x86_64 (apt-get install qemu-system-x86)",
        );
        return;
    };
    let timeout = Duration::from_secs(
        std::env::var("HUSK_GUEST_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    );
    let mut vm = Vm(Command::new(qemu)
        .args(boot_args(&vmlinux, &initrd))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu"));
    let (tx, rx) = mpsc::channel();
    let stdout = vm.0.stdout.take().expect("qemu stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut console = Vec::new();
    let mut agent_line = None;
    while agent_line.is_none() {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                eprintln!("guest: {line}");
                if line.contains("husk-agent ") && line.contains(" started: kernel ") {
                    agent_line = Some(line.clone());
                }
                console.push(line);
            }
            Err(_) => break,
        }
    }
    let booted_in = start.elapsed();
    drop(vm);
    let _ = reader.join();
    let Some(agent_line) = agent_line else {
        panic!(
            "no agent start line within {timeout:?}; console:\n{}",
            console.join("\n")
        );
    };
    eprintln!("agent started after {booted_in:?}");
    assert!(
        console
            .iter()
            .any(|l| l.contains("Run /init as init process")),
        "the kernel ran /init from the initrd"
    );
    let release = agent_line
        .split(" started: kernel ")
        .nth(1)
        .expect("release after the marker")
        .trim();
    assert!(
        release.ends_with("-husk"),
        "uname -r in the guest: {release:?}"
    );
    assert!(
        release.starts_with("6.1."),
        "uname -r in the guest: {release:?}"
    );
    let version = agent_line
        .split("husk-agent ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("agent version");
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "the workspace's agent is /init"
    );
}

#[test]
fn newc_parser_reads_what_mkinitrd_writes() {
    // Guards the parser the initrd test relies on, without a built image.
    let dir = std::env::temp_dir().join(format!("husk-newc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("agent"), b"\x7fELF-not-really").expect("write agent");
    let status = Command::new("python3")
        .arg(repo_root().join("guest-image/mkinitrd.py"))
        .arg(dir.join("agent"))
        .arg(dir.join("out.cpio"))
        .status();
    let mut bytes = Vec::new();
    let opened = std::fs::File::open(dir.join("out.cpio")).map(|mut f| f.read_to_end(&mut bytes));
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
    if !require(status.is_ok(), "python3") {
        return;
    }
    assert!(opened.is_ok(), "mkinitrd.py wrote no archive");
    assert_eq!(bytes.len() % 512, 0, "archive padded to 512-byte blocks");
    let entries = parse_newc(&bytes);
    let init = entries
        .iter()
        .find(|e| e.name == "init")
        .expect("init entry");
    assert_eq!(init.data, b"\x7fELF-not-really");
    for d in ["dev", "proc", "sys", "run", "tmp"] {
        let e = entries
            .iter()
            .find(|e| e.name == d)
            .unwrap_or_else(|| panic!("/{d}"));
        assert_eq!(e.mode & 0o170000, 0o040000, "/{d} is a directory");
    }
}
