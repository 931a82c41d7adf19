//! PCI configuration space and the host's configuration mechanism #1 at ports 0xCF8-0xCFF.
//!
//! A function's 256-byte configuration space is a `ConfigSpace`: the bytes, plus a write mask
//! (bits a guest may change) and a write-1-to-clear mask per byte, so read-only fields keep
//! their value whatever is written, at whatever width and offset. BARs are write-mask bits
//! too: the address bits below the BAR's size are read-only zeros, so writing all-ones and
//! reading back yields the size mask that PCI sizing expects.
//!
//! `PciBus` decodes CONFIG_ADDRESS (a dword at 0xCF8) and CONFIG_DATA (0xCFC-0xCFF, any width
//! within the dword) for bus 0 only. As on PIIX chipsets, a byte access to 0xCF9 is not part
//! of CONFIG_ADDRESS but the reset control register, so `PciBus` also implements it: the whole
//! range 0xCF8-0xCFF is one bus entry and nothing else may sit at 0xCF9.
// The BAR and capability API serves PCI devices with BARs (virtio); until one is on the
// bus, only the unit tests below use it.
#![cfg_attr(not(test), allow(dead_code))]

use std::sync::{Arc, Mutex};

use crate::bus::{lock, BusDevice};
use crate::exit::ExitReason;

/// Where `PciBus` goes on the port-I/O bus, and how many ports it covers.
pub const PCI_CONFIG_PORT: u64 = 0xCF8;
pub const PCI_CONFIG_LEN: u64 = 8;

/// Size of a function's configuration space (conventional PCI), in bytes and dwords.
pub const CONFIG_SPACE_SIZE: usize = 256;

/// Offsets of the type 0 header's fields.
pub mod reg {
    pub const VENDOR_ID: usize = 0x00;
    pub const DEVICE_ID: usize = 0x02;
    pub const COMMAND: usize = 0x04;
    pub const STATUS: usize = 0x06;
    pub const REVISION: usize = 0x08;
    pub const PROG_IF: usize = 0x09;
    pub const SUBCLASS: usize = 0x0A;
    pub const CLASS: usize = 0x0B;
    pub const CACHE_LINE_SIZE: usize = 0x0C;
    pub const LATENCY_TIMER: usize = 0x0D;
    pub const HEADER_TYPE: usize = 0x0E;
    pub const BAR0: usize = 0x10;
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
    pub const SUBSYSTEM_ID: usize = 0x2E;
    pub const CAPABILITIES: usize = 0x34;
    pub const INTERRUPT_LINE: usize = 0x3C;
    pub const INTERRUPT_PIN: usize = 0x3D;
}

/// Command register bits.
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const SERR: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    /// The error bits, all write-1-to-clear.
    pub const ERRORS: u16 = 0xF900;
}

/// Header type bit 7: the device has more than one function.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 0x80;

/// Number of BARs in a type 0 header.
pub const MAX_BARS: usize = 6;

/// First byte after the type 0 header, where capabilities go.
const CAPABILITIES_START: usize = 0x40;

/// BAR low bits.
const BAR_IO: u32 = 1;
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
const BAR_IO_ADDRESS_MASK: u32 = !0x3;
const BAR_MEM_ADDRESS_MASK: u32 = !0xF;
/// Smallest BAR sizes the PCI specification allows.
const BAR_IO_MIN: u32 = 4;
const BAR_MEM_MIN: u32 = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    #[error("PCI BAR size {0:#x} is not a power of two of at least the minimum for its kind")]
    BadBarSize(u32),
    #[error("a PCI function has at most {MAX_BARS} BARs")]
    TooManyBars,
    #[error("no room for a PCI capability of {0} bytes")]
    NoCapabilityRoom(usize),
    #[error("PCI device {device} function {function} is out of range")]
    BadAddress { device: u8, function: u8 },
    #[error("PCI slot {device:02x}.{function} is already taken")]
    SlotTaken { device: u8, function: u8 },
}

