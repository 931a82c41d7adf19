//! Boot paths: what the user asked to boot, turned into a *boot plan* before any KVM call
//! (every file read and every header checked), then loaded into guest memory while the
//! machine is built, and again on every reboot. The plan tells the firmware what to start
//! through the boot descriptor; the firmware only switches mode and jumps
//! (firmware/handoff_real.s, firmware/handoff_protected.s).
//!
//! One file per format: `linux.rs` (bzImage and ELF vmlinux), `firmware_linux.rs` (a bzImage
//! for a user's firmware, through fw_cfg), `multiboot.rs` (multiboot 1),
//! `multiboot2.rs`, `pvh.rs` (the PVH entry of an ELF vmlinux); `detect.rs` decides which one a `--kernel` file is; `elf.rs` reads ELF
//! program headers for the multiboot loaders.

mod detect;
mod elf;
mod firmware_linux;
mod linux;
mod multiboot;
mod multiboot2;
mod pvh;

use std::path::Path;
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::block::{BlockError, Disk};
use crate::config::VmConfig;
use crate::devices::fw_cfg::{FwCfg, FwCfgError};
use crate::firmware::{BootDescriptor, BootKind, Handoff, Regs, Segs};
use crate::memory::{E820Entry, MemoryLayout, EBDA_START, HIGH_MEMORY_START};

/// Guest-physical addresses of the boot structures the VMM writes. The firmware's own
/// scratch (IVT, BDA, 0x500-0x5FFF, its stack below 0x7C00) stays clear of them, so they
/// survive POST.
pub mod area {
    /// The GDT loaded at the hand-off (4 entries).
    pub const GDT: u64 = 0x8000;
    /// The stack pointer at a protected- or long-mode hand-off (grows down from here).
    pub const STACK_TOP: u64 = 0x8000;
    /// Identity page tables for the 64-bit entry: PML4, PDPT, four page directories.
    pub const PAGE_TABLES: u64 = 0x9000;
    /// Linux's boot_params (the "zero page"), the multiboot information, or PVH's
    /// hvm_start_info.
    pub const ZERO_PAGE: u64 = 0xF000;
    /// Linux's real-mode setup code and heap (16-bit protocol), one 64 KiB segment.
    pub const SETUP: u64 = 0x1_0000;
    /// The command line.
    pub const CMDLINE: u64 = 0x2_0000;
    pub const CMDLINE_MAX: u64 = 0x1_0000;
    /// Further boot information: memory maps, module lists, strings.
    pub const INFO: u64 = 0x3_0000;
    pub const INFO_END: u64 = 0x4_0000;
}

/// Why a boot plan could not be made or loaded: the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("--cmdline: {0}")]
    Cmdline(String),
    #[error("{0}")]
    Config(String),
    #[error("guest memory: {0}")]
    Memory(String),
    #[error(transparent)]
    Disk(#[from] BlockError),
}

fn file_err(path: &str, why: impl Into<String>) -> BootError {
    BootError::File {
        path: path.to_string(),
        why: why.into(),
    }
}

/// Reads a whole input file (`files::read_limited`: what was read counts, not the file's
/// metadata) of at most `max` bytes, the guest's RAM; refuses an empty one.
pub fn read_input(path: &Path, what: &str, max: u64) -> Result<Vec<u8>, BootError> {
    use crate::files::FileError;
    let p = path.display().to_string();
    let bytes = crate::files::read_limited(path, max).map_err(|e| match e {
        FileError::TooLarge { .. } => file_err(
            &p,
            format!("{what} is larger than the guest's RAM ({max} bytes)"),
        ),
        FileError::Open { err, .. } | FileError::Read { err, .. } => {
            file_err(&p, format!("cannot read {what}: {err}"))
        }
    })?;
    if bytes.is_empty() {
        return Err(file_err(&p, format!("{what} is empty")));
    }
    Ok(bytes)
}

/// What a loader needs to know of the machine.
pub struct BootEnv<'a> {
    pub layout: &'a MemoryLayout,
    /// The E820 map, the one the firmware and fw_cfg give too.
    pub e820: &'a [E820Entry],
    /// The ACPI RSDP as written at 0xE0000, when there are ACPI tables.
    pub rsdp: Option<&'a [u8]>,
    /// The vCPU count, for the boot descriptor.
    pub cpus: u16,
}

