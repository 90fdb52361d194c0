//! Per-thread seccomp filters (seccompiler). Every allowed syscall says
//! why it is needed. A blocked syscall raises SIGSYS; the handler names it
//! on stderr and exits 31, so a missing entry is loud, not silent.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Seccomp errors.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot install seccomp filter: {0}; run with --no-seccomp only to debug")]
    Apply(#[source] seccompiler::Error),
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(String),
}

/// Which thread a filter is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The event loop: devices, vsock, virtio-fs, control socket.
    Vmm,
    /// A vCPU: KVM_RUN and the device MMIO/PIO handlers it calls.
    Vcpu,
}

const KVM_RUN: u64 = 0xae80;
const FIONBIO: u64 = 0x5421;
const TUNSETOFFLOAD: u64 = crate::devices::virtio::net::TUNSETOFFLOAD;

/// (syscall, reason) allowed on every thread.
const COMMON: &[(i64, &str)] = &[
    (
        libc::SYS_read,
        "eventfds, sockets, /proc/self/status for metrics",
    ),
    (
        libc::SYS_write,
        "console, eventfds (irqfd, queue kicks), sockets, stderr logs",
    ),
    (
        libc::SYS_close,
        "closing vsock connections, control clients",
    ),
    (libc::SYS_futex, "mutexes and condvars (pause/resume)"),
    (libc::SYS_sched_yield, "std mutex spinning"),
    (libc::SYS_mmap, "memory allocator"),
    (libc::SYS_munmap, "memory allocator"),
    (libc::SYS_mremap, "memory allocator (Vec growth)"),
    (libc::SYS_brk, "memory allocator"),
    (libc::SYS_madvise, "memory allocator"),
    (
        libc::SYS_rt_sigreturn,
        "return from the vCPU kick signal handler",
    ),
    (libc::SYS_rt_sigprocmask, "std thread and signal handling"),
    (libc::SYS_sigaltstack, "std thread exit"),
    (libc::SYS_exit, "thread exit"),
    (libc::SYS_exit_group, "process exit"),
    (
        libc::SYS_clock_gettime,
        "Instant::now when the vDSO is unavailable",
    ),
    (
        libc::SYS_sendmsg,
        "vhost-user messages with fds (SET_MEM_TABLE, vring fds)",
    ),
    (libc::SYS_recvmsg, "vhost-user replies"),
    (
        libc::SYS_eventfd2,
        "virtio-fs call eventfds created at activation",
    ),
    (libc::SYS_getrandom, "virtio-rng and std HashMap seeds"),
    (
        libc::SYS_ftruncate,
        "the console file restarts at its size cap (vCPU serial writes)",
    ),
];

/// Extra syscalls of the event-loop thread.
const VMM_ONLY: &[(i64, &str)] = &[
    (libc::SYS_epoll_wait, "event loop"),
    (libc::SYS_epoll_pwait, "event loop"),
    (
        libc::SYS_epoll_ctl,
        "adding/removing vsock and control connections",
    ),
    (libc::SYS_accept4, "vsock and control socket connections"),
    (
        libc::SYS_socket,
        "guest-initiated vsock connections to <uds>_<port>",
    ),
    (
        libc::SYS_connect,
        "guest-initiated vsock connections to <uds>_<port>",
    ),
    (
        libc::SYS_recvfrom,
        "MSG_PEEK of vsock handshakes and backend liveness",
    ),
    (libc::SYS_sendto, "unix socket writes through send()"),
    (libc::SYS_shutdown, "vsock half-close"),
    (
        libc::SYS_openat,
        "/proc/self/status for the metrics request",
    ),
    (libc::SYS_fstat, "std read_to_string size hint"),
    (libc::SYS_newfstatat, "std read_to_string size hint"),
    (libc::SYS_statx, "std read_to_string size hint"),
    (libc::SYS_lseek, "std file reads"),
    (libc::SYS_unlink, "removing our sockets at exit"),
    (libc::SYS_unlinkat, "removing our sockets at exit"),
    (
        libc::SYS_tgkill,
        "kicking vCPUs out of KVM_RUN to pause them",
    ),
    (libc::SYS_getpid, "pthread_kill"),
    (libc::SYS_gettid, "pthread_kill"),
    (libc::SYS_nanosleep, "pause waits for vCPUs to park"),
    (libc::SYS_clock_nanosleep, "pause waits for vCPUs to park"),
];

/// Allows a syscall only when argument `index` equals `value`.
fn arg_rule(index: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(SeccompError::Build)?;
    SeccompRule::new(vec![cond]).map_err(SeccompError::Build)
}

