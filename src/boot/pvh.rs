//! PVH, the Xen entry Linux also offers in its ELF vmlinux: the entry point from the ELF
//! note XEN_ELFNOTE_PHYS32_ENTRY, and hvm_start_info (memory map, command line, RSDP, the
//! initrd as module 0) written with linux-loader's PVH configurator; the kernel is entered
//! in 32-bit protected mode, paging off, EBX = the start info.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::{area, BootEnv, BootError};
use crate::firmware::{BootKind, Handoff, Regs};
use crate::memory::BIOS_WINDOW_START;

pub(super) const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const PVH_MAGIC: u32 = 0x336E_C578;

/// PVH: hvm_start_info with the memory map, command line, RSDP and the initrd as module
/// 0; 32-bit protected mode, paging off, EBX = start info.
pub(super) fn load(
    mem: &GuestMemoryMmap,
    env: &BootEnv,
    acpi: bool,
    entry: u32,
    ramdisk: u32,
    ramdisk_size: u32,
) -> Result<(BootKind, Handoff), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = env
        .e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind as u32,
            reserved: 0,
        })
        .collect();
    let memmap_addr = area::INFO;
    let modlist_addr = area::INFO + 0x1000;
    let start = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: area::CMDLINE,
        rsdp_paddr: if acpi && env.rsdp.is_some() {
            BIOS_WINDOW_START
        } else {
            0
        },
        memmap_paddr: memmap_addr,
        memmap_entries: memmap.len() as u32,
        nr_modules: (ramdisk_size > 0) as u32,
        modlist_paddr: if ramdisk_size > 0 { modlist_addr } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new(&start, GuestAddress(area::ZERO_PAGE));
    params.set_sections(&memmap, GuestAddress(memmap_addr));
    if ramdisk_size > 0 {
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: ramdisk as u64,
                size: ramdisk_size as u64,
                ..Default::default()
            }],
            GuestAddress(modlist_addr),
        );
    }
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| BootError::Memory(e.to_string()))?;
    let regs = Regs {
        ebx: area::ZERO_PAGE as u32,
        ..Default::default()
    };
    super::flat_handoff(mem, entry.into(), false, regs)
}

/// The PVH entry point from an ELF64's notes (XEN_ELFNOTE_PHYS32_ENTRY), if any.
pub(super) fn note(b: &[u8]) -> Option<u32> {
    let rd32 = |o: usize| {
        b.get(o..o.checked_add(4)?)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let rd64 = |o: usize| {
        b.get(o..o.checked_add(8)?)
            .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    };
    let phoff = rd64(32)? as usize;
    let phentsize = b.get(54..56).map(|s| u16::from_le_bytes([s[0], s[1]]))? as usize;
    let phnum = b.get(56..58).map(|s| u16::from_le_bytes([s[0], s[1]]))? as usize;
    for i in 0..phnum.min(1024) {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if rd32(o)? != 4 {
            continue; // PT_NOTE
        }
        let off = rd64(o.checked_add(8)?)? as usize;
        let size = rd64(o.checked_add(32)?)? as usize;
        let end = off.checked_add(size)?.min(b.len());
        let mut n = off;
        while n.checked_add(12).is_some_and(|e| e <= end) {
            let namesz = rd32(n)? as usize;
            let descsz = rd32(n + 4)? as usize;
            let kind = rd32(n + 8)?;
            let name_at = n + 12;
            let desc_at = name_at.checked_add((namesz + 3) & !3)?;
            if kind == XEN_ELFNOTE_PHYS32_ENTRY
                && descsz >= 4
                && b.get(name_at..name_at + namesz)? == b"Xen\0"
            {
                return rd32(desc_at);
            }
            n = desc_at.checked_add((descsz + 3) & !3)?;
        }
    }
    None
}
