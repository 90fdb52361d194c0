//! Agent benchmark (ignored by default; run with
//! `cargo test --release -p husk-agent --test bench -- --ignored --nocapture`):
//! create+start+wait of `true` 100 times (p50/p95), stdout throughput,
//! agent RSS idle.

mod common;

use std::time::{Duration, Instant};

use common::*;
use husk_agent_api::stdio::StreamKind;

const RUNS: usize = 100;
const BULK_BYTES: u64 = 1 << 30;
const BLOCK: u64 = 256 << 10;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Reads a stream to its end, counting bytes (no storing: the copy is
/// what is measured).
async fn count_bytes(mut s: tokio::net::UnixStream) -> u64 {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    loop {
        match s.read(&mut buf).await.unwrap() {
            0 => return n,
            k => n += k as u64,
        }
    }
}

/// The same spec and rootfs through `runc run` (a fork+exec of runc per
/// container), RUNS times, for comparison; None without runc.
fn runc_runs(agent: &Agent, s: &oci_spec::runtime::Spec) -> Option<Vec<Duration>> {
    let runc = husk_testutil::find_on_path("runc")?;
    let bundle = agent.dir.join("runc-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let mut s = s.clone();
    let mut root = s.root().clone().unwrap();
    root.set_path(agent.rootfs_path("bench"));
    s.set_root(Some(root));
    let parent = format!("{}-runc", agent.cgroup_parent);
    let mut times = Vec::with_capacity(RUNS);
    for i in 0..RUNS {
        let mut linux = s.linux().clone().unwrap();
        linux.set_cgroups_path(Some(format!("/{parent}/r{i}").into()));
        s.set_linux(Some(linux));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&s).unwrap()).unwrap();
        let t0 = Instant::now();
        let st = std::process::Command::new(&runc)
            .args(["--root", agent.dir.join("runc-state").to_str().unwrap()])
            .args([
                "run",
                "--bundle",
                bundle.to_str().unwrap(),
                &format!("husk-bench-{i}"),
            ])
            .stdin(std::process::Stdio::null())
            .status()
            .unwrap();
        times.push(t0.elapsed());
        assert!(st.success());
    }
    for ctl in [
        "memory", "pids", "cpu", "cpuacct", "freezer", "blkio", "devices", "cpuset", "systemd",
        "unified", "",
    ] {
        let _ = std::fs::remove_dir(
            std::path::Path::new("/sys/fs/cgroup")
                .join(ctl)
                .join(&parent),
        );
    }
    times.sort();
    Some(times)
}

#[tokio::test]
#[ignore = "benchmark; run explicitly"]
async fn bench_agent() {
    if !requirements_met() {
        return;
    }
    let agent = Agent::start();
    let mut c = agent.client().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_start = rss_kib(agent.pid());
    let rootfs = agent.rootfs("bench");
    let s = spec(&["true"]);
    let mut times = Vec::with_capacity(RUNS);
    let mut remove_total = Duration::ZERO;
    for i in 0..RUNS {
        let id = format!("t{i}");
        let t0 = Instant::now();
        create(&agent, &mut c, &id, &s, &rootfs, false).await;
        start(&mut c, &id).await;
        let exit = wait(&mut c, &id, "").await;
        times.push(t0.elapsed());
        assert_eq!(exit.exit_code, 0);
        let t1 = Instant::now();
        remove(&mut c, &id).await;
        remove_total += t1.elapsed();
    }
    times.sort();
    let runc = runc_runs(&agent, &s);
    // busybox dd with big blocks: `head -c` copies byte-wise at ~150 MiB/s
    // and would measure busybox, not the agent.
    let count = (BULK_BYTES / BLOCK).to_string();
    let bulk = spec(&[
        "dd",
        "if=/dev/zero",
        &format!("bs={BLOCK}"),
        &format!("count={count}"),
    ]);
    create(&agent, &mut c, "bulk", &bulk, &rootfs, false).await;
    let out = agent.open("bulk", "", StreamKind::Stdout).await;
    let t0 = Instant::now();
    start(&mut c, "bulk").await;
    let n = count_bytes(out).await;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(n, BULK_BYTES);
    wait(&mut c, "bulk", "").await;
    remove(&mut c, "bulk").await;
    // The same writer on the host into a plain pipe, for comparison.
    let t0 = Instant::now();
    let host = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BUSYBOX} dd if=/dev/zero bs={BLOCK} count={count} 2>/dev/null | cat >/dev/null"
        ))
        .status()
        .unwrap();
    let host_secs = t0.elapsed().as_secs_f64();
    assert!(host.success());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_after = rss_kib(agent.pid());
    println!("| metric | value |");
    println!("|---|---|");
    println!(
        "| create+start+wait `true`, p50 ({RUNS} runs) | {:.1} ms |",
        pct(&times, 0.5)
    );
    println!(
        "| create+start+wait `true`, p95 | {:.1} ms |",
        pct(&times, 0.95)
    );
    println!(
        "| create+start+wait `true`, min / max | {:.1} / {:.1} ms |",
        pct(&times, 0.0),
        pct(&times, 1.0)
    );
    println!(
        "| remove (avg) | {:.1} ms |",
        remove_total.as_secs_f64() * 1000.0 / RUNS as f64
    );
    println!(
        "| stdout throughput ({} MiB) | {:.0} MiB/s |",
        BULK_BYTES >> 20,
        (n as f64 / (1 << 20) as f64) / secs
    );
    if let Some(r) = &runc {
        println!(
            "| `runc run` of `true` (create+start+wait+delete), p50 | {:.1} ms |",
            pct(r, 0.5)
        );
        println!("| `runc run` of `true`, p95 | {:.1} ms |", pct(r, 0.95));
    }
    println!(
        "| same writer into a host pipe (`dd | cat >/dev/null`), no agent | {:.0} MiB/s |",
        (BULK_BYTES as f64 / (1 << 20) as f64) / host_secs
    );
    println!("| agent RSS idle at start | {rss_start} KiB |");
    println!("| agent RSS idle after the runs | {rss_after} KiB |");
}
