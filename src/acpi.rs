//! ACPI tables for the legacy PC: RSDP, RSDT, XSDT, FADT, FACS, DSDT and MADT, laid out in the
//! free half of the firmware window (0xE0000-0xEFFFF) and copied there before the guest starts.
//!
//! The tables describe this fixed platform:
//!
//! | what                   | where / value                                                   |
//! |------------------------|-----------------------------------------------------------------|
//! | local APICs            | 0xFEE00000; vCPU i has APIC ID i and ACPI processor UID i       |
//! | I/O APIC               | 0xFEC00000, ID = number of vCPUs, GSI base 0, 24 pins           |
//! | PM1a event block       | I/O 0x600, 4 bytes (status 0x600, enable 0x602)                 |
//! | PM1a control block     | I/O 0x604, 2 bytes; SCI_EN is set at reset (no SMI_CMD)         |
//! | PM timer               | I/O 0x608, 4 bytes, 24-bit, 3.579545 MHz                        |
//! | GPE0 block             | I/O 0x620, 4 bytes (status 0x620-0x621, enable 0x622-0x623)     |
//! | SCI                    | ISA IRQ 9 = GSI 9, level-triggered, active-high                 |
//! | S5 (soft off)          | SLP_TYP 0: write `SLP_EN` (bit 13) to PM1a control              |
//! | power button           | fixed feature (PWRBTN_STS/PWRBTN_EN, bit 8); no sleep button    |
//! | reset register         | I/O 0xCF9, value 0x06                                           |
//! | RTC / CMOS             | I/O 0x70-0x71, IRQ 8, century register 0x32                     |
//! | COM1                   | I/O 0x3F8-0x3FF, IRQ 4                                          |
//! | i8042 keyboard         | I/O 0x60 and 0x64, IRQ 1                                        |
//! | System Control Port A  | I/O 0x92 (fast A20, fast reset), a motherboard resource         |
//! | PCI                    | mechanism #1 at 0xCF8/0xCFC; bus 0 only                         |
//!
//! PCI interrupt routing: the four PIRQ lines are wired straight to I/O APIC pins,
//! PIRQA = GSI 10, PIRQB = GSI 10, PIRQC = GSI 11, PIRQD = GSI 11 (`pci_routing::PIRQ_GSI`).
//! Interrupt pin P (0 = INTA# .. 3 = INTD#) of the device in slot N drives PIRQ (N + P) mod 4,
//! so its GSI is `PIRQ_GSI[(N + P) % 4]` (`pci_routing::pci_gsi`). The DSDT's `_PRT` lists
//! that mapping for every slot 0-31 and pin, with GSI numbers directly (no link devices); an
//! OS treats these GSIs as PCI interrupts: level-triggered, active-low, shareable. The wiring
//! and the `_PRT` are in pci_routing.rs, from which build.rs encodes the `_PRT`.
//!
//! Layout of the table area (offsets from [`TABLES_BASE`]): the RSDP at 0 (where the OS
//! finds it by scanning 0xE0000-0xFFFFF), the FACS at 0x40 (64-byte aligned), then the RSDT,
//! XSDT, FADT, DSDT and MADT, each 16-byte aligned in that order. The MADT grows with the
//! vCPU count and comes last. The area is read-only to the guest; the FACS in it is written
//! by an OS only for the global lock and the waking vector, which this platform does not use
//! (nothing in the DSDT takes the global lock, and S5 is the only sleep state).

use crate::devices::{acpi_pm, i8042, pci, port92, rtc, serial};
use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, Package,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, PmProfile};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};

use crate::memory::{MemoryLayout, BIOS_WINDOW_START, GIB, HIGH_MEMORY_START, RAM_ABOVE_4G_START};

/// Guest-physical base of the table area.
pub const TABLES_BASE: u64 = BIOS_WINDOW_START;
/// Size of the table area: the part of the firmware window below the firmware code.
pub const TABLES_SIZE: usize = 0x10000;

/// The most vCPUs the tables describe: xAPIC IDs are 8 bits, 0xFF is the broadcast ID and
/// the I/O APIC takes the ID after the last vCPU.
pub const MAX_CPUS: u32 = 254;

pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
#[cfg_attr(not(test), allow(dead_code))]
pub const IOAPIC_PINS: u32 = 24;

/// The I/O APIC's ID: the first APIC ID after the vCPUs'.
pub fn ioapic_id(cpus: u32) -> u8 {
    cpus.min(MAX_CPUS) as u8
}

/// PIIX4-style power-management registers (I/O ports).
pub const PM1A_EVT_BLK: u16 = acpi_pm::PM_BASE;
pub const PM1_EVT_LEN: u8 = 4;
pub const PM1A_CNT_BLK: u16 = acpi_pm::PM_BASE + 4;
pub const PM1_CNT_LEN: u8 = 2;
pub const PM_TMR_BLK: u16 = acpi_pm::PM_BASE + 8;
pub const PM_TMR_LEN: u8 = 4;
pub const GPE0_BLK: u16 = acpi_pm::PM_BASE + 0x20;
pub const GPE0_BLK_LEN: u8 = 4;
/// The SCI: ISA IRQ 9, routed to GSI 9, level-triggered, active-high.
pub const SCI_IRQ: u8 = acpi_pm::SCI_IRQ as u8;
/// The SLP_TYP value of S5 (soft off), as in the DSDT's `\_S5` package.
pub const SLP_TYP_S5: u16 = 0;
/// The reset register (PIIX3 reset control) and the value the OS writes to it.
pub const RESET_PORT: u16 = 0xCF9;
pub const RESET_VALUE: u8 = 0x06;
/// CMOS register holding the century, in BCD.
pub const RTC_CENTURY_REG: u8 = rtc::REG_CENTURY;

