//! husk: operator CLI. `husk check` reports whether this host can run husk
//! with a given config; `husk cleanup` removes state left by dead shims.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use husk_shim::config::{Config, Mode, DEFAULT_CONFIG_PATH};

const USAGE: &str = "usage: husk [--config PATH] check|cleanup";

fn main() {
    if let Err(e) = run() {
        eprintln!("husk: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut cmd = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => config = args.next().context("--config needs a path")?.into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            c if cmd.is_none() => cmd = Some(c.to_string()),
            other => bail!("unexpected argument {other:?}; {USAGE}"),
        }
    }
    let cfg = Config::load(&config).with_context(|| format!("config {}", config.display()))?;
    match cmd.as_deref() {
        Some("check") => check(&cfg, &config),
        Some("cleanup") => cleanup(&cfg),
        _ => bail!("{USAGE}"),
    }
}

fn check(cfg: &Config, path: &Path) -> Result<()> {
    println!("config: {} (mode {:?})", path.display(), cfg.mode);
    let mut failed = false;
    match cfg.mode {
        Mode::Runc => match husk_shim::runc::resolve_binary(&cfg.runc.binary) {
            Ok(bin) => {
                let out = Command::new(&bin)
                    .arg("--version")
                    .output()
                    .with_context(|| format!("run {}", bin.display()))?;
                let first = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                println!("runc: {} ({first})", bin.display());
            }
            Err(e) => {
                println!("runc: MISSING: {e}");
                failed = true;
            }
        },
        Mode::Vm => {
            println!("vm mode: not available yet (set mode = \"runc\")");
            failed = true;
        }
    }
    let cgroups = if husk_shim::cgroup::is_unified() {
        "v2 (unified)"
    } else {
        "v1"
    };
    println!("cgroups: {cgroups}");
    if let Err(e) = std::fs::create_dir_all(&cfg.state_root) {
        println!("state_root: {} NOT WRITABLE: {e}", cfg.state_root.display());
        failed = true;
    } else {
        println!("state_root: {}", cfg.state_root.display());
    }
    if failed {
        bail!("host is not ready for husk (see above)");
    }
    println!("ok");
    Ok(())
}

/// True when runc (under any namespace of the configured root) still knows `id`.
fn runc_knows(cfg: &Config, bin: &Path, id: &str) -> bool {
    let Ok(namespaces) = std::fs::read_dir(&cfg.runc.root) else {
        return false;
    };
    namespaces.flatten().any(|ns| {
        Command::new(bin)
            .arg("--root")
            .arg(ns.path())
            .args(["state", id])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    })
}

fn cleanup(cfg: &Config) -> Result<()> {
    let bin = husk_shim::runc::resolve_binary(&cfg.runc.binary)?;
    let Ok(entries) = std::fs::read_dir(&cfg.state_root) else {
        println!("nothing to clean in {}", cfg.state_root.display());
        return Ok(());
    };
    let mut removed = 0;
    for sandbox in entries.flatten() {
        let path = sandbox.path();
        if !path.is_dir() || path == cfg.runc.root {
            continue;
        }
        let containers: Vec<String> = std::fs::read_dir(&path)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if containers.iter().any(|c| runc_knows(cfg, &bin, c)) {
            println!("in use: {}", path.display());
            continue;
        }
        std::fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
        println!("removed: {}", path.display());
        removed += 1;
    }
    println!("{removed} stale sandbox dir(s) removed");
    Ok(())
}
