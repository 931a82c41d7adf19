//! The Intel MultiProcessor Specification 1.4 tables, for guests booted without ACPI: the MP
//! floating pointer structure followed by the MP configuration table.
//!
//! The configuration table describes the same platform as the ACPI tables (see `acpi`):
//!
//! - one processor entry per vCPU, APIC ID i for vCPU i, the bootstrap flag on vCPU 0;
//! - bus 0 is the PCI bus (an MP bus ID of a PCI bus is its PCI bus number), bus 1 is ISA;
//! - the I/O APIC at 0xFEC00000 with ID = number of vCPUs;
//! - ISA IRQs 0-15 on the I/O APIC's pins, IRQ 0 on pin 2 and the others on the pin of their
//!   number (IRQ 2, the cascade, has no entry), all conforming to the ISA bus (edge, high);
//! - every PCI slot and interrupt pin of bus 0 on the pin of its PIRQ line
//!   (`pci_routing::pci_gsi`), level-triggered, active-low;
//! - ExtINT (the 8259) on LINT0 and NMI on LINT1 of every local APIC.
//!
//! Where the OS looks: Linux scans only 0x0-0x3FF, 0x9FC00-0x9FFFF (the last KiB of base
//! memory, which is also the EBDA here), 0xF0000-0xFFFFF and the EBDA for the floating pointer,
//! not 0xE0000. A table built at an address outside those ranges also needs a copy of its
//! floating pointer ([`floating_pointer`]) in one of them, such as `memory::EBDA_START`.

use crate::acpi::{ioapic_id, IOAPIC_ADDR, LAPIC_ADDR, MAX_CPUS, TABLES_SIZE};
use crate::pci_routing::pci_gsi;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const SPEC_REVISION: u8 = 4;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const PROCESSOR_ENTRY_LEN: usize = 20;
const ENTRY_LEN: usize = 8;

/// Processor entry flags.
const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// The version register of KVM's local APIC and I/O APIC.
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1;
/// CPU signature (family 6) and feature flags (FPU, APIC) of every processor entry.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Interrupt types.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Interrupt flags: conforming to the bus, or level-triggered active-low (PCI).
const FLAGS_CONFORMING: u16 = 0;
const FLAGS_LEVEL_ACTIVE_LOW: u16 = 0x000F;

pub const PCI_BUS_ID: u8 = 0;
pub const ISA_BUS_ID: u8 = 1;
const PCI_SLOTS: u8 = 32;
const ISA_IRQS: u8 = 16;
/// A local interrupt entry addressed to this APIC ID reaches every local APIC.
const ALL_LAPICS: u8 = 0xFF;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MpError {
    #[error("the MP table describes 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u32),
    #[error("the MP table cannot start at {0:#x}: it must be 16-byte aligned and below 4 GiB")]
    Base(u64),
    #[error("the MP table needs {0} bytes, more than the {TABLES_SIZE} bytes of the table area")]
    TooLarge(usize),
}

/// The value that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// An MP floating pointer structure pointing at the configuration table at `config_table`.
pub fn floating_pointer(config_table: u64) -> Result<[u8; 16], MpError> {
    let addr = u32::try_from(config_table).map_err(|_| MpError::Base(config_table))?;
    let mut f = [0u8; FLOATING_POINTER_LEN];
    f[0..4].copy_from_slice(b"_MP_");
    f[4..8].copy_from_slice(&addr.to_le_bytes());
    f[8] = 1; // length in 16-byte units
    f[9] = SPEC_REVISION;
    // Feature byte 1 = 0: a configuration table is present. Feature byte 2 = 0: no IMCR,
    // the PIC is wired in virtual-wire mode (ExtINT through LINT0).
    f[10] = checksum(&f);
    Ok(f)
}

fn bus(id: u8, kind: &[u8; 6]) -> [u8; ENTRY_LEN] {
    let mut e = [0u8; ENTRY_LEN];
    e[0] = ENTRY_BUS;
    e[1] = id;
    e[2..8].copy_from_slice(kind);
    e
}

fn interrupt(entry: u8, kind: u8, flags: u16, bus: u8, irq: u8, dest: u8, pin: u8) -> [u8; 8] {
    let mut e = [0u8; ENTRY_LEN];
    e[0] = entry;
    e[1] = kind;
    e[2..4].copy_from_slice(&flags.to_le_bytes());
    e[4] = bus;
    e[5] = irq;
    e[6] = dest;
    e[7] = pin;
    e
}

