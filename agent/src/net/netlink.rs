//! The few rtnetlink requests ConfigureNetwork needs, on one connection.
//! Errors come back as `io::Error` with the kernel's errno.

use std::io;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::{LinkUnspec, RouteMessageBuilder};

use super::validate::{Cidr, Link, Mac, RoutePlan};

/// One rtnetlink socket in the calling thread's network namespace; its
/// connection task runs on the current tokio runtime until this is dropped.
pub struct Netlink {
    handle: rtnetlink::Handle,
}

fn to_io(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

/// Ok(true): done; Ok(false): it was already there (EEXIST).
fn created(r: Result<(), rtnetlink::Error>) -> io::Result<bool> {
    match r.map_err(to_io) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

fn link_from(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(v) => l.mtu = v,
            LinkAttribute::Address(b) => l.mac = <[u8; 6]>::try_from(b.as_slice()).ok().map(Mac),
            _ => {}
        }
    }
    l
}

/// What a link becomes: each `Some` is changed, `None` left as it is.
#[derive(Debug, Default, Clone)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
}

impl Netlink {
    pub fn connect() -> io::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> io::Result<Vec<Link>> {
        let stream = self.handle.link().get().execute();
        let msgs: Vec<LinkMessage> = stream.try_collect().await.map_err(to_io)?;
        Ok(msgs.into_iter().map(link_from).collect())
    }

    pub async fn set_link(&self, index: u32, c: &LinkChange) -> io::Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(n) = &c.name {
            b = b.name(n.clone());
        }
        if let Some(m) = c.mtu {
            b = b.mtu(m);
        }
        b = match c.up {
            Some(true) => b.up(),
            Some(false) => b.down(),
            None => b,
        };
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(to_io)
    }

    fn addr_msg(&self, index: u32, a: Cidr) -> AddressMessage {
        let mut req = self.handle.address().add(index, a.addr, a.prefix);
        req.message_mut().clone()
    }

    /// Ok(false) when the link already has the address.
    pub async fn add_addr(&self, index: u32, a: Cidr) -> io::Result<bool> {
        let r = self.handle.address().add(index, a.addr, a.prefix).execute();
        created(r.await)
    }

    pub async fn del_addr(&self, index: u32, a: Cidr) -> io::Result<()> {
        let m = self.addr_msg(index, a);
        self.handle.address().del(m).execute().await.map_err(to_io)
    }

    /// Ok(false) when the route exists already.
    pub async fn add_route(&self, m: &RouteMessage) -> io::Result<bool> {
        created(self.handle.route().add(m.clone()).execute().await)
    }

    pub async fn del_route(&self, m: &RouteMessage) -> io::Result<()> {
        let r = self.handle.route().del(m.clone()).execute().await;
        r.map_err(to_io)
    }
}

/// The RTM_NEWROUTE message for a checked route (main table, static).
pub fn route_message(r: &RoutePlan, device: Option<u32>) -> RouteMessage {
    let unspecified = if r.ipv6 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    };
    let dst = r.destination.unwrap_or(Cidr {
        addr: unspecified,
        prefix: 0,
    });
    // The plan is checked: every address has the route's family and the
    // prefix fits it, so the builder cannot refuse.
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.addr, dst.prefix)
        .expect("checked destination");
    if let Some(g) = r.gateway {
        b = b.gateway(g).expect("checked gateway");
    }
    if let Some(s) = r.source {
        b = b.pref_source(s).expect("checked source");
    }
    if let Some(i) = device {
        b = b.output_interface(i);
    }
    b.scope(RouteScope::from(r.scope)).build()
}
