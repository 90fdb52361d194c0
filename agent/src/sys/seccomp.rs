//! The spec's seccomp profile compiled to classic BPF (with seccompiler).
//!
//! OCI profiles give each syscall its own action; a seccompiler filter has
//! one match and one mismatch action. The profile therefore becomes a stack
//! of filters, which the kernel evaluates together, taking the most
//! restrictive result: one filter returns the default action for every
//! syscall the profile does not list (and ALLOW for listed ones), and one
//! filter per other action returns that action for its syscalls (ALLOW for
//! the rest). For each syscall the outcome is the profile's.

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction as A, LinuxSeccompOperator as Op};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Errors compiling a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0:?} is not supported by husk; use errno, kill, trap, log or allow")]
    Unsupported(A),
    #[error("seccomp rule for {0} is invalid: {1}")]
    Rule(String, seccompiler::BackendError),
}

/// Rules per syscall number; `None` = unconditional.
type Chains = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn action(a: A, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match a {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32)),
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActLog => SeccompAction::Log,
        A::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        other => return Err(SeccompError::Unsupported(other)),
    })
}

fn op(o: Op, value_two: Option<u64>) -> SeccompCmpOp {
    match o {
        Op::ScmpCmpNe => SeccompCmpOp::Ne,
        Op::ScmpCmpLt => SeccompCmpOp::Lt,
        Op::ScmpCmpLe => SeccompCmpOp::Le,
        Op::ScmpCmpEq => SeccompCmpOp::Eq,
        Op::ScmpCmpGe => SeccompCmpOp::Ge,
        Op::ScmpCmpGt => SeccompCmpOp::Gt,
        Op::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(value_two.unwrap_or(0)),
    }
}

fn add(chains: &mut Chains, nr: i64, rule: Option<SeccompRule>) {
    match (chains.get_mut(&nr), rule) {
        (Some(None), _) => {}
        (Some(slot), None) => *slot = None,
        (Some(Some(v)), Some(r)) => v.push(r),
        (None, r) => {
            chains.insert(nr, r.map(|r| vec![r]));
        }
    }
}

fn filter(
    chains: Chains,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let rules = chains
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(|e| SeccompError::Rule("filter".into(), e))
}

/// Compiles the profile to the filters to install (possibly none).
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut listed = Chains::new();
    let mut by_action: BTreeMap<String, (SeccompAction, Chains)> = BTreeMap::new();
    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        let mut conds = Vec::new();
        for a in sc.args().iter().flatten() {
            let c = SeccompCondition::new(
                a.index() as u8,
                SeccompCmpArgLen::Qword,
                op(a.op(), a.value_two()),
                a.value(),
            )
            .map_err(|e| SeccompError::Rule(sc.names().join(","), e))?;
            conds.push(c);
        }
        let rule = if conds.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conds).map_err(|e| SeccompError::Rule(sc.names().join(","), e))?)
        };
        for name in sc.names() {
            // Names unknown on this architecture are skipped, as libseccomp does.
            let Ok(nr) = syscalls::Sysno::from_str(name) else {
                continue;
            };
            let nr = nr.id() as i64;
            add(&mut listed, nr, rule.clone());
            if act != SeccompAction::Allow {
                let e = by_action
                    .entry(format!("{act:?}"))
                    .or_insert_with(|| (act.clone(), Chains::new()));
                add(&mut e.1, nr, rule.clone());
            }
        }
    }
    let mut out = Vec::new();
    if default != SeccompAction::Allow {
        out.push(filter(listed, default, SeccompAction::Allow)?);
    }
    for (_, (act, chains)) in by_action {
        out.push(filter(chains, SeccompAction::Allow, act)?);
    }
    Ok(out)
}

/// Installs the filters in the calling process (child side, before execve).
pub fn apply(progs: &[BpfProgram]) -> Result<(), String> {
    for p in progs {
        let fprog = libc::sock_fprog {
            len: p.len() as u16,
            filter: p.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: fprog points to a live BPF program of `len` instructions;
        // seccompiler's sock_filter has the kernel's layout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn errno_default_with_allow_list_is_one_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn allow_default_with_blocks_is_one_filter_per_action() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["personality"],"action":"SCMP_ACT_KILL_PROCESS","args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert_eq!(compile(&p).unwrap().len(), 2);
    }

    #[test]
    fn notify_is_rejected() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(matches!(compile(&p), Err(SeccompError::Unsupported(_))));
    }
}
