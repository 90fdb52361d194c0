//! TCP throughput of pod networking, husk VM mode against containerd's runc
//! shim in one run, over the test environment's CNI bridge
//! (scripts/bench-net.sh starts it and picks the builds).
//!
//! Per runtime two CRI pods: A runs busybox `nc -l` sinks on two ports (in
//! a loop: one connection each), B holds a file of the payload size. Each
//! run measures, runtimes interleaved:
//! - host → pod: this process connects to A, sends the payload, half-closes
//!   and waits for A to close (its `nc` read everything);
//! - pod → pod: in B, `nc A PORT < payload` between two clock readings
//!   (busybox `adjtimex`, µs), and the same with an empty input; the
//!   difference is the transfer.
//!
//! usage: bench-net [--containerd 1.6|2] [--runs N] [--mib M]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use husk_e2e::cmd::poll;
use husk_e2e::cri::{container_config, pod_config, Cri};
use husk_e2e::net;
use husk_e2e::Containerd;

const SINKS: &str = "(while :; do nc -l -p 5001 >/dev/null; done) & \
                     (while :; do nc -l -p 5002 >/dev/null; done) & wait";
const POD_PORT: u16 = 5001;
const HOST_PORT: u16 = 5002;
/// A call that may boot a guest.
const BOOT: Duration = Duration::from_secs(300);

struct Pods {
    runtime: &'static str,
    handler: &'static str,
    ids: Vec<String>,
    a_ip: String,
    b: String,
}

struct Args {
    containerd: Containerd,
    runs: usize,
    mib: usize,
}

fn args() -> Result<Args> {
    let mut a = Args {
        containerd: Containerd::V16,
        runs: 3,
        mib: 2,
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
            "--mib" => a.mib = v.parse()?,
            _ => bail!("usage: bench-net [--containerd 1.6|2] [--runs N] [--mib M]"),
        }
    }
    ensure!(a.runs > 0 && a.mib > 0, "--runs and --mib must be positive");
    Ok(a)
}

fn start_pods(cri: &Cri, runtime: &'static str, handler: &'static str, mib: usize) -> Result<Pods> {
    let tag = format!("husk-bench-net-{runtime}-{}", std::process::id());
    let mut ids = Vec::new();
    let mut pod = |name: &str, script: &str| -> Result<(String, String)> {
        let cfg = pod_config(&format!("{tag}-{name}"), "");
        let id = cri.run_pod(&cfg, handler)?;
        ids.push(id.clone());
        let c = cri
            .create_container(&id, &container_config(name, script, None), &cfg)
            .context("CreateContainer")?;
        cri.start_container(&c)?;
        Ok((id, c))
    };
    let (a, _) = pod("a", SINKS)?;
    let payload =
        format!("dd if=/dev/zero of=/tmp/payload bs=1048576 count={mib} 2>/dev/null; sleep 36000");
    let (_, b) = pod("b", &payload)?;
    let a_ip = net::pod_net(cri, &a)?.ip;
    poll(BOOT, "the payload file", || {
        let (code, out, _) = cri.exec_sync(&b, &["ls", "-l", "/tmp/payload"])?;
        Ok((code == 0 && out.contains(&(mib << 20).to_string())).then_some(()))
    })?;
    Ok(Pods {
        runtime,
        handler,
        ids,
        a_ip,
        b,
    })
}

/// Seconds from connect to the server's close, sending `bytes`.
fn host_to_pod(ip: &str, bytes: usize) -> Result<f64> {
    let addr: SocketAddr = format!("{ip}:{HOST_PORT}").parse()?;
    let buf = vec![0u8; 64 << 10];
    poll(Duration::from_secs(120), "a host → pod transfer", || {
        let t = Instant::now();
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
            return Ok(None); // the sink restarts between connections
        };
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len());
            if s.write_all(&buf[..n]).is_err() {
                return Ok(None);
            }
            left -= n;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        s.set_read_timeout(Some(Duration::from_secs(600)))?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest)?;
        Ok(Some(t.elapsed().as_secs_f64()))
    })
}