/// PCI configuration mechanism #1.
pub const PCI_CONFIG_PORT: u16 = pci::PCI_CONFIG_PORT as u16;
pub const PCI_CONFIG_LEN: u8 = pci::PCI_CONFIG_LEN as u8;
/// The top of the 32-bit PCI memory window: the I/O APIC and everything above it are not PCI.
pub const PCI_MMIO32_END: u64 = 0xFEBF_FFFF;
/// The 64-bit PCI memory window starts at the first GiB boundary above RAM, spans at least
/// this much and reaches at least `PCI_MMIO64_MIN_END`.
pub const PCI_MMIO64_MIN_SIZE: u64 = 32 * GIB;
pub const PCI_MMIO64_MIN_END: u64 = 64 * GIB;

/// The `_PRT` package (`pci_routing::routing_table`), encoded by build.rs.
static PRT_AML: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pci_prt.aml"));

const COM1_IO: u16 = serial::COM1_PORT as u16;
const COM1_IO_LEN: u8 = serial::COM1_LEN as u8;
const COM1_IRQ: u32 = serial::COM1_IRQ;
const RTC_IO: u16 = rtc::RTC_PORT as u16;
const RTC_IO_LEN: u8 = rtc::RTC_LEN as u8;
const RTC_IRQ: u32 = rtc::RTC_IRQ;
const KBD_DATA_IO: u16 = i8042::I8042_PORT as u16;
const KBD_CMD_IO: u16 = i8042::I8042_COMMAND_PORT as u16;
const KBD_IRQ: u32 = i8042::KEYBOARD_IRQ;
const PORT92_IO: u16 = port92::PORT92_PORT as u16;
/// `_ADR` of the PIIX3 ISA bridge: device 1, function 0.
const ISA_BRIDGE_ADR: u32 = 0x0001_0000;

const OEM_ID: [u8; 6] = *b"MINIPC";
const OEM_TABLE_ID: [u8; 8] = *b"MINIPC  ";
const OEM_REVISION: u32 = 1;

const RSDP_LEN: usize = 36;
const FACS_OFFSET: usize = 0x40;
const HEADER_LEN: usize = 36;

/// MADT flag: the system also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
const MADT_REVISION: u8 = 5;
const MADT_TYPE_INTERRUPT_OVERRIDE: u8 = 2;
const MADT_TYPE_LAPIC_NMI: u8 = 4;
/// MPS INTI flags: polarity active-high (01), trigger level (11).
const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0x000D;
const MPS_INTI_CONFORMING: u16 = 0;
const ALL_PROCESSORS_UID: u8 = 0xFF;

/// FADT fixed feature flags (ACPI 6.5, table 5.10).
const FADT_WBINVD: u32 = 1 << 0;
const FADT_PROC_C1: u32 = 1 << 2;
const FADT_SLP_BUTTON: u32 = 1 << 5;
const FADT_RESET_REG_SUP: u32 = 1 << 10;
const FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE: u32 = 1 << 19;
/// IA-PC boot architecture flags.
const IAPC_LEGACY_DEVICES: u16 = 1 << 0;
const IAPC_8042: u16 = 1 << 1;
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
/// Worst-case C2/C3 latencies above these mean "C2/C3 not supported".
const P_LVL2_LAT_NONE: u16 = 101;
const P_LVL3_LAT_NONE: u16 = 1001;
/// Logical xAPIC destination mode addresses at most this many CPUs.
const XAPIC_LOGICAL_MAX_CPUS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    pub cpus: u32,
    pub layout: MemoryLayout,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AcpiError {
    #[error("the ACPI tables describe 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u32),
    #[error("the memory layout cannot be described: {0}")]
    Layout(&'static str),
    #[error("the ACPI tables need {0} bytes, more than the {TABLES_SIZE} bytes of the table area")]
    TooLarge(usize),
}

/// One table placed in the table area.
struct Placed {
    signature: &'static str,
    offset: usize,
    bytes: Vec<u8>,
}

/// The table area's bytes, to be copied at guest address [`TABLES_BASE`]: the RSDP at
/// offset 0, then the other tables. At most [`TABLES_SIZE`] bytes long.
pub fn build(cfg: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    let placed = place(cfg)?;
    let end = placed
        .iter()
        .map(|p| p.offset + p.bytes.len())
        .max()
        .unwrap_or(0);
    let mut area = vec![0u8; end];
    for p in &placed {
        area[p.offset..p.offset + p.bytes.len()].copy_from_slice(&p.bytes);
    }
    Ok(area)
}

#[cfg_attr(not(test), allow(dead_code))]
/// Every table's bytes, in layout order, named by signature ("RSDP" for the RSDP, whose
/// real signature is "RSD PTR ", "FACP" for the FADT, "APIC" for the MADT).
pub fn tables(cfg: &AcpiConfig) -> Result<Vec<(String, Vec<u8>)>, AcpiError> {
    Ok(place(cfg)?
        .into_iter()
        .map(|p| (p.signature.to_string(), p.bytes))
        .collect())
}

fn align_up(v: usize, align: usize) -> usize {
    v.div_ceil(align) * align
}

fn addr(offset: usize) -> u64 {
    TABLES_BASE + offset as u64
}

/// Addresses in the table area are below 1 MiB, so they always fit 32 bits.
fn addr32(offset: usize) -> u32 {
    addr(offset) as u32
}

fn place(cfg: &AcpiConfig) -> Result<Vec<Placed>, AcpiError> {
    if cfg.cpus == 0 || cfg.cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(cfg.cpus));
    }
    let dsdt = dsdt(&cfg.layout)?;
    let madt = madt(cfg.cpus);

    let rsdt_off = FACS_OFFSET + FACS::len();
    let rsdt_len = HEADER_LEN + 2 * 4;
    let xsdt_off = align_up(rsdt_off + rsdt_len, 16);
    let xsdt_len = HEADER_LEN + 2 * 8;
    let fadt_off = align_up(xsdt_off + xsdt_len, 16);
    let dsdt_off = align_up(fadt_off + acpi_tables::fadt::FADT::len(), 16);
    let madt_off = align_up(dsdt_off + dsdt.len(), 16);
    let end = madt_off + madt.len();
    if end > TABLES_SIZE {
        return Err(AcpiError::TooLarge(end));
    }

    let fadt = fadt(cfg.cpus, FACS_OFFSET, dsdt_off);
    let rsdt = rsdt(&[fadt_off, madt_off]);
    let xsdt = xsdt(&[fadt_off, madt_off]);
    debug_assert_eq!(rsdt.len(), rsdt_len);
    debug_assert_eq!(xsdt.len(), xsdt_len);
    let mut facs = Vec::new();
    FACS::new().to_aml_bytes(&mut facs);

    Ok(vec![
        Placed {
            signature: "RSDP",
            offset: 0,
            bytes: rsdp(rsdt_off, xsdt_off),
        },
        Placed {
            signature: "FACS",
            offset: FACS_OFFSET,
            bytes: facs,
        },
        Placed {
            signature: "RSDT",
            offset: rsdt_off,
            bytes: rsdt,
        },
        Placed {
            signature: "XSDT",
            offset: xsdt_off,
            bytes: xsdt,
        },
        Placed {
            signature: "FACP",
            offset: fadt_off,
            bytes: fadt,
        },
        Placed {
            signature: "DSDT",
            offset: dsdt_off,
            bytes: dsdt,
        },
        Placed {
            signature: "APIC",
            offset: madt_off,
            bytes: madt,
        },
    ])
}

