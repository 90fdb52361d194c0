//! The few rtnetlink requests ConfigureNetwork needs, on one blocking
//! NETLINK_ROUTE socket. Messages are built with rtnetlink's builders and
//! emitted by netlink-packet-route; replies are read at the buffer level
//! (acks, and three attributes of each link), so the agent carries no
//! parser for all of rtnetlink's message kinds (see docs/agent.md, Network).
//! Errors come back as `io::Error` with the kernel's errno.

use std::io;
use std::net::IpAddr;

use rtnetlink::packet_core::{
    Emitable, NetlinkBuffer, NetlinkHeader, NlasIterator, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkFlags, LinkHeader, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::validate::{Cidr, Link, Mac, RoutePlan};

const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
/// Large enough for any datagram the kernel sends on a dump.
const RECV_BUF: usize = 64 * 1024;

/// One rtnetlink socket in the calling thread's network namespace.
pub struct Netlink {
    sock: Socket,
    seq: u32,
}

/// What a link becomes: each `Some` is changed, `None` left as it is.
#[derive(Debug, Default, Clone)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
}

fn bad_reply(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {what}"))
}

/// Ok(true): done; Ok(false): it was already there (EEXIST).
fn created(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A link from an RTM_NEWLINK payload: its index, flags and the three
/// attributes used here.
fn parse_link(payload: &[u8]) -> io::Result<Link> {
    let h = LinkHeader::parse(payload).map_err(|_| bad_reply("short link message"))?;
    let mut l = Link {
        index: h.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: h.flags.contains(LinkFlags::Up),
    };
    for nla in NlasIterator::new(&payload[IFINFOMSG_LEN..]) {
        let nla = nla.map_err(|_| bad_reply("bad link attribute"))?;
        let v = nla.value();
        match nla.kind() {
            IFLA_IFNAME => {
                let v = v.split(|b| *b == 0).next().unwrap_or_default();
                l.name = String::from_utf8_lossy(v).into_owned();
            }
            IFLA_MTU if v.len() == 4 => l.mtu = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
            IFLA_ADDRESS => l.mac = <[u8; 6]>::try_from(v).ok().map(Mac),
            _ => {}
        }
    }
    Ok(l)
}

impl Netlink {
    pub fn connect() -> io::Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { sock, seq: 0 })
    }

    /// Sends one request and reads the replies to it until the ack (or,
    /// for a dump, NLMSG_DONE), passing every other message's type and
    /// payload to `each`.
    fn request(
        &mut self,
        message_type: u16,
        flags: u16,
        body: &dyn Emitable,
        mut each: impl FnMut(u16, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + body.buffer_len();
        let mut header = NetlinkHeader::default();
        header.length = len as u32;
        header.message_type = message_type;
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut buf = vec![0u8; len];
        header.emit(&mut buf);
        body.emit(&mut buf[NLMSG_HDRLEN..]);
        self.sock.send(&buf, 0)?;
        let mut buf = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            let n = self.sock.recv(&mut buf, 0)?;
            if n > buf.len() {
                return Err(bad_reply("datagram larger than the buffer"));
            }
            let mut off = 0;
            while off < n {
                let m = NetlinkBuffer::new_checked(&buf[off..n])
                    .map_err(|_| bad_reply("bad message header"))?;
                let mlen = m.length() as usize;
                off += (mlen + 3) & !3;
                if m.sequence_number() != self.seq {
                    continue;
                }
                match m.message_type() {
                    NLMSG_ERROR => {
                        let p = m.payload();
                        let code = p
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| bad_reply("short error message"))?;
                        return match code {
                            0 => Ok(()),
                            c => Err(io::Error::from_raw_os_error(-c)),
                        };
                    }
                    NLMSG_DONE => return Ok(()),
                    t => each(t, m.payload())?,
                }
            }
        }
    }

    /// An acknowledged request whose only reply is the ack.
    fn ack(&mut self, message_type: u16, flags: u16, body: &dyn Emitable) -> io::Result<()> {
        self.request(
            message_type,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            body,
            |_, _| Ok(()),
        )
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut links = Vec::new();
        let flags = NLM_F_REQUEST | NLM_F_DUMP;
        self.request(libc::RTM_GETLINK, flags, &LinkMessage::default(), |t, p| {
            if t == libc::RTM_NEWLINK {
                links.push(parse_link(p)?);
            }
            Ok(())
        })?;
        Ok(links)
    }

    pub fn set_link(&mut self, index: u32, c: &LinkChange) -> io::Result<()> {
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
        self.ack(libc::RTM_SETLINK, 0, &b.build())
    }

    fn addr_msg(index: u32, a: Cidr) -> AddressMessage {
        match a.addr {
            IpAddr::V4(v) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
                .index(index)
                .address(v, a.prefix)
                .build(),
            IpAddr::V6(v) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(index)
                .address(v, a.prefix)
                .build(),
        }
    }

    /// Ok(false) when the link already has the address.
    pub fn add_addr(&mut self, index: u32, a: Cidr) -> io::Result<bool> {
        let m = Self::addr_msg(index, a);
        created(self.ack(libc::RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &m))
    }

    pub fn del_addr(&mut self, index: u32, a: Cidr) -> io::Result<()> {
        self.ack(libc::RTM_DELADDR, 0, &Self::addr_msg(index, a))
    }

    /// Ok(false) when the route exists already.
    pub fn add_route(&mut self, m: &RouteMessage) -> io::Result<bool> {
        created(self.ack(libc::RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, m))
    }

    pub fn del_route(&mut self, m: &RouteMessage) -> io::Result<()> {
        self.ack(libc::RTM_DELROUTE, 0, m)
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
