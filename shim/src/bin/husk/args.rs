//! The command line of `husk`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use husk_shim::config::DEFAULT_CONFIG_PATH;

use crate::run::RunArgs;

pub const USAGE: &str = "\
usage: husk [--config PATH] COMMAND

commands:
  check [--containerd-config PATH]   is this host ready for husk? (exit 1 if not)
  cleanup                            remove what dead pods left behind
  logs [-f] SANDBOX-ID               print a pod's guest console (-f: follow)
  run --rootfs DIR [--id ID] [--tty] -- CMD...
                                     run one container without containerd

--config PATH   husk.toml to use (default /etc/husk/husk.toml)";

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Check { containerd_config: Option<PathBuf> },
    Cleanup,
    Logs { id: String, follow: bool },
    Run(RunArgs),
    Help,
}

/// The parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    pub config: PathBuf,
    pub command: Command,
}

/// Splits `--flag=value` into flag and value.
fn split(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v)),
        _ => (arg, None),
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cli> {
    let mut it = args.into_iter();
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    let mut name: Option<String> = None;
    let mut rest: Vec<(String, Option<String>)> = Vec::new();
    let mut cmd: Vec<String> = Vec::new();
    let mut help = false;
    while let Some(arg) = it.next() {
        if arg == "--" {
            cmd.extend(it.by_ref());
            break;
        }
        let (flag, inline) = split(&arg);
        let mut value = |what: &str| -> Result<String> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => it.next().with_context(|| format!("{flag} needs {what}")),
            }
        };
        match flag {
            "--config" | "-c" => config = value("a path")?.into(),
            "-h" | "--help" => help = true,
            "--containerd-config" | "--rootfs" | "--id" => {
                let v = value("a value")?;
                rest.push((flag.to_string(), Some(v)));
            }
            "-f" | "--follow" | "-t" | "--tty" => rest.push((flag.to_string(), None)),
            f if f.starts_with('-') => bail!("unknown option {f}\n{USAGE}"),
            _ if name.is_none() => name = Some(arg),
            // `husk run --rootfs r sh -c x`: the command starts at the
            // first word after the run options.
            _ if name.as_deref() == Some("run") => {
                cmd.push(arg);
                cmd.extend(it.by_ref());
                break;
            }
            _ => rest.push((arg, None)),
        }
    }
    if help {
        return Ok(Cli {
            config,
            command: Command::Help,
        });
    }
    let Some(name) = name else {
        bail!("no command given\n{USAGE}");
    };
    let take = |rest: &mut Vec<(String, Option<String>)>, f: &[&str]| {
        let pos = rest.iter().position(|(k, _)| f.contains(&k.as_str()))?;
        Some(rest.remove(pos).1.unwrap_or_default())
    };
    let command = match name.as_str() {
        "check" => Command::Check {
            containerd_config: take(&mut rest, &["--containerd-config"]).map(PathBuf::from),
        },
        "cleanup" => Command::Cleanup,
        "logs" => {
            let follow = take(&mut rest, &["-f", "--follow"]).is_some();
            let pos = rest
                .iter()
                .position(|(k, v)| v.is_none() && !k.starts_with('-'));
            let id = pos
                .map(|p| rest.remove(p).0)
                .context("logs needs a sandbox id: husk logs [-f] SANDBOX-ID")?;
            Command::Logs { id, follow }
        }
        "run" => {
            let rootfs = take(&mut rest, &["--rootfs"])
                .context("run needs --rootfs DIR (an unpacked container filesystem)")?;
            let id = take(&mut rest, &["--id"]);
            let tty = take(&mut rest, &["-t", "--tty"]).is_some();
            if cmd.is_empty() {
                bail!("run needs a command: husk run --rootfs DIR -- CMD...");
            }
            Command::Run(RunArgs {
                rootfs: rootfs.into(),
                id,
                tty,
                cmd: std::mem::take(&mut cmd),
            })
        }
        other => bail!("unknown command {other:?}\n{USAGE}"),
    };
    if let Some((k, _)) = rest.first() {
        bail!("{k} does not apply to `husk {name}`\n{USAGE}");
    }
    if !cmd.is_empty() {
        bail!("unexpected arguments after -- for `husk {name}`");
    }
    Ok(Cli { config, command })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cli> {
        parse(s.split_whitespace().map(str::to_string))
    }

    #[test]
    fn check_and_cleanup() {
        let c = p("check").unwrap();
        assert_eq!(c.config, PathBuf::from(DEFAULT_CONFIG_PATH));
        assert_eq!(
            c.command,
            Command::Check {
                containerd_config: None
            }
        );
        let c = p("-c /x.toml check --containerd-config=/etc/c.toml").unwrap();
        assert_eq!(c.config, PathBuf::from("/x.toml"));
        assert_eq!(
            c.command,
            Command::Check {
                containerd_config: Some("/etc/c.toml".into())
            }
        );
        assert_eq!(
            p("cleanup --config /y").unwrap().config,
            PathBuf::from("/y")
        );
        assert_eq!(p("cleanup").unwrap().command, Command::Cleanup);
    }

    #[test]
    fn logs() {
        assert_eq!(
            p("logs -f pod1").unwrap().command,
            Command::Logs {
                id: "pod1".into(),
                follow: true
            }
        );
        assert_eq!(
            p("logs pod1").unwrap().command,
            Command::Logs {
                id: "pod1".into(),
                follow: false
            }
        );
        assert!(p("logs").unwrap_err().to_string().contains("sandbox id"));
    }

    #[test]
    fn run_with_and_without_double_dash() {
        let want = Command::Run(RunArgs {
            rootfs: "/r".into(),
            id: Some("c1".into()),
            tty: true,
            cmd: vec!["sh".into(), "-c".into(), "--id".into()],
        });
        assert_eq!(
            p("run --rootfs /r --id c1 -t -- sh -c --id")
                .unwrap()
                .command,
            want
        );
        assert_eq!(
            p("run --rootfs=/r --id=c1 --tty sh -c --id")
                .unwrap()
                .command,
            want
        );
        let e = p("run --rootfs /r").unwrap_err().to_string();
        assert!(e.contains("needs a command"), "{e}");
        let e = p("run -- true").unwrap_err().to_string();
        assert!(e.contains("--rootfs"), "{e}");
    }

    #[test]
    fn mistakes_are_named() {
        assert!(p("").unwrap_err().to_string().contains("no command"));
        assert!(p("frob")
            .unwrap_err()
            .to_string()
            .contains("unknown command"));
        assert!(p("check --bogus")
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
        assert!(p("check -f")
            .unwrap_err()
            .to_string()
            .contains("does not apply"));
        assert!(p("cleanup -- x").is_err());
        assert!(p("--config")
            .unwrap_err()
            .to_string()
            .contains("needs a path"));
        assert_eq!(p("--help").unwrap().command, Command::Help);
    }
}
