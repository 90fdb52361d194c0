//! Checks a ConfigureNetwork request completely before anything changes:
//! [`parse`] turns the wire form into a [`Plan`] (no I/O), [`resolve`]
//! matches it against the guest's links (MAC -> link, route device ->
//! index). Every error names the request field it is about.

use std::fmt;
use std::net::IpAddr;

use husk_agent_api::pb;

/// Linux IFNAMSIZ (16) minus the terminating NUL.
const MAX_IFNAME: usize = 15;
/// The kernel's minimum for an Ethernet MTU (ETH_MIN_MTU).
const MIN_MTU: u32 = 68;
/// RT_SCOPE_UNIVERSE, _SITE, _LINK, _HOST, _NOWHERE.
const SCOPES: [u32; 5] = [0, 200, 253, 254, 255];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error("{field}: {msg}")]
    Field { field: String, msg: String },
    #[error("{field}: no guest interface has MAC {mac}; the guest has {have}")]
    UnknownMac {
        field: String,
        mac: Mac,
        have: String,
    },
    #[error(
        "{field}: no guest interface is called {name:?} (after renaming); the guest has {have}"
    )]
    UnknownDevice {
        field: String,
        name: String,
        have: String,
    },
}

fn field(field: String, msg: impl Into<String>) -> ValidateError {
    ValidateError::Field {
        field,
        msg: msg.into(),
    }
}

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = ();
    fn from_str(s: &str) -> Result<Mac, ()> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or(())?;
            if p.len() != 2 {
                return Err(());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| ())?;
        }
        match parts.next() {
            Some(_) => Err(()),
            None => Ok(Mac(mac)),
        }
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// An address or network with its prefix length, checked against the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub mac: Mac,
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// None: the default route of the route's family.
    pub destination: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    pub device: Option<String>,
    pub source: Option<IpAddr>,
    pub scope: u8,
    /// From the destination, else the gateway, else the source; IPv4 when
    /// the route has none of them.
    pub ipv6: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub interfaces: Vec<InterfacePlan>,
    pub routes: Vec<RoutePlan>,
}

impl Plan {
    pub fn uses_ipv6(&self) -> bool {
        let addrs = self.interfaces.iter().flat_map(|i| &i.addresses);
        addrs.clone().any(|a| a.addr.is_ipv6()) || self.routes.iter().any(|r| r.ipv6)
    }
}

/// A guest link as netlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
}

