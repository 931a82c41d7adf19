//! The guest-physical memory map of the PC: the one source of truth for RAM placement,
//! the firmware windows, the E820 table and every number derived from them.
//!
//! | range                         | what                                                  |
//! |-------------------------------|-------------------------------------------------------|
//! | 0x0000_0000 - 0x0009_FBFF     | low RAM                                               |
//! | 0x0009_FC00 - 0x0009_FFFF     | EBDA (RAM, reserved in E820)                          |
//! | 0x000A_0000 - 0x000B_FFFF     | VGA hole (unmapped)                                   |
//! | 0x000C_0000 - 0x000D_FFFF     | option-ROM area: shadow RAM under PAM control         |
//! | 0x000E_0000 - 0x000F_FFFF     | firmware window: ROM or shadow RAM under PAM control  |
//! | 0x0010_0000 - low_ram_end     | RAM                                                   |
//! | low_ram_end - 4 GiB           | PCI hole: MMIO, IOAPIC, LAPIC, firmware alias at top  |
//! | 4 GiB -                       | RAM that did not fit below the hole                   |

use vm_memory::GuestAddress;

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// End of conventional memory (640 KiB).
pub const LOW_RAM_END: u64 = 0xA_0000;
/// The EBDA sits in the last KiB of conventional memory.
pub const EBDA_START: u64 = 0x9_FC00;
/// Start of the option-ROM area; with the firmware window, the BIOS shadow areas (shadow.rs).
pub const OPTION_ROM_START: u64 = 0xC_0000;
/// The firmware window below 1 MiB: 0xE0000-0xFFFFF.
pub const BIOS_WINDOW_START: u64 = 0xE_0000;
pub const BIOS_WINDOW_SIZE: u64 = 128 * KIB;
/// First byte of extended memory.
pub const HIGH_MEMORY_START: u64 = MIB;
/// Where RAM continues above the 32-bit PCI hole.
pub const RAM_ABOVE_4G_START: u64 = 4 * GIB;
/// RAM below this is registered with KVM before the guest starts, always: conventional
/// memory and the first 15 MiB above 1 MiB, where firmware, boot sectors and their loaders
/// run before they ask for the memory map. RAM above it may be registered while the guest
/// runs (`vm/slots.rs`, `ram_gate.rs`).
pub const EAGER_RAM_END: u64 = 16 * MIB;
/// RAM above `EAGER_RAM_END` is left for later only when there is at least this much of it.
/// On this host a slot registered once the guest runs costs a fixed 3-5 ms (measured: the
/// same for 240 MiB as for 3 GiB, in the guest's first milliseconds), which a guest that
/// asks for the memory map at once waits for; registered before the start it costs about
/// 0.6 ms per GiB. Below 4 GiB a guest that asks would lose more than one that never asks
/// gains, so smaller guests register all their RAM before the start.
pub const DEFER_MIN_RAM: u64 = 4 * GIB;
/// RAM sizes at or above this put the PCI hole at `PCI_HOLE_START_LARGE` (as a PC with an
/// i440fx does); smaller guests keep all their RAM below 4 GiB.
const LARGE_RAM_THRESHOLD: u64 = 0xE000_0000;
const PCI_HOLE_START_LARGE: u64 = 0xC000_0000;
/// KVM's TSS (three pages) and identity-map page: in the PCI hole, clear of every device and
/// of the largest firmware alias (256 KiB below 4 GiB).
pub const KVM_IDENTITY_MAP_START: u64 = 0xFEFF_C000;
pub const KVM_TSS_START: u64 = 0xFEFF_D000;

/// The smallest guest: conventional memory, the option-ROM area, and one MiB above 1 MiB.
pub const MIN_RAM_SIZE: u64 = 2 * MIB;
/// The largest guest we accept (1 TiB): the address width every x86_64 host supports.
pub const MAX_RAM_SIZE: u64 = 1 << 40;
/// Firmware images: a multiple of 4 KiB, at most 256 KiB; the last 128 KiB of it also end at 1 MiB.
pub const MAX_FIRMWARE_SIZE: u64 = 256 * KIB;

