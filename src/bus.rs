//! Port-I/O and MMIO buses: dispatch an access by address range to the device behind it.
//!
//! Unclaimed addresses read as all-ones at every width and swallow writes (logged at debug
//! level), as on a PC with nothing decoding the address.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::exit::ExitReason;
use crate::log;
use crate::ram_gate::RamGate;

/// A device on a bus. `offset` is relative to the base the device was inserted at (plus the
/// offset it was inserted with, see `Bus::insert_at_offset`).
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write may end the VM (debug-exit, power-off, reset).
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason>;
    /// Back to the power-on state, for a reboot (`--reboot`). Devices without state that a
    /// reset line clears keep the default, which does nothing.
    fn reset(&mut self) {}
    /// Whether this access asks how much RAM the guest has (the CMOS memory sizes, fw_cfg's
    /// RAM size and `etc/e820`): while RAM is still being registered, the bus makes such an
    /// access wait until it all is (`ram_gate.rs`). Devices that report nothing about memory
    /// keep the default.
    fn asks_for_memory_map(&self, _offset: u64, _access: Access<'_>) -> bool {
        false
    }
}

/// An access as `BusDevice::asks_for_memory_map` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// A read of this many bytes.
    Read(usize),
    /// A write of these bytes.
    Write(&'a [u8]),
}

impl Access<'_> {
    /// Whether the access covers the byte at `at`, given that it starts at `offset`.
    pub fn covers(&self, offset: u64, at: u64) -> bool {
        let len = match self {
            Access::Read(n) => *n,
            Access::Write(d) => d.len(),
        } as u64;
        offset <= at && at - offset < len
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps a device already present")]
    Overlap { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    /// The offset the device sees at the range's first address.
    offset: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of devices keyed by non-overlapping address ranges.
pub struct Bus {
    name: &'static str,
    devices: BTreeMap<u64, Entry>,
    /// The RAM registered while the guest runs: accesses that ask for the memory map wait
    /// for it.
    ram: Option<Arc<RamGate>>,
}

impl Bus {
    pub fn new(name: &'static str) -> Self {
        Bus {
            name,
            devices: BTreeMap::new(),
            ram: None,
        }
    }

    /// Accesses that ask for the memory map wait until `gate` opens.
    pub fn set_ram_gate(&mut self, gate: Arc<RamGate>) {
        self.ram = Some(gate);
    }

    /// While RAM is being registered, waits until it all is if this access asks for the
    /// memory map. The device is asked under its lock, which is released for the wait. A
    /// failed registration does not block: the monitor ends the VM (host error).
    fn wait_for_ram(&self, offset: u64, e: &Entry, access: Access<'_>) {
        let Some(gate) = self.ram.as_deref() else {
            return;
        };
        if gate.is_open() || !lock(&e.device).asks_for_memory_map(offset, access) {
            return;
        }
        if let Err(f) = gate.wait() {
            log::debug(format_args!("{}: {f}", self.name));
        }
    }

    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        self.insert_at_offset(base, len, 0, device)
    }

    /// Inserts `device` at `base`, where it sees offsets from `offset` on: one device can
    /// answer at ranges that are not contiguous (the PIT at 0x40-0x43 and 0x61) and tell
    /// them apart.
    pub fn insert_at_offset(
        &mut self,
        base: u64,
        len: u64,
        offset: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        if let Some((b, e)) = self.devices.range(..end).next_back() {
            if b + e.len > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(
            base,
            Entry {
                len,
                offset,
                device,
            },
        );
        Ok(())
    }

    /// Resets every device on the bus once (a device inserted at several ranges is one).
    pub fn reset(&self) {
        let mut seen: Vec<*const ()> = Vec::new();
        for e in self.devices.values() {
            let id = Arc::as_ptr(&e.device) as *const ();
            if !seen.contains(&id) {
                seen.push(id);
                lock(&e.device).reset();
            }
        }
    }

    /// The entry at `addr` and the offset `addr` is at for its device.
    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, e) = self.devices.range(..=addr).next_back()?;
        (addr - base < e.len).then_some((addr - base + e.offset, e))
    }

    /// Reads `data.len()` bytes at `addr`; returns false (and all-ones) when nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, e)) => {
                self.wait_for_ram(offset, e, Access::Read(data.len()));
                lock(&e.device).read(offset, data);
                true
            }
            None => {
                data.fill(0xFF);
                log::debug(format_args!(
                    "{}: read of {} bytes at unassigned {:#x}",
                    self.name,
                    data.len(),
                    addr
                ));
                false
            }
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) -> Option<ExitReason> {
        match self.find(addr) {
            Some((offset, e)) => {
                self.wait_for_ram(offset, e, Access::Write(data));
                lock(&e.device).write(offset, data)
            }
            None => {
                log::debug(format_args!(
                    "{}: write of {:02x?} at unassigned {:#x} ignored",
                    self.name, data, addr
                ));
                None
            }
        }
    }
}