/// The wall clock in µs from busybox `adjtimex` output (`time.tv_sec:`,
/// `time.tv_usec:` lines), one reading per `---` separated block.
fn adjtimex_us(out: &str) -> Result<Vec<u64>> {
    out.split("---")
        .filter(|b| b.contains("tv_sec"))
        .map(|b| {
            let field = |name: &str| -> Result<u64> {
                let l = b
                    .lines()
                    .find(|l| l.trim_start().starts_with(name))
                    .with_context(|| format!("no {name} in {b:?}"))?;
                Ok(l.rsplit(':').next().unwrap_or("").trim().parse()?)
            };
            Ok(field("time.tv_sec")? * 1_000_000 + field("time.tv_usec")?)
        })
        .collect()
}

/// Seconds of one `nc` from pod B to pod A with `input` on its stdin, the
/// clock read with busybox `adjtimex` (µs; `date` has no sub-second format)
/// before it and after it (so the window holds nc's and the second
/// reader's process starts: the empty-input run measures those).
fn pod_to_pod(cri: &Cri, p: &Pods, input: &str) -> Result<f64> {
    let script = format!(
        "a=$(adjtimex); nc -w 30 {} {POD_PORT} < {input} || exit 1; b=$(adjtimex); \
         echo \"$a\"; echo ---; echo \"$b\"",
        p.a_ip
    );
    poll(Duration::from_secs(300), "a pod → pod transfer", || {
        let (code, out, _) = cri.exec_sync_timeout(&p.b, &["sh", "-c", &script], 600)?;
        if code != 0 {
            // refused: the sink restarts between connections
            std::thread::sleep(Duration::from_millis(500));
            return Ok(None);
        }
        match adjtimex_us(&out)?.as_slice() {
            [a, b] if b >= a => Ok(Some((b - a) as f64 / 1e6)),
            r => bail!("two clock readings expected, got {r:?} from {out:?}"),
        }
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let a = args()?;
    let socket = a.containerd.socket();
    let cri = Cri::connect_with_timeout(&socket, BOOT)?;
    let bytes = a.mib << 20;
    let mb = bytes as f64 / 1e6;
    let mut all = Vec::new();
    let result = (|| -> Result<()> {
        for (rt, handler) in [("runc.v2", "runc"), ("husk vm", "husk")] {
            eprintln!("bench-net: starting the {rt} pods");
            all.push(start_pods(&cri, rt, handler, a.mib)?);
        }
        // [runtime][direction] -> MB/s per run
        let mut rates = vec![[Vec::new(), Vec::new()]; all.len()];
        println!("| run | runtime | host → pod s | MB/s | pod → pod s (empty nc s) | MB/s |");
        println!("| --- | --- | ---: | ---: | ---: | ---: |");
        for run in 1..=a.runs {
            for (i, p) in all.iter().enumerate() {
                let h = host_to_pod(&p.a_ip, bytes)?;
                let full = pod_to_pod(&cri, p, "/tmp/payload")?;
                let empty = pod_to_pod(&cri, p, "/dev/null")?;
                let transfer = (full - empty).max(0.01);
                rates[i][0].push(mb / h);
                rates[i][1].push(mb / transfer);
                println!(
                    "| {run} | {} ({}) | {h:.2} | {:.3} | {full:.2} ({empty:.2}) | {:.3} |",
                    p.runtime,
                    p.handler,
                    mb / h,
                    mb / transfer
                );
            }
        }
        println!();
        println!(
            "medians over {} runs, {} MiB per connection:",
            a.runs, a.mib
        );
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
        if med.len() == 2 {
            println!(
                "  husk vm / runc.v2: host → pod {:.4} (1/{:.0}), pod → pod {:.4} (1/{:.0})",
                med[1][0] / med[0][0],
                med[0][0] / med[1][0],
                med[1][1] / med[0][1],
                med[0][1] / med[1][1]
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
    fn reads_adjtimex_pairs() {
        let out = "    mode:         0\n    time.tv_sec:  100\n    time.tv_usec: 250000\n---\n    time.tv_sec:  101\n    time.tv_usec: 5\n";
        assert_eq!(adjtimex_us(out).unwrap(), vec![100_250_000, 101_000_005]);
        assert!(adjtimex_us("time.tv_sec: x").is_err());
    }
}
