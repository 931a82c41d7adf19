//! The BIOS shadow areas, 0xC0000-0xFFFFF: thirteen segments (twelve of 16 KiB from
//! 0xC0000, one of 64 KiB at 0xF0000), each backed by the ROM or by shadow RAM as the i440fx
//! PAM registers say, exactly as on a PC:
//!
//! | PAM mode | reads | writes | how |
//! |---|---|---|---|
//! | `Rom` | ROM (nothing below 0xE0000) | dropped | read-only slot on the ROM, or no slot |
//! | `ReadOnlyRam` | shadow RAM | dropped | read-only slot on the shadow RAM |
//! | `WriteOnly` | ROM | shadow RAM | read-only slot on the ROM; writes exit and are copied |
//! | `Ram` | shadow RAM | shadow RAM | read-write slot on the shadow RAM |
//!
//! Writes to a read-only slot, and any access where no slot is mapped, reach `ShadowMmio`.
//! Each segment has its own KVM slot; a mode change deletes and re-creates it.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_READONLY};
use kvm_ioctls::VmFd;
use vm_memory::MmapRegion;

use crate::bus::{lock, BusDevice};
use crate::devices::i440fx::{PamChange, PamMode};
use crate::exit::ExitReason;
use crate::log;
use crate::memory::{
    BIOS_WINDOW_SIZE, BIOS_WINDOW_START, HIGH_MEMORY_START, KIB, OPTION_ROM_START,
};
use crate::pause::Pause;
use crate::vm::RomMapping;

pub const SHADOW_START: u64 = OPTION_ROM_START;
pub const SHADOW_LEN: u64 = HIGH_MEMORY_START - OPTION_ROM_START;
/// Segments: twelve of 16 KiB, then 0xF0000-0xFFFFF.
pub const SEGMENTS: usize = 13;

fn segment(i: usize) -> (u64, u64) {
    if i < 12 {
        (SHADOW_START + i as u64 * 16 * KIB, 16 * KIB)
    } else {
        (0xF_0000, 64 * KIB)
    }
}