/// Locks a device. A device never panics while holding its lock (the release build aborts
/// on panic), so a poisoned lock still guards consistent state.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        last: Vec<u8>,
    }
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset as u8 + i as u8;
            }
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<ExitReason> {
            self.last = data.to_vec();
            None
        }
    }

    fn echo() -> Arc<Mutex<dyn BusDevice>> {
        Arc::new(Mutex::new(Echo { last: vec![] }))
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let mut bus = Bus::new("test");
        bus.insert(0x3F8, 8, echo()).unwrap();
        let mut d = [0u8; 2];
        assert!(bus.read(0x3FA, &mut d));
        assert_eq!(d, [2, 3]);
        assert!(!bus.read(0x400, &mut d));
        assert_eq!(d, [0xFF, 0xFF]);
        assert!(!bus.read(0x3F7, &mut d));
    }

    #[test]
    fn unassigned_reads_are_all_ones_at_every_width() {
        let bus = Bus::new("test");
        for w in [1, 2, 4, 8] {
            let mut d = vec![0u8; w];
            assert!(!bus.read(0x1234, &mut d));
            assert!(d.iter().all(|b| *b == 0xFF));
            assert_eq!(bus.write(0x1234, &d), None);
        }
    }

    #[test]
    fn one_device_at_two_ranges_sees_its_own_offsets_and_resets_once() {
        struct Counting {
            resets: u32,
        }
        impl BusDevice for Counting {
            fn read(&mut self, offset: u64, data: &mut [u8]) {
                data[0] = offset as u8;
            }
            fn write(&mut self, _: u64, _: &[u8]) -> Option<ExitReason> {
                None
            }
            fn reset(&mut self) {
                self.resets += 1;
            }
        }
        let dev = Arc::new(Mutex::new(Counting { resets: 0 }));
        let mut bus = Bus::new("test");
        bus.insert(0x40, 4, dev.clone()).unwrap();
        bus.insert_at_offset(0x61, 1, 0x21, dev.clone()).unwrap();
        let mut d = [0u8];
        assert!(bus.read(0x43, &mut d));
        assert_eq!(d, [3]);
        assert!(bus.read(0x61, &mut d));
        assert_eq!(d, [0x21]);
        assert!(!bus.read(0x62, &mut d));
        bus.reset();
        assert_eq!(dev.lock().unwrap().resets, 1);
    }

    #[test]
    fn overlaps_are_refused() {
        let mut bus = Bus::new("test");
        bus.insert(0x70, 2, echo()).unwrap();
        assert!(bus.insert(0x71, 1, echo()).is_err());
        assert!(bus.insert(0x6F, 2, echo()).is_err());
        assert!(bus.insert(0x6F, 1, echo()).is_ok());
        assert!(bus.insert(0x72, 1, echo()).is_ok());
        assert!(bus.insert(0x100, 0, echo()).is_err());
        assert!(bus.insert(u64::MAX, 2, echo()).is_err());
    }
}