/// The plan with each interface's link and each route's device index.
#[derive(Debug)]
pub struct Resolved<'a> {
    pub interfaces: Vec<(&'a InterfacePlan, &'a Link)>,
    pub routes: Vec<(&'a RoutePlan, Option<u32>)>,
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

fn parse_ip(f: &str, s: &str) -> Result<IpAddr, ValidateError> {
    s.parse()
        .map_err(|_| field(f.into(), format!("{s:?} is not an IPv4 or IPv6 address")))
}

fn check_name(f: &str, name: &str) -> Result<(), ValidateError> {
    if name.len() > MAX_IFNAME {
        return Err(field(
            f.into(),
            format!("{name:?} is longer than {MAX_IFNAME} bytes"),
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(field(
            f.into(),
            format!(
                "{name:?} is not a valid interface name (no '/', ':', spaces, \".\" or \"..\")"
            ),
        ));
    }
    Ok(())
}

fn parse_interface(i: usize, p: &pb::Interface) -> Result<InterfacePlan, ValidateError> {
    let f = |name: &str| format!("interfaces[{i}].{name}");
    let mac: Mac = p.mac.parse().map_err(|()| {
        field(
            f("mac"),
            format!("{:?} is not a MAC address like 0a:58:0a:f4:00:05", p.mac),
        )
    })?;
    let name = (!p.name.is_empty()).then(|| p.name.clone());
    if let Some(n) = &name {
        check_name(&f("name"), n)?;
    }
    let mtu = (p.mtu != 0).then_some(p.mtu);
    if let Some(m) = mtu {
        if !(MIN_MTU..=65535).contains(&m) {
            return Err(field(
                f("mtu"),
                format!("{m} is outside {MIN_MTU}..=65535 (0 keeps the kernel's)"),
            ));
        }
    }
    let mut addresses = Vec::with_capacity(p.addresses.len());
    for (j, a) in p.addresses.iter().enumerate() {
        let fa = f(&format!("addresses[{j}]"));
        let addr = parse_ip(&format!("{fa}.address"), &a.address)?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(field(
                format!("{fa}.address"),
                format!("{addr} cannot be an interface address"),
            ));
        }
        let max = max_prefix(addr);
        if a.prefix_len > u32::from(max) {
            return Err(field(
                format!("{fa}.prefix_len"),
                format!("{} is more than {max} for {addr}", a.prefix_len),
            ));
        }
        addresses.push(Cidr {
            addr,
            prefix: a.prefix_len as u8,
        });
    }
    Ok(InterfacePlan {
        mac,
        name,
        mtu,
        addresses,
    })
}

/// "10.88.0.0/16" or "fd00::/64": a network, so no host bits set.
fn parse_network(f: &str, s: &str) -> Result<Cidr, ValidateError> {
    let bad = |why: &str| field(f.into(), format!("{s:?} {why}"));
    let (a, n) = s
        .split_once('/')
        .ok_or_else(|| bad("is not a network like 10.88.0.0/16 (empty for the default route)"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| bad("has no valid IPv4 or IPv6 address"))?;
    let prefix: u8 = n.parse().map_err(|_| bad("has no valid prefix length"))?;
    if prefix > max_prefix(addr) {
        return Err(bad(&format!(
            "has a prefix longer than {}",
            max_prefix(addr)
        )));
    }
    let host_bits = match addr {
        IpAddr::V4(v) => u32::from(v).checked_shl(u32::from(prefix)).unwrap_or(0) != 0,
        IpAddr::V6(v) => u128::from(v).checked_shl(u32::from(prefix)).unwrap_or(0) != 0,
    };
    if host_bits {
        return Err(bad("has host bits set beyond the prefix"));
    }
    Ok(Cidr { addr, prefix })
}

fn parse_route(i: usize, p: &pb::Route) -> Result<RoutePlan, ValidateError> {
    let f = |name: &str| format!("routes[{i}].{name}");
    let destination = match p.destination.as_str() {
        "" => None,
        s => Some(parse_network(&f("destination"), s)?),
    };
    let opt_ip = |name: &str, s: &str| match s {
        "" => Ok(None),
        s => parse_ip(&f(name), s).map(Some),
    };
    let gateway = opt_ip("gateway", &p.gateway)?;
    let source = opt_ip("source", &p.source)?;
    let ipv6 = destination
        .map(|d| d.addr)
        .or(gateway)
        .or(source)
        .is_some_and(|a| a.is_ipv6());
    for (name, a) in [("gateway", gateway), ("source", source)] {
        if let Some(a) = a {
            if a.is_ipv6() != ipv6 {
                return Err(field(
                    f(name),
                    format!(
                        "{a} is not of the route's family ({})",
                        if ipv6 { "IPv6" } else { "IPv4" }
                    ),
                ));
            }
        }
    }
    let device = (!p.device.is_empty()).then(|| p.device.clone());
    if let Some(d) = &device {
        check_name(&f("device"), d)?;
    }
    if !SCOPES.contains(&p.scope) {
        return Err(field(
            f("scope"),
            format!(
                "{} is not an RT_SCOPE_* value (0 universe, 200 site, 253 link, 254 host, 255 nowhere)",
                p.scope
            ),
        ));
    }
    Ok(RoutePlan {
        destination,
        gateway,
        device,
        source,
        scope: p.scope as u8,
        ipv6,
    })
}

/// `parse_one(index, item)` for each item; the first error.
fn each<P, T>(
    items: &[P],
    parse_one: impl Fn(usize, &P) -> Result<T, ValidateError>,
) -> Result<Vec<T>, ValidateError> {
    items
        .iter()
        .enumerate()
        .map(|(i, p)| parse_one(i, p))
        .collect()
}

/// Checks the request's syntax and its internal consistency.
pub fn parse(req: &pb::NetworkConfig) -> Result<Plan, ValidateError> {
    let interfaces = each(&req.interfaces, parse_interface)?;
    for (i, a) in interfaces.iter().enumerate() {
        for b in &interfaces[..i] {
            if a.mac == b.mac {
                return Err(field(
                    format!("interfaces[{i}].mac"),
                    format!("{} is given twice", a.mac),
                ));
            }
            if a.name.is_some() && a.name == b.name {
                return Err(field(
                    format!("interfaces[{i}].name"),
                    format!("{:?} is given twice", a.name.as_deref().unwrap_or("")),
                ));
            }
        }
    }
    let routes = each(&req.routes, parse_route)?;
    Ok(Plan { interfaces, routes })
}

fn list_links(links: &[Link], with_mac: bool) -> String {
    let l: Vec<String> = links
        .iter()
        .filter_map(|l| match (with_mac, l.mac) {
            (true, Some(m)) if m.0 != [0; 6] => Some(format!("{m} ({})", l.name)),
            (true, _) => None,
            (false, _) => l.name.clone().into(),
        })
        .collect();
    if l.is_empty() {
        "none".into()
    } else {
        l.join(", ")
    }
}

/// Matches the plan against the guest's links: each MAC must be there,
/// each new name must be free, each route device must exist afterwards.
pub fn resolve<'a>(plan: &'a Plan, links: &'a [Link]) -> Result<Resolved<'a>, ValidateError> {
    let mut interfaces = Vec::with_capacity(plan.interfaces.len());
    for (i, p) in plan.interfaces.iter().enumerate() {
        let link = links.iter().find(|l| l.mac == Some(p.mac)).ok_or_else(|| {
            ValidateError::UnknownMac {
                field: format!("interfaces[{i}].mac"),
                mac: p.mac,
                have: list_links(links, true),
            }
        })?;
        interfaces.push((p, link));
    }
    // The name each link has once the request is done.
    let final_name = |l: &'a Link| -> &'a str {
        interfaces
            .iter()
            .find(|(_, t)| t.index == l.index)
            .and_then(|(p, _)| p.name.as_deref())
            .unwrap_or(&l.name)
    };
    for (i, (p, link)) in interfaces.iter().enumerate() {
        let Some(name) = p.name.as_deref() else {
            continue;
        };
        if let Some(other) = links
            .iter()
            .find(|l| l.index != link.index && final_name(l) == name)
        {
            return Err(field(
                format!("interfaces[{i}].name"),
                format!(
                    "{name:?} is already the name of another guest interface (index {})",
                    other.index
                ),
            ));
        }
    }
    let mut routes = Vec::with_capacity(plan.routes.len());
    for (i, r) in plan.routes.iter().enumerate() {
        let Some(dev) = r.device.as_deref() else {
            routes.push((r, None));
            continue;
        };
        let link = links.iter().find(|l| final_name(l) == dev).ok_or_else(|| {
            let renamed: Vec<Link> = links
                .iter()
                .map(|l| Link {
                    name: final_name(l).to_string(),
                    ..l.clone()
                })
                .collect();
            ValidateError::UnknownDevice {
                field: format!("routes[{i}].device"),
                name: dev.to_string(),
                have: list_links(&renamed, false),
            }
        })?;
        routes.push((r, Some(link.index)));
    }
    Ok(Resolved { interfaces, routes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(mac: &str, name: &str, addrs: &[(&str, u32)]) -> pb::Interface {
        pb::Interface {
            mac: mac.into(),
            name: name.into(),
            mtu: 0,
            addresses: addrs
                .iter()
                .map(|(a, p)| pb::IpAddress {
                    address: (*a).into(),
                    prefix_len: *p,
                })
                .collect(),
        }
    }

    fn route(dst: &str, gw: &str, dev: &str) -> pb::Route {
        pb::Route {
            destination: dst.into(),
            gateway: gw.into(),
            device: dev.into(),
            source: String::new(),
            scope: 0,
        }
    }

    fn cfg(interfaces: Vec<pb::Interface>, routes: Vec<pb::Route>) -> pb::NetworkConfig {
        pb::NetworkConfig { interfaces, routes }
    }

    /// The error message of parsing `c`, which must fail.
    fn parse_err(c: &pb::NetworkConfig) -> String {
        parse(c).expect_err("request must be refused").to_string()
    }

    /// The error message of resolving `c` against [`links`], which must fail.
    fn resolve_err(c: &pb::NetworkConfig) -> String {
        let plan = parse(c).unwrap();
        let e = resolve(&plan, &links()).expect_err("request must be refused");
        e.to_string()
    }

    fn links() -> Vec<Link> {
        vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some(Mac([0; 6])),
                mtu: 65536,
                up: false,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some("52:54:00:12:34:56".parse().unwrap()),
                mtu: 1500,
                up: false,
            },
            Link {
                index: 3,
                name: "eth1".into(),
                mac: Some("52:54:00:12:34:57".parse().unwrap()),
                mtu: 1500,
                up: false,
            },
        ]
    }

    #[test]
    fn a_typical_pod_network_parses() {
        let c = cfg(
            vec![iface(
                "0A:58:0a:f4:00:05",
                "eth0",
                &[("10.244.0.5", 24), ("fd00::5", 64)],
            )],
            vec![
                route("10.96.0.0/12", "10.244.0.1", "eth0"),
                route("", "10.244.0.1", ""),
                route("", "fd00::1", "eth0"),
            ],
        );
        let p = parse(&c).unwrap();
        assert_eq!(p.interfaces[0].mac.to_string(), "0a:58:0a:f4:00:05");
        assert_eq!(p.interfaces[0].addresses[1].to_string(), "fd00::5/64");
        assert_eq!(p.routes[0].destination.unwrap().to_string(), "10.96.0.0/12");
        assert!(!p.routes[1].ipv6 && p.routes[1].destination.is_none());
        assert!(p.routes[2].ipv6);
        assert!(p.uses_ipv6());
        let v4 = cfg(
            vec![iface("02:00:00:00:00:01", "", &[("10.0.0.5", 8)])],
            vec![route("", "10.0.0.1", "")],
        );
        assert!(!parse(&v4).unwrap().uses_ipv6());
    }

    #[test]
    fn bad_macs_are_refused_naming_the_field() {
        for mac in [
            "",
            "0a:58:0a:f4:00",
            "0a:58:0a:f4:00:05:06",
            "0a:58:0a:f4:00:zz",
            "0a-58-0a-f4-00-05",
            "a:58:0a:f4:00:005",
        ] {
            let e = parse_err(&cfg(vec![iface(mac, "", &[])], vec![]));
            assert!(e.starts_with("interfaces[0].mac: "), "{mac}: {e}");
        }
    }

    #[test]
    fn bad_addresses_and_prefixes_are_refused() {
        let cases = [
            ("10.0.0.300", 24, "interfaces[0].addresses[0].address"),
            ("10.0.0.5", 33, "interfaces[0].addresses[0].prefix_len"),
            ("fd00::5", 129, "interfaces[0].addresses[0].prefix_len"),
            ("0.0.0.0", 8, "interfaces[0].addresses[0].address"),
            ("224.0.0.1", 8, "interfaces[0].addresses[0].address"),
        ];
        for (a, p, want) in cases {
            let e = parse_err(&cfg(
                vec![iface("02:00:00:00:00:01", "", &[(a, p)])],
                vec![],
            ));
            assert!(e.starts_with(&format!("{want}: ")), "{a}/{p}: {e}");
        }
        // 128 is fine for IPv6, 32 for IPv4.
        parse(&cfg(
            vec![iface(
                "02:00:00:00:00:01",
                "",
                &[("fd00::5", 128), ("10.0.0.5", 32)],
            )],
            vec![],
        ))
        .unwrap();
    }

    #[test]
    fn bad_names_and_mtus_are_refused() {
        for name in ["a-name-of-16-byt", "eth/0", "eth:0", "eth 0", ".."] {
            let e = parse_err(&cfg(vec![iface("02:00:00:00:00:01", name, &[])], vec![]));
            assert!(e.starts_with("interfaces[0].name: "), "{name}: {e}");
        }
        parse(&cfg(
            vec![iface("02:00:00:00:00:01", "fifteen-bytes-x", &[])],
            vec![],
        ))
        .unwrap();
        for mtu in [1, 67, 65536] {
            let mut i = iface("02:00:00:00:00:01", "", &[]);
            i.mtu = mtu;
            let e = parse_err(&cfg(vec![i], vec![]));
            assert!(e.starts_with("interfaces[0].mtu: "), "{mtu}: {e}");
        }
    }

    #[test]
    fn duplicate_macs_and_names_are_refused() {
        let cases = [
            (("02:00:00:00:00:01", "b"), "interfaces[1].mac: "),
            (("02:00:00:00:00:02", "a"), "interfaces[1].name: "),
        ];
        for ((mac, name), want) in cases {
            let first = iface("02:00:00:00:00:01", "a", &[]);
            let e = parse_err(&cfg(vec![first, iface(mac, name, &[])], vec![]));
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn bad_routes_are_refused_naming_the_field() {
        let cases = [
            (route("10.0.0.0", "", ""), "routes[0].destination"),
            (route("10.0.0.0/33", "", ""), "routes[0].destination"),
            (route("10.0.0.1/24", "", ""), "routes[0].destination"),
            (route("fd00::1/64", "", ""), "routes[0].destination"),
            (route("x/8", "", ""), "routes[0].destination"),
            (route("10.0.0.0/x", "", ""), "routes[0].destination"),
            (route("", "10.0.0.256", ""), "routes[0].gateway"),
            (route("10.0.0.0/8", "fd00::1", ""), "routes[0].gateway"),
            (route("", "", "a-name-of-16-byt"), "routes[0].device"),
        ];
        for (r, want) in cases {
            let what = format!("{r:?}");
            let e = parse_err(&cfg(vec![], vec![r]));
            assert!(e.starts_with(&format!("{want}: ")), "{what}: {e}");
        }
        let mut r = route("", "10.0.0.1", "");
        r.source = "fd00::5".into();
        assert!(parse_err(&cfg(vec![], vec![r])).starts_with("routes[0].source: "));
        let mut r = route("", "10.0.0.1", "");
        r.scope = 100;
        assert!(parse_err(&cfg(vec![], vec![r])).starts_with("routes[0].scope: "));
        // Host routes and the zero network are fine.
        parse(&cfg(
            vec![],
            vec![
                route("10.0.0.1/32", "", "eth0"),
                route("0.0.0.0/0", "", "eth0"),
            ],
        ))
        .unwrap();
    }

    #[test]
    fn resolve_matches_macs_renames_and_route_devices() {
        let c = cfg(
            vec![iface("52:54:00:12:34:57", "pod0", &[])],
            vec![route("", "10.0.0.1", "pod0"), route("", "", "eth0")],
        );
        let plan = parse(&c).unwrap();
        let links = links();
        let r = resolve(&plan, &links).unwrap();
        assert_eq!(r.interfaces[0].1.index, 3);
        let devices: Vec<_> = r.routes.iter().map(|(_, d)| *d).collect();
        assert_eq!(devices, vec![Some(3), Some(2)]);
    }

    #[test]
    fn unknown_mac_is_refused_listing_the_guests_macs() {
        let c = cfg(vec![iface("0a:58:0a:f4:00:05", "eth0", &[])], vec![]);
        assert_eq!(
            resolve_err(&c),
            "interfaces[0].mac: no guest interface has MAC 0a:58:0a:f4:00:05; the guest has \
             52:54:00:12:34:56 (eth0), 52:54:00:12:34:57 (eth1)"
        );
    }

    #[test]
    fn a_name_held_by_another_link_is_refused() {
        let c = cfg(vec![iface("52:54:00:12:34:57", "eth0", &[])], vec![]);
        let e = resolve_err(&c);
        assert!(
            e.starts_with("interfaces[0].name: \"eth0\" is already"),
            "{e}"
        );
        // Keeping one's own name is fine.
        let c = cfg(vec![iface("52:54:00:12:34:56", "eth0", &[])], vec![]);
        resolve(&parse(&c).unwrap(), &links()).unwrap();
    }

    #[test]
    fn a_route_device_must_exist_after_renaming() {
        // eth1 is renamed away, so a route on "eth1" has no device.
        let c = cfg(
            vec![iface("52:54:00:12:34:57", "pod0", &[])],
            vec![route("", "10.0.0.1", "eth1")],
        );
        assert_eq!(
            resolve_err(&c),
            "routes[0].device: no guest interface is called \"eth1\" (after renaming); \
             the guest has lo, eth0, pod0"
        );
    }
}
