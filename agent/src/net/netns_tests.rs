//! `configure` against the real kernel, each test in a network namespace of
//! its own (unshare(CLONE_NEWNET) on a dedicated thread), so the host's
//! network is never touched. Needs root; skips with a message otherwise
//! and fails under HUSK_REQUIRE_PRIVILEGED=1.

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use husk_agent_api::pb;
use serde_json::Value;

use super::{configure, NetError};

const GUEST_MAC: &str = "02:00:5e:00:00:01";
const PEER_MAC: &str = "02:00:5e:00:00:02";

fn netns_inode() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net")
        .expect("stat /proc/thread-self/ns/net")
        .ino()
}

/// Runs `f` on a new thread in a new, empty network namespace that has a
/// veth pair: "v-guest" (GUEST_MAC, down) and "v-peer" (PEER_MAC, up), as
/// the guest's virtio-net NIC and its other end. None: skipped.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    if !husk_testutil::require(
        husk_testutil::is_root(),
        "root (to create network namespaces)",
    ) || !husk_testutil::require(
        husk_testutil::find_on_path("ip").is_some(),
        "iproute2's `ip` (apt-get install iproute2)",
    ) {
        return None;
    }
    let t = std::thread::spawn(move || {
        let host = netns_inode();
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) as root");
        // Never run against the host's namespace, whatever happened above.
        assert_ne!(netns_inode(), host, "still in the host's network namespace");
        ip(&[
            "link", "add", "v-guest", "address", GUEST_MAC, "type", "veth", "peer", "name",
            "v-peer", "address", PEER_MAC,
        ]);
        ip(&["link", "set", "v-peer", "up"]);
        f()
    });
    Some(t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
}

/// `ip ARGS` in the calling thread's namespace; its stdout.
fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    serde_json::from_str(&ip(&a)).expect("ip -j output is JSON")
}

/// The link called `name` as `ip -j addr show` reports it.
fn link(name: &str) -> Value {
    ip_json(&["addr", "show", "dev", name]).remove(0)
}

fn is_up(l: &Value) -> bool {
    l["flags"].as_array().unwrap().iter().any(|f| f == "UP")
}

/// "10.1.0.5/24" for each address of the link (link-local IPv6 left out).
fn addresses(l: &Value) -> Vec<String> {
    l["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// "DST via GW dev DEV" for each static route of the family ("-4"/"-6").
fn static_routes(family: &str) -> Vec<String> {
    ip_json(&[family, "route", "show", "proto", "static"])
        .iter()
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap().to_string();
            if let Some(g) = r["gateway"].as_str() {
                s += &format!(" via {g}");
            }
            s + &format!(" dev {}", r["dev"].as_str().unwrap())
        })
        .collect()
}

fn pod_network(extra_route: Option<pb::Route>) -> pb::NetworkConfig {
    let addr = |a: &str, p| pb::IpAddress {
        address: a.into(),
        prefix_len: p,
    };
    let route = |dst: &str, gw: &str, dev: &str| pb::Route {
        destination: dst.into(),
        gateway: gw.into(),
        device: dev.into(),
        ..Default::default()
    };
    let mut routes = vec![
        route("10.2.0.0/16", "10.1.0.1", "eth0"),
        route("", "10.1.0.1", ""),
        route("fd00:2::/64", "fd00:1::1", "eth0"),
    ];
    routes.extend(extra_route);
    pb::NetworkConfig {
        interfaces: vec![pb::Interface {
            mac: GUEST_MAC.into(),
            name: "eth0".into(),
            mtu: 1400,
            addresses: vec![addr("10.1.0.5", 24), addr("fd00:1::5", 64)],
        }],
        routes,
    }
}

fn run(req: &pb::NetworkConfig) -> Result<Vec<super::Configured>, NetError> {
    configure(req)
}

#[test]
fn configures_name_mtu_addresses_and_routes() {
    in_new_netns(|| {
        let req = pod_network(None);
        let done = run(&req).expect("configure");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].name, "eth0");

        assert!(is_up(&link("lo")), "lo is up");
        let eth0 = link("eth0");
        assert_eq!(eth0["address"], GUEST_MAC);
        assert_eq!(eth0["mtu"], 1400);
        assert!(is_up(&eth0), "eth0 is up: {eth0}");
        assert_eq!(addresses(&eth0), ["10.1.0.5/24", "fd00:1::5/64"]);
        assert_eq!(
            static_routes("-4"),
            [
                "default via 10.1.0.1 dev eth0",
                "10.2.0.0/16 via 10.1.0.1 dev eth0"
            ]
        );
        assert_eq!(static_routes("-6"), ["fd00:2::/64 via fd00:1::1 dev eth0"]);

        // The same request again changes nothing and is not an error.
        run(&req).expect("configure twice");
        assert_eq!(addresses(&link("eth0")), ["10.1.0.5/24", "fd00:1::5/64"]);
        assert_eq!(static_routes("-4").len(), 2);
    });
}

#[test]
fn unknown_mac_is_refused_and_changes_nothing() {
    in_new_netns(|| {
        let mut req = pod_network(None);
        req.interfaces[0].mac = "02:00:5e:00:00:99".into();
        let e = run(&req).expect_err("unknown MAC must be refused");
        assert!(matches!(e, NetError::Invalid(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("02:00:5e:00:00:99") && msg.contains("02:00:5e:00:00:01 (v-guest)"),
            "{msg}"
        );
        assert!(!is_up(&link("lo")), "lo left down");
        let l = link("v-guest");
        assert!(!is_up(&l));
        assert_eq!(l["mtu"], 1500);
        assert!(addresses(&l).is_empty());
        assert!(static_routes("-4").is_empty());
    });
}

#[test]
fn a_failing_route_rolls_the_request_back() {
    in_new_netns(|| {
        // 192.0.2.1 is on no link: the kernel refuses the route.
        let unreachable = pb::Route {
            destination: "198.51.100.0/24".into(),
            gateway: "192.0.2.1".into(),
            ..Default::default()
        };
        let e = run(&pod_network(Some(unreachable))).expect_err("route must fail");
        let msg = crate::service::error_chain(&e);
        eprintln!("refused as expected: {msg}");
        assert!(
            matches!(e, NetError::Step { .. })
                && msg.starts_with("add route 3 (198.51.100.0/24 via 192.0.2.1)"),
            "{msg}"
        );
        // The link has its old name, MTU and state, and nothing added stays.
        let l = link("v-guest");
        assert!(!is_up(&l), "v-guest back down: {l}");
        assert_eq!(l["mtu"], 1500);
        assert!(addresses(&l).is_empty(), "{l}");
        assert!(static_routes("-4").is_empty());
        assert!(static_routes("-6").is_empty());
        let mut names: Vec<String> = ip_json(&["link", "show"])
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["lo", "v-guest", "v-peer"]);
    });
}
