//! CPU profiles: which CPUID the guest sees and which kernel command-line
//! words go with it.
//!
//! `host` passes KVM's supported CPUID through a Firecracker-style filter.
//! `compat` additionally hides what an emulating nested KVM ("PVM" with
//! `pvm_native=Y`) cannot run; since that KVM only partly honours the CPUID
//! table, part of the profile is command-line words.

mod cpuid;

pub use cpuid::{apply, CpuidError};

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The profile asked for in the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileChoice {
    Host,
    Compat,
    /// `compat` on an emulating nested KVM, `host` elsewhere.
    #[default]
    Auto,
}

/// The profile in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Host,
    Compat,
}

/// Kernel command-line words of the compat profile. The first group makes
/// boot cheaper under instruction emulation; `noxsave clearcpuid=...` hides
/// features whose instructions the emulating KVM cannot run although the
/// guest would see them whatever the CPUID table says.
pub const COMPAT_CMDLINE: &str = "nokaslr mitigations=off tsc=reliable no_timer_check \
noreplace-smp cryptomgr.notests rcupdate.rcu_expedited=1 random.trust_cpu=on \
noxsave clearcpuid=smap,popcnt,cx16,erms,fsrm";

const PVM_NATIVE: &str = "/sys/module/kvm_pvm/parameters/pvm_native";

impl ProfileChoice {
    /// Resolves `auto` by looking at this host.
    pub fn resolve(self) -> Profile {
        self.resolve_with(Path::new(PVM_NATIVE))
    }

    fn resolve_with(self, pvm_native: &Path) -> Profile {
        match self {
            ProfileChoice::Host => Profile::Host,
            ProfileChoice::Compat => Profile::Compat,
            ProfileChoice::Auto if is_emulating_kvm(pvm_native) => Profile::Compat,
            ProfileChoice::Auto => Profile::Host,
        }
    }
}

impl Profile {
    /// Command-line words this profile adds.
    pub fn cmdline_words(self) -> &'static str {
        match self {
            Profile::Host => "",
            Profile::Compat => COMPAT_CMDLINE,
        }
    }
}

fn is_emulating_kvm(pvm_native: &Path) -> bool {
    std::fs::read_to_string(pvm_native)
        .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_pvm_native() {
        let dir = std::env::temp_dir().join(format!("husk-vmm-pvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pvm_native");
        assert_eq!(ProfileChoice::Auto.resolve_with(&p), Profile::Host);
        std::fs::write(&p, "Y\n").unwrap();
        assert_eq!(ProfileChoice::Auto.resolve_with(&p), Profile::Compat);
        std::fs::write(&p, "N\n").unwrap();
        assert_eq!(ProfileChoice::Auto.resolve_with(&p), Profile::Host);
        assert_eq!(ProfileChoice::Compat.resolve_with(&p), Profile::Compat);
        std::fs::write(&p, "Y\n").unwrap();
        assert_eq!(ProfileChoice::Host.resolve_with(&p), Profile::Host);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn compat_words() {
        assert_eq!(Profile::Host.cmdline_words(), "");
        let w = Profile::Compat.cmdline_words();
        assert!(w.contains("noxsave") && w.contains("clearcpuid=smap,popcnt"));
    }
}
