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

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

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
