//! The husk-vmm binary end to end with tiny PVH kernels: boot through the
//! PVH entry, console output, i8042 reset => exit 0, the control socket,
//! and cleanup of its sockets.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use common::*;

#[test]
fn tiny_kernel_prints_and_resets_with_exit_0() {
    if !kvm() {
        return;
    }
    let d = TempDir::new("hello");
    let k = tiny_kernel(&d, HELLO_AND_RESET);
    let console = d.path("console.log");
    let vsock = d.path("vsock.sock");
    let mut c = spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--console",
        console.to_str().unwrap(),
        "--vsock-uds",
        vsock.to_str().unwrap(),
        "--mem-mib",
        "64",
    ]);
    let (code, err) = wait_exit(&mut c, 30);
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.contains("guest reset"), "{err}");
    assert_eq!(std::fs::read(&console).unwrap(), b"PHi\n");
    assert!(!vsock.exists(), "vsock socket removed on exit");
}

#[test]
fn kernel_panic_on_the_console_gives_exit_2() {
    if !kvm() {
        return;
    }
    let d = TempDir::new("panic");
    let k = tiny_kernel(&d, &print_and_reset("Kernel panic - not syncing: test\n"));
    let console = d.path("console.log");
    let mut c = spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--console",
        console.to_str().unwrap(),
    ]);
    let (code, err) = wait_exit(&mut c, 30);
    assert_eq!(code, 2, "stderr: {err}");
    assert!(err.contains("guest kernel panicked"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "Kernel panic - not syncing: test\n"
    );
}

#[test]
fn triple_fault_gives_exit_3() {
    if !kvm() {
        return;
    }
    let d = TempDir::new("ud2");
    // ud2 with the boot IDT (limit 7, no usable gate): #UD -> #GP -> #DF ->
    // triple fault.
    let k = tiny_kernel(&d, &[0x0f, 0x0b]);
    let mut c = spawn_vmm(&["--kernel", k.to_str().unwrap(), "--console", "off"]);
    let (code, err) = wait_exit(&mut c, 30);
    assert_eq!(code, 3, "stderr: {err}");
    assert!(err.contains("triple-faulted"), "{err}");
}

#[test]
fn two_vcpus_boot_too() {
    if !kvm() {
        return;
    }
    let d = TempDir::new("smp");
    let k = tiny_kernel(&d, HELLO_AND_RESET);
    let console = d.path("console.log");
    let mut c = spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--console",
        console.to_str().unwrap(),
        "--vcpus",
        "2",
    ]);
    let (code, err) = wait_exit(&mut c, 30);
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(std::fs::read(&console).unwrap(), b"PHi\n");
}

fn request(path: &std::path::Path, req: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad reply {line:?}: {e}"))
}

#[test]
fn control_socket_ping_metrics_pause_resume_shutdown() {
    if !kvm() {
        return;
    }
    let d = TempDir::new("ctl");
    let k = tiny_kernel(&d, SPIN);
    let ctl = d.path("ctl.sock");
    let mut c = spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--console",
        "off",
        "--control-socket",
        ctl.to_str().unwrap(),
    ]);
    assert!(wait_for_path(&ctl, 20), "control socket appears");
    assert_eq!(request(&ctl, "ping")["ok"], true);
    let m = request(&ctl, "metrics");
    assert_eq!(m["ok"], true);
    assert_eq!(m["metrics"]["vcpus"], 1);
    assert_eq!(m["metrics"]["mem_mib"], 128);
    assert!(m["metrics"]["vmm_rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(request(&ctl, "pause")["ok"], true);
    assert_eq!(request(&ctl, "metrics")["metrics"]["paused"], true);
    assert_eq!(request(&ctl, "resume")["ok"], true);
    assert_eq!(request(&ctl, "metrics")["metrics"]["paused"], false);
    let bad = request(&ctl, "reboot-please");
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("unknown request"));
    assert_eq!(request(&ctl, "shutdown")["ok"], true);
    let (code, err) = wait_exit(&mut c, 20);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("stopped on request"), "{err}");
    assert!(!ctl.exists(), "control socket removed");
}

#[test]
fn existing_control_socket_is_refused() {
    let d = TempDir::new("ctl-exists");
    let k = tiny_kernel(&d, SPIN);
    let ctl = d.path("ctl.sock");
    std::fs::write(&ctl, b"").unwrap();
    let mut c = spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--control-socket",
        ctl.to_str().unwrap(),
    ]);
    let (code, err) = wait_exit(&mut c, 20);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    assert!(ctl.exists());
}

#[test]
fn dies_with_its_parent() {
    if !kvm() {
        return;
    }
    let d = TempDir::new("pdeath");
    let k = tiny_kernel(&d, SPIN);
    let ctl = d.path("ctl.sock");
    // A shell starts husk-vmm in the background, prints its pid and exits.
    let script = format!(
        "{} --kernel {} --console off --control-socket {} >/dev/null 2>&1 & echo $!; sleep 1",
        env!("CARGO_BIN_EXE_husk-vmm"),
        k.display(),
        ctl.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !gone() {
        if std::time::Instant::now() > deadline {
            // SAFETY: kill(2) on the pid we started; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("husk-vmm {pid} outlived its parent");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
