//! vCPU threads: run, pause, resume, and report why they stopped.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::vcpu::{Vcpu, VcpuStop};

/// Shared between the VMM thread and the vCPU threads.
pub struct VcpuControl {
    paused: Mutex<bool>,
    cv: Condvar,
    parked: AtomicUsize,
    /// First non-`Stopped` reason a vCPU returned.
    pub stop: Mutex<Option<VcpuStop>>,
    /// Written when `stop` is set.
    pub stop_evt: EventFd,
}

/// Running vCPU threads.
pub struct Vcpus {
    threads: Vec<JoinHandle<()>>,
    pub control: Arc<VcpuControl>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Signal used to kick a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

impl Vcpus {
    /// Starts one thread per vCPU. `on_start` runs inside each thread first
    /// (e.g. to install its seccomp filter).
    pub fn start(vcpus: Vec<Vcpu>, on_start: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<Self> {
        register_signal_handler(kick_signal(), kick_handler).map_err(std::io::Error::other)?;
        let control = Arc::new(VcpuControl {
            paused: Mutex::new(false),
            cv: Condvar::new(),
            parked: AtomicUsize::new(0),
            stop: Mutex::new(None),
            stop_evt: EventFd::new(libc::EFD_NONBLOCK)?,
        });
        let mut threads = Vec::new();
        for mut vcpu in vcpus {
            let ctl = control.clone();
            let hook = on_start.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
                .spawn(move || {
                    if vcpu.id == 0 {
                        log_first_run();
                    }
                    hook();
                    vcpu_loop(&mut vcpu, &ctl)
                })?;
            threads.push(t);
        }
        Ok(Vcpus { threads, control })
    }

    fn kick_all(&self) {
        for t in &self.threads {
            // SAFETY: the pthread_t belongs to a thread we spawned and still
            // hold a JoinHandle for; the signal has a no-op handler installed.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
        }
    }

    /// Stops every vCPU outside KVM_RUN. Returns false on timeout.
    pub fn pause(&self) -> bool {
        *self.control.paused.lock().unwrap() = true;
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.control.parked.load(Ordering::SeqCst) < self.threads.len() {
            if Instant::now() > deadline {
                return false;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub fn resume(&self) {
        *self.control.paused.lock().unwrap() = false;
        self.control.cv.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        *self.control.paused.lock().unwrap()
    }
}

/// Logs when vCPU 0 is about to enter KVM_RUN for the first time: wall
/// clock (to compare with the exec time a benchmark recorded) and the
/// process's CPU time so far.
fn log_first_run() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ru: libc::rusage = unsafe_zeroed_rusage();
    // SAFETY: getrusage writes into the valid rusage struct we pass.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let cpu_us = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1_000_000
        + ru.ru_utime.tv_usec
        + ru.ru_stime.tv_usec;
    tracing::info!(unix_ns = now.as_nanos() as u64, cpu_us, "first KVM_RUN");
}

fn unsafe_zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn vcpu_loop(vcpu: &mut Vcpu, ctl: &VcpuControl) {
    loop {
        {
            let mut paused = ctl.paused.lock().unwrap();
            if *paused {
                ctl.parked.fetch_add(1, Ordering::SeqCst);
                while *paused {
                    paused = ctl.cv.wait(paused).unwrap();
                }
                ctl.parked.fetch_sub(1, Ordering::SeqCst);
            }
        }
        match vcpu.run_once() {
            None | Some(VcpuStop::Stopped) => continue,
            Some(stop) => {
                tracing::info!(vcpu = vcpu.id, "vcpu stopped: {stop:?}");
                ctl.stop.lock().unwrap().get_or_insert(stop);
                let _ = ctl.stop_evt.write(1);
                return;
            }
        }
    }
}
