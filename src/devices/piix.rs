//! The PIIX south bridge's PCI functions: the PIIX3 PCI-to-ISA bridge (00:01.0) with its PIRQ
//! routing registers, and a PIIX4-style ACPI power-management function (00:01.3) whose I/O
//! block (see `acpi_pm`) sits at a fixed port.

use crate::devices::acpi_pm::{PM_BASE, SCI_IRQ};
use crate::devices::pci::{
    command, reg, ConfigSpace, Header, PciFunction, HEADER_TYPE_MULTIFUNCTION,
};

/// Where the functions sit on bus 0.
pub const PIIX_DEVICE: u8 = 1;
pub const PIIX3_ISA_FUNCTION: u8 = 0;
pub const PIIX4_ACPI_FUNCTION: u8 = 3;

const VENDOR_INTEL: u16 = 0x8086;
const DEVICE_PIIX3_ISA: u16 = 0x7000;
const DEVICE_PIIX4_ACPI: u16 = 0x7113;
const PIIX4_ACPI_REVISION: u8 = 0x03;

/// PIIX3 ISA bridge registers.
const IORT: usize = 0x4C;
const XBCS: usize = 0x4E;
const PIRQRC: usize = 0x60;
const TOM: usize = 0x69;
const MBIRQ0: usize = 0x70;
const APICBASE: usize = 0x80;

/// PIRQ route control: bit 7 disables routing, bits 0-3 hold the ISA IRQ.
const PIRQ_DISABLE: u8 = 0x80;
const PIRQ_IRQ_MASK: u8 = 0x0F;
#[cfg_attr(not(test), allow(dead_code))]
/// The IRQs a PIRQ may be routed to (the others are reserved).
const PIRQ_VALID_IRQS: u16 = 0b1101_1110_1111_1000;

/// PIIX4 ACPI function registers.
const PMBA: usize = 0x40;
const PMREGMISC: usize = 0x80;
/// PMBA bit 0 is hard-wired: the base is in I/O space.
const PMBA_IO: u32 = 1;
/// PMBA bits 6-15 hold the base of the 64-byte block.
const PMBA_WMASK: u32 = 0xFFC0;
/// PMREGMISC bit 0: the PM I/O block is enabled.
const PMIOSE: u8 = 1;

/// The PIIX3 PCI-to-ISA bridge, function 0 of the multi-function device 1. Insert with
/// `PciBus::add(PIIX_DEVICE, PIIX3_ISA_FUNCTION, ..)`.
///
/// PIRQ route control (0x60-0x63, one byte per PIRQA#-PIRQD#) starts at 0x80 (routing
/// disabled); firmware or the guest writes an IRQ number in bits 0-3 and clears bit 7. The
/// routing has no effect of its own: `pirq_routes` reports it for whoever wires PCI
/// interrupts. A few other registers (IORT, XBCS, TOM, MBIRQ0/1, APICBASE) hold their reset
/// values and accept writes without effect.
pub struct Piix3Isa {
    config: ConfigSpace,
}

impl Default for Piix3Isa {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix3Isa {
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_PIIX3_ISA,
            class: 0x06,
            subclass: 0x01,
            prog_if: 0x00,
            revision: 0x00,
            header_type: HEADER_TYPE_MULTIFUNCTION,
            ..Header::default()
        });
        config.set_u16(
            reg::COMMAND,
            command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER,
        );
        // Medium DEVSEL timing.
        config.set_u16(reg::STATUS, 0x0200);
        config.set_u8(IORT, 0x4D);
        config.set_wmask_u8(IORT, 0x7F);
        config.set_u16(XBCS, 0x0003);
        config.set_wmask_u16(XBCS, 0x07FF);
        for r in PIRQRC..PIRQRC + 4 {
            config.set_u8(r, PIRQ_DISABLE);
            config.set_wmask_u8(r, PIRQ_DISABLE | PIRQ_IRQ_MASK);
        }
        config.set_u8(TOM, 0x02);
        config.set_wmask_u8(TOM, 0xFF);
        for r in MBIRQ0..MBIRQ0 + 2 {
            config.set_u8(r, PIRQ_DISABLE);
            config.set_wmask_u8(r, 0xCF);
        }
        config.set_wmask_u8(APICBASE, 0x7F);
        Piix3Isa { config }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// The IRQ each of PIRQA#-PIRQD# is routed to; None when routing is disabled or the IRQ
    /// number is a reserved one (0-2, 8, 13).
    pub fn pirq_routes(&self) -> [Option<u8>; 4] {
        std::array::from_fn(|i| {
            let v = self.config.read_u8(PIRQRC + i);
            let irq = v & PIRQ_IRQ_MASK;
            (v & PIRQ_DISABLE == 0 && PIRQ_VALID_IRQS & (1 << irq) != 0).then_some(irq)
        })
    }
}

