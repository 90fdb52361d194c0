//! A real microVM for the agent's in-VM test: husk-vmm + virtiofsd + the
//! guest kernel and initrd (whose /init is this worktree's husk-agent),
//! set up the way the shim's VmSandbox does it. Everything (processes,
//! mounts, the directory) goes away on drop, also after a failed assert.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use husk_agent_api::connect::connect;
use husk_agent_api::pb::{self, agent_client::AgentClient};
use tonic::transport::Channel;

/// The workspace root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn file_from_env(var: &str, default: PathBuf) -> Option<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    p.is_file().then_some(p)
}

/// `HUSK_GUEST_KERNEL`, else `<repo>/target/guest/vmlinux`.
pub fn guest_kernel() -> Option<PathBuf> {
    file_from_env(
        "HUSK_GUEST_KERNEL",
        repo_root().join("target/guest/vmlinux"),
    )
}

/// `HUSK_GUEST_INITRD`, else `<repo>/target/guest/initrd.cpio`.
pub fn guest_initrd() -> Option<PathBuf> {
    file_from_env(
        "HUSK_GUEST_INITRD",
        repo_root().join("target/guest/initrd.cpio"),
    )
}

/// `HUSK_VMM`, else husk-vmm next to this test's profile directory
/// (`cargo build -p husk-vmm` puts it there).
pub fn vmm_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_VMM") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    // target/<profile>/deps/in_vm-<hash> → target/<profile>/husk-vmm
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?;
    let p = profile.join("husk-vmm");
    p.is_file().then_some(p)
}

