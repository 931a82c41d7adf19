//! QEMU isa-debug-exit compatible port: a write of `v` (any width) ends the VM with exit
//! code `(v << 1) | 1`. Reads return all-ones, as on QEMU.

use crate::bus::BusDevice;
use crate::exit::ExitReason;

pub const DEBUG_EXIT_PORT: u64 = 0xF4;
pub const DEBUG_EXIT_LEN: u64 = 4;

pub struct DebugExit;

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<ExitReason> {
        let mut v = [0u8; 4];
        let n = data.len().min(4);
        v[..n].copy_from_slice(&data[..n]);
        Some(ExitReason::DebugExit(u32::from_le_bytes(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_width_write_exits_with_its_value() {
        let mut d = DebugExit;
        assert_eq!(d.write(0, &[0x21]), Some(ExitReason::DebugExit(0x21)));
        assert_eq!(
            d.write(0, &[0x34, 0x12]),
            Some(ExitReason::DebugExit(0x1234))
        );
        assert_eq!(
            d.write(0, &[1, 0, 0, 0x80]),
            Some(ExitReason::DebugExit(0x8000_0001))
        );
        let mut r = [0u8; 2];
        d.read(0, &mut r);
        assert_eq!(r, [0xFF, 0xFF]);
    }
}
