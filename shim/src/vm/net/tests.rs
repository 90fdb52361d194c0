use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

use super::*;

fn spec_with(ns: Option<Option<&str>>) -> Spec {
    let mut namespaces = vec![LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Pid)
        .build()
        .unwrap()];
    if let Some(path) = ns {
        let mut b = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(p) = path {
            b = b.path(p);
        }
        namespaces.push(b.build().unwrap());
    }
    SpecBuilder::default()
        .linux(
            LinuxBuilder::default()
                .namespaces(namespaces)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

#[test]
fn the_spec_says_host_private_or_joined() {
    assert_eq!(SpecNetwork::of(&spec_with(None)), SpecNetwork::Host);
    assert_eq!(
        SpecNetwork::of(&spec_with(Some(None))),
        SpecNetwork::Private
    );
    assert_eq!(
        SpecNetwork::of(&spec_with(Some(Some("/var/run/netns/cni-1")))),
        SpecNetwork::Joined("/var/run/netns/cni-1".into())
    );
    assert!(NetError::HostNetwork.to_string().contains("host's network"));
}

#[test]
fn detach_without_a_record_does_nothing() {
    let d = tempfile::tempdir().unwrap();
    assert!(!detach(d.path()).unwrap());
}

/// Two network namespaces of the test's own, joined by a veth: "pod" with
/// eth0 10.123.45.5/24 (MTU 1400, default route via .1), "peer" with .1.
struct TestNet {
    pod: String,
    peer: String,
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tc(ns: &str, args: &[&str]) -> String {
    let out = Command::new("tc")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl TestNet {
    fn new() -> TestNet {
        let id = std::process::id();
        let t = TestNet {
            pod: format!("husk-nt-pod-{id}"),
            peer: format!("husk-nt-peer-{id}"),
        };
        ip(&["netns", "add", &t.pod]);
        ip(&["netns", "add", &t.peer]);
        ip(&[
            "-n", &t.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns",
            &t.peer,
        ]);
        for (ns, dev, addr) in [
            (&t.pod, "eth0", "10.123.45.5/24"),
            (&t.peer, "peer0", "10.123.45.1/24"),
        ] {
            ip(&["-n", ns, "link", "set", dev, "mtu", "1400", "up"]);
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
        }
        ip(&[
            "-n",
            &t.pod,
            "route",
            "add",
            "default",
            "via",
            "10.123.45.1",
        ]);
        t
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.pod)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Opens the (persistent) tap inside `netns` as husk-vmm would and waits
/// up to `limit` for a frame; returns it (virtio-net header included).
fn read_one_frame(netns: PathBuf, limit: Duration) -> Option<Vec<u8>> {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).unwrap();
        // SAFETY: changes this (test) thread's namespace only.
        let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0);
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .unwrap();
        let mut req = [0u8; 40];
        req[..TAP_NAME.len()].copy_from_slice(TAP_NAME.as_bytes());
        let flags: libc::c_short = 0x0002 | 0x1000 | 0x4000;
        req[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF with a 40-byte ifreq that outlives the call.
        let r = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, req.as_ptr()) };
        assert_eq!(
            r,
            0,
            "attach to the tap: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            // SAFETY: reads into a buffer of buf.len() bytes.
            let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .join()
    .unwrap()
}

#[tokio::test]
async fn a_tap_is_wired_to_the_veth_and_removed_again() {
    if !husk_testutil::require(husk_testutil::is_root(), "root (network namespaces, tc)")
        || !husk_testutil::require(husk_testutil::find_on_path("ip").is_some(), "iproute2")
    {
        return;
    }
    let net = TestNet::new();
    let dir = tempfile::tempdir().unwrap();
    let (pod, cfg) = attach(dir.path(), &net.path())
        .await
        .unwrap()
        .expect("eth0 found");
    assert_eq!((pod.veth.as_str(), pod.tap.as_str()), ("eth0", TAP_NAME));
    assert!(dir.path().join(STATE_FILE).exists());
    let link = ip(&["-n", &net.pod, "-o", "link", "show", "eth0"]);
    assert!(link.contains(&pod.mac), "{link}");
    let i = &cfg.interfaces[0];
    assert_eq!(
        (i.name.as_str(), i.mtu, i.mac.as_str()),
        ("eth0", 1400, pod.mac.as_str())
    );
    assert_eq!(i.addresses[0].address, "10.123.45.5");
    assert_eq!(i.addresses[0].prefix_len, 24);
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].gateway, "10.123.45.1");
    assert_eq!(cfg.routes[0].destination, "");

    // The tap: up, the veth's MTU; redirects both ways for every protocol.
    let tap = ip(&["-n", &net.pod, "-o", "link", "show", TAP_NAME]);
    assert!(tap.contains("mtu 1400") && tap.contains(",UP"), "{tap}");
    let from_veth = tc(&net.pod, &["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        from_veth.contains("protocol all")
            && from_veth.contains(&format!("Redirect to device {TAP_NAME}")),
        "{from_veth}"
    );
    let from_tap = tc(&net.pod, &["filter", "show", "dev", TAP_NAME, "ingress"]);
    assert!(from_tap.contains("Redirect to device eth0"), "{from_tap}");

    // Traffic for the pod arrives at the tap: the peer's ARP request for
    // 10.123.45.5 (a broadcast) comes out of it.
    let peer = net.peer.clone();
    let pinger = std::thread::spawn(move || {
        for _ in 0..5 {
            let _ = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &peer,
                    "busybox",
                    "ping",
                    "-c1",
                    "-W1",
                    "10.123.45.5",
                ])
                .output();
        }
    });
    let frame =
        read_one_frame(net.path(), Duration::from_secs(10)).expect("a frame through the tap");
    pinger.join().unwrap();
    // virtio_net_hdr (10 bytes, the tap's default), then Ethernet.
    assert_eq!(
        &frame[10..16],
        &[0xff; 6],
        "broadcast ARP expected: {frame:02x?}"
    );
    assert_eq!(&frame[22..24], &[0x08, 0x06], "ARP expected: {frame:02x?}");

    // A second attach in the same namespace (a retried boot) starts clean.
    let again = attach(dir.path(), &net.path()).await.unwrap().unwrap();
    assert_eq!(again.0, pod);

    assert!(detach(dir.path()).unwrap());
    assert!(!dir.path().join(STATE_FILE).exists());
    let links = ip(&["-n", &net.pod, "-o", "link"]);
    assert!(!links.contains(TAP_NAME), "{links}");
    let qd = tc(&net.pod, &["qdisc", "show", "dev", "eth0"]);
    assert!(!qd.contains("ingress"), "{qd}");
    // The veth keeps its addresses.
    assert!(ip(&["-n", &net.pod, "addr", "show", "eth0"]).contains("10.123.45.5/24"));
    assert!(!detach(dir.path()).unwrap());
}

