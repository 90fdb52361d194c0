//! The console file, bounded: the guest decides how much it prints, and the
//! file usually lives on a tmpfs (`/run/husk/<id>/console.log`), so an
//! unbounded file would let a guest fill host memory. When the next write
//! would take the file past its cap, the file is truncated to zero and
//! restarts with a line saying so; readers that follow it (`husk logs -f`)
//! see it shrink and start over.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Default cap of the console file.
pub const DEFAULT_MAX_BYTES: u64 = 2 << 20;

/// An append-only file that restarts at `max` bytes.
pub struct CappedFile {
    file: File,
    max: u64,
    len: u64,
    restarts: u64,
}

impl CappedFile {
    /// Opens (creates) `path` for appending; an existing file counts toward
    /// the cap.
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let len = file.metadata()?.len();
        Ok(CappedFile {
            file,
            max,
            len,
            restarts: 0,
        })
    }

    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.restarts += 1;
        let note = format!(
            "[husk-vmm: console log restarted (#{}): the guest printed more than {} bytes]\n",
            self.restarts, self.max
        );
        self.file.write_all(note.as_bytes())?;
        self.len = note.len() as u64;
        Ok(())
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.len + buf.len() as u64 > self.max {
            self.restart()?;
        }
        // A single write longer than the whole cap keeps only its end.
        let room = usize::try_from(self.max.saturating_sub(self.len)).unwrap_or(usize::MAX);
        let part = &buf[buf.len().saturating_sub(room)..];
        self.file.write_all(part)?;
        self.len += part.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn tempdir() -> TempDir {
        TempDir::new_with_prefix("/tmp/husk-console-test").unwrap()
    }

    #[test]
    fn file_never_exceeds_its_cap_and_says_it_restarted() {
        let t = tempdir();
        let p = t.as_path().join("console.log");
        let mut f = CappedFile::open(&p, 200).unwrap();
        for i in 0..100 {
            writeln!(f, "line {i:03}").unwrap();
            assert!(std::fs::metadata(&p).unwrap().len() <= 200);
        }
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("[husk-vmm: console log restarted (#"),
            "{text}"
        );
        assert!(text.ends_with("line 099\n"), "{text}");
        assert!(!text.contains("line 000"), "{text}");
    }

    #[test]
    fn small_output_is_kept_whole_and_existing_bytes_count() {
        let t = tempdir();
        let p = t.as_path().join("console.log");
        std::fs::write(&p, vec![b'x'; 150]).unwrap();
        let mut f = CappedFile::open(&p, 200).unwrap();
        f.write_all(b"hello\n").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 156);
        f.write_all(&[b'y'; 60]).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("[husk-vmm: console log restarted (#1)"));
        assert!(text.ends_with(&"y".repeat(60)));
    }

    #[test]
    fn one_huge_write_keeps_its_end() {
        let t = tempdir();
        let p = t.as_path().join("console.log");
        let mut f = CappedFile::open(&p, 100).unwrap();
        let mut big = vec![b'a'; 1000];
        big.extend_from_slice(b"END");
        assert_eq!(f.write(&big).unwrap(), big.len());
        let got = std::fs::read(&p).unwrap();
        assert!(got.len() <= 100, "{}", got.len());
        assert!(got.ends_with(b"aEND"));
    }

    #[test]
    fn restart_is_allowed_under_the_vcpu_seccomp_filter() {
        let t = tempdir();
        let p = t.as_path().join("console.log");
        let mut f = CappedFile::open(&p, 64).unwrap();
        // Fork so the filter never touches the test harness.
        // SAFETY: the child only writes the file under the filter and leaves
        // with _exit; a blocked syscall kills it with SIGSYS.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                Ok(()) => {
                    let ok = (0..20).all(|_| f.write_all(b"0123456789\n").is_ok());
                    i32::from(!ok)
                }
                Err(_) => 2,
            };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waiting for the child we forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("console log restarted"), "{text}");
    }
}