/// The identity fields of a type 0 header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub vendor_id: u16,
    pub device_id: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
    /// 0x00, or `HEADER_TYPE_MULTIFUNCTION` on function 0 of a multi-function device.
    pub header_type: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0 = none, 1-4 = INTA#-INTD#.
    pub interrupt_pin: u8,
    /// The IRQ firmware routed the pin to; the guest may rewrite it.
    pub interrupt_line: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Memory32 { prefetchable: bool },
}

/// A BAR to declare: its kind and size (a power of two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u32,
}

/// A BAR as the guest has programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    pub index: usize,
    pub kind: BarKind,
    pub base: u32,
    pub size: u32,
    /// The command register enables decoding of this BAR's address space.
    pub enabled: bool,
}

/// A function's 256-byte configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
    /// Bits a guest write may change.
    wmask: [u8; CONFIG_SPACE_SIZE],
    /// Bits a guest clears by writing 1.
    w1cmask: [u8; CONFIG_SPACE_SIZE],
    bars: Vec<Bar>,
    /// Where the next capability goes, and the byte that links to it.
    next_capability: usize,
    capability_link: usize,
}

impl ConfigSpace {
    /// A type 0 header with `header`'s identity, no BARs and no capabilities. The command
    /// register's I/O, memory, bus-master, parity, SERR and INTx-disable bits, the cache line
    /// size, the latency timer and the interrupt line are writable; the status error bits are
    /// write-1-to-clear; everything else is read-only.
    pub fn new(header: &Header) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1cmask: [0; CONFIG_SPACE_SIZE],
            bars: Vec::new(),
            next_capability: CAPABILITIES_START,
            capability_link: reg::CAPABILITIES,
        };
        c.set_u16(reg::VENDOR_ID, header.vendor_id);
        c.set_u16(reg::DEVICE_ID, header.device_id);
        c.set_u8(reg::REVISION, header.revision);
        c.set_u8(reg::PROG_IF, header.prog_if);
        c.set_u8(reg::SUBCLASS, header.subclass);
        c.set_u8(reg::CLASS, header.class);
        c.set_u8(reg::HEADER_TYPE, header.header_type);
        c.set_u16(reg::SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        c.set_u16(reg::SUBSYSTEM_ID, header.subsystem_id);
        c.set_u8(reg::INTERRUPT_PIN, header.interrupt_pin);
        c.set_u8(reg::INTERRUPT_LINE, header.interrupt_line);
        c.set_wmask_u16(
            reg::COMMAND,
            command::IO_SPACE
                | command::MEMORY_SPACE
                | command::BUS_MASTER
                | command::PARITY_ERROR_RESPONSE
                | command::SERR
                | command::INTX_DISABLE,
        );
        c.set_w1c_u16(reg::STATUS, status::ERRORS);
        c.set_wmask_u8(reg::CACHE_LINE_SIZE, 0xFF);
        c.set_wmask_u8(reg::LATENCY_TIMER, 0xFF);
        c.set_wmask_u8(reg::INTERRUPT_LINE, 0xFF);
        c
    }

    /// Reads the dword at index `reg` (0..64); all-ones beyond the space.
    pub fn read_dword(&self, reg: usize) -> u32 {
        reg.checked_mul(4)
            .map_or(u32::MAX, |offset| self.read_u32(offset))
    }

    /// Reads a byte; bytes beyond the space read as 0xFF.
    pub fn read_u8(&self, offset: usize) -> u8 {
        self.bytes.get(offset).copied().unwrap_or(0xFF)
    }

    pub fn read_u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.saturating_add(1))])
    }

    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        for (i, v) in b.iter_mut().enumerate() {
            *v = self.read_u8(offset.saturating_add(i));
        }
        u32::from_le_bytes(b)
    }

    /// A guest write of `data` at byte `offset`: only write-mask bits change, write-1-to-clear
    /// bits clear where `data` has ones; bytes beyond the space are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|o| *o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let wm = self.wmask[o];
            let b = (self.bytes[o] & !wm) | (v & wm);
            self.bytes[o] = b & !(v & self.w1cmask[o]);
        }
    }

    /// Sets a field's value regardless of the masks (device side). Out-of-range bytes are
    /// dropped.
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.set_bytes(offset, &[value]);
    }

    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    fn set_bytes(&mut self, offset: usize, value: &[u8]) {
        put(&mut self.bytes, offset, value);
    }

    /// Sets which bits of a field a guest may write.
    pub fn set_wmask_u8(&mut self, offset: usize, mask: u8) {
        put(&mut self.wmask, offset, &[mask]);
    }

    pub fn set_wmask_u16(&mut self, offset: usize, mask: u16) {
        put(&mut self.wmask, offset, &mask.to_le_bytes());
    }

    pub fn set_wmask_u32(&mut self, offset: usize, mask: u32) {
        put(&mut self.wmask, offset, &mask.to_le_bytes());
    }

    /// Sets which bits of a field a guest clears by writing 1.
    pub fn set_w1c_u16(&mut self, offset: usize, mask: u16) {
        put(&mut self.w1cmask, offset, &mask.to_le_bytes());
    }

    pub fn command(&self) -> u16 {
        self.read_u16(reg::COMMAND)
    }

    /// Declares the next BAR (BAR0 first) and returns its index. Its address starts at 0.
    pub fn add_bar(&mut self, bar: Bar) -> Result<usize, PciError> {
        let index = self.bars.len();
        if index >= MAX_BARS {
            return Err(PciError::TooManyBars);
        }
        let (min, low, address_mask) = match bar.kind {
            BarKind::Io => (BAR_IO_MIN, BAR_IO, BAR_IO_ADDRESS_MASK),
            BarKind::Memory32 { prefetchable } => (
                BAR_MEM_MIN,
                if prefetchable {
                    BAR_MEM_PREFETCHABLE
                } else {
                    0
                },
                BAR_MEM_ADDRESS_MASK,
            ),
        };
        if !bar.size.is_power_of_two() || bar.size < min {
            return Err(PciError::BadBarSize(bar.size));
        }
        let offset = reg::BAR0 + 4 * index;
        self.set_u32(offset, low);
        self.set_wmask_u32(offset, !(bar.size - 1) & address_mask);
        self.bars.push(bar);
        Ok(index)
    }

    /// BAR `index` as currently programmed, None if it was not declared.
    pub fn bar(&self, index: usize) -> Option<BarRegion> {
        let bar = self.bars.get(index)?;
        let raw = self.read_u32(reg::BAR0 + 4 * index);
        let cmd = self.command();
        let (base, enabled) = match bar.kind {
            BarKind::Io => (raw & BAR_IO_ADDRESS_MASK, cmd & command::IO_SPACE != 0),
            BarKind::Memory32 { .. } => {
                (raw & BAR_MEM_ADDRESS_MASK, cmd & command::MEMORY_SPACE != 0)
            }
        };
        Some(BarRegion {
            index,
            kind: bar.kind,
            base,
            size: bar.size,
            enabled,
        })
    }

    /// Every declared BAR as currently programmed.
    pub fn bars(&self) -> impl Iterator<Item = BarRegion> + '_ {
        (0..self.bars.len()).filter_map(|i| self.bar(i))
    }

    /// Appends a capability with ID `id` and `body` (the bytes after the ID and next
    /// pointer, read-only unless `set_wmask_*` opens them) to the list that starts after the
    /// header, and returns its offset. Functions that keep their own registers at 0x40 and
    /// up must not use capabilities.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, PciError> {
        let len = body.len().saturating_add(2);
        let offset = self.next_capability;
        let end = offset.saturating_add(len);
        if end > CONFIG_SPACE_SIZE {
            return Err(PciError::NoCapabilityRoom(len));
        }
        self.set_u8(offset, id);
        self.set_u8(offset + 1, 0);
        self.set_bytes(offset + 2, body);
        // `offset` is below 256 here.
        self.set_u8(self.capability_link, offset as u8);
        self.capability_link = offset + 1;
        self.next_capability = end.next_multiple_of(4);
        let st = self.read_u16(reg::STATUS);
        self.set_u16(reg::STATUS, st | status::CAPABILITIES_LIST);
        Ok(offset)
    }
}

