//! husk-vmm entry point: parse, validate, build, run, exit with the guest's status.

use std::io::IsTerminal;
use std::process::ExitCode;

use husk_vmm::args::{self, Command};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HUSK_VMM_LOG")
                .unwrap_or_else(|_| "husk_vmm=warn".into()),
        )
        .init();
    // Die with the parent (the shim), so a VM can never be orphaned.
    let parent = std::os::unix::process::parent_id();
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a signal number and touches no memory.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if std::os::unix::process::parent_id() != parent {
        // The parent died before prctl took effect.
        eprintln!("husk-vmm: parent already exited; not starting");
        return ExitCode::from(1);
    }

    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match args::parse(&argv) {
        Ok(Command::Help) => {
            print!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Run(cfg)) => cfg,
        Err(e) => {
            eprintln!("husk-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    match husk_vmm::vmm::run(&cfg) {
        Ok(exit) => {
            eprintln!("husk-vmm: {exit}");
            ExitCode::from(exit.code())
        }
        Err(e) => {
            eprintln!("husk-vmm: {e:#}");
            ExitCode::from(1)
        }
    }
}