/// E820 entry types (ACPI address range types).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    Ram = 1,
    Reserved = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Type,
}

impl E820Entry {
    /// The 20-byte packed layout used by INT 15h E820, boot_params and QEMU's `etc/e820`.
    pub fn to_bytes(self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.size.to_le_bytes());
        b[16..20].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b
    }
}

/// A RAM region backed by host memory: (guest address, size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
    pub start: GuestAddress,
    pub size: u64,
}

/// A piece of RAM with its own KVM memory slot (`MemoryLayout::slot_pieces`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPiece {
    pub region: RamRegion,
    /// Above `EAGER_RAM_END`: may be registered after the guest started.
    pub deferrable: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    #[error("memory size {0} bytes is too small (the minimum is 2M)")]
    TooSmall(u64),
    #[error("memory size {0} bytes is too large (the maximum is 1T)")]
    TooLarge(u64),
    #[error("memory size {0} bytes is not a multiple of 4 KiB")]
    Unaligned(u64),
}

/// The memory map of one guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Total RAM, the holes below 1 MiB included (as on a PC, they shadow RAM).
    pub ram_size: u64,
    /// End of RAM below 4 GiB (start of the PCI hole).
    pub low_ram_end: u64,
    /// RAM mapped at 4 GiB and above.
    pub high_ram_size: u64,
}

impl MemoryLayout {
    pub fn new(ram_size: u64) -> Result<Self, LayoutError> {
        if ram_size < MIN_RAM_SIZE {
            return Err(LayoutError::TooSmall(ram_size));
        }
        if ram_size > MAX_RAM_SIZE {
            return Err(LayoutError::TooLarge(ram_size));
        }
        if !ram_size.is_multiple_of(4 * KIB) {
            return Err(LayoutError::Unaligned(ram_size));
        }
        let low_ram_end = if ram_size >= LARGE_RAM_THRESHOLD {
            PCI_HOLE_START_LARGE
        } else {
            ram_size
        };
        Ok(MemoryLayout {
            ram_size,
            low_ram_end,
            high_ram_size: ram_size - low_ram_end,
        })
    }

    /// The RAM regions backed by host memory, sorted by address.
    pub fn ram_regions(&self) -> Vec<RamRegion> {
        let mut v = vec![
            RamRegion {
                start: GuestAddress(0),
                size: LOW_RAM_END,
            },
            RamRegion {
                start: GuestAddress(HIGH_MEMORY_START),
                size: self.low_ram_end - HIGH_MEMORY_START,
            },
        ];
        if self.high_ram_size > 0 {
            v.push(RamRegion {
                start: GuestAddress(RAM_ABOVE_4G_START),
                size: self.high_ram_size,
            });
        }
        v
    }

    /// The RAM regions cut at `EAGER_RAM_END`, one KVM memory slot each, sorted by address;
    /// `deferrable` is set on the pieces above it (the rest of the RAM below the PCI hole,
    /// and all RAM above 4 GiB), which KVM may learn about after the guest started.
    pub fn slot_pieces(&self) -> Vec<SlotPiece> {
        let mut v = Vec::new();
        for r in self.ram_regions() {
            let end = r.start.0 + r.size;
            if r.start.0 < EAGER_RAM_END && end > EAGER_RAM_END {
                v.push(SlotPiece {
                    region: RamRegion {
                        start: r.start,
                        size: EAGER_RAM_END - r.start.0,
                    },
                    deferrable: false,
                });
                v.push(SlotPiece {
                    region: RamRegion {
                        start: GuestAddress(EAGER_RAM_END),
                        size: end - EAGER_RAM_END,
                    },
                    deferrable: true,
                });
            } else {
                v.push(SlotPiece {
                    region: r,
                    deferrable: r.start.0 >= EAGER_RAM_END,
                });
            }
        }
        v
    }

