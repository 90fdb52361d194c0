use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}

/// A CNI bridge pod: lo, eth0 (veth) with 10.88.77.5/24 and fe80::, the
/// kernel's subnet route, a default route via the bridge.
fn cni_pod() -> View {
    View {
        links: vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some([0; 6]),
                mtu: 65536,
                ether: false,
            },
            Link {
                index: 3,
                name: "eth0".into(),
                mac: Some([0x0a, 0x58, 0x0a, 0x58, 0x4d, 0x05]),
                mtu: 1400,
                ether: true,
            },
        ],
        addrs: vec![
            Addr {
                index: 1,
                ip: v4("127.0.0.1"),
                prefix: 8,
            },
            Addr {
                index: 3,
                ip: v4("10.88.77.5"),
                prefix: 24,
            },
            Addr {
                index: 3,
                ip: IpAddr::V6("fe80::858:aff:fe58:4d05".parse::<Ipv6Addr>().unwrap()),
                prefix: 64,
            },
        ],
        routes: vec![
            Route {
                dst: None,
                gateway: Some(v4("10.88.77.1")),
                oif: Some(3),
                src: None,
                scope: 0,
                kernel: false,
            },
            Route {
                dst: Some((v4("10.88.77.0"), 24)),
                gateway: None,
                oif: Some(3),
                src: Some(v4("10.88.77.5")),
                scope: 253,
                kernel: true,
            },
            Route {
                dst: Some((v4("10.99.0.0"), 16)),
                gateway: None,
                oif: Some(3),
                src: None,
                scope: 253,
                kernel: false,
            },
        ],
    }
}

#[test]
fn a_cni_pod_gives_its_veth_addresses_and_routes() {
    let p = plan(&cni_pod(), "tap0_husk").unwrap().unwrap();
    assert_eq!(p.link.name, "eth0");
    assert_eq!(p.skipped_v6, 0, "link-local fe80:: is not counted");
    let i = &p.guest.interfaces[0];
    assert_eq!(i.mac, "0a:58:0a:58:4d:05");
    assert_eq!((i.name.as_str(), i.mtu), ("eth0", 1400));
    assert_eq!(i.addresses.len(), 1);
    assert_eq!(i.addresses[0].address, "10.88.77.5");
    assert_eq!(i.addresses[0].prefix_len, 24);
    // The kernel's subnet route is left to the guest kernel; the link
    // route comes before the gateway route.
    let r: Vec<(&str, &str, u32)> = p
        .guest
        .routes
        .iter()
        .map(|r| (r.destination.as_str(), r.gateway.as_str(), r.scope))
        .collect();
    assert_eq!(r, vec![("10.99.0.0/16", "", 253), ("", "10.88.77.1", 0)]);
    assert!(p.guest.routes.iter().all(|r| r.device == "eth0"));
}

#[test]
fn no_interface_means_no_nic() {
    let mut v = cni_pod();
    v.links.retain(|l| l.name == "lo");
    assert!(plan(&v, "tap0_husk").unwrap().is_none());
}

#[test]
fn the_shims_own_tap_is_not_the_pods_interface() {
    let mut v = cni_pod();
    v.links.push(Link {
        index: 9,
        name: "tap0_husk".into(),
        mac: Some([2, 0, 0, 0, 0, 9]),
        mtu: 1400,
        ether: true,
    });
    assert_eq!(plan(&v, "tap0_husk").unwrap().unwrap().link.index, 3);
}

#[test]
fn two_interfaces_are_refused_by_name() {
    let mut v = cni_pod();
    v.links.push(Link {
        index: 4,
        name: "net1".into(),
        mac: Some([2, 0, 0, 0, 0, 4]),
        mtu: 1500,
        ether: true,
    });
    let e = plan(&v, "tap0_husk").unwrap_err().to_string();
    assert!(e.contains("eth0, net1"), "{e}");
}

#[test]
fn ipv6_addresses_and_routes_are_counted_and_left_out() {
    let mut v = cni_pod();
    let g: IpAddr = "fd00::1".parse().unwrap();
    v.addrs.push(Addr {
        index: 3,
        ip: "fd00::5".parse().unwrap(),
        prefix: 64,
    });
    v.routes.push(Route {
        dst: None,
        gateway: Some(g),
        oif: Some(3),
        src: None,
        scope: 0,
        kernel: false,
    });
    let p = plan(&v, "tap0_husk").unwrap().unwrap();
    assert_eq!(p.skipped_v6, 2);
    assert_eq!(p.guest.interfaces[0].addresses.len(), 1);
    assert_eq!(p.guest.routes.len(), 2);
}
