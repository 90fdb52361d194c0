//! What the pod's network namespace holds (read with netlink), and what the
//! guest should get from it (pure, unit-tested).

use std::net::IpAddr;

use futures_util::TryStreamExt;
use husk_agent_api::pb;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkLayerType};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::Handle;

use super::NetError;

/// One link of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// An Ethernet link (veth, bridge port, macvlan...), not lo or a tunnel.
    pub ether: bool,
}

/// One address of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
}

/// One route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub src: Option<IpAddr>,
    pub scope: u8,
    /// Made by the kernel for an address (the guest's kernel makes its own).
    pub kernel: bool,
}

/// The namespace as netlink reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub links: Vec<Link>,
    pub addrs: Vec<Addr>,
    pub routes: Vec<Route>,
}

/// The interface the guest gets and its configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The CNI's interface in the namespace (e.g. eth0, a veth).
    pub link: Link,
    pub guest: pb::NetworkConfig,
    /// Left out because the guest kernel has no IPv6.
    pub skipped_v6: usize,
}

fn nl(op: &'static str) -> impl Fn(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink { op, source }
}

/// Reads links, addresses and main-table unicast routes.
pub async fn read(handle: &Handle) -> Result<View, NetError> {
    let mut view = View::default();
    let mut links = handle.link().get().execute();
    while let Some(m) = links.try_next().await.map_err(nl("list links"))? {
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            ether: m.header.link_layer_type == LinkLayerType::Ether,
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(n) => link.mtu = n,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&a);
                    link.mac = Some(mac);
                }
                _ => {}
            }
        }
        view.links.push(link);
    }
    let mut addrs = handle.address().get().execute();
    while let Some(m) = addrs.try_next().await.map_err(nl("list addresses"))? {
        // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the
        // peer's on point-to-point links).
        let mut ip = None;
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(l) => ip = Some(*l),
                AddressAttribute::Address(l) if ip.is_none() => ip = Some(*l),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            view.addrs.push(Addr {
                index: m.header.index,
                ip,
                prefix: m.header.prefix_len,
            });
        }
    }
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessage::default();
        q.header.address_family = family;
        let mut routes = handle.route().get(q).execute();
        while let Some(m) = routes.try_next().await.map_err(nl("list routes"))? {
            if let Some(r) = route(&m) {
                view.routes.push(r);
            }
        }
    }
    Ok(view)
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table unicast route, or None.
fn route(m: &RouteMessage) -> Option<Route> {
    let mut table = u32::from(m.header.table);
    let mut r = Route {
        dst: None,
        gateway: None,
        oif: None,
        src: None,
        scope: m.header.scope.into(),
        kernel: m.header.protocol == RouteProtocol::Kernel,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => {
                r.dst = ip_of(d).map(|ip| (ip, m.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => r.gateway = ip_of(g),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::PrefSource(s) => r.src = ip_of(s),
            _ => {}
        }
    }
    let main = table == u32::from(RouteHeader::RT_TABLE_MAIN);
    (main && m.header.kind == RouteType::Unicast).then_some(r)
}

fn mac_string(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The guest's network from the namespace's: its one Ethernet interface
/// (other than `skip`, the shim's own tap), its IPv4 addresses, and the
/// routes through it that the guest kernel does not make by itself.
/// `Ok(None)` when the namespace has no such interface (no CNI ran).
pub fn plan(view: &View, skip: &str) -> Result<Option<Plan>, NetError> {
    let nics: Vec<&Link> = view
        .links
        .iter()
        .filter(|l| l.ether && l.mac.is_some() && l.name != skip && l.name != "lo")
        .collect();
    let link = match nics.as_slice() {
        [] => return Ok(None),
        [one] => (*one).clone(),
        many => {
            let names: Vec<&str> = many.iter().map(|l| l.name.as_str()).collect();
            return Err(NetError::Unsupported(format!(
                "{} network interfaces ({}); a husk pod gets one NIC",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let mut skipped_v6 = 0;
    let mut addresses = Vec::new();
    for a in view.addrs.iter().filter(|a| a.index == link.index) {
        match a.ip {
            IpAddr::V4(_) => addresses.push(pb::IpAddress {
                address: a.ip.to_string(),
                prefix_len: u32::from(a.prefix),
            }),
            // fe80:: is made by every kernel from the MAC; others need IPv6.
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => {}
            IpAddr::V6(_) => skipped_v6 += 1,
        }
    }
    let mut routes: Vec<(&Route, pb::Route)> = Vec::new();
    for r in &view.routes {
        if r.kernel || r.oif != Some(link.index) {
            continue;
        }
        let v6 = r.dst.map(|(ip, _)| ip.is_ipv6()).unwrap_or(false)
            || r.gateway.map(|g| g.is_ipv6()).unwrap_or(false);
        if v6 {
            skipped_v6 += 1;
            continue;
        }
        routes.push((
            r,
            pb::Route {
                destination: r
                    .dst
                    .filter(|(_, len)| *len > 0)
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .unwrap_or_default(),
                gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
                device: link.name.clone(),
                source: r.src.map(|s| s.to_string()).unwrap_or_default(),
                scope: u32::from(r.scope),
            },
        ));
    }
    // Routes without a gateway first: a gateway must be reachable when its
    // route is added.
    routes.sort_by_key(|(r, _)| r.gateway.is_some());
    let guest = pb::NetworkConfig {
        interfaces: vec![pb::Interface {
            mac: mac_string(link.mac.as_ref().expect("filtered on a MAC")),
            name: link.name.clone(),
            mtu: link.mtu,
            addresses,
        }],
        routes: routes.into_iter().map(|(_, r)| r).collect(),
    };
    Ok(Some(Plan {
        link,
        guest,
        skipped_v6,
    }))
}

#[cfg(test)]
mod tests;
