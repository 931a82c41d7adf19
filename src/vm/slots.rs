//! Guest memory and its KVM slots: RAM, the ROM and its window below 1 MiB, the platform
//! tables written into that window.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use libc::{MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use seccompiler::BpfProgram;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::config::VmConfig;
use crate::firmware::Rom;
use crate::memory::{self, MemoryLayout};
use crate::ram_gate::{RamFailure, RamGate};
use crate::seccomp::{self, ThreadKind};

use super::{kvm_err, VmError};

pub(super) fn anon_mapping(size: usize, what: &'static str) -> Result<MmapRegion, VmError> {
    MmapRegionBuilder::new(size)
        .with_mmap_prot(PROT_READ | PROT_WRITE)
        .with_mmap_flags(MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE)
        .build()
        .map_err(|err| VmError::Mmap { what, err })
}

/// The size of the table area at the bottom of the window (`window_len` bytes, ending where
/// the image ends), if the image leaves it all zero. Judged from the image, so that the rest
/// of the window is never touched.
fn free_table_area(rom: &Rom, window_len: usize) -> Option<usize> {
    let area = crate::acpi::TABLES_SIZE.min(window_len);
    let image_at = window_len.saturating_sub(rom.bytes.len());
    let skip = rom.bytes.len().saturating_sub(window_len);
    let in_area = area.saturating_sub(image_at);
    rom.bytes[skip..skip + in_area]
        .iter()
        .all(|b| *b == 0)
        .then_some(area)
}

/// Writes the platform tables into the free bottom 64 KiB of the firmware window (0xE0000):
/// ACPI, or with `--no-acpi` the MP table. The window is free when the firmware image leaves
/// it empty: always for the embedded firmware and for images of 64 KiB or less; a larger
/// image (SeaBIOS) brings its own tables. Returns the MP floating pointer, which goes in the
/// EBDA, where an OS looks for it.
pub(super) fn write_tables(
    cfg: &VmConfig,
    layout: &MemoryLayout,
    window: &mut [u8],
    rom: &Rom,
) -> Result<Option<[u8; 16]>, VmError> {
    let Some(area) = free_table_area(rom, window.len()) else {
        crate::log::info(format_args!(
            "the firmware image fills 0xE0000: no ACPI or MP tables from the VMM"
        ));
        return Ok(None);
    };
    let (bytes, mp_pointer) = if cfg.acpi {
        let t = crate::acpi::build(&crate::acpi::AcpiConfig {
            cpus: cfg.cpus,
            layout: *layout,
        })
        .map_err(|e| VmError::Device(format!("ACPI tables: {e}")))?;
        (t, None)
    } else {
        let base = crate::acpi::TABLES_BASE;
        let t = crate::mptable::build(cfg.cpus, base)
            .map_err(|e| VmError::Device(format!("MP table: {e}")))?;
        let fp = crate::mptable::floating_pointer(base + 16)
            .map_err(|e| VmError::Device(format!("MP table: {e}")))?;
        (t, Some(fp))
    };
    if bytes.len() > area {
        return Err(VmError::Device(
            "platform tables do not fit below the firmware".into(),
        ));
    }
    window[..bytes.len()].copy_from_slice(&bytes);
    Ok(mp_pointer)
}

