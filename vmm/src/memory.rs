//! Guest RAM: one memfd mapped shared, so vhost-user backends (virtiofsd)
//! can map the same pages from the fd we send them.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// The guest memory type used everywhere in husk-vmm.
pub type GuestMem = GuestMemoryMmap<()>;

/// Guest memory errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("cannot create the guest RAM memfd: {0}")]
    Memfd(#[source] std::io::Error),
    #[error("cannot size the guest RAM memfd to {1} bytes: {0}; is memory short?")]
    Truncate(#[source] std::io::Error, u64),
    #[error("cannot map guest RAM: {0}")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    #[error("guest RAM region is invalid")]
    Region,
}

/// Creates `size` bytes of guest RAM at guest physical address 0, backed by a memfd.
pub fn create(size: u64) -> Result<GuestMem, MemoryError> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a
    // new fd or -1, which we check before wrapping it.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a freshly created, valid descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|e| MemoryError::Truncate(e, size))?;
    let region = MmapRegion::from_file(FileOffset::new(file, 0), size as usize)
        .map_err(MemoryError::Mmap)?;
    let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemoryError::Region)?;
    GuestMemoryMmap::from_regions(vec![region]).map_err(|_| MemoryError::Region)
}

/// Gives the all-zero pages of `[start, end)` back to the host (punches
/// them out of the memfd). The guest still reads zeros there; the host no
/// longer keeps a page for each. Used after loading the kernel image, whose
/// alignment padding is megabytes of zeros. Returns the bytes released.
pub fn release_zero_pages(mem: &GuestMem, start: u64, end: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
    const PAGE: u64 = 4096;
    let Some(region) = mem.iter().next() else {
        return Ok(0);
    };
    let Some(fo) = region.file_offset() else {
        return Ok(0);
    };
    let end = end.min(region.len());
    let mut page = vec![0u8; PAGE as usize];
    let mut released = 0;
    let mut run: Option<u64> = None;
    let mut addr = start & !(PAGE - 1);
    let punch = |from: u64, to: u64| -> std::io::Result<()> {
        // SAFETY: fallocate on our own memfd; the range lies inside it and
        // only releases pages that read as zeros, which the guest keeps seeing.
        let r = unsafe {
            libc::fallocate(
                fo.file().as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                (fo.start() + from) as libc::off_t,
                (to - from) as libc::off_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    while addr + PAGE <= end {
        mem.read_slice(&mut page, GuestAddress(addr))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let zero = page.iter().all(|b| *b == 0);
        match (zero, run) {
            (true, None) => run = Some(addr),
            (false, Some(from)) => {
                punch(from, addr)?;
                released += addr - from;
                run = None;
            }
            _ => {}
        }
        addr += PAGE;
    }
    if let Some(from) = run {
        punch(from, addr)?;
        released += addr - from;
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    fn resident_pages(mem: &GuestMem) -> u64 {
        use std::os::fd::AsRawFd;
        let region = mem.iter().next().unwrap();
        let fd = region.file_offset().unwrap().file().as_raw_fd();
        // Count data extents through SEEK_DATA/SEEK_HOLE.
        let (mut pos, mut n) = (0i64, 0u64);
        loop {
            // SAFETY: lseek on our own fd.
            let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
            if data < 0 {
                return n;
            }
            // SAFETY: as above.
            let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
            n += ((hole - data) as u64) / 4096;
            pos = hole;
        }
    }

    #[test]
    fn zero_pages_are_released_and_still_read_zero() {
        let mem = create(1 << 20).unwrap();
        // Three written pages, the middle one all zeros.
        mem.write_slice(&[1u8; 4096], GuestAddress(0x10000))
            .unwrap();
        mem.write_slice(&[0u8; 4096], GuestAddress(0x11000))
            .unwrap();
        mem.write_slice(&[2u8; 4096], GuestAddress(0x12000))
            .unwrap();
        assert_eq!(resident_pages(&mem), 3);
        let released = release_zero_pages(&mem, 0x10000, 0x13000).unwrap();
        assert_eq!(released, 4096);
        assert_eq!(resident_pages(&mem), 2);
        let mut buf = [9u8; 4096];
        mem.read_slice(&mut buf, GuestAddress(0x11000)).unwrap();
        assert!(buf.iter().all(|b| *b == 0));
        mem.read_slice(&mut buf, GuestAddress(0x12000)).unwrap();
        assert!(buf.iter().all(|b| *b == 2));
    }

    #[test]
    fn memfd_backed_and_shared() {
        let mem = create(4 << 20).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        let region = mem.iter().next().unwrap();
        let fo = region.file_offset().expect("backed by a file");
        // The same bytes are visible through the fd (what a vhost-user backend maps).
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 4];
        fo.file().read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xdead_beef);
        assert!(mem.write_obj(1u8, GuestAddress(4 << 20)).is_err());
    }
}