/// virtiofsd from PATH or ~/.cargo/bin.
pub fn virtiofsd() -> Option<PathBuf> {
    husk_testutil::find_on_path("virtiofsd").or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/virtiofsd");
        p.is_file().then_some(p)
    })
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// mount(2) with no source/type, or a bind of `src`.
pub fn mount(src: Option<&Path>, target: &Path, flags: libc::c_ulong) -> std::io::Result<()> {
    let s = src.map(cpath);
    let t = cpath(target);
    let none = c"none";
    // SAFETY: every pointer is a NUL-terminated string alive for the call;
    // a null data pointer is allowed.
    let rc = unsafe {
        libc::mount(
            s.as_ref().map_or(none.as_ptr(), |s| s.as_ptr()),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn umount_detach(target: &Path) {
    let t = cpath(target);
    // SAFETY: t is a NUL-terminated path alive for the call.
    unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
}

fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One booted (or booting) pod VM.
pub struct Vm {
    pub dir: PathBuf,
    pub shared: PathBuf,
    pub console: PathBuf,
    pub vsock: PathBuf,
    /// When husk-vmm was spawned.
    pub spawned: Instant,
    vmm: Option<Child>,
    virtiofsd: Option<Child>,
    /// Mount points to detach on drop, in the order they were made.
    mounts: Vec<PathBuf>,
}

impl Vm {
    /// Prepares the pod directory, makes `shared/` a shared-propagation bind
    /// mount of itself, starts virtiofsd (default namespace sandbox) and
    /// spawns husk-vmm. Does not wait for the guest.
    pub fn boot(name: &str, vmm: &Path, fsd: &Path, kernel: &Path, initrd: &Path) -> Vm {
        let dir = std::env::temp_dir().join(format!("husk-agent-vm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let mut vm = Vm {
            console: dir.join("console.log"),
            vsock: dir.join("vsock.sock"),
            dir,
            shared,
            spawned: Instant::now(),
            vmm: None,
            virtiofsd: None,
            mounts: Vec::new(),
        };
        // What VmSandbox does: bind the share onto itself, private first
        // (so nothing of the host's propagation leaks in), then shared (so
        // mounts made below it later reach virtiofsd's mount namespace).
        mount(Some(&vm.shared), &vm.shared, libc::MS_BIND).expect("bind shared onto itself");
        vm.mounts.push(vm.shared.clone());
        mount(None, &vm.shared, libc::MS_PRIVATE).expect("make shared private");
        mount(None, &vm.shared, libc::MS_SHARED).expect("make shared shared");

        let fs_sock = vm.dir.join("fs.sock");
        let log = |n: &str| std::fs::File::create(vm.dir.join(n)).unwrap();
        let child = Command::new(fsd)
            .arg(format!("--socket-path={}", fs_sock.display()))
            .arg(format!("--shared-dir={}", vm.shared.display()))
            .arg("--cache=auto")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("virtiofsd.log"))
            .spawn()
            .expect("spawn virtiofsd");
        vm.virtiofsd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !fs_sock.exists() {
            assert!(
                Instant::now() < deadline,
                "virtiofsd socket did not appear; log:\n{}",
                vm.read("virtiofsd.log")
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let args: Vec<std::ffi::OsString> = vec![
            "--kernel".into(),
            kernel.into(),
            "--initrd".into(),
            initrd.into(),
            "--mem-mib".into(),
            "256".into(),
            "--vcpus".into(),
            "1".into(),
            "--console".into(),
            vm.console.clone().into(),
            "--vsock-uds".into(),
            vm.vsock.clone().into(),
            "--fs-socket".into(),
            fs_sock.into(),
            "--control-socket".into(),
            vm.dir.join("control.sock").into(),
        ];
        vm.spawned = Instant::now();
        let child = Command::new(vmm)
            .args(args)
            .env("HUSK_VMM_LOG", "husk_vmm=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log("vmm.log"))
            .spawn()
            .expect("spawn husk-vmm");
        vm.vmm = Some(child);
        vm
    }

    /// A file of the pod directory as text ("" when missing).
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// Console, vmm and virtiofsd logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- console.log\n{}\n--- vmm.log\n{}\n--- virtiofsd.log\n{}",
            self.read("console.log"),
            self.read("vmm.log"),
            self.read("virtiofsd.log")
        )
    }

    /// Bind-mounts `src` (file or directory) at `rel` inside the share,
    /// creating the mount point; like the shim placing a rootfs or a bind
    /// source after virtiofsd started.
    pub fn bind_into_share(&mut self, src: &Path, rel: &str) -> PathBuf {
        let target = self.shared.join(rel);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        if src.is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::write(&target, b"").unwrap();
        }
        mount(Some(src), &target, libc::MS_BIND | libc::MS_REC).expect("bind into the share");
        self.mounts.push(target.clone());
        target
    }

    /// Unmounts what [`Vm::bind_into_share`] put at `rel`, as the shim does
    /// when a container is gone. Lazily (MNT_DETACH): a plain umount fails
    /// with EBUSY, because the unmount propagates to virtiofsd's copy of the
    /// mount, where virtiofsd holds an fd for every inode the guest still
    /// has cached.
    pub fn unmount_from_share(&mut self, rel: &str) -> std::io::Result<()> {
        let target = self.shared.join(rel);
        let t = cpath(&target);
        // SAFETY: t is a NUL-terminated path alive for the call.
        if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.mounts.retain(|m| *m != target);
        Ok(())
    }

    /// Dials the agent until Version answers (the guest is booting), at most
    /// `timeout`; fails early when husk-vmm exits.
    pub async fn agent(
        &mut self,
        timeout: Duration,
    ) -> (AgentClient<Channel>, pb::VersionResponse, Duration) {
        let addr = format!("hybrid-vsock:{}:1024", self.vsock.display());
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            if let Some(st) = self.vmm.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "husk-vmm exited ({st}) before the agent answered\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent did not answer Version within {timeout:?} (last error: {last})\n{}",
                self.logs()
            );
            match connect(&addr).await {
                Ok(mut c) => {
                    let r = tokio::time::timeout(
                        Duration::from_secs(10),
                        c.version(pb::VersionRequest {}),
                    )
                    .await;
                    match r {
                        Ok(Ok(v)) => {
                            eprintln!("agent answered on attempt {attempts}; before: {last}");
                            return (c, v.into_inner(), self.spawned.elapsed());
                        }
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = "Version timed out".into(),
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for husk-vmm to exit (at most `timeout`) and returns its code.
    pub fn wait_vmm(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.vmm.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return st.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for virtiofsd to exit (at most `timeout`); true when it did.
    pub fn wait_virtiofsd(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let child = self.virtiofsd.as_mut().unwrap();
        loop {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("HUSK_VM_LOGS").is_some() {
            eprintln!("{}", self.logs());
        }
        if let Some(c) = self.vmm.as_mut() {
            kill_and_reap(c);
        }
        if let Some(c) = self.virtiofsd.as_mut() {
            kill_and_reap(c);
        }
        for m in self.mounts.iter().rev() {
            umount_detach(m);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
