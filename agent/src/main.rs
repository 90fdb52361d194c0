//! husk-agent: PID 1 in the guest. This first version only announces itself
//! (the line the guest-image and VMM tests look for) and, as PID 1, idles;
//! the container engine and its gRPC API come with the agent issue.

use std::ffi::CStr;

/// The kernel release (`uname -r`).
fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes only into the struct we pass, which lives for the call.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return "unknown".to_string();
    }
    // SAFETY: on success the kernel NUL-terminates `release` within the array.
    unsafe { CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn main() {
    eprintln!(
        "husk-agent {} started: kernel {}",
        env!("CARGO_PKG_VERSION"),
        kernel_release()
    );
    if std::process::id() == 1 {
        // PID 1 must never exit: the kernel would panic.
        loop {
            std::thread::park();
        }
    }
}
