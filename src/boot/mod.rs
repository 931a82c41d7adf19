//! Boot paths: what the user asked to boot, turned into a *boot plan* before any KVM call
//! (every file read and every header checked), then loaded into guest memory while the
//! machine is built. The plan tells the firmware what to start through the boot
//! descriptor; the firmware only switches mode and jumps (firmware/handoff.s).
//!
//! One file per format; `detect.rs` decides which one a `--kernel` file is.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use crate::block::{BlockError, Disk};
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
    #[error(transparent)]
    Disk(#[from] BlockError),
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
    /// `--disk`, opened and checked, for INT 13h.
    disk: Option<Arc<Disk>>,
    /// The CMOS clock counts local time (the BDA's tick count follows it).
    localtime: bool,
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
        let disk = match &cfg.disk {
            Some(d) => Some(Arc::new(Disk::open(&d.path, d.writable)?)),
            None => None,
        };
        Ok(BootPlan {
            payload,
            disk,
            localtime: cfg.rtc_localtime,
        })
    }

    /// The disk INT 13h serves.
    pub fn disk(&self) -> Option<Arc<Disk>> {
        self.disk.clone()
    }

    /// Places the payload and its boot structures in guest memory; returns the boot
    /// descriptor for the firmware.
    pub fn load(
        &self,
        mem: &GuestMemoryMmap,
        layout: &MemoryLayout,
    ) -> Result<BootDescriptor, BootError> {
        let kind = match self.payload {
            Payload::Demo | Payload::Firmware => BootKind::Demo,
            Payload::Disk => BootKind::Disk,
        };
        if !matches!(self.payload, Payload::Firmware) {
            crate::bios::bda::write(mem, layout, self.disk.as_deref(), self.ticks_now())
                .map_err(|e| BootError::Memory(e.to_string()))?;
        }
        Ok(BootDescriptor {
            kind,
            ..Default::default()
        })
    }

    /// The BDA's tick count now: the time of day of the clock the CMOS counts.
    fn ticks_now(&self) -> u32 {
        use crate::devices::rtc::Clock;
        let (secs, nanos) = crate::devices::rtc::HostClock::new(self.localtime).now();
        crate::bios::bda::ticks_at(secs.rem_euclid(86_400) as u64, nanos)
    }

    /// The fw_cfg items of this boot (QEMU's kernel, initrd and command line items).
    pub fn add_fw_cfg_items(&self, _fw_cfg: &mut FwCfg) -> Result<(), FwCfgError> {
        Ok(())
    }
}
