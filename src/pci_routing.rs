//! PCI interrupt routing: how the interrupt pins of each slot on bus 0 reach the I/O APIC,
//! and that wiring as the DSDT's `_PRT` package.
//!
//! The four PIRQ lines are wired straight to I/O APIC pins (`PIRQ_GSI`); interrupt pin P
//! (0 = INTA# .. 3 = INTD#) of the device in slot N drives PIRQ (N + P) mod 4. The ACPI
//! tables (acpi.rs) and the MP table (mptable.rs) both describe it from here.
//!
//! build.rs includes this file too and encodes `routing_table` once, at build time
//! (`$OUT_DIR/pci_prt.aml`): its 128 packages took about 40 µs to encode at every start
//! here, a third of all the ACPI tables' cost.

use acpi_tables::aml::{self, Package, PackageBuilder};

/// The I/O APIC pin (GSI) of PIRQA..PIRQD.
pub const PIRQ_GSI: [u32; 4] = [10, 10, 11, 11];

/// The GSI that interrupt pin `pin` (0 = INTA# .. 3 = INTD#) of the device in PCI slot `slot`
/// raises.
pub fn pci_gsi(slot: u8, pin: u8) -> u32 {
    PIRQ_GSI[(usize::from(slot) + usize::from(pin)) % 4]
}

/// The `_PRT` package: every slot and pin of bus 0 to its GSI, as
/// `Package { slot << 16 | 0xFFFF, pin, Zero, gsi }` (GSIs directly, no link devices).
/// The VMM uses build.rs's encoding of it; its tests check that the two agree.
#[cfg_attr(not(test), allow(dead_code))]
pub fn routing_table() -> PackageBuilder {
    let mut prt = PackageBuilder::new();
    for slot in 0u8..32 {
        for pin in 0u8..4 {
            let address: u32 = (u32::from(slot) << 16) | 0xFFFF;
            let gsi = pci_gsi(slot, pin);
            prt.add_element(&Package::new(vec![&address, &pin, &aml::ZERO, &gsi]));
        }
    }
    prt
}
