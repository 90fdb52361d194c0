//! Pod networking (issue 6) end to end: CRI pods on a real CNI network
//! (Debian's containernetworking-plugins: bridge + host-local, configured by
//! scripts/test-env.sh on its own bridge and subnet), under containerd 1.6
//! and 2.x.
//!
//! - `pods_talk` runs in every runc-mode cell (containerd's runc shim as the
//!   reference, and husk's runc mode) and `vm_pods_talk` in husk's VM mode:
//!   two pods get addresses; a container of one pod sends to a TCP server
//!   in the other (busybox `nc`), the host exchanges bytes with a server in
//!   a pod; inside each pod (the guest, in VM mode) `eth0` has the CNI's
//!   address and MTU; in VM mode the namespace holds husk's tap joined to
//!   the veth by tc mirred filters. After the pods are removed no network
//!   namespace, veth, tap or qdisc of theirs is left.
//! - `host_network_pod`: runc mode runs a pod on the host's network;
//!   `host_network_vm_pod_refused`: VM mode refuses one, naming why, and
//!   leaves nothing.
//!
//! VM mode boots two guests per cell (10-90 s each on the project's
//! emulating KVM).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use husk_e2e::cmd::poll;
use husk_e2e::cri::{container_config, pod_config, Cri};
use husk_e2e::net::{self, PodNet};
use husk_e2e::{matrix, vm, vm_matrix, Case};
use k8s_cri::v1::{LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig};

/// Pod A's servers: one keeps what a client sends (from pod B), one answers
/// the host and keeps what it sent. Then it idles without forking (each
/// fork costs seconds of emulated kernel time in a guest).
const SERVERS: &str = "nc -l -p 5001 > /tmp/from-pod & \
                       echo 'pong from pod A' | nc -l -p 5002 > /tmp/from-host & \
                       echo ready > /tmp/ready; sleep 3600 & wait";
const POD_PORT: u16 = 5001;
const HOST_PORT: u16 = 5002;

/// How long a step that runs in a guest may take on the emulating KVM.
fn step_timeout(case: &Case) -> Duration {
    if case.target.runtime.is_vm() {
        Duration::from_secs(240)
    } else {
        Duration::from_secs(30)
    }
}

fn run_pod(case: &mut Case, cri: &Cri) -> Result<(String, PodSandboxConfig)> {
    let parent = case.cgroup_parent();
    let cfg = pod_config(&case.unique("pod"), &parent);
    let id = cri.run_pod(&cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&id);
    Ok((id, cfg))
}

fn start(
    case: &mut Case,
    cri: &Cri,
    pod: &str,
    pod_cfg: &PodSandboxConfig,
    name: &str,
    script: &str,
) -> Result<String> {
    let id = cri
        .create_container(pod, &container_config(name, script, None), pod_cfg)
        .with_context(|| format!("CreateContainer {name}"))?;
    case.track(&id);
    cri.start_container(&id)?;
    Ok(id)
}

/// Runs `sh -c script` in container `id`; fails unless it exits 0.
fn sh(cri: &Cri, id: &str, script: &str) -> Result<String> {
    let (code, out, err) = cri.exec_sync_timeout(id, &["sh", "-c", script], 120)?;
    ensure!(
        code == 0,
        "`{script}` exited {code}\nstdout: {out}\nstderr: {err}"
    );
    Ok(out)
}

/// `eth0` inside the pod (the guest's NIC in VM mode) has the pod's
/// address and the CNI's MTU.
fn check_eth0(cri: &Cri, id: &str, n: &PodNet) -> Result<()> {
    let mtu = sh(cri, id, "cat /sys/class/net/eth0/mtu")?;
    ensure!(
        mtu.trim() == net::MTU.to_string(),
        "eth0 MTU {mtu:?}, the CNI set {}",
        net::MTU
    );
    let addr = sh(cri, id, "ip -4 -o addr show dev eth0")?;
    ensure!(
        addr.contains(&format!("inet {}/24", n.ip)),
        "eth0 of the pod with address {} shows: {addr}",
        n.ip
    );
    Ok(())
}

/// husk's wiring in a VM pod's namespace: the tap, and the veth's and the
/// tap's ingress redirects to each other.
fn check_vm_wiring(n: &PodNet) -> Result<()> {
    let links = net::links(&n.netns)?;
    ensure!(
        links.iter().any(|l| l == net::TAP),
        "no {} in {}: {links:?}",
        net::TAP,
        n.netns.display()
    );
    for (from, to) in [("eth0", net::TAP), (net::TAP, "eth0")] {
        let filters = net::in_netns(&n.netns, &["tc", "filter", "show", "dev", from, "ingress"])?;
        ensure!(
            filters.contains("mirred") && filters.contains(to),
            "{from}'s ingress does not redirect to {to}: {filters}"
        );
    }
    Ok(())
}

