//! Guest cgroup numbers (the agent's StatsContainer) in containerd's
//! `io.containerd.cgroups.v2.Metrics` form, and OCI resources in the
//! agent's form.

use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;
use husk_agent_api::pb;
use oci_spec::runtime::LinuxResources;

/// Packs the agent's stats the way containerd unpacks cgroup v2 metrics.
pub fn metrics_any(s: &pb::StatsContainerResponse) -> Any {
    let mut m = v2::Metrics::new();
    m.pids = Some(v2::PidsStat {
        current: s.pids_current,
        limit: s.pids_limit,
        ..Default::default()
    })
    .into();
    m.cpu = Some(v2::CPUStat {
        usage_usec: s.cpu_usage_ns / 1000,
        user_usec: s.cpu_user_ns / 1000,
        system_usec: s.cpu_system_ns / 1000,
        ..Default::default()
    })
    .into();
    m.memory = Some(v2::MemoryStat {
        usage: s.memory_usage,
        usage_limit: s.memory_limit,
        max_usage: s.memory_max_usage,
        ..Default::default()
    })
    .into();
    m.memory_events = Some(v2::MemoryEvents {
        oom_kill: s.oom_kills,
        ..Default::default()
    })
    .into();
    m.io = Some(v2::IOStat {
        usage: vec![v2::IOEntry {
            rbytes: s.io_read_bytes,
            wbytes: s.io_write_bytes,
            ..Default::default()
        }],
        ..Default::default()
    })
    .into();
    Any {
        type_url: "io.containerd.cgroups.v2.Metrics".to_string(),
        value: m.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

/// OCI resources → the agent's resources (unset fields stay as they are).
pub fn resources(r: &LinuxResources) -> pb::Resources {
    let mem = r.memory().as_ref();
    let cpu = r.cpu().as_ref();
    pb::Resources {
        memory_limit: mem.and_then(|m| m.limit()),
        memory_swap: mem.and_then(|m| m.swap()),
        pids_limit: r.pids().as_ref().map(|p| p.limit()),
        cpu_shares: cpu.and_then(|c| c.shares()),
        cpu_quota: cpu.and_then(|c| c.quota()),
        cpu_period: cpu.and_then(|c| c.period()),
        io_weight: r
            .block_io()
            .as_ref()
            .and_then(|b| b.weight())
            .map(u64::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_through_containerds_type() {
        let any = metrics_any(&pb::StatsContainerResponse {
            cpu_usage_ns: 5_000_000,
            memory_usage: 4096,
            memory_limit: 1 << 20,
            pids_current: 2,
            oom_kills: 1,
            io_write_bytes: 7,
            ..Default::default()
        });
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 5000);
        assert_eq!(m.memory.usage, 4096);
        assert_eq!(m.memory.usage_limit, 1 << 20);
        assert_eq!(m.pids.current, 2);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!(m.io.usage[0].wbytes, 7);
    }

    #[test]
    fn resources_keep_unset_fields_unset() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000}}"#,
        )
        .unwrap();
        let p = resources(&r);
        assert_eq!(p.memory_limit, Some(67108864));
        assert_eq!(p.cpu_quota, Some(50000));
        assert_eq!(p.cpu_period, Some(100000));
        assert_eq!(p.memory_swap, None);
        assert_eq!(p.pids_limit, None);
    }
}
