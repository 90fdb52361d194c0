//! `ctr task ...` on a running container: exec (with and without a
//! terminal), kill with a signal, ps, pause/resume, metrics.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use husk_e2e::cmd::{self, poll};
use husk_e2e::{matrix, Case};

const IMAGE: &str = "localhost/busybox:local";
/// A container that runs until SIGUSR1 (then exits 42) or SIGTERM (exits 0).
const SERVER: &str = "trap 'echo got USR1; exit 42' USR1; trap 'exit 0' TERM; \
                      echo ready; while true; do sleep 0.1; done";

/// Starts a detached long-running container; returns its id.
fn start_detached(case: &mut Case, extra: &[&str]) -> Result<String> {
    let id = case.container_id("default");
    let mut args: Vec<String> = vec!["run".into(), "-d".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(case.runtime_args());
    args.extend([
        IMAGE.into(),
        id.clone(),
        "sh".into(),
        "-c".into(),
        SERVER.into(),
    ]);
    case.ctr("default").run(&args)?.ok()?;
    wait_status(case, &id, "RUNNING")?;
    Ok(id)
}

/// `ctr task ls` row of `id`: (pid, status).
fn task_row(case: &Case, id: &str) -> Result<Option<(u32, String)>> {
    let out = case.ctr("default").run(&["task", "ls"])?.ok()?;
    for line in out.stdout.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[0] == id {
            return Ok(Some((f[1].parse()?, f[2].to_string())));
        }
    }
    Ok(None)
}

fn wait_status(case: &Case, id: &str, status: &str) -> Result<u32> {
    poll(
        Duration::from_secs(10),
        &format!("task {id} {status}"),
        || Ok(task_row(case, id)?.and_then(|(pid, s)| (s == status).then_some(pid))),
    )
}

/// Stops and removes a detached container the way a user would.
fn remove(case: &Case, id: &str) -> Result<()> {
    let ctr = case.ctr("default");
    ctr.run(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
    wait_status(case, id, "STOPPED")?;
    ctr.run(&["task", "delete", id])?;
    ctr.run(&["container", "delete", id])?.ok()?;
    Ok(())
}

fn exec_without_and_with_tty(case: &mut Case) -> Result<()> {
    let id = start_detached(case, &[])?;
    let ctr = case.ctr("default");
    let out = ctr.run(&[
        "task",
        "exec",
        "--exec-id",
        "plain",
        &id,
        "sh",
        "-c",
        "echo exec output; echo exec error >&2; [ -t 1 ] || echo no-tty; exit 3",
    ])?;
    ensure!(out.code == 3, "exec exit code {} ({out:?})", out.code);
    ensure!(
        out.stdout == "exec output\nno-tty\n",
        "exec stdout {:?}",
        out.stdout
    );
    ensure!(
        out.stderr.contains("exec error"),
        "exec stderr {:?}",
        out.stderr
    );

    let out = ctr.run_tty(&[
        "task",
        "exec",
        "-t",
        "--exec-id",
        "tty",
        &id,
        "sh",
        "-c",
        "[ -t 0 ] && [ -t 1 ] && echo exec-has-a-tty; exit 4",
    ])?;
    ensure!(out.code == 4, "tty exec exit code {} ({out:?})", out.code);
    ensure!(
        out.stdout
            .lines()
            .any(|l| l.trim_end_matches('\r').ends_with("exec-has-a-tty")),
        "tty exec stdout {:?}",
        out.stdout
    );
    remove(case, &id)
}
matrix!(exec_without_and_with_tty);

fn kill_with_a_signal(case: &mut Case) -> Result<()> {
    // A foreground `ctr run` returns the container's exit code: the trap's 42.
    let id = case.container_id("default");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(case.runtime_args());
    args.extend([
        IMAGE.into(),
        id.clone(),
        "sh".into(),
        "-c".into(),
        SERVER.into(),
    ]);
    let ctr = case.ctr("default");
    let mut run = ctr.command();
    run.args(&args);
    let handle = std::thread::spawn(move || cmd::run(&mut run, Duration::from_secs(60)));
    wait_status(case, &id, "RUNNING")?;
    // The trap is set before "ready" is printed; give sh a moment to reach it.
    std::thread::sleep(Duration::from_millis(300));
    ctr.run(&["task", "kill", "-s", "SIGUSR1", &id])?.ok()?;
    let out = handle
        .join()
        .map_err(|_| anyhow::anyhow!("ctr run thread panicked"))??;
    ensure!(out.code == 42, "exit code {} ({out:?})", out.code);
    ensure!(out.stdout == "ready\ngot USR1\n", "stdout {:?}", out.stdout);
    Ok(())
}
matrix!(kill_with_a_signal);

fn ps_lists_the_container_processes(case: &mut Case) -> Result<()> {
    let id = start_detached(case, &[])?;
    let (init, _) = task_row(case, &id)?.context("task listed")?;
    let out = case.ctr("default").run(&["task", "ps", &id])?.ok()?;
    let pids: Vec<u32> = out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    ensure!(pids.contains(&init), "init pid {init} not in {pids:?}");
    for pid in &pids {
        // every listed pid is a real process in the container's cgroup
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        ensure!(
            cg.contains(&id) || cg.is_empty(),
            "pid {pid} not in the container's cgroup: {cg}"
        );
    }
    let cmdline = std::fs::read(format!("/proc/{init}/cmdline"))?;
    ensure!(
        String::from_utf8_lossy(&cmdline).starts_with("sh\0-c\0trap"),
        "init pid {init} runs {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    remove(case, &id)
}
matrix!(ps_lists_the_container_processes);

fn freezer_state(id: &str) -> Result<String> {
    let p = format!("/sys/fs/cgroup/freezer/default/{id}/freezer.state");
    Ok(std::fs::read_to_string(&p)
        .with_context(|| p.clone())?
        .trim()
        .to_string())
}

fn pause_and_resume(case: &mut Case) -> Result<()> {
    let id = start_detached(case, &[])?;
    let ctr = case.ctr("default");
    let mut events = ctr.events()?;
    ctr.run(&["task", "pause", &id])?.ok()?;
    wait_status(case, &id, "PAUSED")?;
    ensure!(
        freezer_state(&id)? == "FROZEN",
        "freezer {}",
        freezer_state(&id)?
    );
    events.wait_for("/tasks/paused", &[&id], Duration::from_secs(10))?;
    ctr.run(&["task", "resume", &id])?.ok()?;
    wait_status(case, &id, "RUNNING")?;
    ensure!(
        freezer_state(&id)? == "THAWED",
        "freezer {}",
        freezer_state(&id)?
    );
    events.wait_for("/tasks/resumed", &[&id], Duration::from_secs(10))?;
    let out = ctr.run(&["task", "exec", "--exec-id", "after", &id, "echo", "alive"])?;
    ensure!(
        out.code == 0 && out.stdout == "alive\n",
        "exec after resume: {out:?}"
    );
    remove(case, &id)
}
matrix!(pause_and_resume);

fn metrics_report_the_cgroup(case: &mut Case) -> Result<()> {
    let id = start_detached(case, &["--memory-limit", "67108864"])?;
    let out = case.ctr("default").run(&["task", "metrics", &id])?.ok()?;
    let value = |name: &str| -> Result<u64> {
        for line in out.stdout.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 2 && f[0] == name {
                return Ok(f[1].parse()?);
            }
        }
        bail!("no {name} in ctr task metrics:\n{}", out.stdout)
    };
    ensure!(
        value("memory.limit_in_bytes")? == 64 << 20,
        "limit {:?}",
        value("memory.limit_in_bytes")
    );
    let usage = value("memory.usage_in_bytes")?;
    let host = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/default/{id}/memory.usage_in_bytes"
    ))?;
    ensure!(
        usage > 0 && usage < 64 << 20,
        "usage {usage} (host cgroup says {host})"
    );
    ensure!(value("pids.current")? >= 1, "pids.current");
    ensure!(value("cpuacct.usage")? > 0, "cpuacct.usage");
    remove(case, &id)
}
matrix!(metrics_report_the_cgroup);

