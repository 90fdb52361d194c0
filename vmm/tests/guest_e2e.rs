//! A real guest end to end: the guest kernel boots our static test /init,
//! which reads a file from virtio-fs (virtiofsd), serves a host-initiated
//! vsock connection and makes a guest-initiated one, then resets; husk-vmm
//! exits 0. Slow on an emulating nested KVM (one boot, ~1-2 minutes).
//!
//! Kernel: `HUSK_GUEST_KERNEL`, else `<repo>/target/guest/vmlinux`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Boot budget; the guest on an emulating KVM needs 40-90 s to reach /init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn build_init(out: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-test/init.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let st = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
        ])
        .args(["-C", "strip=symbols", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .unwrap();
    assert!(st.success(), "building the test init failed");
}

/// Waits until the console shows `marker`; fails early if the VMM exits.
fn wait_console(console: &Path, marker: &str, vmm: &mut std::process::Child) -> String {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(marker) {
            return text;
        }
        if let Some(st) = vmm.try_wait().unwrap() {
            panic!("husk-vmm exited ({st}) before {marker:?}; console:\n{text}");
        }
        if Instant::now() > deadline {
            panic!("no {marker:?} within {BOOT_TIMEOUT:?}; console:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn guest_boots_uses_virtiofs_and_vsock_and_resets() {
    let kernel = guest_kernel();
    if !husk_testutil::require(
        kernel.is_some(),
        "guest kernel (HUSK_GUEST_KERNEL or target/guest/vmlinux)",
    ) || !kvm()
    {
        return;
    }
    let fsd_bin = virtiofsd();
    if !husk_testutil::require(fsd_bin.is_some(), "virtiofsd (cargo install virtiofsd)") {
        return;
    }
    let d = TempDir::new("e2e");
    let init = d.path("init");
    build_init(&init);
    let initrd = d.path("initrd.cpio");
    let init_bytes = std::fs::read(&init).unwrap();
    std::fs::write(
        &initrd,
        cpio(&[
            CpioEntry::Dir("dev"),
            CpioEntry::CharDev("dev/console", 5, 1),
            CpioEntry::File("init", &init_bytes, 0o755),
        ]),
    )
    .unwrap();
    let shared = d.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "hello-from-virtiofs\n").unwrap();
    let fs_sock = d.path("fs.sock");
    let _fsd = KillOnDrop(start_virtiofsd(&fsd_bin.unwrap(), &fs_sock, &shared));

    let vsock = d.path("vsock.sock");
    // Guest-initiated connections to port 5000 land here.
    let out_listener = UnixListener::bind(format!("{}_5000", vsock.display())).unwrap();
    let out_thread = std::thread::spawn(move || {
        let (mut s, _) = out_listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        s.write_all(format!("ack:{}\n", line.trim()).as_bytes())
            .unwrap();
        line.trim().to_string()
    });

    let console = d.path("console.log");
    let mut vmm = KillOnDrop(spawn_vmm(&[
        "--kernel",
        kernel.unwrap().to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--console",
        console.to_str().unwrap(),
        "--vsock-uds",
        vsock.to_str().unwrap(),
        "--fs-socket",
        fs_sock.to_str().unwrap(),
        "--mem-mib",
        "128",
    ]));
    let started = Instant::now();
    wait_console(&console, "E2E-LISTENING", &mut vmm.0);
    eprintln!("guest listening after {:?}", started.elapsed());

    // Host-initiated: CONNECT 1024 -> OK <port>, then bytes both ways.
    let mut s = UnixStream::connect(&vsock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"CONNECT 1024\n").unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut ok = String::new();
    r.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "handshake reply {ok:?}");
    s.write_all(b"ping\n").unwrap();
    let mut pong = String::new();
    r.read_line(&mut pong).unwrap();
    assert_eq!(pong, "pong:ping\n");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);

    assert_eq!(out_thread.join().unwrap(), "hello-from-guest");
    let text = wait_console(&console, "E2E-DONE", &mut vmm.0);
    let (code, err) = wait_exit(&mut vmm.0, 120);
    assert_eq!(code, 0, "stderr: {err}\nconsole:\n{text}");
    assert!(text.contains("E2E-FS:hello-from-virtiofs"), "{text}");
    assert!(text.contains("E2E-VSOCK-IN:ping"), "{text}");
    assert!(
        text.contains("E2E-VSOCK-OUT:ack:hello-from-guest"),
        "{text}"
    );
    assert!(!vsock.exists(), "vsock socket removed");
    eprintln!("e2e finished after {:?}", started.elapsed());
}
