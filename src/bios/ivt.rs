//! The interrupt vector table of the embedded firmware, written by the VMM.
//!
//! In real mode every instruction the firmware runs is emulated here (about 0.3 µs each),
//! and filling 256 vectors was most of its POST. So the VMM writes the table before the
//! firmware starts (and again on a reboot), from the firmware's own symbols: every vector to
//! `default_isr` (an IRET), the 8259s' vectors (08h-0Fh, 70h-77h) to the handlers that
//! acknowledge them, then each entry of the firmware's `service_vectors` list (services.s:
//! a vector byte and a handler offset, ended by a zero byte). Every pointer is F000:offset.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::symbols;

/// The firmware's code segment.
const SEGMENT: u32 = 0xF000;
/// Where segment F000 starts in the firmware image's last 64 KiB.
const SEGMENT_SIZE: usize = 0x1_0000;
/// Vectors 08h-0Fh (IRQ 0-7) and 70h-77h (IRQ 8-15).
const MASTER_VECTORS: std::ops::Range<usize> = 0x08..0x10;
const SLAVE_VECTORS: std::ops::Range<usize> = 0x70..0x78;
/// At most this many entries in `service_vectors` (a guard against a list without its end).
const MAX_SERVICES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum IvtError {
    #[error("the firmware image ({0} bytes) does not hold its service vector list")]
    NoList(usize),
    #[error("cannot write the interrupt vector table: {0}")]
    Memory(#[from] GuestMemoryError),
}

fn far(offset: u16) -> u32 {
    SEGMENT << 16 | u32::from(offset)
}

/// The 256 far pointers, from `firmware`: the embedded image whose symbols these are.
pub fn vectors(firmware: &[u8]) -> Result<[u32; 256], IvtError> {
    let mut ivt = [far(symbols::DEFAULT_ISR); 256];
    ivt[MASTER_VECTORS].fill(far(symbols::IRQ_MASTER_ISR));
    ivt[SLAVE_VECTORS].fill(far(symbols::IRQ_SLAVE_ISR));
    let base = firmware
        .len()
        .checked_sub(SEGMENT_SIZE)
        .ok_or(IvtError::NoList(firmware.len()))?;
    let list = firmware
        .get(base + usize::from(symbols::SERVICE_VECTORS)..)
        .ok_or(IvtError::NoList(firmware.len()))?;
    for entry in list.chunks(3).take(MAX_SERVICES) {
        match *entry {
            [0, ..] => return Ok(ivt),
            [vector, lo, hi] => ivt[usize::from(vector)] = far(u16::from_le_bytes([lo, hi])),
            _ => break,
        }
    }
    Err(IvtError::NoList(firmware.len()))
}

/// Writes the table at 0:0.
pub fn write(mem: &GuestMemoryMmap, firmware: &[u8]) -> Result<(), IvtError> {
    let ivt = vectors(firmware)?;
    let bytes: Vec<u8> = ivt.iter().flat_map(|p| p.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firmware::EMBEDDED;

    #[test]
    fn the_embedded_firmware_fills_every_vector() {
        let ivt = vectors(EMBEDDED).unwrap();
        let default = far(symbols::DEFAULT_ISR);
        // IRQ 0 is the tick handler; the other IRQs acknowledge.
        assert_ne!(ivt[0x08], default);
        assert_ne!(ivt[0x08], far(symbols::IRQ_MASTER_ISR));
        assert!(ivt[0x09..0x10]
            .iter()
            .all(|&v| v == far(symbols::IRQ_MASTER_ISR)));
        assert!(ivt[0x70..0x78]
            .iter()
            .all(|&v| v == far(symbols::IRQ_SLAVE_ISR)));
        // The BIOS services.
        for v in [0x10, 0x11, 0x12, 0x13, 0x15, 0x16, 0x18, 0x19, 0x1A] {
            assert_ne!(ivt[v], default, "vector {v:#x}");
            assert_eq!(ivt[v] >> 16, SEGMENT, "vector {v:#x}");
        }
        assert_eq!(ivt[0x00], default);
        assert_eq!(ivt[0xFF], default);
    }

    #[test]
    fn a_truncated_image_is_an_error_not_a_panic() {
        for len in [0, 16, SEGMENT_SIZE - 1, SEGMENT_SIZE] {
            let image = vec![0xFFu8; len];
            assert!(vectors(&image).is_err(), "{len} bytes");
        }
        // A list that never ends.
        assert!(vectors(&vec![0x20u8; EMBEDDED.len()]).is_err());
    }
}
