//! Helpers shared by husk-vmm's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Builds a minimal ELF64 "kernel": one PT_LOAD segment at 1 MiB holding
/// `code`, and a PT_NOTE with the Xen PVH entry note pointing at it.
pub fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    const CODE_OFF: u64 = 0x1000;
    const NOTE_OFF: u64 = 64 + 2 * 56;
    let mut f = Vec::new();
    // ELF header.
    f.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    f.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    f.extend_from_slice(&2u16.to_le_bytes()); // e_phnum
    f.extend_from_slice(&[0; 6]);
    // PT_LOAD.
    phdr(&mut f, 1, 5, CODE_OFF, LOAD, code.len() as u64);
    // PT_NOTE.
    phdr(&mut f, 4, 4, NOTE_OFF, 0, 20);
    f.extend_from_slice(&4u32.to_le_bytes()); // namesz
    f.extend_from_slice(&4u32.to_le_bytes()); // descsz
    f.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    f.extend_from_slice(b"Xen\0");
    f.extend_from_slice(&(LOAD as u32).to_le_bytes());
    f.resize(CODE_OFF as usize, 0);
    f.extend_from_slice(code);
    f
}

fn phdr(f: &mut Vec<u8>, kind: u32, flags: u32, off: u64, addr: u64, size: u64) {
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&off.to_le_bytes());
    f.extend_from_slice(&addr.to_le_bytes()); // vaddr
    f.extend_from_slice(&addr.to_le_bytes()); // paddr
    f.extend_from_slice(&size.to_le_bytes()); // filesz
    f.extend_from_slice(&size.to_le_bytes()); // memsz
    f.extend_from_slice(&0x1000u64.to_le_bytes());
}

/// 32-bit code for the PVH entry: checks the start-info magic at [ebx]
/// (prints 'P' when right), prints "Hi\n", resets through the i8042.
#[rustfmt::skip]
pub const HELLO_AND_RESET: &[u8] = &[
    0xba, 0xf8, 0x03, 0x00, 0x00,       // mov edx, 0x3f8
    0x8b, 0x03,                         // mov eax, [ebx]
    0x3d, 0x78, 0xc5, 0x6e, 0x33,       // cmp eax, 0x336ec578
    0x75, 0x03,                         // jne +3
    0xb0, b'P', 0xee,                   // mov al, 'P'; out dx, al
    0xb0, b'H', 0xee,                   // mov al, 'H'; out dx, al
    0xb0, b'i', 0xee,                   // mov al, 'i'; out dx, al
    0xb0, b'\n', 0xee,                  // mov al, '\n'; out dx, al
    0xb0, 0xfe, 0xe6, 0x64,             // mov al, 0xfe; out 0x64, al
    0xf4, 0xeb, 0xfd,                   // hlt; jmp hlt
];

/// 32-bit code that prints `text` on the serial port and resets.
pub fn print_and_reset(text: &str) -> Vec<u8> {
    let mut code = vec![0xba, 0xf8, 0x03, 0x00, 0x00]; // mov edx, 0x3f8
    for b in text.bytes() {
        code.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    code.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
    code
}

/// Halts forever (interrupts are off at the PVH entry).
pub const SPIN: &[u8] = &[0xf4, 0xeb, 0xfd];

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let d = std::env::temp_dir().join(format!("husk-vmm-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a tiny PVH kernel into `dir`.
pub fn tiny_kernel(dir: &TempDir, code: &[u8]) -> PathBuf {
    let k = dir.path("vmlinux");
    std::fs::write(&k, pvh_elf(code)).unwrap();
    k
}

pub fn spawn_vmm(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_husk-vmm"))
        .args(args)
        .env("HUSK_VMM_LOG", "husk_vmm=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `child` up to `secs`; kills it and panics on timeout.
pub fn wait_exit(child: &mut Child, secs: u64) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            if let Some(mut e) = child.stderr.take() {
                e.read_to_string(&mut err).unwrap();
            }
            return (st.code().unwrap_or(-1), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `path` exists (up to `secs`).
pub fn wait_for_path(path: &Path, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

pub fn kvm() -> bool {
    husk_testutil::require(husk_testutil::kvm_available(), "/dev/kvm")
}

/// One entry of a newc cpio archive.
pub enum CpioEntry<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8], u32),
    CharDev(&'a str, u32, u32),
}

/// Writes an uncompressed newc cpio archive.
pub fn cpio(entries: &[CpioEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1;
    let mut push = |name: &str, mode: u32, data: &[u8], rdev: (u32, u32)| {
        let hdr =
            format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino, mode, 0, 0, 1, 0, data.len(), 0, 0, rdev.0, rdev.1, name.len() + 1, 0
        );
        ino += 1;
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for e in entries {
        match e {
            CpioEntry::Dir(n) => push(n, 0o040755, &[], (0, 0)),
            CpioEntry::File(n, d, perm) => push(n, 0o100000 | perm, d, (0, 0)),
            CpioEntry::CharDev(n, ma, mi) => push(n, 0o020600, &[], (*ma, *mi)),
        }
    }
    push("TRAILER!!!", 0, &[], (0, 0));
    out
}

/// The workspace root (…/husk).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The guest kernel: `HUSK_GUEST_KERNEL`, else `<repo>/target/guest/vmlinux`.
pub fn guest_kernel() -> Option<PathBuf> {
    let p = std::env::var_os("HUSK_GUEST_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guest/vmlinux"));
    p.is_file().then_some(p)
}

/// virtiofsd from PATH or ~/.cargo/bin.
pub fn virtiofsd() -> Option<PathBuf> {
    husk_testutil::find_on_path("virtiofsd").or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/virtiofsd");
        p.is_file().then_some(p)
    })
}

/// Starts virtiofsd sharing `shared` on `socket`; waits for the socket.
pub fn start_virtiofsd(bin: &Path, socket: &Path, shared: &Path) -> Child {
    let child = Command::new(bin)
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", shared.display()))
        .arg("--cache=never")
        .arg("--sandbox=none")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_for_path(socket, 20), "virtiofsd socket appears");
    child
}

/// Kills and reaps a child if it is still running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