/// Builds the BPF program for `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _why) in COMMON {
        rules.insert(*nr, vec![]);
    }
    let ioctls = match kind {
        ThreadKind::Vmm => {
            for (nr, _why) in VMM_ONLY {
                rules.insert(*nr, vec![]);
            }
            // fcntl: std's set_nonblocking (F_GETFL/F_SETFL) on accepted
            // and connected sockets; F_GETFD: std's fd-validity check on close.
            rules.insert(
                libc::SYS_fcntl,
                vec![
                    arg_rule(1, libc::F_GETFL as u64)?,
                    arg_rule(1, libc::F_SETFL as u64)?,
                    arg_rule(1, libc::F_GETFD as u64)?,
                ],
            );
            // FIONBIO: set_nonblocking on some std versions; TUNSETOFFLOAD:
            // virtio-net tells the tap which offloads the guest took when
            // the driver goes live.
            vec![arg_rule(1, FIONBIO)?, arg_rule(1, TUNSETOFFLOAD)?]
        }
        // KVM_RUN is the only ioctl a running vCPU makes.
        ThreadKind::Vcpu => {
            // F_GETFD: std's fd-validity check when a descriptor is closed;
            // F_DUPFD_CLOEXEC: queue eventfds cloned for a device at DRIVER_OK.
            rules.insert(
                libc::SYS_fcntl,
                vec![
                    arg_rule(1, libc::F_GETFD as u64)?,
                    arg_rule(1, libc::F_DUPFD_CLOEXEC as u64)?,
                ],
            );
            vec![arg_rule(1, KVM_RUN)?]
        }
    };
    rules.insert(libc::SYS_ioctl, ioctls);
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(SeccompError::Build)?;
    BpfProgram::try_from(f).map_err(SeccompError::Build)
}

extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: for SIGSYS the kernel fills `_sigsys`; on x86-64 the syscall
    // number is the i32 at byte 24 of siginfo_t (after signo, errno, code,
    // padding and the 8-byte call address). `info` points to a valid siginfo_t.
    let nr = unsafe { *(info as *const u8).add(24).cast::<i32>() };
    let mut msg = *b"husk-vmm: seccomp blocked syscall 0000000000; exiting\n";
    let mut n = nr.unsigned_abs();
    for i in (34..44).rev() {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // SAFETY: write and _exit are async-signal-safe; msg is a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(31);
    }
}

/// Installs the SIGSYS reporter (once per process).
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, sigsys_handler)
        .map_err(|e| SeccompError::Handler(e.to_string()))
}

/// Applies the `kind` filter to the calling thread.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    let prog = filter(kind)?;
    seccompiler::apply_filter(&prog).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_and_differ() {
        let vmm = filter(ThreadKind::Vmm).unwrap();
        let vcpu = filter(ThreadKind::Vcpu).unwrap();
        assert!(vmm.len() > vcpu.len());
    }

    #[test]
    fn every_entry_has_a_reason_and_no_duplicates() {
        let mut seen = std::collections::HashSet::new();
        for (nr, why) in COMMON.iter().chain(VMM_ONLY) {
            assert!(!why.is_empty());
            assert!(seen.insert(*nr), "syscall {nr} listed twice");
        }
    }

    #[test]
    fn blocked_syscall_is_trapped_in_a_child() {
        // Fork so the filter never touches the test harness.
        // SAFETY: the child only installs the filter and calls async-signal-safe
        // functions before _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match apply(ThreadKind::Vcpu) {
                Ok(()) => {
                    // getppid is not allowed on a vCPU thread: SIGSYS with no
                    // handler installed kills the process.
                    // SAFETY: getppid has no preconditions.
                    unsafe { libc::getppid() };
                    0
                }
                Err(_) => 2,
            };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }

    /// Runs `f` in a forked child under the `kind` filter; its wait status.
    fn in_filtered_child(kind: ThreadKind, f: fn()) -> i32 {
        // SAFETY: the child installs the filter, runs `f` (plain syscalls)
        // and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match apply(kind) {
                Ok(()) => {
                    f();
                    0
                }
                Err(_) => 2,
            };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        status
    }

    #[test]
    fn event_loop_may_set_tap_offloads_but_not_create_taps() {
        // On stdin (not a tap) the ioctl fails with ENOTTY/EBADFD: allowed.
        let ok = in_filtered_child(ThreadKind::Vmm, || {
            // SAFETY: TUNSETOFFLOAD takes its argument by value.
            unsafe { libc::ioctl(0, TUNSETOFFLOAD, 0u64) };
        });
        assert!(
            libc::WIFEXITED(ok) && libc::WEXITSTATUS(ok) == 0,
            "status {ok:#x}"
        );
        let blocked = in_filtered_child(ThreadKind::Vmm, || {
            // SAFETY: TUNSETIFF with a null pointer fails with EFAULT if it
            // is ever let through.
            unsafe { libc::ioctl(0, 0x4004_54ca, std::ptr::null::<u8>()) };
        });
        assert!(libc::WIFSIGNALED(blocked), "status {blocked:#x}");
        let vcpu = in_filtered_child(ThreadKind::Vcpu, || {
            // SAFETY: as above.
            unsafe { libc::ioctl(0, TUNSETOFFLOAD, 0u64) };
        });
        assert!(libc::WIFSIGNALED(vcpu), "vCPU threads: status {vcpu:#x}");
    }
}
