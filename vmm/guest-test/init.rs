//! /init of husk-vmm's end-to-end test guest. Built by the test itself with
//! plain rustc (no crates: the few libc calls are declared below) as a
//! static binary. It checks virtio-fs and vsock from inside the guest,
//! prints what it saw on the console and resets the VM.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::os::raw::{c_char, c_int, c_ulong, c_void};

#[repr(C)]
struct SockaddrVm {
    family: u16,
    reserved1: u16,
    port: u32,
    cid: u32,
    flags: u8,
    zero: [u8; 3],
}

extern "C" {
    fn mount(src: *const c_char, dst: *const c_char, fs: *const c_char, flags: c_ulong, data: *const c_void) -> c_int;
    fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    fn bind(fd: c_int, addr: *const SockaddrVm, len: u32) -> c_int;
    fn listen(fd: c_int, backlog: c_int) -> c_int;
    fn accept(fd: c_int, addr: *mut c_void, len: *mut u32) -> c_int;
    fn connect(fd: c_int, addr: *const SockaddrVm, len: u32) -> c_int;
    fn sync();
    fn reboot(cmd: c_int) -> c_int;
}

const AF_VSOCK: c_int = 40;
const SOCK_STREAM: c_int = 1;
const VMADDR_CID_ANY: u32 = u32::MAX;
const HOST_CID: u32 = 2;
const RB_AUTOBOOT: c_int = 0x0123_4567;

fn say(msg: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

fn addr(cid: u32, port: u32) -> SockaddrVm {
    SockaddrVm { family: AF_VSOCK as u16, reserved1: 0, port, cid, flags: 0, zero: [0; 3] }
}

fn vsock_fd() -> c_int {
    // SAFETY: plain socket(2) call.
    unsafe { socket(AF_VSOCK, SOCK_STREAM, 0) }
}

fn check_fs() -> String {
    let _ = std::fs::create_dir_all("/mnt");
    let c = |s: &str| CString::new(s).unwrap();
    let (src, dst, fs) = (c("husk"), c("/mnt"), c("virtiofs"));
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe { mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return format!("mount failed: {}", std::io::Error::last_os_error());
    }
    match std::fs::read_to_string("/mnt/hello.txt") {
        Ok(s) => s.trim().to_string(),
        Err(e) => format!("read failed: {e}"),
    }
}

/// Host connects in (CONNECT 1024): read a line, answer "pong:<line>".
fn serve_host() -> String {
    let l = vsock_fd();
    let a = addr(VMADDR_CID_ANY, 1024);
    // SAFETY: valid fd and sockaddr of the right size.
    if unsafe { bind(l, &a, std::mem::size_of::<SockaddrVm>() as u32) } != 0 || unsafe { listen(l, 1) } != 0 {
        return format!("listen failed: {}", std::io::Error::last_os_error());
    }
    say("E2E-LISTENING");
    // SAFETY: accept on a listening socket; we do not want the peer address.
    let fd = unsafe { accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    if fd < 0 {
        return format!("accept failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh connected socket we own.
    let mut s = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    let line = String::from_utf8_lossy(&buf[..n]).trim().to_string();
    let _ = s.write_all(format!("pong:{line}\n").as_bytes());
    line
}

/// Guest connects out to the host's port 5000.
fn call_host() -> String {
    let fd = vsock_fd();
    let a = addr(HOST_CID, 5000);
    // SAFETY: valid fd and sockaddr of the right size.
    if unsafe { connect(fd, &a, std::mem::size_of::<SockaddrVm>() as u32) } != 0 {
        return format!("connect failed: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a connected socket we own.
    let mut s = unsafe { std::fs::File::from_raw_fd(fd) };
    let _ = s.write_all(b"hello-from-guest\n");
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim().to_string()
}

fn main() {
    say("E2E-INIT-STARTED");
    say(&format!("E2E-FS:{}", check_fs()));
    say(&format!("E2E-VSOCK-IN:{}", serve_host()));
    say(&format!("E2E-VSOCK-OUT:{}", call_host()));
    say("E2E-DONE");
    // SAFETY: sync and reboot have no memory preconditions; as PID 1 we
    // leave through a reset the VMM sees.
    unsafe {
        sync();
        reboot(RB_AUTOBOOT);
    }
}
