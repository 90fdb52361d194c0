//! husk: the operator CLI. `check` tells whether this host can run husk
//! with a config, `cleanup` removes what dead pods left, `logs` prints a
//! pod's guest console, `run` runs one container without containerd.
//! Each command lives in its own module under `husk/` (a crate root in
//! `src/bin/` finds them there only through `#[path]`).

#[path = "husk/args.rs"]
mod args;
#[path = "husk/check.rs"]
mod check;
#[path = "husk/cleanup.rs"]
mod cleanup;
#[path = "husk/containerd.rs"]
mod containerd;
#[path = "husk/logs.rs"]
mod logs;
#[path = "husk/run/mod.rs"]
mod run;

use anyhow::{Context, Result};
use args::Command;
use husk_shim::config::Config;

fn main() {
    match real_main() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("husk: {e:#}");
            std::process::exit(1);
        }
    }
}

fn real_main() -> Result<i32> {
    let cli = args::parse(std::env::args().skip(1))?;
    if cli.command == Command::Help {
        println!("{}", args::USAGE);
        return Ok(0);
    }
    let cfg =
        Config::load(&cli.config).with_context(|| format!("config {}", cli.config.display()))?;
    // Library logs go to stderr; HUSK_LOG=debug shows more.
    let level = std::env::var("HUSK_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(husk_shim::logging::parse_level(&level))
        .init();
    Ok(match cli.command {
        Command::Check { containerd_config } => {
            i32::from(!check::run(&cfg, &cli.config, containerd_config.as_deref()))
        }
        Command::Cleanup => i32::from(!cleanup::run(&cfg)?),
        Command::Logs { id, follow } => {
            logs::run(&cfg.state_root, &id, follow, &mut std::io::stdout().lock())?;
            0
        }
        Command::Run(a) => run::run(&cfg, a)?,
        Command::Help => 0,
    })
}
