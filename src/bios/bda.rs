//! The BIOS data area (0x400-0x4FF) and the EBDA's size byte, written by the VMM into guest
//! RAM when the boot is loaded, before the firmware runs: the fields real boot loaders and
//! kernels read. The services keep them current afterwards (cursor, ticks, disk status).

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::block::{Disk, Media};
use crate::devices::serial::COM1_PORT;
use crate::memory::{MemoryLayout, EBDA_START, KIB, LOW_RAM_END};

pub const BDA: u64 = 0x400;

/// Field addresses (linear).
pub const COM_PORTS: u64 = BDA;
pub const EBDA_SEGMENT: u64 = BDA + 0x0E;
pub const EQUIPMENT: u64 = BDA + 0x10;
pub const BASE_MEMORY: u64 = BDA + 0x13;
pub const SHIFT_FLAGS: u64 = BDA + 0x17;
pub const KBD_HEAD: u64 = BDA + 0x1A;
pub const KBD_TAIL: u64 = BDA + 0x1C;
pub const FLOPPY_STATUS: u64 = BDA + 0x41;
pub const VIDEO_MODE: u64 = BDA + 0x49;
pub const COLUMNS: u64 = BDA + 0x4A;
pub const PAGE_SIZE: u64 = BDA + 0x4C;
pub const CURSOR_POS: u64 = BDA + 0x50;
pub const CURSOR_SHAPE: u64 = BDA + 0x60;
pub const ACTIVE_PAGE: u64 = BDA + 0x62;
pub const CRTC_PORT: u64 = BDA + 0x63;
pub const TICKS: u64 = BDA + 0x6C;
pub const MIDNIGHT: u64 = BDA + 0x70;
pub const DISK_STATUS: u64 = BDA + 0x74;
pub const FIXED_DISKS: u64 = BDA + 0x75;
pub const KBD_START: u64 = BDA + 0x80;
pub const KBD_END: u64 = BDA + 0x82;
pub const ROWS_MINUS_1: u64 = BDA + 0x84;
pub const CHAR_HEIGHT: u64 = BDA + 0x85;

/// 80x25 colour text.
pub const TEXT_MODE: u8 = 0x03;
pub const TEXT_COLUMNS: u16 = 80;
pub const TEXT_ROWS: u8 = 25;
pub const CURSOR_LINES: u16 = 0x0607;

/// The keyboard buffer, as offsets from the BDA segment 0x40.
const KBD_BUFFER: u16 = 0x1E;
const KBD_BUFFER_END: u16 = 0x3E;

/// Ticks in a day: 0x1800B0 (18.2 a second, as the PIT counts them).
pub const TICKS_PER_DAY: u32 = 0x18_00B0;

/// The tick count for a time of day given in seconds and nanoseconds since midnight.
pub fn ticks_at(secs_of_day: u64, nanos: u32) -> u32 {
    let ns = u128::from(secs_of_day % 86_400) * 1_000_000_000 + u128::from(nanos);
    (ns * u128::from(TICKS_PER_DAY) / (86_400 * 1_000_000_000u128)) as u32
}

/// The equipment word: one serial port, 80x25 colour, a math coprocessor, and the floppy
/// drive when the disk is a diskette.
pub fn equipment_word(disk: Option<&Disk>) -> u16 {
    let floppy = matches!(disk.map(Disk::media), Some(Media::Floppy { .. }));
    1 << 9 | 0b10 << 4 | 1 << 1 | u16::from(floppy)
}