impl PciFunction for Piix3Isa {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

const DEVACTB: usize = 0x58;
const DEVACTB_APMC_EN: u32 = 1 << 25;

/// The PIIX4 ACPI power-management function (function 3 of device 1): its SCI is IRQ 9 on
/// INTA#. Insert with `PciBus::add(PIIX_DEVICE, PIIX4_ACPI_FUNCTION, ..)`.
///
/// PMBA (0x40) reads `PM_BASE | 1` and PMREGMISC (0x80) reads 1 (PM I/O enabled). The PM
/// block is at a fixed port: writes to PMBA are accepted into configuration space (bits 6-15)
/// but do not move the block, and PMREGMISC is read-only, so the block stays enabled.
///
/// The platform has no System Management Mode. DEVACTB (0x58) reads with APMC_EN (bit 25)
/// set and read-only, which tells a firmware that SMM is already set up (SeaBIOS then skips
/// its SMM initialisation, which would wait for an SMI handler that never runs).
pub struct Piix4Acpi {
    config: ConfigSpace,
}

impl Default for Piix4Acpi {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix4Acpi {
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(&Header {
            vendor_id: VENDOR_INTEL,
            device_id: DEVICE_PIIX4_ACPI,
            class: 0x06,
            subclass: 0x80,
            prog_if: 0x00,
            revision: PIIX4_ACPI_REVISION,
            interrupt_pin: 1,
            interrupt_line: SCI_IRQ as u8,
            ..Header::default()
        });
        // Medium DEVSEL timing, fast back-to-back capable.
        config.set_u16(reg::STATUS, 0x0280);
        config.set_u32(PMBA, u32::from(PM_BASE) | PMBA_IO);
        config.set_wmask_u32(PMBA, PMBA_WMASK);
        config.set_u8(PMREGMISC, PMIOSE);
        config.set_u32(DEVACTB, DEVACTB_APMC_EN);
        Piix4Acpi { config }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// The port the PM block decodes at, whatever PMBA holds.
    pub fn pm_base(&self) -> u16 {
        PM_BASE
    }
}

impl PciFunction for Piix4Acpi {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::devices::pci::PciBus;
    use std::sync::{Arc, Mutex};

    #[test]
    fn isa_bridge_identity() {
        let mut f = Piix3Isa::new();
        assert_eq!(f.config_read(0), 0x7000_8086);
        assert_eq!(f.config_read(2), 0x0601_0000);
        assert_eq!(f.config_read(3) >> 16 & 0xFF, 0x80, "multi-function");
    }

    #[test]
    fn pirq_registers() {
        let mut f = Piix3Isa::new();
        assert_eq!(f.config_read(PIRQRC / 4), 0x8080_8080);
        assert_eq!(f.pirq_routes(), [None; 4]);
        f.config_write(PIRQRC, &[10, 11, 0x8B, 5]);
        assert_eq!(f.pirq_routes(), [Some(10), Some(11), None, Some(5)]);
        // Bits 4-6 are reserved and stay clear.
        f.config_write(PIRQRC + 2, &[0x7F]);
        assert_eq!(f.config().read_u8(PIRQRC + 2), 0x0F);
        assert_eq!(f.pirq_routes()[2], Some(15));
        // Reserved IRQ numbers route nowhere.
        for irq in [0u8, 1, 2, 8, 13] {
            f.config_write(PIRQRC + 3, &[irq]);
            assert_eq!(f.pirq_routes()[3], None, "IRQ {irq}");
        }
        for irq in [3u8, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15] {
            f.config_write(PIRQRC + 3, &[irq]);
            assert_eq!(f.pirq_routes()[3], Some(irq));
        }
        // Word writes through the bus, at the upper half of the dword.
        let f = Arc::new(Mutex::new(Piix3Isa::new()));
        let mut bus = PciBus::new();
        bus.add(PIIX_DEVICE, PIIX3_ISA_FUNCTION, f.clone()).unwrap();
        assert_eq!(bus.write(0, &0x8000_0860u32.to_le_bytes()), None);
        assert_eq!(bus.write(6, &[9, 0x80]), None);
        assert_eq!(f.lock().unwrap().pirq_routes(), [None, None, Some(9), None]);
        let mut b = [0u8; 1];
        bus.read(6, &mut b);
        assert_eq!(b, [9]);
    }

    #[test]
    fn acpi_function_identity_and_registers() {
        let mut f = Piix4Acpi::new();
        assert_eq!(f.config_read(0), 0x7113_8086);
        assert_eq!(f.config_read(2), 0x0680_0003);
        assert_eq!(f.config_read(reg::INTERRUPT_LINE / 4) & 0xFFFF, 0x0109);
        assert_eq!(f.config_read(PMBA / 4), 0x0601);
        assert_eq!(f.config_read(PMREGMISC / 4), 1);
        f.config_write(PMREGMISC, &[0]);
        assert_eq!(f.config().read_u8(PMREGMISC), 1);
        f.config_write(PMBA, &0xFFFF_FFFFu32.to_le_bytes());
        assert_eq!(f.config_read(PMBA / 4), 0xFFC1);
        f.config_write(PMBA, &0xB000u32.to_le_bytes());
        assert_eq!(f.config_read(PMBA / 4), 0xB001);
        assert_eq!(f.pm_base(), 0x600);
    }
}
