//! Guest networking (ConfigureNetwork): `lo` up; each virtio-net interface,
//! found by MAC, gets its name, MTU and addresses and goes up; then the
//! routes, in order. The whole request is checked first ([`validate`]); a
//! netlink step that fails later undoes what the request did so far.

mod netlink;
pub mod validate;

use std::io;

use husk_agent_api::pb;
use rtnetlink::packet_route::route::RouteMessage;

use netlink::{LinkChange, Netlink};
use validate::{Cidr, Link, Mac, ValidateError};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    #[error(
        "the request has IPv6 addresses or routes but the guest kernel has no IPv6 (CONFIG_IPV6)"
    )]
    NoIpv6,
    #[error("cannot open a netlink socket")]
    Connect(#[source] io::Error),
    /// A netlink step failed; what the request had done is undone.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
}

/// One interface as ConfigureNetwork left it (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    pub mac: Mac,
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub addresses: Vec<Cidr>,
}

/// What to do to take back one change.
enum Undo {
    Link { link: Link },
    Addr { index: u32, addr: Cidr },
    Route(RouteMessage),
}

/// ConfigureNetwork requests run one at a time.
static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Applies `req` to the network namespace of the calling thread. Blocks
/// for the few netlink round trips it takes.
pub fn configure(req: &pb::NetworkConfig) -> Result<Vec<Configured>, NetError> {
    let plan = validate::parse(req)?;
    if plan.uses_ipv6() && !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        return Err(NetError::NoIpv6);
    }
    let _one = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut nl = Netlink::connect().map_err(NetError::Connect)?;
    let links = nl.links().map_err(|source| NetError::Step {
        step: "list the guest's interfaces".into(),
        source,
    })?;
    let resolved = validate::resolve(&plan, &links)?;
    let mut undo = Vec::new();
    let r = apply(&mut nl, &links, &resolved, &mut undo);
    if r.is_err() {
        rollback(&mut nl, undo);
    }
    r
}

fn apply(
    nl: &mut Netlink,
    links: &[Link],
    resolved: &validate::Resolved<'_>,
    undo: &mut Vec<Undo>,
) -> Result<Vec<Configured>, NetError> {
    let step = |step: String| move |source| NetError::Step { step, source };
    if let Some(lo) = links.iter().find(|l| l.name == "lo" && !l.up) {
        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        nl.set_link(lo.index, &up)
            .map_err(step("bring lo up".into()))?;
    }
    let mut done = Vec::with_capacity(resolved.interfaces.len());
    for (p, link) in &resolved.interfaces {
        let name = p.name.clone().unwrap_or_else(|| link.name.clone());
        let what = format!("interface {} ({}, index {})", link.name, p.mac, link.index);
        let rename = name != link.name;
        let mtu = p.mtu.filter(|m| *m != link.mtu);
        if rename || mtu.is_some() || !link.up {
            undo.push(Undo::Link {
                link: (*link).clone(),
            });
        }
        if rename || mtu.is_some() {
            // A link must be down to be renamed.
            let change = LinkChange {
                name: rename.then(|| name.clone()),
                mtu,
                up: rename.then_some(false),
            };
            let doing = match mtu {
                Some(m) if rename => format!("rename {what} to {name} and set its MTU to {m}"),
                Some(m) => format!("set the MTU of {what} to {m}"),
                None => format!("rename {what} to {name}"),
            };
            nl.set_link(link.index, &change).map_err(step(doing))?;
        }
        for a in &p.addresses {
            let added = nl
                .add_addr(link.index, *a)
                .map_err(step(format!("add address {a} to {name}")))?;
            if added {
                undo.push(Undo::Addr {
                    index: link.index,
                    addr: *a,
                });
            }
        }
        if !link.up || rename {
            let up = LinkChange {
                up: Some(true),
                ..Default::default()
            };
            nl.set_link(link.index, &up)
                .map_err(step(format!("set {name} up")))?;
        }
        done.push(Configured {
            mac: p.mac,
            index: link.index,
            name,
            mtu: mtu.unwrap_or(link.mtu),
            addresses: p.addresses.clone(),
        });
    }
    for (i, (r, dev)) in resolved.routes.iter().enumerate() {
        let m = netlink::route_message(r, *dev);
        let added = nl
            .add_route(&m)
            .map_err(step(format!("add route {i} ({})", describe_route(r))))?;
        if added {
            undo.push(Undo::Route(m));
        }
    }
    Ok(done)
}

fn describe_route(r: &validate::RoutePlan) -> String {
    let mut s = match r.destination {
        Some(d) => d.to_string(),
        None => "default".into(),
    };
    if let Some(g) = r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(d) = &r.device {
        s.push_str(&format!(" dev {d}"));
    }
    if let Some(src) = r.source {
        s.push_str(&format!(" src {src}"));
    }
    s
}

/// Best effort, newest change first; failures are logged, not returned.
fn rollback(nl: &mut Netlink, undo: Vec<Undo>) {
    for u in undo.into_iter().rev() {
        let (what, r) = match u {
            Undo::Route(m) => ("remove a route".to_string(), nl.del_route(&m)),
            Undo::Addr { index, addr } => (
                format!("remove address {addr} from index {index}"),
                nl.del_addr(index, addr),
            ),
            Undo::Link { link } => (
                format!("restore interface {} (index {})", link.name, link.index),
                restore(nl, &link),
            ),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "ConfigureNetwork rollback: cannot {what}");
        }
    }
}

/// Gives a link back its name, MTU and up/down state.
fn restore(nl: &mut Netlink, link: &Link) -> io::Result<()> {
    let down = LinkChange {
        up: Some(false),
        ..Default::default()
    };
    nl.set_link(link.index, &down)?;
    let back = LinkChange {
        name: Some(link.name.clone()),
        mtu: Some(link.mtu),
        up: link.up.then_some(true),
    };
    nl.set_link(link.index, &back)
}

#[cfg(test)]
mod netns_tests;