/// Copies `value` into `array` at `offset`, dropping what falls outside.
fn put(array: &mut [u8], offset: usize, value: &[u8]) {
    for (i, v) in value.iter().enumerate() {
        if let Some(b) = offset.checked_add(i).and_then(|o| array.get_mut(o)) {
            *b = *v;
        }
    }
}

/// A PCI function as the configuration mechanism sees it. The default methods access
/// `config()` directly; a function with side effects overrides `config_write`.
pub trait PciFunction: Send {
    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// Reads dword `reg` (0..64) of the configuration space.
    fn config_read(&mut self, reg: usize) -> u32 {
        self.config().read_dword(reg)
    }

    /// Writes `data` (1, 2 or 4 bytes, within one dword) at byte `offset`.
    fn config_write(&mut self, offset: usize, data: &[u8]) {
        self.config_mut().write(offset, data)
    }
}

/// A bare configuration space is a function without side effects.
impl PciFunction for ConfigSpace {
    fn config(&self) -> &ConfigSpace {
        self
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        self
    }
}

/// CONFIG_ADDRESS bits.
const ADDRESS_ENABLE: u32 = 1 << 31;
/// Bits that read back: enable, bus, device, function, dword register.
const ADDRESS_MASK: u32 = 0x80FF_FFFC;

