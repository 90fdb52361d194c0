//! [`FsBackend`] over a vhost-user socket (virtiofsd), with the `vhost`
//! crate's frontend.

use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::backend::{FsBackend, FsError, QueueSetup};
use crate::memory::GuestMem;

/// Feature bits we pass through to the guest: device-specific bits,
/// indirect descriptors, event index, VERSION_1.
const PASSTHROUGH: u64 = 0x00ff_ffff | (1 << 28) | (1 << 29) | (1 << 32);

/// A connected vhost-user-fs backend.
pub struct VhostUserFs {
    fe: Frontend,
    backend_features: u64,
    protocol: bool,
}

impl VhostUserFs {
    /// Connects and does the handshake that does not need guest state.
    pub fn connect(path: &Path, queues: u64) -> Result<Self, FsError> {
        let mut fe =
            Frontend::connect(path, queues).map_err(|e| FsError::Connect(path.into(), e))?;
        fe.set_owner()
            .map_err(|e| FsError::Protocol("SET_OWNER", e))?;
        let backend_features = fe
            .get_features()
            .map_err(|e| FsError::Protocol("GET_FEATURES", e))?;
        let protocol = backend_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let pf = fe
                .get_protocol_features()
                .map_err(|e| FsError::Protocol("GET_PROTOCOL_FEATURES", e))?;
            fe.set_protocol_features(pf & VhostUserProtocolFeatures::MQ)
                .map_err(|e| FsError::Protocol("SET_PROTOCOL_FEATURES", e))?;
        }
        Ok(VhostUserFs {
            fe,
            backend_features,
            protocol,
        })
    }
}

fn host_addr(mem: &GuestMem, gpa: u64) -> Result<u64, FsError> {
    mem.get_host_address(GuestAddress(gpa))
        .map(|p| p as u64)
        .map_err(|_| FsError::QueueAddress(gpa))
}

impl FsBackend for VhostUserFs {
    fn features(&self) -> u64 {
        self.backend_features & PASSTHROUGH
    }

    fn activate(
        &mut self,
        mem: &GuestMem,
        acked: u64,
        queues: &[QueueSetup],
    ) -> Result<(), FsError> {
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let features = (acked & self.features()) | (self.backend_features & proto_bit);
        self.fe
            .set_features(features)
            .map_err(|e| FsError::Protocol("SET_FEATURES", e))?;
        let regions = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).map_err(|_| FsError::Memory))
            .collect::<Result<Vec<_>, _>>()?;
        self.fe
            .set_mem_table(&regions)
            .map_err(|e| FsError::Protocol("SET_MEM_TABLE", e))?;
        for (i, q) in queues.iter().enumerate() {
            let p = |what| move |e| FsError::Protocol(what, e);
            self.fe
                .set_vring_num(i, q.size)
                .map_err(p("SET_VRING_NUM"))?;
            let cfg = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: host_addr(mem, q.desc)?,
                used_ring_addr: host_addr(mem, q.used)?,
                avail_ring_addr: host_addr(mem, q.avail)?,
                log_addr: None,
            };
            self.fe
                .set_vring_addr(i, &cfg)
                .map_err(p("SET_VRING_ADDR"))?;
            self.fe.set_vring_base(i, 0).map_err(p("SET_VRING_BASE"))?;
            self.fe
                .set_vring_call(i, q.call)
                .map_err(p("SET_VRING_CALL"))?;
            self.fe
                .set_vring_kick(i, q.kick)
                .map_err(p("SET_VRING_KICK"))?;
            if self.protocol {
                self.fe
                    .set_vring_enable(i, true)
                    .map_err(p("SET_VRING_ENABLE"))?;
            }
        }
        Ok(())
    }

    fn fd(&self) -> RawFd {
        self.fe.as_raw_fd()
    }
}