/// The MP tables for `cpus` vCPUs, to be copied at guest address `base`: the floating
/// pointer at offset 0 and the configuration table right after it.
pub fn build(cpus: u32, base: u64) -> Result<Vec<u8>, MpError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpError::CpuCount(cpus));
    }
    if !base.is_multiple_of(16) {
        return Err(MpError::Base(base));
    }
    let ioapic = ioapic_id(cpus);

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |entries: &mut Vec<u8>, e: &[u8]| {
        entries.extend_from_slice(e);
        count += 1;
    };
    for id in 0..ioapic {
        let mut e = [0u8; PROCESSOR_ENTRY_LEN];
        e[0] = ENTRY_PROCESSOR;
        e[1] = id;
        e[2] = LAPIC_VERSION;
        e[3] = CPU_ENABLED | if id == 0 { CPU_BOOTSTRAP } else { 0 };
        e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
        e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
        push(&mut entries, &e);
    }
    push(&mut entries, &bus(PCI_BUS_ID, b"PCI   "));
    push(&mut entries, &bus(ISA_BUS_ID, b"ISA   "));
    let mut e = [0u8; ENTRY_LEN];
    e[0] = ENTRY_IOAPIC;
    e[1] = ioapic;
    e[2] = IOAPIC_VERSION;
    e[3] = IOAPIC_ENABLED;
    e[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    push(&mut entries, &e);
    for irq in (0..ISA_IRQS).filter(|&irq| irq != 2) {
        let pin = if irq == 0 { 2 } else { irq };
        let e = interrupt(
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            FLAGS_CONFORMING,
            ISA_BUS_ID,
            irq,
            ioapic,
            pin,
        );
        push(&mut entries, &e);
    }
    for slot in 0..PCI_SLOTS {
        for pin in 0..4u8 {
            // The source IRQ of a PCI interrupt: device number in bits 2-6, pin in bits 0-1.
            let e = interrupt(
                ENTRY_IO_INTERRUPT,
                INT_VECTORED,
                FLAGS_LEVEL_ACTIVE_LOW,
                PCI_BUS_ID,
                (slot << 2) | pin,
                ioapic,
                pci_gsi(slot, pin) as u8,
            );
            push(&mut entries, &e);
        }
    }
    for (kind, lint) in [(INT_EXTINT, 0), (INT_NMI, 1)] {
        let e = interrupt(
            ENTRY_LOCAL_INTERRUPT,
            kind,
            FLAGS_CONFORMING,
            ISA_BUS_ID,
            0,
            ALL_LAPICS,
            lint,
        );
        push(&mut entries, &e);
    }

    let table_len = HEADER_LEN + entries.len();
    let total = FLOATING_POINTER_LEN + table_len;
    if total > TABLES_SIZE {
        return Err(MpError::TooLarge(total));
    }
    if base
        .checked_add(total as u64)
        .is_none_or(|end| end > 1 << 32)
    {
        return Err(MpError::Base(base));
    }
    let config_table = base + FLOATING_POINTER_LEN as u64;

    let mut t = Vec::with_capacity(total);
    t.extend_from_slice(&floating_pointer(config_table)?);
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(b"PCMP");
    // `total` is at most TABLES_SIZE, so the length fits 16 bits.
    h[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    h[6] = SPEC_REVISION;
    h[8..16].copy_from_slice(b"MINIPC  ");
    h[16..28].copy_from_slice(b"LEGACY PC   ");
    h[34..36].copy_from_slice(&count.to_le_bytes());
    h[36..40].copy_from_slice(&LAPIC_ADDR.to_le_bytes());
    t.extend_from_slice(&h);
    t.extend_from_slice(&entries);
    t[FLOATING_POINTER_LEN + 7] = checksum(&t[FLOATING_POINTER_LEN..]);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::TABLES_BASE;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    /// The configuration table's entries: (type, bytes).
    fn entries(t: &[u8]) -> Vec<(u8, &[u8])> {
        let table = &t[16..];
        let mut v = Vec::new();
        let mut off = HEADER_LEN;
        while off < table.len() {
            let len = if table[off] == ENTRY_PROCESSOR {
                PROCESSOR_ENTRY_LEN
            } else {
                ENTRY_LEN
            };
            v.push((table[off], &table[off..off + len]));
            off += len;
        }
        assert_eq!(off, table.len());
        v
    }

    #[test]
    fn checksums_and_pointers_are_right() {
        for cpus in [1, 2, 4, 64, 254] {
            let t = build(cpus, TABLES_BASE).unwrap();
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer");
            assert_eq!((t[8], t[9], t[11], t[12]), (1, 4, 0, 0));
            assert_eq!(u64::from(u32_at(&t, 4)), TABLES_BASE + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            assert_eq!(u16_at(table, 4) as usize, table.len());
            assert_eq!(table[6], 4, "spec revision");
            assert_eq!(sum(table), 0, "configuration table");
            assert_eq!(u32_at(table, 36), LAPIC_ADDR);
            assert_eq!(u16_at(table, 40), 0, "no extended table");
            assert_eq!(u16_at(table, 34) as usize, entries(&t).len());
        }
    }

    #[test]
    fn entry_counts_follow_the_vcpu_count() {
        for cpus in [1u32, 4, 64, 254] {
            let t = build(cpus, TABLES_BASE).unwrap();
            let e = entries(&t);
            let count = |k| e.iter().filter(|(t, _)| *t == k).count();
            assert_eq!(count(ENTRY_PROCESSOR), cpus as usize);
            assert_eq!(count(ENTRY_BUS), 2);
            assert_eq!(count(ENTRY_IOAPIC), 1);
            assert_eq!(count(ENTRY_IO_INTERRUPT), 15 + 32 * 4);
            assert_eq!(count(ENTRY_LOCAL_INTERRUPT), 2);
            // Entries come sorted by type.
            assert!(e.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(t.len() <= TABLES_SIZE);
        }
    }

    #[test]
    fn processors_bus_and_ioapic_entries() {
        let t = build(4, TABLES_BASE).unwrap();
        let e = entries(&t);
        let cpus: Vec<_> = e.iter().filter(|(k, _)| *k == ENTRY_PROCESSOR).collect();
        for (i, (_, c)) in cpus.iter().enumerate() {
            assert_eq!(c[1] as usize, i, "APIC ID");
            let bsp = if i == 0 { CPU_BOOTSTRAP } else { 0 };
            assert_eq!(c[3], CPU_ENABLED | bsp);
        }
        let buses: Vec<_> = e
            .iter()
            .filter(|(k, _)| *k == ENTRY_BUS)
            .map(|(_, b)| (b[1], &b[2..8]))
            .collect();
        assert_eq!(buses, vec![(0, &b"PCI   "[..]), (1, &b"ISA   "[..])]);
        let io = e.iter().find(|(k, _)| *k == ENTRY_IOAPIC).unwrap().1;
        assert_eq!(io[1], 4, "I/O APIC ID = number of vCPUs");
        assert_eq!(io[3], 1, "enabled");
        assert_eq!(u32_at(io, 4), IOAPIC_ADDR);
    }

    #[test]
    fn interrupt_entries_route_isa_and_pci() {
        let t = build(2, TABLES_BASE).unwrap();
        let e = entries(&t);
        let ints: Vec<_> = e
            .iter()
            .filter(|(k, _)| *k == ENTRY_IO_INTERRUPT)
            .map(|(_, i)| (i[1], u16_at(i, 2), i[4], i[5], i[6], i[7]))
            .collect();
        let isa: Vec<_> = ints.iter().filter(|i| i.2 == ISA_BUS_ID).collect();
        assert_eq!(isa.len(), 15);
        assert_eq!(*isa[0], (0, 0, ISA_BUS_ID, 0, 2, 2), "IRQ 0 on pin 2");
        for i in &isa[1..] {
            assert_ne!(i.3, 2, "no entry for the cascade");
            assert_eq!(i.3, i.5, "identity");
            assert_eq!((i.0, i.1, i.4), (0, 0, 2));
        }
        let pci: Vec<_> = ints.iter().filter(|i| i.2 == PCI_BUS_ID).collect();
        assert_eq!(pci.len(), 128);
        for i in &pci {
            let (slot, pin) = (i.3 >> 2, i.3 & 3);
            assert_eq!(u32::from(i.5), pci_gsi(slot, pin));
            assert_eq!(i.1, 0x0F, "level, active-low");
        }
        let locals: Vec<_> = e
            .iter()
            .filter(|(k, _)| *k == ENTRY_LOCAL_INTERRUPT)
            .map(|(_, l)| (l[1], l[6], l[7]))
            .collect();
        assert_eq!(locals, vec![(INT_EXTINT, 0xFF, 0), (INT_NMI, 0xFF, 1)]);
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert_eq!(build(0, TABLES_BASE), Err(MpError::CpuCount(0)));
        assert_eq!(build(255, TABLES_BASE), Err(MpError::CpuCount(255)));
        assert_eq!(
            build(1, TABLES_BASE + 8),
            Err(MpError::Base(TABLES_BASE + 8))
        );
        assert_eq!(build(1, 1 << 32), Err(MpError::Base(1 << 32)));
        assert_eq!(build(1, u64::MAX - 15), Err(MpError::Base(u64::MAX - 15)));
        assert!(floating_pointer(1 << 32).is_err());
    }

    #[test]
    fn a_floating_pointer_copy_points_at_the_same_table() {
        let t = build(8, TABLES_BASE).unwrap();
        let copy = floating_pointer(TABLES_BASE + 16).unwrap();
        assert_eq!(&copy[..], &t[..16]);
        assert_eq!(sum(&copy), 0);
    }
}