#[tokio::test]
async fn detach_after_the_namespace_is_gone() {
    if !husk_testutil::require(husk_testutil::is_root(), "root (network namespaces, tc)")
        || !husk_testutil::require(husk_testutil::find_on_path("ip").is_some(), "iproute2")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let net = TestNet {
            pod: format!("husk-nt-gone-{}", std::process::id()),
            peer: format!("husk-nt-gonep-{}", std::process::id()),
        };
        ip(&["netns", "add", &net.pod]);
        ip(&["netns", "add", &net.peer]);
        ip(&[
            "-n", &net.pod, "link", "add", "eth0", "type", "veth", "peer", "name", "p0", "netns",
            &net.peer,
        ]);
        attach(dir.path(), &net.path()).await.unwrap().unwrap();
    }
    // The namespace was deleted (as the CRI does): the record is cleared.
    assert!(detach(dir.path()).unwrap());
    assert!(!dir.path().join(STATE_FILE).exists());
}

#[tokio::test]
async fn a_namespace_without_an_interface_gives_no_nic() {
    if !husk_testutil::require(husk_testutil::is_root(), "root (network namespaces)")
        || !husk_testutil::require(husk_testutil::find_on_path("ip").is_some(), "iproute2")
    {
        return;
    }
    let name = format!("husk-nt-empty-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let dir = tempfile::tempdir().unwrap();
    let got = attach(dir.path(), &PathBuf::from("/run/netns").join(&name)).await;
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert!(got.unwrap().is_none());
    assert!(!dir.path().join(STATE_FILE).exists());
}
