//! ConfigureNetwork over gRPC: a real agent in a network namespace of its
//! own (never the host's), a veth pair standing in for the virtio-net NIC,
//! the result read back with `ip -j` inside that namespace; the error codes
//! the shim sees.

mod common;

use std::process::Command;

use common::*;
use husk_agent_api::pb;
use serde_json::Value;
use tonic::Code;

const NIC_MAC: &str = "02:00:5e:00:01:01";

/// `ip ARGS` inside the agent's network namespace; its stdout.
fn ip_in(agent: &Agent, args: &[&str]) -> String {
    let ns = format!("--net=/proc/{}/ns/net", agent.pid());
    let out = Command::new("nsenter")
        .arg(ns)
        .arg("ip")
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn addr_json(agent: &Agent, dev: &str) -> Value {
    let out = ip_in(agent, &["-j", "addr", "show", "dev", dev]);
    serde_json::from_str::<Vec<Value>>(&out).unwrap().remove(0)
}

fn request(mac: &str, extra_route: Option<pb::Route>) -> pb::NetworkConfig {
    let mut routes = vec![pb::Route {
        gateway: "10.88.0.1".into(),
        ..Default::default()
    }];
    routes.extend(extra_route);
    pb::NetworkConfig {
        interfaces: vec![pb::Interface {
            mac: mac.into(),
            name: "eth0".into(),
            mtu: 1450,
            addresses: vec![pb::IpAddress {
                address: "10.88.0.5".into(),
                prefix_len: 16,
            }],
        }],
        routes,
    }
}

#[tokio::test]
async fn configure_network_in_the_agents_namespace() {
    if !requirements_met()
        || !husk_testutil::require(
            husk_testutil::find_on_path("nsenter").is_some()
                && husk_testutil::find_on_path("ip").is_some(),
            "nsenter (util-linux) and ip (iproute2)",
        )
    {
        return;
    }
    let agent = Agent::start_in_new_netns();
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let theirs = std::fs::read_link(format!("/proc/{}/ns/net", agent.pid())).unwrap();
    assert_ne!(own, theirs, "the agent must not run in the host's network");
    ip_in(
        &agent,
        &[
            "link", "add", "v-nic", "address", NIC_MAC, "type", "veth", "peer", "name", "v-host",
        ],
    );
    ip_in(&agent, &["link", "set", "v-host", "up"]);
    let mut c = agent.client().await;

    // Refused before anything changes: bad syntax, then an unknown MAC.
    let e = c
        .configure_network(request("02:00:5e:00:01", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("interfaces[0].mac: "), "{e:?}");
    let e = c
        .configure_network(request("02:00:5e:00:01:99", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("MAC 02:00:5e:00:01:99; the guest has ")
            && e.message().contains(&format!("{NIC_MAC} (v-nic)")),
        "{e:?}"
    );

    // A route the kernel refuses: Internal, and the request is undone.
    let bad = pb::Route {
        destination: "198.51.100.0/24".into(),
        gateway: "192.0.2.1".into(),
        ..Default::default()
    };
    let e = c
        .configure_network(request(NIC_MAC, Some(bad)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Internal, "{e:?}");
    assert!(e.message().starts_with("add route 1 "), "{e:?}");
    let nic = addr_json(&agent, "v-nic");
    assert_eq!(nic["mtu"], 1500, "{nic}");
    assert!(nic["addr_info"].as_array().unwrap().is_empty(), "{nic}");

    c.configure_network(request(NIC_MAC, None)).await.unwrap();
    let eth0 = addr_json(&agent, "eth0");
    assert_eq!(eth0["address"], NIC_MAC);
    assert_eq!(eth0["mtu"], 1450);
    assert_eq!(eth0["addr_info"][0]["local"], "10.88.0.5");
    assert_eq!(eth0["addr_info"][0]["prefixlen"], 16);
    let routes = ip_in(&agent, &["route", "show", "default"]);
    assert!(
        routes.starts_with("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
}
