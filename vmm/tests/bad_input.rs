//! Bad input makes husk-vmm exit non-zero quickly with a clear message.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("husk-vmm-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs husk-vmm with `args`; returns (exit code, stderr). Fails after 20 s.
fn vmm(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk-vmm"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("husk-vmm {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_kernel() {
    let (code, err) = vmm(&["--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("kernel /nonexistent/vmlinux not found"),
        "{err}"
    );
}

#[test]
fn non_elf_kernel() {
    let d = tmpdir("nonelf");
    let k = d.join("bzImage");
    std::fs::write(&k, b"MZ this is not an elf").unwrap();
    let (code, err) = vmm(&["--kernel", k.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not an uncompressed ELF vmlinux"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn memory_too_small() {
    let d = tmpdir("mem");
    let k = d.join("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let (code, err) = vmm(&["--kernel", k.to_str().unwrap(), "--mem-mib", "8"]);
    assert_eq!(code, 1);
    assert!(err.contains("memory 8 MiB is too small"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn existing_socket_path() {
    let d = tmpdir("sock");
    let k = d.join("vmlinux");
    std::fs::write(&k, b"\x7fELF").unwrap();
    let s = d.join("vsock.sock");
    let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
    let (code, err) = vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--vsock-uds",
        s.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert!(s.exists(), "the existing socket is left alone");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn truncated_elf_kernel_fails_to_load() {
    if !husk_testutil::require(husk_testutil::kvm_available(), "/dev/kvm") {
        return;
    }
    let d = tmpdir("trunc");
    let k = d.join("vmlinux");
    std::fs::write(&k, b"\x7fELF\x02\x01\x01\x00truncated").unwrap();
    let (code, err) = vmm(&["--kernel", k.to_str().unwrap(), "--console", "off"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot load kernel"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}