    /// The KVM memory slots of the RAM: `slot_pieces` when some RAM is registered late
    /// (`defer`), else one slot per RAM region (each slot costs KVM an RCU grace period).
    pub fn slots(&self, defer: bool) -> Vec<SlotPiece> {
        if defer {
            return self.slot_pieces();
        }
        self.ram_regions()
            .into_iter()
            .map(|region| SlotPiece {
                region,
                deferrable: false,
            })
            .collect()
    }

    /// The RAM above `EAGER_RAM_END`, in bytes: what may be registered late.
    pub fn deferrable_ram(&self) -> u64 {
        self.slot_pieces()
            .iter()
            .filter(|p| p.deferrable)
            .map(|p| p.region.size)
            .sum()
    }

    /// Extended memory between 1 MiB and the PCI hole, in bytes.
    pub fn extended_ram(&self) -> u64 {
        self.low_ram_end - HIGH_MEMORY_START
    }

    /// Conventional memory usable by a real-mode OS, in KiB (the BDA's word at 0x413).
    pub fn base_memory_kib(&self) -> u16 {
        (EBDA_START / KIB) as u16
    }

    /// The E820 map a guest is given (through fw_cfg, INT 15h and boot_params alike).
    /// `firmware_size` is the size of the ROM aliased below 4 GiB.
    pub fn e820(&self, firmware_size: u64) -> Vec<E820Entry> {
        let mut v = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: LOW_RAM_END - EBDA_START,
                kind: E820Type::Reserved,
            },
            E820Entry {
                addr: OPTION_ROM_START,
                size: HIGH_MEMORY_START - OPTION_ROM_START,
                kind: E820Type::Reserved,
            },
            E820Entry {
                addr: HIGH_MEMORY_START,
                size: self.extended_ram(),
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: RAM_ABOVE_4G_START - firmware_size,
                size: firmware_size,
                kind: E820Type::Reserved,
            },
        ];
        if self.high_ram_size > 0 {
            v.push(E820Entry {
                addr: RAM_ABOVE_4G_START,
                size: self.high_ram_size,
                kind: E820Type::Ram,
            });
        }
        v
    }

    /// Where a firmware image of `size` bytes is mapped: (address below 4 GiB, and the address
    /// and length of the window that aliases its end below 1 MiB).
    pub fn firmware_windows(size: u64) -> (GuestAddress, GuestAddress, u64) {
        let low_len = size.min(BIOS_WINDOW_SIZE);
        (
            GuestAddress(RAM_ABOVE_4G_START - size),
            GuestAddress(HIGH_MEMORY_START - low_len),
            low_len,
        )
    }
}