/// Guest RAM: lazily mapped anonymous memory, one mapping per RAM region.
pub(super) fn map_ram(layout: &MemoryLayout) -> Result<GuestMemoryMmap, VmError> {
    let mut regions = Vec::new();
    for r in layout.ram_regions() {
        let m = anon_mapping(r.size as usize, "guest RAM")?;
        regions.push(
            GuestRegionMmap::new(m, r.start)
                .ok_or_else(|| VmError::GuestMemory(format!("region at {:#x}", r.start.0)))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| VmError::GuestMemory(e.to_string()))
}

/// The firmware's one host mapping: the ROM at its end, after room for the VMM's tables when
/// the ROM is smaller than the 128 KiB window. Both guest views of it are read-only: the
/// ROM below 4 GiB, and the window 0xE0000-0xFFFFF (its last 128 KiB) until the PAM
/// registers say otherwise (shadow.rs).
pub struct RomMapping {
    map: MmapRegion,
}

impl RomMapping {
    /// Where the window 0xE0000 starts in the host mapping.
    pub fn window(&self) -> u64 {
        self.map.as_ptr() as u64 + (self.map.size() as u64 - memory::BIOS_WINDOW_SIZE)
    }
}

/// What `register_memory` set up.
pub(super) struct RegisteredMemory {
    pub(super) rom: Arc<RomMapping>,
    pub(super) first_shadow_slot: u32,
    /// The ACPI RSDP written at 0xE0000, if any.
    pub(super) rsdp: Option<Vec<u8>>,
    /// The RAM slots left for the background thread (`DeferredRam`); empty unless `defer`.
    pub(super) late: Vec<LateSlot>,
}

/// Registers RAM and the ROM with KVM, before the irqchip exists (DESIGN: that order is
/// milliseconds faster). RAM has a slot per `MemoryLayout::slot_pieces` piece; with `defer`
/// the pieces above 16 MiB are left out (their slot numbers reserved) for `DeferredRam` to
/// register while the guest runs. The ROM is the whole image just below 4 GiB, and the
/// 128 KiB window 0xE0000-0xFFFFF holding its last 128 KiB; an image that is smaller leaves
/// the window's bottom free for the VMM's tables. Returns the two ROM mappings, the first
/// slot free for the shadow areas (0xC0000-0xFFFFF, under PAM control: after every RAM
/// slot, deferred ones included), and the ACPI RSDP written at 0xE0000 if there is one.
pub(super) fn register_memory(
    vm: &VmFd,
    guest_mem: &GuestMemoryMmap,
    rom: &Rom,
    cfg: &VmConfig,
    layout: &MemoryLayout,
    defer: bool,
) -> Result<RegisteredMemory, VmError> {
    let mut slot = 0u32;
    let mut late = Vec::new();
    for piece in layout.slots(defer) {
        let r = piece.region;
        let region = guest_mem
            .find_region(r.start)
            .filter(|g| r.start.0 + r.size <= g.start_addr().0 + g.len())
            .ok_or_else(|| {
                VmError::GuestMemory(format!("no mapping for RAM at {:#x}", r.start.0))
            })?;
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(
                r.start.0 - region.start_addr().0,
            ))
            .map_err(|e| VmError::GuestMemory(e.to_string()))?;
        let s = LateSlot {
            slot,
            guest: r.start.0,
            size: r.size,
            host: host as u64,
        };
        if piece.deferrable {
            late.push(s);
        } else {
            set_slot(vm, s.slot, s.guest, s.size, s.host, 0)?;
        }
        slot += 1;
    }
    let (high, _, _) = MemoryLayout::firmware_windows(rom.size());
    // Built in its final mapping, each byte written once: pages nothing writes (the zeros
    // before a short image) stay unallocated.
    let size = rom.size().max(memory::BIOS_WINDOW_SIZE) as usize;
    let map = anon_mapping(size, "firmware ROM")?;
    // SAFETY: a fresh, writable mapping of `size` bytes; nothing else refers to it until it
    // is wrapped in the RomMapping below, after the last use of this slice.
    let all = unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), size) };
    all[size - rom.bytes.len()..].copy_from_slice(&rom.bytes);
    let window = &mut all[size - memory::BIOS_WINDOW_SIZE as usize..];
    if let Some(fp) = write_tables(cfg, layout, window, rom)? {
        // 16 bytes into the EBDA: its first byte is the EBDA's size, set by the firmware.
        guest_mem
            .write_slice(&fp, vm_memory::GuestAddress(memory::EBDA_START + 16))
            .map_err(|e| VmError::GuestMemory(e.to_string()))?;
    }
    let rsdp = (cfg.acpi && window.starts_with(b"RSD PTR ")).then(|| window[..36].to_vec());
    set_slot(
        vm,
        slot,
        high.0,
        rom.size(),
        map.as_ptr() as u64 + (size as u64 - rom.size()),
        KVM_MEM_READONLY,
    )?;
    Ok(RegisteredMemory {
        rom: Arc::new(RomMapping { map }),
        first_shadow_slot: slot + 1,
        rsdp,
        late,
    })
}

/// How long the registering thread lets the guest run before it starts, unless a vCPU waits
/// for the RAM first. Measured here: a slot registered in the guest's first milliseconds
/// costs a fixed 3-5 ms more than one registered 10 ms in (0.3-0.6 ms for 240 MiB), and
/// slows the running vCPU meanwhile (the bench ROM took 10-28% longer with `--mem 64G`
/// than with 256M when the thread started at once, 0-5% with this wait). A guest that
/// asks for the memory map at once starts it at once, as before.
const IDLE_START: Duration = Duration::from_millis(10);

/// A RAM slot registered while the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LateSlot {
    slot: u32,
    guest: u64,
    size: u64,
    /// Where the host maps guest address `guest`: inside the `GuestMemoryMmap` that the
    /// Machine holds for the whole run.
    host: u64,
}

impl LateSlot {
    pub(super) fn guest(&self) -> u64 {
        self.guest
    }
    pub(super) fn size(&self) -> u64 {
        self.size
    }
}

