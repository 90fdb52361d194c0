//! TCP throughput of pod networking, husk VM mode against containerd's runc
//! shim in one run, over the test environment's CNI bridge
//! (scripts/bench-net.sh starts it, builds the iperf3 image and picks the
//! builds).
//!
//! Per runtime two CRI pods from `localhost/iperf3:local`: A runs
//! `iperf3 -s`, B idles. Each run, runtimes interleaved, measures for
//! `--seconds` each:
//! - host → pod: this host's `iperf3 -c A`;
//! - pod → pod: `iperf3 -c A` executed in B.
//!
//! The receiver's rate is reported (iperf3's `end.sum_received`).
//!
//! usage: bench-net [--containerd 1.6|2] [--runs N] [--seconds S]

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use husk_e2e::cmd::{self, poll};
use husk_e2e::cri::{container_config, pod_config, Cri};
use husk_e2e::net;
use husk_e2e::Containerd;

const IMAGE: &str = "localhost/iperf3:local";
/// A call that may boot a guest.
const BOOT: Duration = Duration::from_secs(300);

struct Pods {
    runtime: &'static str,
    ids: Vec<String>,
    a_ip: String,
    b: String,
}

struct Args {
    containerd: Containerd,
    runs: usize,
    seconds: u32,
}

fn args() -> Result<Args> {
    let mut a = Args {
        containerd: Containerd::V16,
        runs: 3,
        seconds: 10,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--containerd" => {
                a.containerd = match v.as_str() {
                    "1.6" => Containerd::V16,
                    "2" => Containerd::V2,
                    _ => bail!("--containerd 1.6|2"),
                }
            }
            "--runs" => a.runs = v.parse()?,
            "--seconds" => a.seconds = v.parse()?,
            _ => bail!("usage: bench-net [--containerd 1.6|2] [--runs N] [--seconds S]"),
        }
    }
    ensure!(
        a.runs > 0 && a.seconds > 0,
        "--runs and --seconds must be positive"
    );
    Ok(a)
}

fn start_pods(cri: &Cri, runtime: &'static str, handler: &'static str) -> Result<Pods> {
    let tag = format!("husk-bench-net-{handler}-{}", std::process::id());
    let mut ids = Vec::new();
    let mut pod = |name: &str, command: &[&str]| -> Result<(String, String)> {
        let cfg = pod_config(&format!("{tag}-{name}"), "");
        let id = cri.run_pod(&cfg, handler)?;
        ids.push(id.clone());
        let mut c = container_config(name, "", None);
        c.command = command.iter().map(|s| s.to_string()).collect();
        if let Some(i) = c.image.as_mut() {
            i.image = IMAGE.into();
        }
        let c = cri
            .create_container(&id, &c, &cfg)
            .context("CreateContainer")?;
        cri.start_container(&c)?;
        Ok((id, c))
    };
    let (a, _) = pod("a", &["iperf3", "-s"])?;
    let (_, b) = pod("b", &["sleep", "36000"])?;
    let a_ip = net::pod_net(cri, &a)?.ip;
    Ok(Pods {
        runtime,
        ids,
        a_ip,
        b,
    })
}

/// The receiver's rate in MB/s from `iperf3 -J` output.
fn received_mb_per_s(json: &str) -> Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second")?;
    Ok(bps / 8e6)
}

fn client_args(ip: &str, seconds: u32) -> Vec<String> {
    [
        "-c",
        ip,
        "-t",
        &seconds.to_string(),
        "-J",
        "--connect-timeout",
        "30000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// iperf3 from this host to pod A; retried while the server is not up yet.
fn host_to_pod(p: &Pods, seconds: u32) -> Result<f64> {
    let limit = Duration::from_secs(u64::from(seconds) + 120);
    poll(BOOT, "host → pod iperf3", || {
        let out = cmd::run(
            Command::new("iperf3").args(client_args(&p.a_ip, seconds)),
            limit,
        )?;
        Ok(received_mb_per_s(&out.stdout).ok())
    })
}

/// iperf3 from pod B to pod A.
fn pod_to_pod(cri: &Cri, p: &Pods, seconds: u32) -> Result<f64> {
    let mut argv = vec!["iperf3".to_string()];
    argv.extend(client_args(&p.a_ip, seconds));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    poll(BOOT, "pod → pod iperf3", || {
        let (_, out, _) = cri.exec_sync_timeout(&p.b, &argv, i64::from(seconds) + 120)?;
        Ok(received_mb_per_s(&out).ok())
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = args()?;
    let cri = Cri::connect_with_timeout(&a.containerd.socket(), BOOT)?;
    let mut all = Vec::new();
    let result = (|| -> Result<()> {
        for (rt, handler) in [("runc.v2", "runc"), ("husk vm", "husk")] {
            eprintln!("bench-net: starting the {rt} pods");
            all.push(start_pods(&cri, rt, handler)?);
        }
        // [runtime][direction] -> MB/s per run
        let mut rates = vec![[Vec::new(), Vec::new()]; all.len()];
        println!("| run | runtime | host → pod MB/s | pod → pod MB/s |");
        println!("| --- | --- | ---: | ---: |");
        for run in 1..=a.runs {
            for (i, p) in all.iter().enumerate() {
                let h = host_to_pod(p, a.seconds)?;
                let q = pod_to_pod(&cri, p, a.seconds)?;
                rates[i][0].push(h);
                rates[i][1].push(q);
                println!("| {run} | {} | {h:.3} | {q:.3} |", p.runtime);
            }
        }
        println!();
        println!("medians over {} runs of {} s:", a.runs, a.seconds);
        let med: Vec<[f64; 2]> = rates
            .iter_mut()
            .map(|r| [median(&mut r[0]), median(&mut r[1])])
            .collect();
        for (p, m) in all.iter().zip(&med) {
            println!(
                "  {}: host → pod {:.3} MB/s, pod → pod {:.3} MB/s",
                p.runtime, m[0], m[1]
            );
        }
        if let [runc, husk] = med.as_slice() {
            println!(
                "  husk vm / runc.v2: host → pod {:.4} (1/{:.0}), pod → pod {:.4} (1/{:.0})",
                husk[0] / runc[0],
                runc[0] / husk[0],
                husk[1] / runc[1],
                runc[1] / husk[1]
            );
        }
        Ok(())
    })();
    for p in &all {
        for id in &p.ids {
            let _ = cri.stop_pod(id);
            let _ = cri.remove_pod(id);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_receivers_rate() {
        let j = r#"{"end": {"sum_sent": {"bits_per_second": 9e6},
                            "sum_received": {"bits_per_second": 8e6}}}"#;
        assert_eq!(received_mb_per_s(j).unwrap(), 1.0);
        let e = received_mb_per_s(r#"{"error": "unable to connect"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"));
        assert!(received_mb_per_s("not json").is_err());
    }
}