fn kill_all_signals_every_process(case: &mut Case) -> Result<()> {
    // SIGTERM to all: the exec'd sleep dies of SIGTERM itself (143). Sent to
    // the init only, sleep would be SIGKILLed with the pid namespace (137).
    let id = start_detached(case, &[])?;
    let ctr = case.ctr("default");
    let mut events = ctr.events()?;
    let mut exec = ctr.command();
    exec.args(["task", "exec", "--exec-id", "sleeper", &id, "sleep", "600"]);
    let handle = std::thread::spawn(move || cmd::run(&mut exec, Duration::from_secs(60)));
    events.wait_for(
        "/tasks/exec-started",
        &[&id, "\"sleeper\""],
        Duration::from_secs(10),
    )?;
    ctr.run(&["task", "kill", "-a", "-s", "SIGTERM", &id])?
        .ok()?;
    let out = handle
        .join()
        .map_err(|_| anyhow::anyhow!("exec thread panicked"))??;
    ensure!(
        out.code == 143,
        "exec'd sleep exit code {} ({out:?})",
        out.code
    );
    wait_status(case, &id, "STOPPED")?;
    events.wait_for(
        "/tasks/exit",
        &[&id, "\"sleeper\""],
        Duration::from_secs(10),
    )?;
    ctr.run(&["task", "delete", &id])?;
    ctr.run(&["container", "delete", &id])?.ok()?;
    Ok(())
}
matrix!(kill_all_signals_every_process);

fn exec_events(case: &mut Case) -> Result<()> {
    let id = start_detached(case, &[])?;
    let ctr = case.ctr("default");
    let mut events = ctr.events()?;
    let out = ctr.run(&["task", "exec", "--exec-id", "ev", &id, "true"])?;
    ensure!(out.code == 0, "exec: {out:?}");
    events.wait_for("/tasks/exit", &[&id, "\"ev\""], Duration::from_secs(10))?;
    let topics: Vec<String> = events.topics_for(&id);
    ensure!(
        topics == ["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"],
        "exec events {topics:?}"
    );
    remove(case, &id)
}
matrix!(exec_events);
