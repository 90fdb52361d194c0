//! The tap and the tc redirects that join it to the pod's interface
//! (Kata's "tcfilter" model): everything arriving on the veth is sent out
//! of the tap (to the guest), everything the guest sends out of the tap is
//! sent out of the veth. The veth keeps its addresses; the namespace's own
//! stack no longer sees its traffic. Runs inside the pod's namespace.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::tc::TcHandle;
use rtnetlink::{Handle, LinkUnspec};

use super::NetError;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// ETH_P_ALL, in network byte order as tc's `protocol all` gives it.
const PROTO_ALL: u16 = 0x0003u16.to_be();
/// The ingress qdisc's handle, `ffff:`.
const INGRESS: u32 = 0xffff_0000;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    pad: [u8; 22],
}

fn tap_err(tap: &str) -> impl Fn(std::io::Error) -> NetError + '_ {
    move |source| NetError::Tap {
        name: tap.to_string(),
        source,
    }
}

fn ioctl(f: &File, req: libc::c_ulong, arg: *const libc::c_void) -> std::io::Result<()> {
    // SAFETY: `arg` points to what the tun ioctl `req` expects (an ifreq or
    // an int value), valid for the call; `f` is an open /dev/net/tun.
    if unsafe { libc::ioctl(f.as_raw_fd(), req, arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a persistent tap `name` in this thread's namespace, with the
/// flags husk-vmm attaches with. It stays after this returns.
fn create_tap(name: &str) -> Result<(), NetError> {
    let err = tap_err(name);
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(&err)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    ioctl(&tun, TUNSETIFF, (&req as *const IfReq).cast()).map_err(&err)?;
    // SAFETY: TUNSETPERSIST takes an integer argument; `tun` is an open
    // /dev/net/tun attached to the tap.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

fn nl(op: &'static str) -> impl Fn(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink { op, source }
}

/// The index of link `name`, if it exists.
async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(m) => Ok(m.map(|m| m.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl("find link")(e)),
    }
}

/// Creates tap `tap` (MTU `mtu`, up) and the redirects between it and the
/// link `veth` (index). Anything of a previous attempt is removed first.
pub async fn wire(handle: Handle, tap: String, veth: u32, mtu: u32) -> Result<(), NetError> {
    unwire(&handle, &tap, veth).await?;
    create_tap(&tap)?;
    let tap_index = index_of(&handle, &tap)
        .await?
        .ok_or_else(|| NetError::Tap {
            name: tap.clone(),
            source: std::io::Error::other("created, but netlink does not list it"),
        })?;
    let done = async {
        handle
            .link()
            .set(LinkUnspec::new_with_index(tap_index).mtu(mtu).up().build())
            .execute()
            .await
            .map_err(nl("set the tap's MTU and up"))?;
        for (from, to) in [(veth, tap_index), (tap_index, veth)] {
            handle
                .qdisc()
                .add(from as i32)
                .ingress()
                .execute()
                .await
                .map_err(nl("add an ingress qdisc"))?;
            handle
                .traffic_filter(from as i32)
                .add()
                .parent(INGRESS)
                .protocol(PROTO_ALL)
                .redirect(to)
                .map_err(nl("build the mirred redirect"))?
                .execute()
                .await
                .map_err(nl("add the mirred redirect"))?;
        }
        Ok(())
    }
    .await;
    if done.is_err() {
        if let Err(e) = unwire(&handle, &tap, veth).await {
            tracing::warn!("undoing a half-made tap: {e}");
        }
    }
    done
}

/// Deletes tap `tap` (its qdisc goes with it) and the ingress qdisc of the
/// link `veth` (index; its filter goes with it). Missing pieces are fine.
pub async fn unwire(handle: &Handle, tap: &str, veth: u32) -> Result<(), NetError> {
    if let Some(i) = index_of(handle, tap).await? {
        match handle.link().del(i).execute().await {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
            Err(e) => return Err(nl("delete the tap")(e)),
        }
    }
    let mut del = handle.qdisc().del(veth as i32);
    del.message_mut().header.parent = TcHandle::INGRESS;
    del.message_mut().header.handle = TcHandle::from(INGRESS);
    match del.execute().await {
        Ok(()) => Ok(()),
        // No qdisc (ENOENT / EINVAL), or no veth any more (ENODEV).
        Err(rtnetlink::Error::NetlinkError(e))
            if [-libc::ENOENT, -libc::EINVAL, -libc::ENODEV].contains(&e.raw_code()) =>
        {
            Ok(())
        }
        Err(e) => Err(nl("delete the veth's ingress qdisc")(e)),
    }
}