fn pods_talk(case: &mut Case) -> Result<()> {
    if case.target.runtime.is_vm() && !vm::requirements_met(case.target) {
        return Ok(());
    }
    let cri = case.cri()?;
    let wait = step_timeout(case);

    let (a, a_cfg) = run_pod(case, &cri)?;
    let server = start(case, &cri, &a, &a_cfg, "server", SERVERS)?;
    let (b, b_cfg) = run_pod(case, &cri)?;
    let client = start(case, &cri, &b, &b_cfg, "client", "sleep 3600")?;

    let na = net::pod_net(&cri, &a)?;
    let nb = net::pod_net(&cri, &b)?;
    ensure!(
        na.ip != nb.ip && na.ip.starts_with("10.88.77.") && nb.ip.starts_with("10.88.77."),
        "pod addresses {} and {} (CNI subnet 10.88.77.0/24)",
        na.ip,
        nb.ip
    );
    ensure!(na.netns != nb.netns, "both pods in {}", na.netns.display());
    check_eth0(&cri, &server, &na)?;
    check_eth0(&cri, &client, &nb)?;
    if case.target.runtime.is_vm() {
        check_vm_wiring(&na)?;
        check_vm_wiring(&nb)?;
    }
    poll(wait, "pod A's servers", || {
        Ok((cri.exec_sync(&server, &["cat", "/tmp/ready"])?.0 == 0).then_some(()))
    })?;

    // pod B → pod A
    let msg = format!("hello from pod B at {}", nb.ip);
    sh(
        &cri,
        &client,
        &format!("echo '{msg}' | nc -w 30 {} {POD_PORT}", na.ip),
    )?;
    poll(wait, "pod A to receive pod B's bytes", || {
        Ok(sh(&cri, &server, "cat /tmp/from-pod")?
            .contains(&msg)
            .then_some(()))
    })?;

    // host → pod A and back
    let got = net::host_exchange(&na.ip, HOST_PORT, b"ping from the host\n", wait)?;
    ensure!(
        got == b"pong from pod A\n",
        "the host got {:?}",
        String::from_utf8_lossy(&got)
    );
    poll(wait, "pod A to receive the host's bytes", || {
        Ok(sh(&cri, &server, "cat /tmp/from-host")?
            .contains("ping from the host")
            .then_some(()))
    })?;

    // the leftover check sees a live pod's network (so its silence later
    // means the pieces are gone)
    for n in [&na, &nb] {
        let live = net::leftovers(n);
        ensure!(
            live.iter().any(|l| l.contains("network namespace"))
                && live.iter().any(|l| l.contains(&n.host_veth)),
            "the leftover check does not see the live pod {}: {live:?}",
            n.ip
        );
    }
    for pod in [&a, &b] {
        cri.stop_pod(pod)?;
        cri.remove_pod(pod)?;
    }
    net::wait_gone(&[na, nb], Duration::from_secs(60))
}
matrix!(pods_talk);

fn vm_pods_talk(case: &mut Case) -> Result<()> {
    pods_talk(case)
}
vm_matrix!(vm_pods_talk);

fn host_network_config(case: &mut Case) -> PodSandboxConfig {
    let parent = case.cgroup_parent();
    let mut cfg = pod_config(&case.unique("hostnet"), &parent);
    // as kubelet: a host-network pod has the node's UTS namespace and name
    cfg.hostname = String::new();
    if let Some(linux) = cfg.linux.as_mut() {
        linux.security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    cfg
}

fn host_network_pod(case: &mut Case) -> Result<()> {
    let cri = case.cri()?;
    let cfg = host_network_config(case);
    let pod = cri.run_pod(&cfg, case.target.runtime.cri_handler())?;
    case.track_pod(&pod);
    let id = start(case, &cri, &pod, &cfg, "hostnet", "sleep 3600")?;
    // the test bridge exists only in the host's namespace
    let mtu = sh(
        &cri,
        &id,
        &format!("cat /sys/class/net/{}/mtu", net::BRIDGE),
    )?;
    ensure!(
        mtu.trim() == net::MTU.to_string(),
        "host bridge MTU from the pod: {mtu:?}"
    );
    cri.stop_pod(&pod)?;
    cri.remove_pod(&pod)
}
matrix!(host_network_pod);

fn state_dirs(case: &Case) -> Vec<PathBuf> {
    let mut d: Vec<PathBuf> = std::fs::read_dir(case.target.husk_state_root())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    d.sort();
    d
}

fn host_network_vm_pod_refused(case: &mut Case) -> Result<()> {
    if !vm::requirements_met(case.target) {
        return Ok(());
    }
    let cri = case.cri()?;
    let before = state_dirs(case);
    let cfg = host_network_config(case);
    let name = cfg
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let err = match cri.run_pod(&cfg, case.target.runtime.cri_handler()) {
        Ok(id) => {
            case.track_pod(&id);
            anyhow::bail!("RunPodSandbox of a host-network pod succeeded in VM mode: {id}");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("host's network") && err.contains("runc-mode handler"),
        "the error does not say why: {err}"
    );
    for id in cri.pods_named(&name)? {
        case.track_pod(&id);
    }
    ensure!(
        cri.pods_named(&name)?.is_empty(),
        "the refused pod is still listed"
    );
    let after = state_dirs(case);
    ensure!(
        before == after,
        "husk state dirs before {before:?}, after {after:?}"
    );
    Ok(())
}
vm_matrix!(host_network_vm_pod_refused);