fn segment_of(addr: u64) -> Option<usize> {
    (0..SEGMENTS).find(|i| {
        let (s, l) = segment(*i);
        (s..s + l).contains(&addr)
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    #[error("cannot map the shadow RAM: {0}")]
    Map(vm_memory::mmap::MmapRegionError),
    #[error("cannot change the memory slot of {start:#x}: {err}")]
    Slot { start: u64, err: kvm_ioctls::Error },
}

/// The shadow areas' state.
pub struct Shadow {
    vm: Arc<VmFd>,
    ram: MmapRegion,
    /// The firmware's mapping, whose last 128 KiB are the window 0xE0000-0xFFFFF.
    rom: Arc<RomMapping>,
    modes: [PamMode; SEGMENTS],
    mapped: [bool; SEGMENTS],
    first_slot: u32,
    /// Until the first PAM change, one read-only slot covers the whole ROM window
    /// 0xE0000-0xFFFFF (one registration instead of five at start-up); the first change
    /// replaces it with a slot per segment.
    whole_rom: bool,
    /// Keeps the other vCPUs out of KVM_RUN while a slot changes: a vCPU must never fetch
    /// from the hole between deleting a slot and creating its replacement.
    pause: Arc<Pause>,
}

impl Shadow {
    /// Maps every segment as the reset state has it (`Rom`), on KVM slots `first_slot` and up.
    pub fn new(
        vm: Arc<VmFd>,
        rom: Arc<RomMapping>,
        first_slot: u32,
        pause: Arc<Pause>,
    ) -> Result<Self, ShadowError> {
        let ram = vm_memory::mmap::MmapRegionBuilder::new(SHADOW_LEN as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(ShadowError::Map)?;
        let mut s = Shadow {
            vm,
            ram,
            rom,
            modes: [PamMode::Rom; SEGMENTS],
            mapped: [false; SEGMENTS],
            first_slot,
            whole_rom: false,
            pause,
        };
        s.set_region(
            s.whole_rom_slot(),
            BIOS_WINDOW_START,
            BIOS_WINDOW_SIZE,
            s.rom.window(),
            KVM_MEM_READONLY,
        )?;
        s.whole_rom = true;
        Ok(s)
    }

    /// Applies a PAM change reported by the host bridge.
    pub fn apply(&mut self, c: PamChange) {
        let Some(i) = segment_of(c.start) else {
            return;
        };
        if self.modes[i] == c.mode {
            return;
        }
        self.modes[i] = c.mode;
        let pause = self.pause.clone();
        pause.with_others_stopped(|| self.remap(i));
    }

    /// Makes segment `i`'s slot what its mode says (all segments' on the first change).
    fn remap(&mut self, i: usize) {
        if self.whole_rom {
            // The first change: a slot per segment from now on, each as its mode says.
            self.whole_rom = false;
            if let Err(e) = self.set_region(self.whole_rom_slot(), BIOS_WINDOW_START, 0, 0, 0) {
                log::debug(format_args!("shadow: {e}"));
            }
            for j in 0..SEGMENTS {
                if let Err(e) = self.map(j) {
                    log::debug(format_args!("shadow: {e}"));
                }
            }
            return;
        }
        if let Err(e) = self.map(i) {
            // The slot is gone: the segment reads as all-ones until the next change.
            log::debug(format_args!("shadow: {e}"));
        }
    }

    /// The slot of the whole ROM window, after the thirteen segments' slots.
    fn whole_rom_slot(&self) -> u32 {
        self.first_slot + SEGMENTS as u32
    }

    fn set_region(
        &self,
        slot: u32,
        start: u64,
        size: u64,
        host: u64,
        flags: u32,
    ) -> Result<(), ShadowError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: start,
            memory_size: size,
            userspace_addr: host,
        };
        // SAFETY: `host` lies inside the shadow RAM or the ROM mapping, both of which live as
        // long as the VM; size 0 deletes the slot.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|err| ShadowError::Slot { start, err })
    }

    fn rom_offset(start: u64) -> Option<u64> {
        start.checked_sub(BIOS_WINDOW_START)
    }

    fn set_slot(&self, i: usize, size: u64, host: u64, flags: u32) -> Result<(), ShadowError> {
        let (start, _) = segment(i);
        self.set_region(self.first_slot + i as u32, start, size, host, flags)
    }

    fn map(&mut self, i: usize) -> Result<(), ShadowError> {
        let (start, size) = segment(i);
        if self.mapped[i] {
            self.set_slot(i, 0, 0, 0)?;
            self.mapped[i] = false;
        }
        let ram = self.ram.as_ptr() as u64 + (start - SHADOW_START);
        let rom = Self::rom_offset(start).map(|o| self.rom.window() + o);
        let (host, flags) = match self.modes[i] {
            PamMode::Rom | PamMode::WriteOnly => match rom {
                Some(r) => (r, KVM_MEM_READONLY),
                None => return Ok(()),
            },
            PamMode::ReadOnlyRam => (ram, KVM_MEM_READONLY),
            PamMode::Ram => (ram, 0),
        };
        self.set_slot(i, size, host, flags)?;
        self.mapped[i] = true;
        Ok(())
    }
}

/// The MMIO side of the shadow areas: accesses that no slot took.
pub struct ShadowMmio(pub Arc<Mutex<Shadow>>);

impl BusDevice for ShadowMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let s = lock(&self.0);
        let addr = SHADOW_START + offset;
        // Only unmapped segments (no ROM below 0xE0000) or a failed remap get here.
        data.fill(0xFF);
        if let Some(i) = segment_of(addr) {
            if matches!(s.modes[i], PamMode::Ram | PamMode::ReadOnlyRam) && !s.mapped[i] {
                let at = offset as usize;
                if let Some(src) = s.ram_slice(at, data.len()) {
                    data.copy_from_slice(src);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let mut s = lock(&self.0);
        let addr = SHADOW_START + offset;
        if let Some(i) = segment_of(addr) {
            if matches!(s.modes[i], PamMode::WriteOnly | PamMode::Ram) {
                s.ram_write(offset as usize, data);
            }
        }
        None
    }
}

impl Shadow {
    /// Whether every segment `[addr, addr + len)` touches is in one of `modes`.
    fn all_in(&self, addr: u64, len: usize, modes: &[PamMode]) -> bool {
        let Some(end) = addr.checked_add(len as u64) else {
            return false;
        };
        if addr < SHADOW_START || end > SHADOW_START + SHADOW_LEN {
            return false;
        }
        let mut at = addr;
        while at < end {
            let Some(i) = segment_of(at) else {
                return false;
            };
            if !modes.contains(&self.modes[i]) {
                return false;
            }
            let (s, l) = segment(i);
            at = s + l;
        }
        true
    }

    /// A device's DMA write at `addr` (guest-physical, inside 0xC0000-0xFFFFF): it lands in
    /// shadow RAM where the PAM registers enable writes, as the memory controller routes it.
    /// False, and nothing written, when any part of it is not writable.
    pub fn dma_write(&mut self, addr: u64, data: &[u8]) -> bool {
        if !self.all_in(addr, data.len(), &[PamMode::Ram, PamMode::WriteOnly]) {
            return false;
        }
        self.ram_write((addr - SHADOW_START) as usize, data);
        true
    }

    /// A device's DMA read at `addr` from shadow RAM where the PAM registers enable reads.
    pub fn dma_read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if !self.all_in(addr, buf.len(), &[PamMode::Ram, PamMode::ReadOnlyRam]) {
            return false;
        }
        match self.ram_slice((addr - SHADOW_START) as usize, buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }

    fn ram_slice(&self, at: usize, len: usize) -> Option<&[u8]> {
        if at.checked_add(len)? > self.ram.size() {
            return None;
        }
        // SAFETY: the range lies inside the shadow RAM mapping (checked above); the guest may
        // write it concurrently, which only changes the bytes read.
        Some(unsafe { std::slice::from_raw_parts(self.ram.as_ptr().add(at), len) })
    }

    fn ram_write(&mut self, at: usize, data: &[u8]) {
        if at
            .checked_add(data.len())
            .is_some_and(|end| end <= self.ram.size())
        {
            // SAFETY: the range lies inside the shadow RAM mapping (checked above).
            unsafe {
                std::ptr::copy_nonoverlapping(data.as_ptr(), self.ram.as_ptr().add(at), data.len())
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_tile_the_shadow_area() {
        let mut next = SHADOW_START;
        for i in 0..SEGMENTS {
            let (s, l) = segment(i);
            assert_eq!(s, next);
            next = s + l;
        }
        assert_eq!(next, SHADOW_START + SHADOW_LEN);
        assert_eq!(segment_of(0xC0000), Some(0));
        assert_eq!(segment_of(0xE3FFF), Some(8));
        assert_eq!(segment_of(0xE4000), Some(9));
        assert_eq!(segment_of(0xFFFFF), Some(12));
        assert_eq!(segment_of(0x100000), None);
        assert_eq!(segment_of(0xBFFFF), None);
    }
}