/// The value that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// RSDP revision 2 (ACPI 2.0+), with both the RSDT and the XSDT.
fn rsdp(rsdt_off: usize, xsdt_off: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(RSDP_LEN);
    b.extend_from_slice(b"RSD PTR ");
    b.push(0); // checksum of the first 20 bytes
    b.extend_from_slice(&OEM_ID);
    b.push(2); // revision
    b.extend_from_slice(&addr32(rsdt_off).to_le_bytes());
    b.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
    b.extend_from_slice(&addr(xsdt_off).to_le_bytes());
    b.push(0); // extended checksum
    b.extend_from_slice(&[0; 3]);
    b[8] = checksum(&b[..20]);
    b[32] = checksum(&b);
    b
}

fn rsdt(offsets: &[usize]) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"RSDT",
        HEADER_LEN as u32,
        1,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    for off in offsets {
        t.append_slice(&addr32(*off).to_le_bytes());
    }
    t.as_slice().to_vec()
}

fn xsdt(offsets: &[usize]) -> Vec<u8> {
    let mut t = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for off in offsets {
        t.add_entry(addr(*off));
    }
    let mut b = Vec::new();
    t.to_aml_bytes(&mut b);
    b
}

fn io_gas(bytes: u8, access: AccessSize, port: u16) -> GAS {
    GAS::new(GasSpace::SystemIo, bytes * 8, 0, access, u64::from(port))
}

/// FADT revision 6.5 for a full (not hardware-reduced) ACPI platform.
fn fadt(cpus: u32, facs_off: usize, dsdt_off: usize) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    f.firmware_ctrl = addr32(facs_off).into();
    f.x_firmware_ctrl = addr(facs_off).into();
    f.dsdt = addr32(dsdt_off).into();
    f.x_dsdt = addr(dsdt_off).into();
    f.preferred_pm_profile = PmProfile::Desktop as u8;
    f.sci_int = u16::from(SCI_IRQ).into();
    // No SMI command port: ACPI mode is always on (SCI_EN is set at reset).
    f.smi_cmd = 0.into();
    f.acpi_enable = 0;
    f.acpi_disable = 0;
    f.pm1a_evt_blk = u32::from(PM1A_EVT_BLK).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_BLK).into();
    f.pm_tmr_blk = u32::from(PM_TMR_BLK).into();
    f.gpe0_blk = u32::from(GPE0_BLK).into();
    f.pm1_evt_len = PM1_EVT_LEN;
    f.pm1_cnt_len = PM1_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    f.gpe0_blk_len = GPE0_BLK_LEN;
    f.p_lvl2_lat = P_LVL2_LAT_NONE.into();
    f.p_lvl3_lat = P_LVL3_LAT_NONE.into();
    f.century = RTC_CENTURY_REG;
    f.iapc_boot_arch = (IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT).into();
    // TMR_VAL_EXT stays clear: the PM timer is 24 bits wide.
    // PWR_BUTTON stays clear: the power button is the fixed-feature one (PWRBTN_STS/_EN in
    // the PM1 event block). SLP_BUTTON is set: there is no sleep button.
    let mut flags = FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON;
    flags |= FADT_RESET_REG_SUP;
    if cpus > XAPIC_LOGICAL_MAX_CPUS {
        flags |= FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE;
    }
    f.flags = flags.into();
    f.reset_reg = io_gas(1, AccessSize::ByteAccess, RESET_PORT);
    f.reset_value = RESET_VALUE;
    f.x_pm1a_evt_blk = io_gas(PM1_EVT_LEN, AccessSize::WordAccess, PM1A_EVT_BLK);
    f.x_pm1a_cnt_blk = io_gas(PM1_CNT_LEN, AccessSize::WordAccess, PM1A_CNT_BLK);
    f.x_pm_tmr_blk = io_gas(PM_TMR_LEN, AccessSize::DwordAccess, PM_TMR_BLK);
    f.x_gpe0_blk = io_gas(GPE0_BLK_LEN, AccessSize::ByteAccess, GPE0_BLK);
    let mut b = Vec::new();
    f.finalize().to_aml_bytes(&mut b);
    b
}

