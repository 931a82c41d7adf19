//! The PIT as the embedded firmware's POST leaves it: channel 0 in mode 2 with divisor
//! 65536, IRQ 0 at 18.2 Hz (the BDA's tick count, INT 1Ah, INT 16h's wait). The VMM programs
//! it through the port bus before the firmware starts and again after a reboot's reset, as
//! it writes the IVT and the BDA: from the firmware, the three port writes were three VM
//! exits to the user-space PIT, about 55 µs here.

use crate::bus::Bus;

const PIT_CHANNEL0: u64 = 0x40;
const PIT_CONTROL: u64 = 0x43;
/// Channel 0, low then high byte, mode 2 (rate generator), binary.
const CHANNEL0_MODE2: u8 = 0x34;

/// Programs channel 0; a divisor of 0 is 65536.
pub fn program(pio: &Bus) {
    pio.write(PIT_CONTROL, &[CHANNEL0_MODE2]);
    pio.write(PIT_CHANNEL0, &[0]);
    pio.write(PIT_CHANNEL0, &[0]);
}
