//! Bad input gets an error that names the problem, with the right code for
//! husk, and leaves nothing behind (the harness checks processes, cgroups and
//! runc state after each test; these tests also check containerd's records).
//!
//! The commands go through containerd 1.6's `ctr` on both containerds: it
//! prints the error's gRPC code ("...: not found"); 2.x's `ctr` does not.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use husk_e2e::cmd::Output;
use husk_e2e::ctr::Ctr;
use husk_e2e::{matrix, Case};

/// Fails unless `out` is an error whose message contains every one of
/// `needles`, and (for husk) the errdefs text of the expected code.
fn ensure_error(case: &Case, out: &Output, needles: &[&str], husk_code: &str) -> Result<()> {
    ensure!(out.code != 0, "expected an error, got success: {out:?}");
    for n in needles {
        ensure!(
            out.stderr.contains(n),
            "error does not name {n:?}: {}",
            out.stderr
        );
    }
    if case.target.runtime.is_husk() {
        ensure!(
            out.stderr.contains(husk_code),
            "error is not {husk_code:?}: {}",
            out.stderr
        );
    }
    Ok(())
}

fn ensure_no_container_record(case: &Case, id: &str) -> Result<()> {
    let out = bad_ctr(case).run(&["container", "ls", "-q"])?.ok()?;
    ensure!(
        !out.stdout.lines().any(|l| l == id),
        "container {id} still recorded"
    );
    let out = bad_ctr(case).run(&["task", "ls", "-q"])?.ok()?;
    ensure!(
        !out.stdout.lines().any(|l| l == id),
        "task {id} still recorded"
    );
    Ok(())
}

fn bad_ctr(case: &Case) -> Ctr {
    Ctr::with_code_text(case.target.containerd, "default")
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Result<Self> {
        let p = std::env::temp_dir().join(name);
        fs::create_dir_all(&p)?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn missing_rootfs(case: &mut Case) -> Result<()> {
    let id = case.container_id("default");
    let rootfs = format!("/nonexistent/{id}/rootfs");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(case.runtime_args());
    args.extend(["--rootfs".into(), rootfs.clone(), id.clone(), "true".into()]);
    let out = bad_ctr(case).run(&args)?;
    ensure_error(case, &out, &[&rootfs], "not found")?;
    ensure_no_container_record(case, &id)
}
matrix!(missing_rootfs);

/// A busybox root filesystem in `dir`.
fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    Ok(rootfs)
}

fn malformed_spec(case: &mut Case) -> Result<()> {
    let id = case.container_id("default");
    let tmp = TempDir::new(&id)?;
    let rootfs = busybox_rootfs(&tmp.0)?;
    let out = bad_ctr(case).run(&["oci", "spec"])?.ok()?;
    let mut spec: serde_json::Value = serde_json::from_str(&out.stdout)?;
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["linux"]["cgroupsPath"] = format!("/default/{id}").into();
    // A process with nothing to run.
    spec["process"]["args"] = serde_json::json!([]);
    let spec_path = tmp.0.join("config.json");
    fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(case.runtime_args());
    args.extend([
        "--config".into(),
        spec_path.display().to_string(),
        id.clone(),
    ]);
    let out = bad_ctr(case).run(&args)?;
    ensure_error(case, &out, &["args"], "invalid argument")?;
    ensure_no_container_record(case, &id)
}
matrix!(malformed_spec);

fn missing_runc_binary(case: &mut Case) -> Result<()> {
    let id = case.container_id("default");
    let tmp = TempDir::new(&id)?;
    let missing = format!("/nonexistent/{id}/runc");
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    if case.target.runtime.is_husk() {
        // the test environment's runc-mode config with the runc path replaced
        let config = fs::read_to_string(case.target.husk_config())?;
        let runc = husk_testutil::find_on_path("runc").unwrap_or_else(|| "/usr/sbin/runc".into());
        let runc = runc.display().to_string();
        ensure!(
            config.contains(&runc),
            "test config does not name {runc}:\n{config}"
        );
        let path = tmp.0.join("husk-runc.toml");
        fs::write(&path, config.replace(&runc, &missing))?;
        args.extend([
            "--runtime".into(),
            "io.containerd.husk.v2".into(),
            "--runtime-config-path".into(),
            path.display().to_string(),
        ]);
    } else {
        args.extend(case.runtime_args());
        args.extend(["--runc-binary".into(), missing.clone()]);
    }
    args.extend(["localhost/busybox:local".into(), id.clone(), "true".into()]);
    let out = bad_ctr(case).run(&args)?;
    ensure_error(case, &out, &[&missing], "failed precondition")?;
    ensure_no_container_record(case, &id)
}
matrix!(missing_runc_binary);

fn duplicate_id(case: &mut Case) -> Result<()> {
    let id = case.container_id("default");
    let run = |case: &Case| -> Result<Output> {
        let mut args: Vec<String> = vec!["run".into(), "-d".into()];
        args.extend(case.runtime_args());
        args.extend([
            "localhost/busybox:local".into(),
            id.clone(),
            "sleep".into(),
            "600".into(),
        ]);
        bad_ctr(case).run(&args)
    };
    run(case)?.ok()?;
    let out = run(case)?;
    ensure!(out.code != 0, "second run with id {id} succeeded");
    ensure!(
        out.stderr.contains("already exists"),
        "error: {}",
        out.stderr
    );
    // the first container is untouched
    let ctr = bad_ctr(case);
    let tasks = ctr.run(&["task", "ls"])?.ok()?;
    ensure!(
        tasks
            .stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.ends_with("RUNNING")),
        "first task not running:\n{}",
        tasks.stdout
    );
    ctr.run(&["task", "kill", "-s", "SIGKILL", &id])?.ok()?;
    husk_e2e::cmd::poll(std::time::Duration::from_secs(10), "task stopped", || {
        let t = ctr.run(&["task", "ls"])?.ok()?;
        Ok(t.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.ends_with("STOPPED"))
            .then_some(()))
    })?;
    ctr.run(&["task", "delete", &id])?;
    ctr.run(&["container", "delete", &id])?.ok()?;
    ensure_no_container_record(case, &id)
}
matrix!(duplicate_id);