/// Reset control register (0xCF9) bits: system reset (hard reset when set), reset CPU
/// (the write that sets it resets the machine) and full reset.
const RC_SYS_RST: u8 = 1 << 1;
const RC_RST_CPU: u8 = 1 << 2;
const RC_FULL_RST: u8 = 1 << 3;

/// Port offsets within 0xCF8-0xCFF.
const ADDRESS_OFFSET: u64 = 0;
const RESET_CONTROL_OFFSET: u64 = 1;
const DATA_OFFSET: u64 = 4;

const SLOTS: usize = 32 * 8;

/// PCI bus 0 behind configuration mechanism #1, plus the reset control register. Insert at
/// `PCI_CONFIG_PORT` with length `PCI_CONFIG_LEN`.
///
/// - 0xCF8, dword: CONFIG_ADDRESS. Narrower accesses to 0xCF8-0xCFB read 0xFF and are
///   dropped, except a byte at 0xCF9.
/// - 0xCF9, byte: reset control. A write with RST_CPU (bit 2) set, such as 0x06, 0x0E or
///   0x04, resets the machine; SYS_RST and FULL_RST are kept and read back, other bits read 0.
/// - 0xCFC-0xCFF: CONFIG_DATA, at byte, word or dword width anywhere within the dword. With
///   the enable bit clear, on a bus other than 0, or for an absent function, reads return
///   all-ones and writes are dropped.
pub struct PciBus {
    address: u32,
    reset_control: u8,
    functions: Vec<Option<Arc<Mutex<dyn PciFunction>>>>,
}

impl Default for PciBus {
    fn default() -> Self {
        Self::new()
    }
}

impl PciBus {
    pub fn new() -> Self {
        PciBus {
            address: 0,
            reset_control: 0,
            functions: (0..SLOTS).map(|_| None).collect(),
        }
    }

    /// Places `f` at bus 0, `device` (0-31), `function` (0-7).
    pub fn add(
        &mut self,
        device: u8,
        function: u8,
        f: Arc<Mutex<dyn PciFunction>>,
    ) -> Result<(), PciError> {
        if device >= 32 || function >= 8 {
            return Err(PciError::BadAddress { device, function });
        }
        let slot = &mut self.functions[usize::from(device) * 8 + usize::from(function)];
        if slot.is_some() {
            return Err(PciError::SlotTaken { device, function });
        }
        *slot = Some(f);
        Ok(())
    }

    /// The function CONFIG_ADDRESS selects, if decoding is on and one is there.
    fn selected(&self) -> Option<&Arc<Mutex<dyn PciFunction>>> {
        let a = self.address;
        if a & ADDRESS_ENABLE == 0 || (a >> 16) & 0xFF != 0 {
            return None;
        }
        let slot = ((a >> 8) & 0xFF) as usize;
        self.functions.get(slot)?.as_ref()
    }

