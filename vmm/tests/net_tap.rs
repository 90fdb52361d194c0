//! virtio-net's tap is created inside the given network namespace, lives
//! as long as the VM, and is gone afterwards.

mod common;

use std::process::Command;

use common::*;

struct Netns(String);

impl Netns {
    fn new(name: &str) -> Option<Self> {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .ok()?
            .success();
        ok.then(|| Netns(name.to_string()))
    }
    fn has_link(&self, link: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.0, "link", "show", link])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn host_has_link(link: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", link])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn tap_lives_in_the_netns_for_the_vm_lifetime() {
    let root = husk_testutil::is_root() && std::path::Path::new("/dev/net/tun").exists();
    if !husk_testutil::require(root, "root and /dev/net/tun") || !kvm() {
        return;
    }
    let ns_name = format!("husk-vmm-t{}", std::process::id());
    let Some(ns) = Netns::new(&ns_name) else {
        assert!(
            !husk_testutil::privileged_required(),
            "cannot create a network namespace"
        );
        return;
    };
    let tap = format!("hv{}", std::process::id() % 100_000);
    let d = TempDir::new("tap");
    let k = tiny_kernel(&d, SPIN);
    let ctl = d.path("ctl.sock");
    let netns_path = format!("/var/run/netns/{ns_name}");
    let mut vmm = KillOnDrop(spawn_vmm(&[
        "--kernel",
        k.to_str().unwrap(),
        "--console",
        "off",
        "--tap",
        &tap,
        "--netns",
        &netns_path,
        "--control-socket",
        ctl.to_str().unwrap(),
    ]));
    assert!(wait_for_path(&ctl, 20), "vm is up");
    assert!(ns.has_link(&tap), "tap {tap} inside {ns_name}");
    assert!(!host_has_link(&tap), "tap not in the host namespace");
    let mut s = std::os::unix::net::UnixStream::connect(&ctl).unwrap();
    use std::io::Write;
    s.write_all(b"shutdown\n").unwrap();
    let (code, err) = wait_exit(&mut vmm.0, 20);
    assert_eq!(code, 0, "{err}");
    assert!(!ns.has_link(&tap), "tap gone with the VM");
}
