//! Pod networking seen from the host: a CRI pod's address and network
//! namespace, the host end of its veth on the test bridge, the tap and tc
//! wiring husk puts in the namespace, and what must be gone after the pod.
//!
//! The test environment (scripts/test-env.sh) gives pods a CNI bridge of
//! their own: [`BRIDGE`] with the host at [`HOST_ADDR`], MTU [`MTU`], no
//! default route, no forwarding or NAT, so test traffic stays on it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cmd;
use crate::cri::Cri;

/// The test CNI bridge (test-env.sh).
pub const BRIDGE: &str = "husktest0";
/// The host's address on [`BRIDGE`].
pub const HOST_ADDR: &str = "10.88.77.1";
/// The MTU the test CNI config gives pod interfaces.
pub const MTU: u32 = 1400;
/// The tap husk's shim creates in a VM pod's namespace.
pub const TAP: &str = "tap0_husk";

/// A running pod's network, recorded so that its removal can be checked.
#[derive(Debug, Clone)]
pub struct PodNet {
    /// The pod's IPv4 address (PodSandboxStatus).
    pub ip: String,
    /// The namespace's bind mount, e.g. `/var/run/netns/cni-...`.
    pub netns: PathBuf,
    /// The namespace's inode: it identifies it after the path is gone.
    pub netns_inode: u64,
    /// The host end of the pod's veth (a port of [`BRIDGE`]).
    pub host_veth: String,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd::run(cmd, Duration::from_secs(20))?.ok()?;
    Ok(out.stdout)
}

/// Runs `args` (e.g. `ip ...`, `tc ...`) inside the network namespace `netns`.
pub fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    run(Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(args))
    .with_context(|| format!("{args:?} in {}", netns.display()))
}

/// The first string in `v` (at any depth) that looks like a network
/// namespace path.
fn find_netns_path(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s)
            if s.starts_with("/var/run/netns/") || s.starts_with("/run/netns/") =>
        {
            Some(s.clone())
        }
        serde_json::Value::Array(a) => a.iter().find_map(find_netns_path),
        serde_json::Value::Object(o) => o.values().find_map(find_netns_path),
        _ => None,
    }
}

/// Reads a running pod's network: its address from PodSandboxStatus, its
/// namespace from the verbose info (containerd names the path there), and
/// the host end of its `eth0` veth.
pub fn pod_net(cri: &Cri, pod: &str) -> Result<PodNet> {
    let st = cri.pod_status(pod)?;
    let ip = st
        .status
        .as_ref()
        .and_then(|s| s.network.as_ref())
        .map(|n| n.ip.clone())
        .filter(|ip| !ip.is_empty())
        .context("PodSandboxStatus has no pod IP")?;
    let netns = st
        .info
        .values()
        .filter_map(|raw| serde_json::from_str::<serde_json::Value>(raw).ok())
        .find_map(|v| find_netns_path(&v))
        .context("no network namespace path in PodSandboxStatus info")?;
    let netns = PathBuf::from(netns);
    let netns_inode = std::fs::metadata(&netns)
        .with_context(|| format!("stat {}", netns.display()))?
        .ino();
    let link: serde_json::Value =
        serde_json::from_str(&in_netns(&netns, &["ip", "-j", "link", "show", "eth0"])?)
            .context("ip -j link JSON")?;
    let peer = link[0]["link_index"]
        .as_u64()
        .context("eth0 in the pod namespace is not a veth (no link_index)")?;
    let host_veth = host_link_by_index(peer)?;
    Ok(PodNet {
        ip,
        netns,
        netns_inode,
        host_veth,
    })
}

/// The host interface with index `index`, checked to be a port of [`BRIDGE`].
fn host_link_by_index(index: u64) -> Result<String> {
    let links: serde_json::Value =
        serde_json::from_str(&run(Command::new("ip").args(["-j", "link", "show"]))?)?;
    let link = links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifindex"].as_u64() == Some(index))
        .with_context(|| format!("no host interface with index {index}"))?;
    let name = link["ifname"].as_str().context("ifname")?.to_string();
    if link["master"].as_str() != Some(BRIDGE) {
        bail!("host veth {name} is not a port of {BRIDGE}: {link}");
    }
    Ok(name)
}

/// The interface names inside `netns`.
pub fn links(netns: &Path) -> Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&in_netns(netns, &["ip", "-j", "link"])?)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}

fn host_has_link(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// What is left of a removed pod's network: its namespace (by path, by a
/// process inside it, or by a mount of it anywhere), and so the tap and
/// the tc qdiscs and filters inside it; its host veth; a tap on the host.
pub fn leftovers(net: &PodNet) -> Vec<String> {
    let mut left = Vec::new();
    if net.netns.exists() {
        left.push(format!("network namespace {}", net.netns.display()));
    }
    let ns = format!("net:[{}]", net.netns_inode);
    for pid in crate::vm::all_pids() {
        if std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|l| l.to_string_lossy() == ns)
        {
            left.push(format!(
                "process {pid} ({}) in the pod's network namespace",
                crate::vm::cmdline(pid)
            ));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines().filter(|l| l.contains(&ns)) {
        left.push(format!("the pod's network namespace still mounted: {line}"));
    }
    if host_has_link(&net.host_veth) {
        left.push(format!("host veth {}", net.host_veth));
    }
    if host_has_link(TAP) {
        left.push(format!("{TAP} in the host's namespace"));
    }
    left
}

/// Waits up to `timeout` for [`leftovers`] of every pod to be empty; the
/// error lists what is still there.
pub fn wait_gone(nets: &[PodNet], timeout: Duration) -> Result<()> {
    let r = cmd::poll(timeout, "pod networks to go away", || {
        Ok(nets.iter().all(|n| leftovers(n).is_empty()).then_some(()))
    });
    if r.is_err() {
        let left: Vec<String> = nets.iter().flat_map(leftovers).collect();
        bail!(
            "left behind after the pods were removed:\n  {}",
            left.join("\n  ")
        );
    }
    Ok(())
}

/// Connects from the host to `ip:port`, sends `send`, half-closes and
/// reads until the server closes; retried until `timeout` (the server may
/// not listen yet).
pub fn host_exchange(ip: &str, port: u16, send: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    cmd::poll(timeout, &format!("a TCP exchange with {addr}"), || {
        let exchange = || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            s.write_all(send)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let mut got = Vec::new();
            s.read_to_end(&mut got)?;
            Ok(got)
        };
        // refused (not listening yet), reset or empty: try again
        Ok(exchange().ok().filter(|g| !g.is_empty()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_path_is_found_anywhere_in_the_info() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"pid": 7, "metadata": {"Name": "x", "NetNSPath": "/var/run/netns/cni-1234"},
                "runtimeSpec": {"linux": {"namespaces": [{"type": "pid"}]}}}"#,
        )
        .unwrap();
        assert_eq!(
            find_netns_path(&v).as_deref(),
            Some("/var/run/netns/cni-1234")
        );
        let none: serde_json::Value =
            serde_json::from_str(r#"{"a": ["/proc/1/ns/net", 3]}"#).unwrap();
        assert_eq!(find_netns_path(&none), None);
    }
}
