//! A vhost-user backend (virtiofsd) that dies mid-run ends the VM with a
//! clear error and a non-zero exit, without hanging.

mod common;

use common::*;

#[test]
fn virtiofsd_dying_stops_the_vm() {
    if !kvm() {
        return;
    }
    let bin = virtiofsd();
    if !husk_testutil::require(bin.is_some(), "virtiofsd (cargo install virtiofsd)") {
        return;
    }
    let d = TempDir::new("fsdeath");
    let shared = d.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sock = d.path("fs.sock");
    let mut fsd = KillOnDrop(start_virtiofsd(&bin.unwrap(), &sock, &shared));
    let k = tiny_kernel(&d, SPIN);
    let ctl = d.path("ctl.sock");
    let mut vmm = KillOnDrop(spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--console",
        "off",
        "--fs-socket",
        sock.to_str().unwrap(),
        "--control-socket",
        ctl.to_str().unwrap(),
    ]));
    assert!(wait_for_path(&ctl, 20), "vm is up");
    assert!(
        vmm.0.try_wait().unwrap().is_none(),
        "vm runs while virtiofsd lives"
    );
    fsd.0.kill().unwrap();
    fsd.0.wait().unwrap();
    let (code, err) = wait_exit(&mut vmm.0, 20);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("virtiofsd") && err.contains("closed its socket"),
        "{err}"
    );
    assert!(!ctl.exists(), "control socket cleaned up");
}

#[test]
fn missing_vhost_user_socket_is_a_clear_error() {
    let d = TempDir::new("fsmissing");
    let k = tiny_kernel(&d, SPIN);
    let mut vmm = spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--fs-socket",
        d.path("nope.sock").to_str().unwrap(),
    ]);
    let (code, err) = wait_exit(&mut vmm, 20);
    assert_eq!(code, 1);
    assert!(err.contains("start virtiofsd first"), "{err}");
}