    /// The dword register CONFIG_ADDRESS selects.
    fn register(&self) -> usize {
        ((self.address & 0xFC) >> 2) as usize
    }
}

/// Whether an access of `len` bytes at `offset` is a byte, word or dword within CONFIG_DATA.
fn within_data(offset: u64, len: usize) -> bool {
    matches!(len, 1 | 2 | 4)
        && offset >= DATA_OFFSET
        && offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= PCI_CONFIG_LEN)
}

impl BusDevice for PciBus {
    /// CONFIG_ADDRESS and the reset control register back to zero (the functions' own
    /// registers are reset by the machine, e.g. PAM through configuration cycles).
    fn reset(&mut self) {
        self.address = 0;
        self.reset_control = 0;
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (ADDRESS_OFFSET, 4) => data.copy_from_slice(&self.address.to_le_bytes()),
            (RESET_CONTROL_OFFSET, 1) => data[0] = self.reset_control,
            (o, n) if within_data(o, n) => {
                let value = match self.selected() {
                    Some(f) => lock(f).config_read(self.register()),
                    None => u32::MAX,
                };
                let bytes = value.to_le_bytes();
                let start = (o - DATA_OFFSET) as usize;
                data.copy_from_slice(&bytes[start..start + n]);
            }
            _ => data.fill(0xFF),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        match (offset, data.len()) {
            (ADDRESS_OFFSET, 4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.address = v & ADDRESS_MASK;
            }
            (RESET_CONTROL_OFFSET, 1) => {
                let v = data[0];
                self.reset_control = v & (RC_SYS_RST | RC_FULL_RST);
                if v & RC_RST_CPU != 0 {
                    return Some(ExitReason::Reset);
                }
            }
            (o, n) if within_data(o, n) => {
                if let Some(f) = self.selected() {
                    let reg_offset = (self.address & 0xFC) as usize + (o - DATA_OFFSET) as usize;
                    lock(f).config_write(reg_offset, data);
                }
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_header() -> Header {
        Header {
            vendor_id: 0x1AF4,
            device_id: 0x1000,
            class: 0x02,
            subclass: 0x00,
            prog_if: 0x00,
            revision: 0x01,
            header_type: 0,
            subsystem_vendor_id: 0x1AF4,
            subsystem_id: 0x0001,
            interrupt_pin: 1,
            interrupt_line: 11,
        }
    }

    /// A function with an I/O BAR of 32 bytes and a 4 KiB memory BAR.
    fn test_function() -> ConfigSpace {
        let mut c = ConfigSpace::new(&test_header());
        assert_eq!(
            c.add_bar(Bar {
                kind: BarKind::Io,
                size: 32
            }),
            Ok(0)
        );
        assert_eq!(
            c.add_bar(Bar {
                kind: BarKind::Memory32 {
                    prefetchable: false
                },
                size: 4096
            }),
            Ok(1)
        );
        c
    }

    fn bus_with(device: u8, function: u8, f: ConfigSpace) -> PciBus {
        let mut bus = PciBus::new();
        bus.add(device, function, Arc::new(Mutex::new(f))).unwrap();
        bus
    }

    fn address(device: u8, function: u8, offset: u8) -> u32 {
        ADDRESS_ENABLE | u32::from(device) << 11 | u32::from(function) << 8 | u32::from(offset)
    }

    fn select(bus: &mut PciBus, addr: u32) {
        assert_eq!(bus.write(0, &addr.to_le_bytes()), None);
    }

    fn cfg_read(bus: &mut PciBus, device: u8, function: u8, offset: u8, len: usize) -> u32 {
        select(bus, address(device, function, offset & 0xFC));
        let mut d = [0u8; 4];
        bus.read(DATA_OFFSET + u64::from(offset & 3), &mut d[..len]);
        u32::from_le_bytes(d)
    }

    fn cfg_write(bus: &mut PciBus, device: u8, function: u8, offset: u8, len: usize, v: u32) {
        select(bus, address(device, function, offset & 0xFC));
        let d = v.to_le_bytes();
        assert_eq!(
            bus.write(DATA_OFFSET + u64::from(offset & 3), &d[..len]),
            None
        );
    }

    #[test]
    fn header_fields_read_at_every_width_and_offset() {
        let mut bus = bus_with(3, 0, test_function());
        let mut space = [0u8; 64];
        for dword in 0..16u8 {
            let v = cfg_read(&mut bus, 3, 0, dword * 4, 4);
            space[usize::from(dword) * 4..][..4].copy_from_slice(&v.to_le_bytes());
        }
        assert_eq!(&space[0..4], &[0xF4, 0x1A, 0x00, 0x10]);
        assert_eq!(&space[8..12], &[0x01, 0x00, 0x00, 0x02]);
        assert_eq!(space[0x2C..0x30], [0xF4, 0x1A, 0x01, 0x00]);
        assert_eq!(space[0x3C..0x3E], [11, 1]);
        assert_eq!(space[0x10] & 1, 1, "BAR0 is an I/O BAR");
        for offset in 0..64u8 {
            for len in [1usize, 2] {
                if usize::from(offset & 3) + len > 4 {
                    continue;
                }
                let mut expect = [0u8; 4];
                expect[..len].copy_from_slice(&space[usize::from(offset)..][..len]);
                assert_eq!(
                    cfg_read(&mut bus, 3, 0, offset, len),
                    u32::from_le_bytes(expect),
                    "offset {offset:#x} len {len}"
                );
            }
        }
    }

    #[test]
    fn read_only_fields_ignore_writes() {
        let mut bus = bus_with(0, 0, test_function());
        for offset in [0u8, 8, 0x2C] {
            cfg_write(&mut bus, 0, 0, offset, 4, 0);
        }
        cfg_write(&mut bus, 0, 0, 0x3D, 1, 0);
        assert_eq!(cfg_read(&mut bus, 0, 0, 0, 4), 0x1000_1AF4);
        assert_eq!(cfg_read(&mut bus, 0, 0, 8, 4), 0x0200_0001);
        assert_eq!(cfg_read(&mut bus, 0, 0, 0x3D, 1), 1);
        cfg_write(&mut bus, 0, 0, 0x3C, 1, 5);
        assert_eq!(cfg_read(&mut bus, 0, 0, 0x3C, 2), 0x0105);
        // Only the defined command bits stick.
        cfg_write(&mut bus, 0, 0, 4, 2, 0xFFFF);
        assert_eq!(cfg_read(&mut bus, 0, 0, 4, 2), 0x0547);
    }

    #[test]
    fn bar_sizing_at_every_width_and_offset() {
        // (offset, size mask when all-ones is written)
        let cases = [(0x10u8, 0xFFFF_FFE1u32), (0x14, 0xFFFF_F000)];
        for (bar, mask) in cases {
            for len in [1usize, 2, 4] {
                let mut bus = bus_with(1, 0, test_function());
                for part in (0..4).step_by(len) {
                    cfg_write(&mut bus, 1, 0, bar + part as u8, len, u32::MAX);
                }
                assert_eq!(
                    cfg_read(&mut bus, 1, 0, bar, 4),
                    mask,
                    "BAR {bar:#x} len {len}"
                );
                for offset in 0..4u8 {
                    for rlen in [1usize, 2] {
                        if usize::from(offset) + rlen > 4 {
                            continue;
                        }
                        let want = (mask >> (offset * 8)) & if rlen == 1 { 0xFF } else { 0xFFFF };
                        assert_eq!(cfg_read(&mut bus, 1, 0, bar + offset, rlen), want);
                    }
                }
            }
        }
    }

    #[test]
    fn bar_address_and_enable() {
        let mut bus = PciBus::new();
        let f = Arc::new(Mutex::new(test_function()));
        bus.add(2, 0, f.clone()).unwrap();
        cfg_write(&mut bus, 2, 0, 0x10, 4, 0xC040);
        cfg_write(&mut bus, 2, 0, 0x14, 4, 0xFEBF_1234);
        let (io, mem) = {
            let c = lock(&f);
            (c.bar(0).unwrap(), c.bar(1).unwrap())
        };
        assert_eq!((io.base, io.size, io.enabled), (0xC040, 32, false));
        assert_eq!(
            (mem.base, mem.size, mem.enabled),
            (0xFEBF_1000, 4096, false)
        );
        cfg_write(&mut bus, 2, 0, 4, 2, u32::from(command::IO_SPACE));
        let c = lock(&f);
        assert!(c.bar(0).unwrap().enabled);
        assert!(!c.bar(1).unwrap().enabled);
        assert_eq!(c.bar(2), None);
        assert_eq!(c.bars().count(), 2);
    }

    #[test]
    fn bar_declarations_are_checked() {
        let mut c = ConfigSpace::new(&test_header());
        let io = |size| Bar {
            kind: BarKind::Io,
            size,
        };
        assert_eq!(c.add_bar(io(2)), Err(PciError::BadBarSize(2)));
        assert_eq!(c.add_bar(io(24)), Err(PciError::BadBarSize(24)));
        let mem = Bar {
            kind: BarKind::Memory32 { prefetchable: true },
            size: 8,
        };
        assert_eq!(c.add_bar(mem), Err(PciError::BadBarSize(8)));
        for i in 0..MAX_BARS {
            assert_eq!(c.add_bar(io(4)), Ok(i));
        }
        assert_eq!(c.add_bar(io(4)), Err(PciError::TooManyBars));
        let mut c = ConfigSpace::new(&test_header());
        c.add_bar(Bar {
            kind: BarKind::Memory32 { prefetchable: true },
            size: 1 << 20,
        })
        .unwrap();
        c.write(0x10, &[0xFF; 4]);
        assert_eq!(c.read_u32(0x10), 0xFFF0_0008);
    }

    #[test]
    fn absent_functions_read_all_ones() {
        let mut bus = bus_with(0, 0, test_function());
        for (device, function) in [(0u8, 1u8), (1, 0), (31, 7)] {
            for offset in [0u8, 1, 2, 3, 0x10, 0xFF] {
                for len in [1usize, 2, 4] {
                    if usize::from(offset & 3) + len > 4 {
                        continue;
                    }
                    cfg_write(&mut bus, device, function, offset, len, 0);
                    let all = if len == 4 {
                        u32::MAX
                    } else {
                        (1 << (8 * len)) - 1
                    };
                    assert_eq!(cfg_read(&mut bus, device, function, offset, len), all);
                }
            }
        }
        // Bus 1 is absent even where bus 0 has a function.
        select(&mut bus, address(0, 0, 0) | 1 << 16);
        let mut d = [0u8; 4];
        bus.read(DATA_OFFSET, &mut d);
        assert_eq!(d, [0xFF; 4]);
    }

    #[test]
    fn enable_bit_off_reads_all_ones_and_drops_writes() {
        let mut bus = bus_with(0, 0, test_function());
        select(&mut bus, address(0, 0, 0x3C) & !ADDRESS_ENABLE);
        for len in [1usize, 2, 4] {
            let mut d = [0u8; 4];
            bus.read(DATA_OFFSET, &mut d[..len]);
            assert!(d[..len].iter().all(|b| *b == 0xFF));
        }
        assert_eq!(bus.write(DATA_OFFSET, &[7]), None);
        assert_eq!(cfg_read(&mut bus, 0, 0, 0x3C, 1), 11);
        assert_eq!(cfg_read(&mut bus, 0, 0, 0, 4), 0x1000_1AF4);
    }

    #[test]
    fn config_address_latches_only_dwords() {
        let mut bus = PciBus::new();
        select(&mut bus, 0xFFFF_FFFF);
        let mut d = [0u8; 4];
        bus.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), ADDRESS_MASK);
        select(&mut bus, 0x8000_0000);
        for offset in [0u64, 2, 3] {
            assert_eq!(bus.write(offset, &[0x12]), None);
            let mut b = [0u8; 1];
            bus.read(offset, &mut b);
            assert_eq!(b, [0xFF]);
        }
        assert_eq!(bus.write(0, &[0x12, 0x34]), None);
        let mut w = [0u8; 2];
        bus.read(2, &mut w);
        assert_eq!(w, [0xFF, 0xFF]);
        bus.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
        // Accesses straddling the end of CONFIG_DATA, or of odd widths, are dropped.
        let mut d = [0u8; 4];
        bus.read(6, &mut d);
        assert_eq!(d, [0xFF; 4]);
        let mut d3 = [0u8; 3];
        bus.read(4, &mut d3);
        assert_eq!(d3, [0xFF; 3]);
        assert_eq!(bus.write(5, &[1, 2, 3, 4]), None);
        assert_eq!(bus.write(9, &[1]), None);
    }

    #[test]
    fn reset_control_register() {
        let mut bus = PciBus::new();
        let mut b = [0u8; 1];
        bus.read(1, &mut b);
        assert_eq!(b, [0]);
        assert_eq!(bus.write(1, &[0x02]), None);
        bus.read(1, &mut b);
        assert_eq!(b, [0x02]);
        assert_eq!(bus.write(1, &[0xF1]), None);
        bus.read(1, &mut b);
        assert_eq!(b, [0x00]);
        for v in [0x06u8, 0x0E, 0x04] {
            assert_eq!(bus.write(1, &[v]), Some(ExitReason::Reset), "{v:#x}");
        }
        // Only a byte access at 0xCF9 is the reset register.
        assert_eq!(bus.write(1, &[0x06, 0x00]), None);
        assert_eq!(bus.write(0, &[0x00, 0x06, 0, 0]), None);
    }

    #[test]
    fn slots_are_checked() {
        let mut bus = PciBus::new();
        let f = || -> Arc<Mutex<dyn PciFunction>> {
            Arc::new(Mutex::new(ConfigSpace::new(&test_header())))
        };
        assert!(bus.add(0, 0, f()).is_ok());
        assert_eq!(
            bus.add(0, 0, f()),
            Err(PciError::SlotTaken {
                device: 0,
                function: 0
            })
        );
        assert!(bus.add(32, 0, f()).is_err());
        assert!(bus.add(0, 8, f()).is_err());
        assert!(bus.add(31, 7, f()).is_ok());
    }

    #[test]
    fn capabilities_are_chained() {
        let mut c = ConfigSpace::new(&test_header());
        assert_eq!(c.add_capability(0x09, &[0x10, 1, 2, 3, 4]), Ok(0x40));
        assert_eq!(c.add_capability(0x09, &[0x04, 9, 9]), Ok(0x48));
        assert_eq!(c.read_u8(reg::CAPABILITIES), 0x40);
        assert_ne!(c.read_u16(reg::STATUS) & status::CAPABILITIES_LIST, 0);
        assert_eq!(c.read_u32(0x40), 0x0110_4809);
        assert_eq!(c.read_u8(0x49), 0);
        assert!(c.add_capability(0x09, &[0; 200]).is_err());
        assert_eq!(
            c.add_capability(0x09, &[0; 175]),
            Err(PciError::NoCapabilityRoom(177))
        );
        assert_eq!(c.add_capability(0x09, &[0; 174]), Ok(0x50));
        // Capabilities are read-only unless opened.
        c.write(0x42, &[0xAA]);
        assert_eq!(c.read_u8(0x42), 0x10);
    }

    #[test]
    fn out_of_range_accesses_are_safe() {
        let mut c = test_function();
        assert_eq!(c.read_dword(64), u32::MAX);
        assert_eq!(c.read_dword(usize::MAX), u32::MAX);
        c.write(0xFE, &[1, 2, 3, 4]);
        c.write(usize::MAX, &[1, 2]);
        assert_eq!(c.read_u16(0xFF), 0xFF00);
        c.set_u32(0xFE, 0x1234_5678);
        assert_eq!(c.read_u16(0xFE), 0x5678);
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = test_function();
        c.set_u16(reg::STATUS, 0x8010);
        c.write(reg::STATUS, &[0x00, 0x00]);
        assert_eq!(c.read_u16(reg::STATUS), 0x8010);
        c.write(reg::STATUS, &[0xFF, 0xFF]);
        assert_eq!(c.read_u16(reg::STATUS), 0x0010);
    }
}
