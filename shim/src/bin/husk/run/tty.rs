//! The user's terminal while a `--tty` container runs: raw mode (keys go to
//! the container's pty untouched, Ctrl-C included) and its window size.

use std::os::fd::{AsFd, AsRawFd};

use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

/// Raw mode on stdin, restored on drop.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts stdin into raw mode; `None` when stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// `(columns, rows)` of the terminal on stdout (else stdin).
pub fn window_size() -> Option<(u32, u32)> {
    let fds = [
        std::io::stdout().as_fd().as_raw_fd(),
        std::io::stdin().as_fd().as_raw_fd(),
    ];
    fds.into_iter().find_map(|fd| {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` through the pointer, which
        // points at a live, correctly sized local; fd is one of our std fds.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        (rc == 0 && ws.ws_col > 0).then_some((u32::from(ws.ws_col), u32::from(ws.ws_row)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_terminal_under_test() {
        // cargo test runs with stdin from /dev/null or a pipe when not
        // interactive; only check the functions agree with isatty.
        let tty = nix::unistd::isatty(std::io::stdin().as_fd()).unwrap_or(false);
        let raw = RawMode::enter();
        assert_eq!(raw.is_some(), tty);
        drop(raw);
        let out_tty = nix::unistd::isatty(std::io::stdout().as_fd()).unwrap_or(false);
        if !tty && !out_tty {
            assert_eq!(window_size(), None);
        }
    }
}