/// Where an image may be loaded: RAM above the boot structures and below the EBDA, or RAM
/// from 1 MiB to the PCI hole. Refuses `[start, end)` anywhere else.
pub fn check_image_range(
    path: &str,
    what: &str,
    start: u64,
    end: u64,
    layout: &MemoryLayout,
) -> Result<(), BootError> {
    let fits = start < end
        && ((start >= area::INFO_END && end <= EBDA_START)
            || (start >= HIGH_MEMORY_START && end <= layout.low_ram_end));
    if fits {
        Ok(())
    } else {
        Err(file_err(
            path,
            format!(
                "{what} at {start:#x}-{end:#x} is outside the guest's usable RAM (0x40000-0x9fc00, 0x100000-{:#x})",
                layout.low_ram_end
            ),
        ))
    }
}

/// Writes `bytes` at `addr` in guest memory.
pub fn put(mem: &GuestMemoryMmap, addr: u64, bytes: &[u8]) -> Result<(), BootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| BootError::Memory(format!("{} bytes at {addr:#x}: {e}", bytes.len())))
}

/// Zeroes `[start, end)` in guest memory.
pub fn zero(mem: &GuestMemoryMmap, start: u64, end: u64) -> Result<(), BootError> {
    const CHUNK: u64 = 64 * 1024;
    let zeros = [0u8; CHUNK as usize];
    let mut at = start;
    while at < end {
        let n = (end - at).min(CHUNK);
        put(mem, at, &zeros[..n as usize])?;
        at += n;
    }
    Ok(())
}

/// GDT selectors of the hand-off GDT.
pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;

/// Writes the hand-off GDT: 0x10 a flat code segment (64-bit when `long`), 0x18 flat data.
/// Linux's boot protocols name these selectors; multiboot and PVH only need them flat.
/// Returns (base, limit) for the descriptor.
pub fn write_gdt(mem: &GuestMemoryMmap, long: bool) -> Result<(u64, u16), BootError> {
    let code: u64 = if long {
        0x00AF_9B00_0000_FFFF
    } else {
        0x00CF_9B00_0000_FFFF
    };
    let entries = [0u64, 0, code, 0x00CF_9300_0000_FFFF];
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    put(mem, area::GDT, &bytes)?;
    Ok((area::GDT, (bytes.len() - 1) as u16))
}

/// Writes page tables that identity-map the first 4 GiB with 2 MiB pages; returns CR3.
pub fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u32, BootError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    let pml4 = area::PAGE_TABLES;
    let pdpt = pml4 + 0x1000;
    let pd = pdpt + 0x1000;
    let mut table = vec![0u8; 0x1000];
    table[..8].copy_from_slice(&(pdpt | PRESENT_RW).to_le_bytes());
    put(mem, pml4, &table)?;
    table.fill(0);
    for i in 0..4u64 {
        table[i as usize * 8..][..8]
            .copy_from_slice(&((pd + i * 0x1000) | PRESENT_RW).to_le_bytes());
    }
    put(mem, pdpt, &table)?;
    for i in 0..4 * 512u64 {
        let entry = (i << 21) | PRESENT_RW | PAGE_SIZE_2M;
        table[(i % 512) as usize * 8..][..8].copy_from_slice(&entry.to_le_bytes());
        if i % 512 == 511 {
            put(mem, pd + (i / 512) * 0x1000, &table)?;
        }
    }
    Ok(pml4 as u32)
}