/// Parses a memory size: a whole number with an optional unit, case-insensitive. `B` means
/// bytes; `K`, `M`, `G`, `T` are binary units (KiB, MiB, GiB, TiB), also written `KB`/`KiB`
/// and so on; a bare number means MiB, as QEMU's `-m` does. None for anything else, and for
/// a size that does not fit in 64 bits.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let unit_at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(unit_at);
    if digits.is_empty() {
        return None;
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "b" => 0,
        "k" | "kb" | "kib" => 10,
        "" | "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn total_ram(e820: &[E820Entry]) -> u64 {
        e820.iter()
            .filter(|e| e.kind == E820Type::Ram)
            .map(|e| e.size)
            .sum()
    }

    fn assert_sorted_disjoint(e820: &[E820Entry]) {
        for w in e820.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr, "{:x?}", w);
        }
    }

    #[test]
    fn tiny_ram() {
        assert_eq!(MemoryLayout::new(MIB), Err(LayoutError::TooSmall(MIB)));
        let l = MemoryLayout::new(MIN_RAM_SIZE).unwrap();
        assert_eq!(l.low_ram_end, 2 * MIB);
        assert_eq!(l.high_ram_size, 0);
        assert_eq!(l.extended_ram(), MIB);
        let e = l.e820(128 * KIB);
        assert_sorted_disjoint(&e);
        assert_eq!(total_ram(&e), EBDA_START + MIB);
        assert_eq!(l.ram_regions().len(), 2);
    }

    #[test]
    fn unaligned_and_huge_sizes_are_refused() {
        assert_eq!(
            MemoryLayout::new(256 * MIB + 1),
            Err(LayoutError::Unaligned(256 * MIB + 1))
        );
        assert!(matches!(
            MemoryLayout::new(2 << 40),
            Err(LayoutError::TooLarge(_))
        ));
    }

    #[test]
    fn ram_just_below_the_large_threshold_stays_below_4g() {
        let size = LARGE_RAM_THRESHOLD - 4 * KIB;
        let l = MemoryLayout::new(size).unwrap();
        assert_eq!(l.low_ram_end, size);
        assert_eq!(l.high_ram_size, 0);
    }

    #[test]
    fn ram_crossing_the_pci_hole_moves_above_4g() {
        let l = MemoryLayout::new(4 * GIB).unwrap();
        assert_eq!(l.low_ram_end, 3 * GIB);
        assert_eq!(l.high_ram_size, GIB);
        let regions = l.ram_regions();
        let last = regions.last().unwrap();
        assert_eq!(last.start, GuestAddress(4 * GIB));
        assert_eq!(last.size, GIB);
        let e = l.e820(256 * KIB);
        assert_sorted_disjoint(&e);
        // Every byte of RAM is accounted for once, minus the holes below 1 MiB.
        assert_eq!(total_ram(&e), 4 * GIB - (HIGH_MEMORY_START - EBDA_START));
    }

    #[test]
    fn large_ram_above_4g() {
        let l = MemoryLayout::new(16 * GIB).unwrap();
        assert_eq!(l.high_ram_size, 13 * GIB);
        let e = l.e820(128 * KIB);
        assert_eq!(e.last().unwrap().addr, 4 * GIB);
        assert_eq!(e.last().unwrap().size, 13 * GIB);
    }

    #[test]
    fn regions_never_overlap_the_holes() {
        for size in [2 * MIB, 256 * MIB, 3 * GIB, 4 * GIB, 64 * GIB] {
            let l = MemoryLayout::new(size).unwrap();
            let regions = l.ram_regions();
            for r in &regions {
                let end = r.start.0 + r.size;
                // Nothing between 640 KiB and 1 MiB, nothing in the PCI hole.
                assert!(end <= LOW_RAM_END || r.start.0 >= HIGH_MEMORY_START);
                assert!(end <= l.low_ram_end || r.start.0 >= RAM_ABOVE_4G_START);
            }
            let sum: u64 = regions.iter().map(|r| r.size).sum();
            // Everything but 640 KiB-1 MiB, which the shadow areas (shadow.rs) own.
            assert_eq!(sum, size - (HIGH_MEMORY_START - LOW_RAM_END));
        }
    }

    #[test]
    fn slot_pieces_tile_the_ram_and_defer_only_above_16m() {
        for size in [
            2 * MIB,
            16 * MIB,
            16 * MIB + 4 * KIB,
            256 * MIB,
            3 * GIB,
            4 * GIB,
            64 * GIB,
        ] {
            let l = MemoryLayout::new(size).unwrap();
            let pieces = l.slot_pieces();
            // The pieces cover exactly the RAM regions, in order, without overlap.
            let sum: u64 = pieces.iter().map(|p| p.region.size).sum();
            let regions: u64 = l.ram_regions().iter().map(|r| r.size).sum();
            assert_eq!(sum, regions, "{size:#x}");
            for w in pieces.windows(2) {
                assert!(w[0].region.start.0 + w[0].region.size <= w[1].region.start.0);
            }
            for p in &pieces {
                assert!(p.region.size > 0);
                let end = p.region.start.0 + p.region.size;
                assert!(
                    l.ram_regions()
                        .iter()
                        .any(|r| r.start <= p.region.start && end <= r.start.0 + r.size),
                    "{p:x?} lies in one region"
                );
                assert_eq!(p.deferrable, p.region.start.0 >= EAGER_RAM_END, "{p:x?}");
                if !p.deferrable {
                    assert!(end <= EAGER_RAM_END);
                }
            }
        }
        // Registered all at once, the RAM takes one slot per region: below 640 KiB, and
        // above 1 MiB (and above 4 GiB).
        for (size, slots) in [(256 * MIB, 2), (4 * GIB, 3), (64 * GIB, 3)] {
            let l = MemoryLayout::new(size).unwrap();
            let s = l.slots(false);
            assert_eq!(s.len(), slots, "{size:#x}");
            assert!(s
                .iter()
                .zip(l.ram_regions())
                .all(|(p, r)| p.region == r && !p.deferrable));
            assert_eq!(l.slots(true).len(), l.slot_pieces().len());
        }
        // Small guests have nothing to defer; 64 GiB defers all but the first 16 MiB.
        let l = MemoryLayout::new(16 * MIB).unwrap();
        assert!(l.slot_pieces().iter().all(|p| !p.deferrable));
        let l = MemoryLayout::new(64 * GIB).unwrap();
        let deferred: Vec<(u64, u64)> = l
            .slot_pieces()
            .iter()
            .filter(|p| p.deferrable)
            .map(|p| (p.region.start.0, p.region.size))
            .collect();
        assert_eq!(
            deferred,
            [(16 * MIB, 3 * GIB - 16 * MIB), (4 * GIB, 61 * GIB)]
        );
        assert_eq!(l.deferrable_ram(), 64 * GIB - 16 * MIB);
        // 4 GiB guests keep everything eager; 5 GiB ones defer.
        assert!(MemoryLayout::new(4 * GIB).unwrap().deferrable_ram() < DEFER_MIN_RAM);
        assert!(MemoryLayout::new(5 * GIB).unwrap().deferrable_ram() >= DEFER_MIN_RAM);
        assert_eq!(MemoryLayout::new(16 * MIB).unwrap().deferrable_ram(), 0);
    }

    #[test]
    fn firmware_windows_follow_the_bios_convention() {
        let (hi, lo, len) = MemoryLayout::firmware_windows(64 * KIB);
        assert_eq!(hi, GuestAddress(0xFFFF_0000));
        assert_eq!(lo, GuestAddress(0xF_0000));
        assert_eq!(len, 64 * KIB);
        let (hi, lo, len) = MemoryLayout::firmware_windows(256 * KIB);
        assert_eq!(hi, GuestAddress(0xFFFC_0000));
        assert_eq!(lo, GuestAddress(0xE_0000));
        assert_eq!(len, 128 * KIB);
    }

    #[test]
    fn e820_bytes_are_packed_little_endian() {
        let b = E820Entry {
            addr: 0x1122_3344_5566_7788,
            size: 0x10,
            kind: E820Type::Reserved,
        }
        .to_bytes();
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(b[8], 0x10);
        assert_eq!(b[16], 2);
    }

    #[test]
    fn sizes_parse_like_qemu() {
        assert_eq!(parse_size("256"), Some(256 * MIB));
        assert_eq!(parse_size("256M"), Some(256 * MIB));
        assert_eq!(parse_size("2G"), Some(2 * GIB));
        assert_eq!(parse_size("2g"), Some(2 * GIB));
        assert_eq!(parse_size("512K"), Some(512 * KIB));
        assert_eq!(parse_size(" 64M "), Some(64 * MIB));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size(""), None);
        assert_eq!(parse_size("  "), None);
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("B"), None);
        assert_eq!(parse_size("-1M"), None);
        assert_eq!(parse_size("+1M"), None);
        assert_eq!(parse_size("1.5G"), None);
        assert_eq!(parse_size("0x10M"), None);
        assert_eq!(parse_size("1 G"), None);
    }

    /// A `B` suffix means bytes; with a unit before it, it is part of the unit's name.
    #[test]
    fn b_means_bytes_and_units_take_b_or_ib() {
        assert_eq!(parse_size("4096B"), Some(4096));
        assert_eq!(parse_size("4096b"), Some(4096));
        assert_eq!(parse_size("0B"), Some(0));
        for (unit, size) in [("K", KIB), ("M", MIB), ("G", GIB), ("T", 1u64 << 40)] {
            for spelled in [
                unit.to_string(),
                unit.to_lowercase(),
                format!("{unit}B"),
                format!("{unit}iB"),
                format!("{}ib", unit.to_lowercase()),
                format!("{}IB", unit),
            ] {
                assert_eq!(
                    parse_size(&format!("3{spelled}")),
                    Some(3 * size),
                    "3{spelled}"
                );
            }
        }
        for bad in [
            "4096BB", "4Bi", "4iB", "4KiBB", "4KK", "4MBi", "4X", "4KiB2",
        ] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes_that_overflow_are_refused() {
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("99999999999999T"), None);
        assert_eq!(parse_size("18446744073709551616B"), None);
        assert_eq!(parse_size("18446744073709551615B"), Some(u64::MAX));
        assert_eq!(parse_size("16777215T"), Some(16_777_215 << 40));
        assert_eq!(parse_size("16777216T"), None);
        assert_eq!(parse_size("17592186044416M"), None);
    }

    /// A size in bytes goes through the same checks as any other.
    #[test]
    fn byte_sizes_meet_the_layout_limits() {
        let size = parse_size("4096B").unwrap();
        assert_eq!(MemoryLayout::new(size), Err(LayoutError::TooSmall(4096)));
        let size = parse_size("2097152B").unwrap();
        assert_eq!(MemoryLayout::new(size).unwrap().ram_size, 2 * MIB);
        let size = parse_size("2097153B").unwrap();
        assert_eq!(
            MemoryLayout::new(size),
            Err(LayoutError::Unaligned(2_097_153))
        );
        let size = parse_size("268439552B").unwrap();
        assert_eq!(
            MemoryLayout::new(size).unwrap().ram_size,
            256 * MIB + 4 * KIB
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::run;

    /// Sizes as a user types them (digits, a unit in any case, spaces) and as nobody does,
    /// against a model: a size is its digits times the unit, refused when it overflows.
    #[test]
    fn sizes() {
        let units = [
            "", "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t", "tb", "tib",
        ];
        let shifts = [20u32, 0, 10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40];
        run("sizes", 100_000, |rng| {
            let digits: String = (0..rng.index(24))
                .map(|_| char::from(b'0' + rng.below(10) as u8))
                .collect();
            let u = rng.index(units.len());
            let unit: String = units[u]
                .chars()
                .map(|c| {
                    if rng.one_in(2) {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            let mut s = format!("{digits}{unit}");
            let junk = rng.one_in(4);
            if junk {
                let at = rng.index(s.len() + 1);
                let c = *rng.pick(&['x', ' ', '-', '+', '.', 'é', '\u{1F600}', '\0', 'i']);
                if s.is_char_boundary(at) {
                    s.insert(at, c);
                }
            }
            if rng.one_in(4) {
                s = format!(" {s}\t");
            }
            let got = parse_size(&s);
            if junk {
                return; // Junk may or may not make a size (" 5M" does): no panic is all.
            }
            // At most 23 digits: the number fits in 128 bits, shifted too.
            let want = digits
                .parse::<u128>()
                .ok()
                .and_then(|d| u64::try_from(d << shifts[u]).ok());
            assert_eq!(got, want, "{s:?}");
        });
    }
}