/// Interrupt source override (MADT type 2) of an ISA IRQ.
fn interrupt_override(irq: u8, gsi: u32, flags: u16) -> [u8; 10] {
    let mut e = [0u8; 10];
    e[0] = MADT_TYPE_INTERRUPT_OVERRIDE;
    e[1] = 10;
    e[2] = 0; // bus: ISA
    e[3] = irq;
    e[4..8].copy_from_slice(&gsi.to_le_bytes());
    e[8..10].copy_from_slice(&flags.to_le_bytes());
    e
}

/// Local APIC NMI (MADT type 4).
fn lapic_nmi(uid: u8, flags: u16, lint: u8) -> [u8; 6] {
    let mut e = [0u8; 6];
    e[0] = MADT_TYPE_LAPIC_NMI;
    e[1] = 6;
    e[2] = uid;
    e[3..5].copy_from_slice(&flags.to_le_bytes());
    e[5] = lint;
    e
}

/// MADT: one enabled local APIC per vCPU, the I/O APIC, the ISA overrides for the PIT
/// (IRQ 0 on pin 2) and the SCI, and NMI on LINT1 of every processor. `cpus` is at most
/// [`MAX_CPUS`].
fn madt(cpus: u32) -> Vec<u8> {
    let mut t = Sdt::new(
        *b"APIC",
        HEADER_LEN as u32 + 8,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(HEADER_LEN, LAPIC_ADDR);
    t.write_u32(HEADER_LEN + 4, MADT_PCAT_COMPAT);
    let mut entries = Vec::new();
    for i in 0..cpus.min(MAX_CPUS) as u8 {
        ProcessorLocalApic::new(i, i, EnabledStatus::Enabled).to_aml_bytes(&mut entries);
    }
    IoApic::new(ioapic_id(cpus), IOAPIC_ADDR, 0).to_aml_bytes(&mut entries);
    entries.extend_from_slice(&interrupt_override(0, 2, MPS_INTI_CONFORMING));
    entries.extend_from_slice(&interrupt_override(
        SCI_IRQ,
        u32::from(SCI_IRQ),
        MPS_INTI_ACTIVE_HIGH_LEVEL,
    ));
    entries.extend_from_slice(&lapic_nmi(ALL_PROCESSORS_UID, MPS_INTI_CONFORMING, 1));
    t.append_slice(&entries);
    t.as_slice().to_vec()
}

/// The 64-bit PCI memory window (first and last address), when RAM extends above 4 GiB.
fn pci_mmio64_window(layout: &MemoryLayout) -> Result<Option<(u64, u64)>, AcpiError> {
    if layout.high_ram_size == 0 {
        return Ok(None);
    }
    let overflow = AcpiError::Layout("RAM above 4 GiB is too large");
    let ram_end = RAM_ABOVE_4G_START
        .checked_add(layout.high_ram_size)
        .ok_or(overflow.clone())?;
    let start = ram_end
        .checked_next_multiple_of(GIB)
        .ok_or(overflow.clone())?;
    let end = start
        .checked_add(PCI_MMIO64_MIN_SIZE)
        .ok_or(overflow)?
        .max(PCI_MMIO64_MIN_END);
    Ok(Some((start, end - 1)))
}

/// AML that is already encoded.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

/// AML that the build encoded.
struct Prebuilt(&'static [u8]);

impl Aml for Prebuilt {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.0);
    }
}

fn encode(aml: &dyn Aml) -> Encoded {
    let mut b = Vec::new();
    aml.to_aml_bytes(&mut b);
    Encoded(b)
}