/// Writes the BDA and the EBDA's size byte. `ticks`: the timer count since midnight.
pub fn write(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    disk: Option<&Disk>,
    ticks: u32,
) -> Result<(), GuestMemoryError> {
    mem.write_slice(&[0u8; 256], GuestAddress(BDA))?;
    let w16 = |at: u64, v: u16| mem.write_obj(v, GuestAddress(at));
    let w8 = |at: u64, v: u8| mem.write_obj(v, GuestAddress(at));
    w16(COM_PORTS, COM1_PORT as u16)?;
    w16(EBDA_SEGMENT, (EBDA_START >> 4) as u16)?;
    w16(EQUIPMENT, equipment_word(disk))?;
    w16(BASE_MEMORY, layout.base_memory_kib())?;
    w16(KBD_HEAD, KBD_BUFFER)?;
    w16(KBD_TAIL, KBD_BUFFER)?;
    w16(KBD_START, KBD_BUFFER)?;
    w16(KBD_END, KBD_BUFFER_END)?;
    w8(VIDEO_MODE, TEXT_MODE)?;
    w16(COLUMNS, TEXT_COLUMNS)?;
    w16(PAGE_SIZE, 0x1000)?;
    w16(CURSOR_SHAPE, CURSOR_LINES)?;
    w16(CRTC_PORT, 0x3D4)?;
    w8(ROWS_MINUS_1, TEXT_ROWS - 1)?;
    w16(CHAR_HEIGHT, 16)?;
    mem.write_obj(ticks % TICKS_PER_DAY, GuestAddress(TICKS))?;
    let hard = matches!(disk.map(Disk::media), Some(Media::HardDisk));
    w8(FIXED_DISKS, u8::from(hard))?;
    // The EBDA's first byte: its size in KiB.
    w8(EBDA_START, ((LOW_RAM_END - EBDA_START) / KIB) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::tests::image;
    use crate::memory::MIB;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), LOW_RAM_END as usize)]).unwrap()
    }

    #[test]
    fn fields_a_loader_reads() {
        let m = mem();
        let layout = MemoryLayout::new(256 * MIB).unwrap();
        m.write_obj(0xFFu8, GuestAddress(0x4FF)).unwrap();
        write(&m, &layout, None, 1000).unwrap();
        let r16 = |a: u64| m.read_obj::<u16>(GuestAddress(a)).unwrap();
        let r8 = |a: u64| m.read_obj::<u8>(GuestAddress(a)).unwrap();
        assert_eq!(r16(0x400), 0x3F8);
        assert_eq!(r16(0x40E), 0x9FC0);
        assert_eq!(r16(0x410), 0x0222);
        assert_eq!(r16(0x413), 639);
        assert_eq!(
            (r16(0x41A), r16(0x41C), r16(0x480), r16(0x482)),
            (0x1E, 0x1E, 0x1E, 0x3E)
        );
        assert_eq!((r8(0x449), r16(0x44A), r8(0x484)), (3, 80, 24));
        assert_eq!((r16(0x44C), r16(0x463)), (0x1000, 0x3D4));
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x46C)).unwrap(), 1000);
        assert_eq!((r8(0x470), r8(0x475), r8(0x4FF)), (0, 0, 0));
        assert_eq!(r8(0x9FC00), 1);
    }

    #[test]
    fn disks_in_the_equipment_word_and_the_fixed_disk_count() {
        let m = mem();
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let p = image("bda-floppy", 2880);
        let floppy = Disk::open(&p, false).unwrap();
        write(&m, &layout, Some(&floppy), 0).unwrap();
        assert_eq!(m.read_obj::<u16>(GuestAddress(0x410)).unwrap(), 0x0223);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x475)).unwrap(), 0);
        let p2 = image("bda-hd", 100);
        let hd = Disk::open(&p2, false).unwrap();
        write(&m, &layout, Some(&hd), 0).unwrap();
        assert_eq!(m.read_obj::<u16>(GuestAddress(0x410)).unwrap(), 0x0222);
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x475)).unwrap(), 1);
        for p in [p, p2] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn ticks_count_18_2_a_second_and_wrap_at_midnight() {
        assert_eq!(ticks_at(0, 0), 0);
        assert_eq!(ticks_at(3600, 0), 65543);
        assert_eq!(ticks_at(86_399, 999_999_999), TICKS_PER_DAY - 1);
        assert_eq!(ticks_at(86_400, 0), 0);
    }
}
