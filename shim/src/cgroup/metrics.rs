//! Cgroup metrics in containerd's protobuf form: `ctr task metrics` and the
//! CRI's ContainerStats decode `io.containerd.cgroups.v1.Metrics` (v1 hosts)
//! or `io.containerd.cgroups.v2.Metrics` (v2 hosts).

use std::collections::HashMap;
use std::path::Path;

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::Message;

use super::{read, CgroupError, CgroupPaths};

/// Parses `key value` lines (memory.stat, cpu.stat, memory.events).
pub fn parse_flat_keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads a single number; `max` (no limit) reads as `u64::MAX`.
fn read_u64(dir: &Path, file: &str) -> Result<u64, CgroupError> {
    let text = read(&dir.join(file))?;
    let t = text.trim();
    Ok(if t == "max" {
        u64::MAX
    } else {
        t.parse().unwrap_or(0)
    })
}

fn read_opt(dir: &Path, file: &str) -> u64 {
    read_u64(dir, file).unwrap_or(0)
}

fn read_keyed(dir: &Path, file: &str) -> Result<HashMap<String, u64>, CgroupError> {
    Ok(parse_flat_keyed(&read(&dir.join(file))?))
}

fn v1_metrics(paths: &CgroupPaths) -> Result<v1::Metrics, CgroupError> {
    let mut m = v1::Metrics::new();
    if let Some(dir) = paths.controller("pids") {
        let limit = read_u64(dir, "pids.max")?;
        m.pids = Some(v1::PidsStat {
            current: read_u64(dir, "pids.current")?,
            limit: if limit == u64::MAX { 0 } else { limit },
            ..Default::default()
        })
        .into();
    }
    if let Some(dir) = paths.controller("cpuacct") {
        let per_cpu = read(&dir.join("cpuacct.usage_percpu"))?
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        // cpuacct.stat is in USER_HZ ticks (100 per second): nanoseconds = ticks * 10^7.
        let stat = read_keyed(dir, "cpuacct.stat").unwrap_or_default();
        let mut cpu = v1::CPUStat::new();
        cpu.usage = Some(v1::CPUUsage {
            total: read_u64(dir, "cpuacct.usage")?,
            user: stat.get("user").copied().unwrap_or(0) * 10_000_000,
            kernel: stat.get("system").copied().unwrap_or(0) * 10_000_000,
            per_cpu,
            ..Default::default()
        })
        .into();
        if let Some(cpu_dir) = paths.controller("cpu") {
            let s = read_keyed(cpu_dir, "cpu.stat").unwrap_or_default();
            cpu.throttling = Some(v1::Throttle {
                periods: s.get("nr_periods").copied().unwrap_or(0),
                throttled_periods: s.get("nr_throttled").copied().unwrap_or(0),
                throttled_time: s.get("throttled_time").copied().unwrap_or(0),
                ..Default::default()
            })
            .into();
        }
        m.cpu = Some(cpu).into();
    }
    if let Some(dir) = paths.controller("memory") {
        let s = read_keyed(dir, "memory.stat")?;
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        let entry = |prefix: &str| v1::MemoryEntry {
            usage: read_opt(dir, &format!("{prefix}.usage_in_bytes")),
            limit: read_opt(dir, &format!("{prefix}.limit_in_bytes")),
            max: read_opt(dir, &format!("{prefix}.max_usage_in_bytes")),
            failcnt: read_opt(dir, &format!("{prefix}.failcnt")),
            ..Default::default()
        };
        m.memory = Some(v1::MemoryStat {
            cache: g("cache"),
            rss: g("rss"),
            rss_huge: g("rss_huge"),
            mapped_file: g("mapped_file"),
            dirty: g("dirty"),
            writeback: g("writeback"),
            pg_pg_in: g("pgpgin"),
            pg_pg_out: g("pgpgout"),
            pg_fault: g("pgfault"),
            pg_maj_fault: g("pgmajfault"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            hierarchical_memory_limit: g("hierarchical_memory_limit"),
            hierarchical_swap_limit: g("hierarchical_memsw_limit"),
            total_cache: g("total_cache"),
            total_rss: g("total_rss"),
            total_rss_huge: g("total_rss_huge"),
            total_mapped_file: g("total_mapped_file"),
            total_dirty: g("total_dirty"),
            total_writeback: g("total_writeback"),
            total_pg_pg_in: g("total_pgpgin"),
            total_pg_pg_out: g("total_pgpgout"),
            total_pg_fault: g("total_pgfault"),
            total_pg_maj_fault: g("total_pgmajfault"),
            total_inactive_anon: g("total_inactive_anon"),
            total_active_anon: g("total_active_anon"),
            total_inactive_file: g("total_inactive_file"),
            total_active_file: g("total_active_file"),
            total_unevictable: g("total_unevictable"),
            usage: Some(entry("memory")).into(),
            swap: Some(entry("memory.memsw")).into(),
            kernel: Some(entry("memory.kmem")).into(),
            kernel_tcp: Some(entry("memory.kmem.tcp")).into(),
            ..Default::default()
        })
        .into();
        let oom = read_keyed(dir, "memory.oom_control").unwrap_or_default();
        m.memory_oom_control = Some(v1::MemoryOomControl {
            oom_kill_disable: oom.get("oom_kill_disable").copied().unwrap_or(0),
            under_oom: oom.get("under_oom").copied().unwrap_or(0),
            oom_kill: oom.get("oom_kill").copied().unwrap_or(0),
            ..Default::default()
        })
        .into();
    }
    Ok(m)
}

fn v2_metrics(dir: &Path) -> Result<v2::Metrics, CgroupError> {
    let mut m = v2::Metrics::new();
    if dir.join("pids.current").exists() {
        let limit = read_u64(dir, "pids.max")?;
        m.pids = Some(v2::PidsStat {
            current: read_u64(dir, "pids.current")?,
            limit: if limit == u64::MAX { 0 } else { limit },
            ..Default::default()
        })
        .into();
    }
    let c = read_keyed(dir, "cpu.stat")?;
    let g = |k: &str| c.get(k).copied().unwrap_or(0);
    m.cpu = Some(v2::CPUStat {
        usage_usec: g("usage_usec"),
        user_usec: g("user_usec"),
        system_usec: g("system_usec"),
        nr_periods: g("nr_periods"),
        nr_throttled: g("nr_throttled"),
        throttled_usec: g("throttled_usec"),
        nr_bursts: g("nr_bursts"),
        burst_usec: g("burst_usec"),
        ..Default::default()
    })
    .into();
    if dir.join("memory.current").exists() {
        let s = read_keyed(dir, "memory.stat")?;
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        m.memory = Some(v2::MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            anon_thp: g("anon_thp"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            slab_reclaimable: g("slab_reclaimable"),
            slab_unreclaimable: g("slab_unreclaimable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            workingset_refault: g("workingset_refault"),
            workingset_activate: g("workingset_activate"),
            workingset_nodereclaim: g("workingset_nodereclaim"),
            pgrefill: g("pgrefill"),
            pgscan: g("pgscan"),
            pgsteal: g("pgsteal"),
            pgactivate: g("pgactivate"),
            pgdeactivate: g("pgdeactivate"),
            pglazyfree: g("pglazyfree"),
            pglazyfreed: g("pglazyfreed"),
            thp_fault_alloc: g("thp_fault_alloc"),
            thp_collapse_alloc: g("thp_collapse_alloc"),
            usage: read_u64(dir, "memory.current")?,
            usage_limit: read_opt(dir, "memory.max"),
            swap_usage: read_opt(dir, "memory.swap.current"),
            swap_limit: read_opt(dir, "memory.swap.max"),
            max_usage: read_opt(dir, "memory.peak"),
            ..Default::default()
        })
        .into();
        let e = read_keyed(dir, "memory.events").unwrap_or_default();
        let g = |k: &str| e.get(k).copied().unwrap_or(0);
        m.memory_events = Some(v2::MemoryEvents {
            low: g("low"),
            high: g("high"),
            max: g("max"),
            oom: g("oom"),
            oom_kill: g("oom_kill"),
            oom_group_kill: g("oom_group_kill"),
            ..Default::default()
        })
        .into();
    }
    Ok(m)
}

/// The metrics of the cgroups at `paths`, packed the way containerd unpacks them.
pub fn metrics_any(paths: &CgroupPaths) -> Result<Any, CgroupError> {
    let (type_url, value) = match paths {
        CgroupPaths::V1(_) => (
            "io.containerd.cgroups.v1.Metrics",
            v1_metrics(paths)?.write_to_bytes(),
        ),
        CgroupPaths::V2(dir) => (
            "io.containerd.cgroups.v2.Metrics",
            v2_metrics(dir)?.write_to_bytes(),
        ),
    };
    Ok(Any {
        type_url: type_url.to_string(),
        value: value.unwrap_or_default(),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Map;

    #[test]
    fn parses_flat_keyed_files() {
        let m = parse_flat_keyed("cache 4096\nrss 8192\nbogus\nbad x\n");
        assert_eq!(m.get("cache"), Some(&4096));
        assert_eq!(m.get("rss"), Some(&8192));
        assert_eq!(m.len(), 2);
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn v1_metrics_from_files() {
        let t = tempfile::tempdir().unwrap();
        let (mem, cpu, pids) = (t.path().join("m"), t.path().join("c"), t.path().join("p"));
        for d in [&mem, &cpu, &pids] {
            std::fs::create_dir(d).unwrap();
        }
        write(
            &mem,
            "memory.stat",
            "cache 100\nrss 200\ntotal_inactive_file 7\n",
        );
        write(&mem, "memory.usage_in_bytes", "3000\n");
        write(&mem, "memory.limit_in_bytes", "4000\n");
        write(&cpu, "cpuacct.usage", "123456\n");
        write(&cpu, "cpuacct.usage_percpu", "100000 23456 \n");
        write(&cpu, "cpuacct.stat", "user 2\nsystem 1\n");
        write(&pids, "pids.current", "3\n");
        write(&pids, "pids.max", "max\n");
        let paths = CgroupPaths::V1(Map::from([
            ("memory".to_string(), mem),
            ("cpuacct".to_string(), cpu),
            ("pids".to_string(), pids),
        ]));
        let any = metrics_any(&paths).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.memory.usage.usage, 3000);
        assert_eq!(m.memory.usage.limit, 4000);
        assert_eq!(m.memory.cache, 100);
        assert_eq!(m.memory.total_inactive_file, 7);
        assert_eq!(m.cpu.usage.total, 123456);
        assert_eq!(m.cpu.usage.per_cpu, vec![100000, 23456]);
        assert_eq!(m.cpu.usage.user, 20_000_000);
        assert_eq!((m.pids.current, m.pids.limit), (3, 0));
    }

    #[test]
    fn v2_metrics_from_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        write(
            d,
            "cpu.stat",
            "usage_usec 500\nuser_usec 300\nsystem_usec 200\n",
        );
        write(d, "memory.current", "65536\n");
        write(d, "memory.max", "max\n");
        write(d, "memory.stat", "anon 4096\ninactive_file 12\n");
        write(d, "memory.events", "oom 1\noom_kill 1\n");
        write(d, "pids.current", "2\n");
        write(d, "pids.max", "10\n");
        let any = metrics_any(&CgroupPaths::V2(d.to_path_buf())).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage_usec, 500);
        assert_eq!(m.memory.usage, 65536);
        assert_eq!(m.memory.usage_limit, u64::MAX);
        assert_eq!(m.memory.inactive_file, 12);
        assert_eq!(m.memory_events.oom_kill, 1);
        assert_eq!((m.pids.current, m.pids.limit), (2, 10));
    }

    #[test]
    fn gone_cgroup_is_an_error() {
        let paths = CgroupPaths::V2("/nonexistent/cg".into());
        assert!(metrics_any(&paths).is_err());
    }
}