fn isa_device(name: &str, hid: &str, uid: u8, resources: &[&dyn Aml]) -> Encoded {
    let crs = ResourceTemplate::new(resources.to_vec());
    encode(&Device::new(
        name.into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new(hid)),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

/// An ISA interrupt: edge-triggered, active-high, exclusive.
fn isa_irq(irq: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, irq)
}

/// The DSDT: `\_S5` and the PCI host bridge with its routing table and the ISA devices.
fn dsdt(layout: &MemoryLayout) -> Result<Vec<u8>, AcpiError> {
    if layout.low_ram_end < HIGH_MEMORY_START || layout.low_ram_end > PCI_MMIO32_END {
        return Err(AcpiError::Layout(
            "the end of RAM below 4 GiB is outside 1 MiB-0xFEBFFFFF",
        ));
    }
    let mmio64 = pci_mmio64_window(layout)?;

    let bus = AddressSpace::<u16>::new_bus_number(0, 0xFF);
    let io_low = AddressSpace::<u16>::new_io(0, PCI_CONFIG_PORT - 1, None);
    let config = IO::new(PCI_CONFIG_PORT, PCI_CONFIG_PORT, 1, PCI_CONFIG_LEN);
    let io_high = AddressSpace::<u16>::new_io(0x0D00, 0xFFFF, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        layout.low_ram_end as u32,
        PCI_MMIO32_END as u32,
        None,
    );
    let mmio64 = mmio64.map(|(start, end)| {
        AddressSpace::<u64>::new_memory(AddressSpaceCacheable::NotCacheable, true, start, end, None)
    });
    let mut resources: Vec<&dyn Aml> = vec![&bus, &io_low, &config, &io_high, &mmio32];
    if let Some(w) = &mmio64 {
        resources.push(w);
    }
    let crs = ResourceTemplate::new(resources);

    let com1_io = IO::new(COM1_IO, COM1_IO, 1, COM1_IO_LEN);
    let com1_irq = isa_irq(COM1_IRQ);
    let com1 = isa_device("COM1", "PNP0501", 1, &[&com1_io, &com1_irq]);
    let rtc_io = IO::new(RTC_IO, RTC_IO, 1, RTC_IO_LEN);
    let rtc_irq = isa_irq(RTC_IRQ);
    let rtc = isa_device("RTC_", "PNP0B00", 0, &[&rtc_io, &rtc_irq]);
    let kbd_data = IO::new(KBD_DATA_IO, KBD_DATA_IO, 1, 1);
    let kbd_cmd = IO::new(KBD_CMD_IO, KBD_CMD_IO, 1, 1);
    let kbd_irq = isa_irq(KBD_IRQ);
    let kbd = isa_device("KBD_", "PNP0303", 0, &[&kbd_data, &kbd_cmd, &kbd_irq]);
    // Ports the chipset decodes itself, claimed so that an OS gives them to nothing else.
    let sysr_92 = IO::new(PORT92_IO, PORT92_IO, 1, 1);
    let sysr = isa_device("SYSR", "PNP0C02", 0, &[&sysr_92]);
    let isa = encode(&Device::new(
        "ISA_".into(),
        vec![
            &Name::new("_ADR".into(), &ISA_BRIDGE_ADR),
            &com1,
            &rtc,
            &kbd,
            &sysr,
        ],
    ));

    let prt = Prebuilt(PRT_AML);
    let pci0 = encode(&Device::new(
        "PCI0".into(),
        vec![
            // _HID only: a device has a _HID or an _ADR, never both.
            &Name::new("_HID".into(), &EISAName::new("PNP0A03")),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &Name::new("_PRT".into(), &prt),
            &isa,
        ],
    ));
    let sb = Scope::new("\\_SB_".into(), vec![&pci0]);
    let s5 = encode(&Name::new(
        "\\_S5_".into(),
        &Package::new(vec![&SLP_TYP_S5, &aml::ZERO, &aml::ZERO, &aml::ZERO]),
    ));

    let mut body = Vec::new();
    s5.to_aml_bytes(&mut body);
    sb.to_aml_bytes(&mut body);

    let mut t = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        2, // 64-bit integers
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.append_slice(&body);
    Ok(t.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIB;

    fn cfg(cpus: u32, ram: u64) -> AcpiConfig {
        AcpiConfig {
            cpus,
            layout: MemoryLayout::new(ram).unwrap(),
        }
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// The table at guest address `gpa` in the area, cut to the length in its header.
    fn table_at(area: &[u8], gpa: u64) -> &[u8] {
        let off = (gpa - TABLES_BASE) as usize;
        let len = u32_at(area, off + 4) as usize;
        &area[off..off + len]
    }

    fn xsdt_of(area: &[u8]) -> &[u8] {
        table_at(area, u64_at(area, 24))
    }

    fn find<'a>(area: &'a [u8], sig: &[u8; 4]) -> &'a [u8] {
        let xsdt = xsdt_of(area);
        (HEADER_LEN..xsdt.len())
            .step_by(8)
            .map(|o| table_at(area, u64_at(xsdt, o)))
            .find(|t| &t[..4] == sig)
            .unwrap_or_else(|| panic!("no {} in the XSDT", String::from_utf8_lossy(sig)))
    }

    /// The MADT's interrupt controller structures: (type, bytes).
    fn madt_entries(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut v = Vec::new();
        let mut off = HEADER_LEN + 8;
        while off < madt.len() {
            let len = madt[off + 1] as usize;
            assert!(len >= 2, "zero-length MADT entry at {off}");
            v.push((madt[off], &madt[off..off + len]));
            off += len;
        }
        assert_eq!(off, madt.len());
        v
    }

    const CONFIGS: &[(u32, u64)] = &[
        (1, 2 * MIB),
        (1, 256 * MIB),
        (4, 3 * GIB),
        (64, 4 * GIB),
        (254, 16 * GIB),
        (254, 1 << 40),
    ];

    #[test]
    fn every_table_checksums_to_zero() {
        for &(cpus, ram) in CONFIGS {
            let tables = tables(&cfg(cpus, ram)).unwrap();
            assert_eq!(tables.len(), 7);
            for (sig, bytes) in &tables {
                match sig.as_str() {
                    "RSDP" => {
                        assert_eq!(sum(&bytes[..20]), 0);
                        assert_eq!(sum(bytes), 0);
                    }
                    // The FACS has no checksum.
                    "FACS" => assert_eq!(bytes.len(), 64),
                    _ => {
                        assert_eq!(sum(bytes), 0, "{sig}");
                        assert_eq!(&bytes[..4], sig.as_bytes());
                        assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "{sig}");
                        assert_eq!(&bytes[10..16], &OEM_ID);
                    }
                }
            }
        }
    }

    #[test]
    fn rsdp_is_at_the_base_and_points_at_both_root_tables() {
        let area = build(&cfg(4, 256 * MIB)).unwrap();
        assert_eq!(&area[..8], b"RSD PTR ");
        assert_eq!(area[15], 2, "revision");
        assert_eq!(u32_at(&area, 20), 36, "length");
        assert_eq!(sum(&area[..20]), 0);
        assert_eq!(sum(&area[..36]), 0);
        let rsdt = table_at(&area, u64::from(u32_at(&area, 16)));
        let xsdt = xsdt_of(&area);
        assert_eq!(&rsdt[..4], b"RSDT");
        assert_eq!(&xsdt[..4], b"XSDT");
        assert_eq!(sum(rsdt), 0);
        assert_eq!(sum(xsdt), 0);
        // Both list the same tables.
        assert_eq!(rsdt.len(), HEADER_LEN + 8);
        assert_eq!(xsdt.len(), HEADER_LEN + 16);
        for i in 0..2 {
            assert_eq!(
                u64::from(u32_at(rsdt, HEADER_LEN + 4 * i)),
                u64_at(xsdt, HEADER_LEN + 8 * i)
            );
        }
    }

    #[test]
    fn xsdt_lists_fadt_and_madt_and_fadt_points_at_dsdt_and_facs() {
        let area = build(&cfg(2, 512 * MIB)).unwrap();
        let fadt = find(&area, b"FACP");
        find(&area, b"APIC");
        let facs = u64::from(u32_at(fadt, 36));
        assert_eq!(u64_at(fadt, 132), facs, "X_FIRMWARE_CTRL");
        assert_eq!(facs % 64, 0, "the FACS is 64-byte aligned");
        let off = (facs - TABLES_BASE) as usize;
        assert_eq!(&area[off..off + 4], b"FACS");
        assert_eq!(u32_at(&area, off + 4), 64);
        let dsdt = u64::from(u32_at(fadt, 40));
        assert_eq!(u64_at(fadt, 140), dsdt, "X_DSDT");
        let dsdt = table_at(&area, dsdt);
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(sum(dsdt), 0);
    }

    #[test]
    fn fadt_describes_the_piix4_pm_block() {
        let area = build(&cfg(1, 256 * MIB)).unwrap();
        let f = find(&area, b"FACP");
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "major revision");
        assert_eq!(f[131], 5, "minor revision");
        assert_eq!(u16_at(f, 46), 9, "SCI_INT");
        assert_eq!(u32_at(f, 48), 0, "SMI_CMD");
        assert_eq!((f[52], f[53]), (0, 0), "ACPI_ENABLE/ACPI_DISABLE");
        assert_eq!(u32_at(f, 56), 0x600, "PM1a_EVT_BLK");
        assert_eq!(u32_at(f, 60), 0, "PM1b_EVT_BLK");
        assert_eq!(u32_at(f, 64), 0x604, "PM1a_CNT_BLK");
        assert_eq!(u32_at(f, 76), 0x608, "PM_TMR_BLK");
        assert_eq!(u32_at(f, 80), 0x620, "GPE0_BLK");
        assert_eq!((f[88], f[89], f[91], f[92]), (4, 2, 4, 4), "lengths");
        assert_eq!(f[108], 0x32, "CENTURY");
        assert_eq!(u16_at(f, 109), 0b111, "IAPC_BOOT_ARCH");
        let flags = u32_at(f, 112);
        assert_ne!(flags & FADT_RESET_REG_SUP, 0);
        assert_eq!(flags & (1 << 8), 0, "TMR_VAL_EXT: 24-bit timer");
        assert_eq!(flags & (1 << 4), 0, "fixed-feature power button");
        assert_ne!(flags & FADT_SLP_BUTTON, 0, "no sleep button");
        assert_eq!(flags & (1 << 20), 0, "not HW_REDUCED_ACPI");
        assert_eq!(flags & FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE, 0);
        // RESET_REG: system I/O, 8 bits, port 0xCF9; RESET_VALUE 6.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), 0xCF9);
        assert_eq!(f[128], 6);
        // The 64-bit blocks match the 32-bit ones.
        for (gas, port, bits) in [
            (148, 0x600, 32),
            (172, 0x604, 16),
            (208, 0x608, 32),
            (220, 0x620, 32),
        ] {
            assert_eq!(f[gas], 1, "system I/O at {gas}");
            assert_eq!(f[gas + 1], bits, "bit width at {gas}");
            assert_eq!(u64_at(f, gas + 4), port);
        }
        // PM1b, PM2 and GPE1 are absent.
        for gas in [160, 184, 196, 232] {
            assert_eq!(&f[gas..gas + 12], &[0; 12]);
        }
        let big = build(&cfg(64, 256 * MIB)).unwrap();
        let flags = u32_at(find(&big, b"FACP"), 112);
        assert_ne!(flags & FADT_FORCE_APIC_PHYSICAL_DESTINATION_MODE, 0);
    }

    #[test]
    fn madt_lists_every_vcpu_the_ioapic_and_the_overrides() {
        for cpus in [1, 2, 4, 64, 254] {
            let area = build(&cfg(cpus, 256 * MIB)).unwrap();
            let madt = find(&area, b"APIC");
            assert_eq!(u32_at(madt, 36), LAPIC_ADDR);
            assert_eq!(u32_at(madt, 40), 1, "PCAT_COMPAT");
            let entries = madt_entries(madt);
            let lapics: Vec<_> = entries.iter().filter(|e| e.0 == 0).collect();
            assert_eq!(lapics.len(), cpus as usize);
            for (i, (_, e)) in lapics.iter().enumerate() {
                assert_eq!(e.len(), 8);
                assert_eq!(e[2] as usize, i, "UID");
                assert_eq!(e[3] as usize, i, "APIC ID");
                assert_eq!(u32_at(e, 4), 1, "enabled");
            }
            let ioapics: Vec<_> = entries.iter().filter(|e| e.0 == 1).collect();
            assert_eq!(ioapics.len(), 1);
            let io = ioapics[0].1;
            assert_eq!(io[2], cpus as u8, "I/O APIC ID");
            assert_eq!(u32_at(io, 4), IOAPIC_ADDR);
            assert_eq!(u32_at(io, 8), 0, "GSI base");
            let overrides: Vec<_> = entries
                .iter()
                .filter(|e| e.0 == 2)
                .map(|(_, e)| (e[2], e[3], u32_at(e, 4), u16_at(e, 8)))
                .collect();
            assert_eq!(overrides, vec![(0, 0, 2, 0), (0, 9, 9, 0x000D)]);
            let nmis: Vec<_> = entries.iter().filter(|e| e.0 == 4).collect();
            assert_eq!(nmis.len(), 1);
            assert_eq!(nmis[0].1, &[4, 6, 0xFF, 0, 0, 1]);
            assert_eq!(entries.len(), cpus as usize + 4);
        }
    }

    #[test]
    fn the_area_fits_for_every_vcpu_count() {
        for cpus in 1..=MAX_CPUS {
            let area = build(&cfg(cpus, 1 << 40)).unwrap();
            assert!(area.len() <= TABLES_SIZE);
        }
        // The largest area leaves most of the 64 KiB free.
        let area = build(&cfg(MAX_CPUS, 1 << 40)).unwrap();
        assert!(area.len() < TABLES_SIZE / 4, "{}", area.len());
    }

    #[test]
    fn tables_are_laid_out_as_documented() {
        let c = cfg(4, 4 * GIB);
        let placed = place(&c).unwrap();
        let sigs: Vec<_> = placed.iter().map(|p| p.signature).collect();
        assert_eq!(
            sigs,
            ["RSDP", "FACS", "RSDT", "XSDT", "FACP", "DSDT", "APIC"]
        );
        assert_eq!(placed[0].offset, 0);
        assert_eq!(placed[1].offset, 0x40);
        for w in placed.windows(2) {
            assert!(w[0].offset + w[0].bytes.len() <= w[1].offset);
            assert_eq!(w[1].offset % 16, 0);
        }
        let area = build(&c).unwrap();
        for p in &placed {
            assert_eq!(&area[p.offset..p.offset + p.bytes.len()], &p.bytes[..]);
        }
        let listed = tables(&c).unwrap();
        assert_eq!(listed.len(), placed.len());
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert_eq!(build(&cfg(0, 256 * MIB)), Err(AcpiError::CpuCount(0)));
        assert_eq!(build(&cfg(255, 256 * MIB)), Err(AcpiError::CpuCount(255)));
        let mut c = cfg(1, 256 * MIB);
        c.layout.low_ram_end = 0xFEC0_0000;
        assert!(matches!(build(&c), Err(AcpiError::Layout(_))));
        c.layout.low_ram_end = 0;
        assert!(matches!(build(&c), Err(AcpiError::Layout(_))));
        let mut c = cfg(1, 4 * GIB);
        c.layout.high_ram_size = u64::MAX - GIB;
        assert!(matches!(build(&c), Err(AcpiError::Layout(_))));
    }

    #[test]
    fn pci_routing_follows_the_pirq_wiring() {
        use crate::pci_routing::pci_gsi;
        assert_eq!(pci_gsi(0, 0), 10);
        assert_eq!(pci_gsi(0, 1), 10);
        assert_eq!(pci_gsi(0, 2), 11);
        assert_eq!(pci_gsi(0, 3), 11);
        assert_eq!(pci_gsi(1, 0), 10);
        assert_eq!(pci_gsi(1, 1), 11);
        assert_eq!(pci_gsi(3, 1), 10);
        assert_eq!(pci_gsi(31, 3), 11);
        assert!(crate::pci_routing::PIRQ_GSI
            .iter()
            .all(|&gsi| gsi < IOAPIC_PINS));
        // The _PRT: 128 entries of {slot << 16 | 0xFFFF, pin, 0, gsi}, as the build encoded
        // it, and as the routing table encodes now.
        let b = PRT_AML.to_vec();
        let mut now = Vec::new();
        crate::pci_routing::routing_table().to_aml_bytes(&mut now);
        assert_eq!(b, now, "the prebuilt _PRT is the routing table's encoding");
        assert_eq!(b[0], 0x12, "PackageOp");
        // PkgLength takes two bytes here; the element count follows.
        assert_eq!(b[1] >> 6, 1);
        assert_eq!(b[3], 128);
        // The first entry: Package(4) {0xFFFF, Zero, Zero, 10}.
        assert_eq!(&b[4..14], &[0x12, 9, 4, 0x0B, 0xFF, 0xFF, 0, 0, 0x0A, 10]);
        // The last: Package(4) {0x1FFFFF, 3, Zero, 11}.
        assert_eq!(
            &b[b.len() - 13..],
            &[0x12, 12, 4, 0x0C, 0xFF, 0xFF, 0x1F, 0, 0x0A, 3, 0, 0x0A, 11]
        );
    }

    #[test]
    fn dsdt_has_s5_pci0_and_the_isa_devices() {
        for &(cpus, ram) in CONFIGS {
            let area = build(&cfg(cpus, ram)).unwrap();
            let fadt = find(&area, b"FACP");
            let dsdt = table_at(&area, u64::from(u32_at(fadt, 40)));
            let body = &dsdt[HEADER_LEN..];
            let has = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
            // Name(\_S5, Package(4) {Zero, Zero, Zero, Zero})
            assert!(has(&[
                0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 6, 4, 0, 0, 0, 0
            ]));
            for name in [
                &b"PCI0"[..],
                b"_PRT",
                b"_CRS",
                b"ISA_",
                b"COM1",
                b"RTC_",
                b"KBD_",
                b"SYSR",
            ] {
                assert!(has(name), "{}", String::from_utf8_lossy(name));
            }
            // EISAID("PNP0A03") and the 64-bit window only with RAM above 4 GiB.
            assert!(has(&[0x0C, 0x41, 0xD0, 0x0A, 0x03]));
            // EISAID("PNP0C02") claiming IO(Decode16, 0x92, 0x92, 1, 1).
            assert!(has(&[0x0C, 0x41, 0xD0, 0x0C, 0x02]));
            assert!(has(&[0x47, 0x01, 0x92, 0x00, 0x92, 0x00, 0x01, 0x01]));
            assert_eq!(has(&[0x8A, 0x2B, 0x00]), ram > 3 * GIB, "{ram:#x}");
        }
    }

    #[test]
    fn mmio64_window_sits_above_ram() {
        assert_eq!(
            pci_mmio64_window(&MemoryLayout::new(256 * MIB).unwrap()),
            Ok(None)
        );
        assert_eq!(
            pci_mmio64_window(&MemoryLayout::new(4 * GIB).unwrap()),
            Ok(Some((5 * GIB, 64 * GIB - 1)))
        );
        assert_eq!(
            pci_mmio64_window(&MemoryLayout::new(4 * GIB + MIB).unwrap()),
            Ok(Some((6 * GIB, 64 * GIB - 1)))
        );
        let tib = 1u64 << 40;
        assert_eq!(
            pci_mmio64_window(&MemoryLayout::new(tib).unwrap()),
            Ok(Some((tib + GIB, tib + GIB + 32 * GIB - 1)))
        );
    }

    #[test]
    fn constants_fit_the_device_models() {
        use crate::devices::piix;
        // The ports are taken from the device modules; what is left to check is that the
        // blocks the FADT declares fit the devices' decoded ranges.
        assert!(u64::from(GPE0_BLK + u16::from(GPE0_BLK_LEN) - PM1A_EVT_BLK) <= acpi_pm::PM_LEN);
        assert_eq!(SLP_TYP_S5, acpi_pm::SLP_TYP_S5);
        assert_eq!(ISA_BRIDGE_ADR >> 16, u32::from(piix::PIIX_DEVICE));
        assert_eq!(ISA_BRIDGE_ADR & 0xFFFF, u32::from(piix::PIIX3_ISA_FUNCTION));
    }

    /// Runs `iasl` with `args` in `dir`; returns its output, or None when iasl is missing.
    fn iasl(dir: &std::path::Path, args: &[&str]) -> Option<(bool, String)> {
        match std::process::Command::new("iasl")
            .args(args)
            .current_dir(dir)
            .output()
        {
            Ok(out) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                Some((out.status.success(), text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("cannot run iasl: {e}"),
        }
    }

    /// Whether iasl's output reports an error: any line that mentions one, except a summary
    /// line counting "0 Errors".
    fn reports_errors(output: &str) -> bool {
        output
            .lines()
            .any(|l| l.contains("Error") && !l.contains(" 0 Errors"))
    }

    #[test]
    fn iasl_disassembles_every_table() {
        if !crate::testing::precondition(
            iasl(&std::env::temp_dir(), &["-v"]).is_some(),
            "iasl is not installed (apt-get install acpica-tools)",
        ) {
            return;
        }
        for (n, &(cpus, ram)) in [(1, 256 * MIB), (254, 8 * GIB)].iter().enumerate() {
            let dir =
                std::env::temp_dir().join(format!("minipc-acpi-{}-{}", std::process::id(), n));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (sig, bytes) in tables(&cfg(cpus, ram)).unwrap() {
                // iasl reads a table only if its signature is a valid ACPI name, which
                // "RSD PTR " is not; the RSDP is checked field by field above.
                if sig == "RSDP" {
                    continue;
                }
                let file = format!("{sig}.dat");
                std::fs::write(dir.join(&file), &bytes).unwrap();
                let (ok, out) = iasl(&dir, &["-d", &file]).unwrap();
                assert!(ok && !reports_errors(&out), "iasl -d {file}:\n{out}");
                // The DSDT's disassembly compiles back without errors.
                if sig == "DSDT" {
                    let (ok, out) = iasl(&dir, &["DSDT.dsl"]).unwrap();
                    assert!(
                        ok && !reports_errors(&out) && out.contains(" 0 Warnings"),
                        "iasl DSDT.dsl:\n{out}"
                    );
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