/// The hand-off to a flat 32-bit protected-mode entry, or with `long` a 64-bit one: the
/// hand-off GDT (and the identity page tables), CS 0x10 and every data segment 0x18,
/// interrupts off, the stack at `area::STACK_TOP`, and the protocol's `regs`.
pub fn flat_handoff(
    mem: &GuestMemoryMmap,
    entry: u64,
    long: bool,
    regs: Regs,
) -> Result<(BootKind, Handoff), BootError> {
    let gdt = write_gdt(mem, long)?;
    let cr3 = if long {
        write_identity_page_tables(mem)?
    } else {
        0
    };
    Ok((
        if long {
            BootKind::Long
        } else {
            BootKind::Protected
        },
        Handoff {
            entry: entry as u32,
            segs: Segs::flat(CODE_SELECTOR, DATA_SELECTOR),
            regs: Regs {
                esp: area::STACK_TOP as u32,
                ..regs
            },
            interrupts: false,
            gdt,
            cr3,
        },
    ))
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
    /// A user's firmware, with a Linux kernel for it in fw_cfg.
    FirmwareLinux(Box<firmware_linux::FwCfgLinux>),
    Linux(Box<linux::Linux>),
    Multiboot(Box<multiboot::Multiboot>),
    Multiboot2(Box<multiboot2::Multiboot2>),
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
    pub fn new(cfg: &VmConfig, layout: &MemoryLayout) -> Result<BootPlan, BootError> {
        let payload = match &cfg.kernel {
            Some(path) if cfg.firmware.is_some() => Payload::FirmwareLinux(Box::new(
                firmware_linux::FwCfgLinux::from_path(path, cfg, layout)?,
            )),
            Some(path) => detect::plan(path, cfg, layout)?,
            None if cfg.firmware.is_some() => Payload::Firmware,
            None if cfg.disk.is_some() => Payload::Disk,
            None => Payload::Demo,
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

    /// The BDA's tick count now: the time of day of the clock the CMOS counts.
    fn ticks_now(&self) -> u32 {
        use crate::devices::rtc::Clock;
        let (secs, nanos) = crate::devices::rtc::HostClock::new(self.localtime).now();
        crate::bios::bda::ticks_at(secs.rem_euclid(86_400) as u64, nanos)
    }

    /// Whether RAM above 16 MiB may be registered with KVM after the guest started
    /// (`ram_gate.rs`): only when the VMM writes no memory map into guest memory before the
    /// start, so that a guest learns how much RAM there is only by asking (CMOS, fw_cfg,
    /// INT 15h), and each question waits until that RAM is all registered. True for the
    /// embedded demo, a boot sector through the embedded firmware, and a user's firmware
    /// (with or without a kernel in fw_cfg: the firmware reads the memory map from fw_cfg
    /// or CMOS). Kernel boots (bzImage, ELF, PVH, multiboot 1 and 2) register all RAM
    /// before the start: their boot_params, E820 table or information block lie in guest
    /// memory, and the kernel reads them, and uses the RAM they describe, without an exit.
    pub fn defers_ram(&self) -> bool {
        match &self.payload {
            Payload::Demo | Payload::Disk | Payload::Firmware | Payload::FirmwareLinux(_) => true,
            Payload::Linux(_) | Payload::Multiboot(_) | Payload::Multiboot2(_) => false,
        }
    }

    /// A short name of what boots, for logs and `--stats`.
    pub fn describe(&self) -> &'static str {
        match &self.payload {
            Payload::Demo => "demo",
            Payload::Disk => "disk",
            Payload::Firmware => "firmware",
            Payload::FirmwareLinux(_) => "firmware-linux",
            Payload::Linux(l) => l.describe(),
            Payload::Multiboot(_) => "multiboot",
            Payload::Multiboot2(_) => "multiboot2",
        }
    }

    /// Places the payload and its boot structures in guest memory; returns the boot
    /// descriptor for the firmware.
    pub fn load(&self, mem: &GuestMemoryMmap, env: &BootEnv) -> Result<BootDescriptor, BootError> {
        // The interrupt vectors and the BIOS data area, as POST would leave them (a user's
        // firmware writes its own).
        if self.embedded_firmware() {
            crate::bios::ivt::write(mem, crate::firmware::EMBEDDED)
                .map_err(|e| BootError::Memory(e.to_string()))?;
            crate::bios::bda::write(mem, env.layout, self.disk.as_deref(), self.ticks_now())
                .map_err(|e| BootError::Memory(e.to_string()))?;
        }
        let (kind, handoff) = match &self.payload {
            Payload::Demo | Payload::Firmware | Payload::FirmwareLinux(_) => {
                (BootKind::Demo, Handoff::default())
            }
            Payload::Disk => (BootKind::Disk, Handoff::default()),
            Payload::Linux(l) => l.load(mem, env)?,
            Payload::Multiboot(m) => m.load(mem, env)?,
            Payload::Multiboot2(m) => m.load(mem, env)?,
        };
        let descriptor = BootDescriptor {
            kind,
            handoff,
            base_memory_kib: env.layout.base_memory_kib(),
            ebda_segment: (EBDA_START >> 4) as u16,
            cpus: env.cpus,
        };
        // The embedded firmware finds it in low RAM (its copy of the fw_cfg file, as POST
        // would leave it), so that POST reads nothing through fw_cfg.
        if self.embedded_firmware() {
            mem.write_slice(
                &descriptor.to_bytes(),
                GuestAddress(crate::firmware::BOOT_DESCRIPTOR_ADDR),
            )
            .map_err(|e| BootError::Memory(e.to_string()))?;
        }
        Ok(descriptor)
    }

    /// Whether the embedded firmware runs this boot (not a user's `--firmware`).
    pub fn embedded_firmware(&self) -> bool {
        !matches!(self.payload, Payload::Firmware | Payload::FirmwareLinux(_))
    }

    /// The fw_cfg items of this boot (QEMU's kernel, initrd and command line items).
    pub fn add_fw_cfg_items(&self, fw_cfg: &mut FwCfg) -> Result<(), FwCfgError> {
        if let Payload::FirmwareLinux(l) = &self.payload {
            l.add_items(fw_cfg);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// What a boot plan puts in guest memory: `len` bytes at `addr` (the range the memory
    /// map must allow), the first of which must read `head` after the load. `payload` is
    /// false for the boot structures (command line, real-mode setup).
    #[derive(Debug)]
    pub struct Placed {
        pub what: &'static str,
        pub payload: bool,
        pub addr: u64,
        pub len: u64,
        pub head: Vec<u8>,
    }

    /// At most the first 4 KiB of `len` bytes at `offset` of `file`, then zeros (BSS) when
    /// `zero_fill` up to `len`.
    pub fn head(file: &[u8], offset: u64, filesz: u64, len: u64, zero_fill: bool) -> Vec<u8> {
        const MAX: u64 = 4096;
        let start = offset as usize;
        let n = filesz.min(MAX) as usize;
        let mut h = file[start..start + n].to_vec();
        if zero_fill {
            h.resize(len.min(MAX) as usize, 0);
        }
        h
    }

    impl Payload {
        /// Everything the payload places in guest memory.
        pub fn footprint(&self) -> Vec<Placed> {
            match self {
                Payload::Linux(l) => l.footprint(),
                Payload::Multiboot(m) => m.footprint(),
                Payload::Multiboot2(m) => m.footprint(),
                _ => Vec::new(),
            }
        }
    }

    /// Guest memory shaped like the machine's: low RAM and RAM from 1 MiB.
    pub fn memory(layout: &MemoryLayout) -> GuestMemoryMmap {
        let ranges: Vec<(GuestAddress, usize)> = layout
            .ram_regions()
            .iter()
            .map(|r| (r.start, r.size as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIB;

    #[test]
    fn identity_tables_map_4g_with_2m_pages() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let mem = test_util::memory(&layout);
        let cr3 = write_identity_page_tables(&mem).unwrap() as u64;
        let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        let pdpt = rd(cr3) & !0xFFF;
        let pd3 = rd(pdpt + 3 * 8) & !0xFFF;
        // The last 2 MiB page below 4 GiB maps to itself.
        assert_eq!(rd(pd3 + 511 * 8), 0xFFE0_0000 | 0x83);
        let pd0 = rd(pdpt) & !0xFFF;
        assert_eq!(rd(pd0 + 8), 0x20_0000 | 0x83);
        assert!(pd3 + 0x1000 <= area::ZERO_PAGE);
    }

    #[test]
    fn image_ranges_avoid_the_holes_and_boot_structures() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let ok = |s, e| check_image_range("k", "x", s, e, &layout).is_ok();
        assert!(ok(0x10_0000, 0x20_0000));
        assert!(ok(0x4_0000, 0x9_0000));
        assert!(!ok(0x9_0000, 0xA_0000));
        assert!(!ok(0xF_0000, 0x10_1000));
        assert!(!ok(0x1000, 0x2000));
        assert!(!ok(0x10_0000, 65 * MIB));
        assert!(!ok(0x20_0000, 0x20_0000));
    }
}