/// The RAM above 16 MiB that KVM learns about after the guest started, and the gate that
/// makes everything that could reach it wait (`ram_gate.rs`). One thread registers it
/// (`spawn`), under its own seccomp filter (`ThreadKind::RamRegistrar`).
pub struct DeferredRam {
    vm: Arc<VmFd>,
    slots: Vec<LateSlot>,
    gate: Arc<RamGate>,
    /// Debug builds: wait this long before registering (`--x-ram-delay-ms`).
    delay: Duration,
    /// Debug builds: the last slot's host address is made invalid, so that KVM refuses it
    /// (`--x-ram-fail`).
    fail: bool,
}

impl DeferredRam {
    pub(super) fn new(
        vm: Arc<VmFd>,
        slots: Vec<LateSlot>,
        gate: Arc<RamGate>,
        cfg: &VmConfig,
    ) -> DeferredRam {
        DeferredRam {
            vm,
            slots,
            gate,
            delay: cfg.ram_delay,
            fail: cfg.ram_fail,
        }
    }

    /// Starts the registering thread. It installs `filter` first (it touches no guest
    /// input, so the guest's start does not wait for it), then waits for the first vCPU that
    /// needs the RAM or `IDLE_START`, registers the slots in address order and opens the
    /// gate. A failure is reported on the gate, and `wake` tells the monitor, which ends the
    /// VM (host error). The thread allocates nothing once sandboxed and ends when done.
    pub fn spawn(
        self,
        filter: Option<Arc<BpfProgram>>,
        wake: Arc<EventFd>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ram".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                if let Some(f) = filter {
                    if let Err(e) = seccomp::install(ThreadKind::RamRegistrar, &f) {
                        self.gate.fail(RamFailure::Thread(e.to_string()));
                        let _ = wake.write(1);
                        return;
                    }
                }
                if let Err(f) = self.register() {
                    self.gate.fail(f);
                    let _ = wake.write(1);
                }
            })
    }

    /// Registers every slot, then opens the gate: as soon as a vCPU waits for the RAM, or
    /// after `IDLE_START` without one.
    fn register(&self) -> Result<(), RamFailure> {
        self.gate.wanted_within(IDLE_START);
        if !self.delay.is_zero() {
            // park_timeout is a futex wait: no syscall the filter lacks.
            let until = Instant::now() + self.delay;
            while let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            {
                std::thread::park_timeout(left);
            }
        }
        let last = self.slots.len().saturating_sub(1);
        for (i, s) in self.slots.iter().enumerate() {
            // A host address that is not page aligned: KVM answers EINVAL.
            let host = if self.fail && i == last {
                s.host + 1
            } else {
                s.host
            };
            if let Err(e) = set_slot(&self.vm, s.slot, s.guest, s.size, host, 0) {
                let errno = match e {
                    VmError::Kvm(_, k) => k.errno(),
                    _ => libc::EIO,
                };
                return Err(RamFailure::Register {
                    start: s.guest,
                    end: s.guest + s.size,
                    errno,
                });
            }
        }
        self.gate.open();
        Ok(())
    }
}

pub(super) fn set_slot(
    vm: &VmFd,
    slot: u32,
    guest: u64,
    size: u64,
    host: u64,
    flags: u32,
) -> Result<(), VmError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: guest,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: `host` points to a mapping of at least `size` bytes that lives as long as the VM
    // (the Machine owns it, and the process exits without dropping it), and slots never
    // overlap (memory.rs keeps the map disjoint). A misaligned `host` (`--x-ram-fail`) is
    // refused by KVM, never mapped.
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("set memory region"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_area_is_free_unless_the_image_covers_it_with_data() {
        let window = memory::BIOS_WINDOW_SIZE as usize;
        let image = |len: usize, at: Option<usize>| {
            let mut b = vec![0u8; len];
            if let Some(i) = at {
                b[i] = 1;
            }
            b[len - 1] = 0xEA;
            Rom::from_bytes(b)
        };
        assert!(free_table_area(&Rom::embedded(), window).is_some());
        assert!(free_table_area(&image(64 * 1024, Some(0)), window).is_some());
        assert!(free_table_area(&image(128 * 1024, None), window).is_some());
        assert!(free_table_area(&image(128 * 1024, Some(0)), window).is_none());
        assert!(free_table_area(&image(128 * 1024, Some(0xFFFF)), window).is_none());
        assert!(free_table_area(&image(128 * 1024, Some(0x10000)), window).is_some());
        // 256 KiB: only its last 128 KiB are in the window.
        assert!(free_table_area(&image(256 * 1024, Some(0x1FFFF)), window).is_some());
        assert!(free_table_area(&image(256 * 1024, Some(0x20000)), window).is_none());
    }
}
