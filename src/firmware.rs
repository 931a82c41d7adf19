//! The firmware ROM: the embedded blob (built from `firmware/` by build.rs) or a user's image,
//! and the boot descriptor the VMM hands it through fw_cfg (ABI in `firmware/README.md`).

use std::borrow::Cow;
use std::path::Path;

use crate::files::{read_limited, FileError};
use crate::memory::{BIOS_WINDOW_SIZE, KIB, MAX_FIRMWARE_SIZE};

/// The embedded firmware: one 64 KiB real-mode segment, reset vector at its end.
pub static EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/firmware.bin"));

/// The fw_cfg file that carries the boot descriptor.
pub const BOOT_DESCRIPTOR_FILE: &str = "opt/minipc/boot";
/// Where the VMM also writes the descriptor for the embedded firmware (`BOOT_DESC` in
/// firmware/layout.inc).
pub const BOOT_DESCRIPTOR_ADDR: u64 = 0x510;
const BOOT_MAGIC: &[u8; 4] = b"MPCB";
const BOOT_DESCRIPTOR_VERSION: u16 = 2;

#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("--firmware {0}")]
    Read(FileError),
    #[error("{path}: firmware image is empty")]
    Empty { path: String },
    #[error("{path}: firmware image is {size} bytes; it must be a multiple of 4 KiB")]
    Unaligned { path: String, size: u64 },
    #[error("{path}: firmware image is larger than {} KiB, the largest", MAX_FIRMWARE_SIZE / KIB)]
    TooLarge { path: String },
}

/// The read-only ROM, mapped so that it ends at 4 GiB (and its last 128 KiB end at 1 MiB):
/// `size` bytes, of which `bytes` are the last; any before them are zero.
pub struct Rom {
    pub bytes: Cow<'static, [u8]>,
    size: u64,
}

impl Rom {
    /// The embedded firmware in a 128 KiB ROM covering 0xE0000-0xFFFFF: the blob fills the
    /// top 64 KiB, the VMM may place tables in the bottom 64 KiB.
    pub fn embedded() -> Rom {
        Rom {
            bytes: Cow::Borrowed(EMBEDDED),
            size: BIOS_WINDOW_SIZE,
        }
    }

    /// A user's raw firmware image (QEMU `-bios` convention). The checks apply to what the
    /// file holds, read whole (as far as one byte past the largest size), not to the size
    /// its metadata claims: /proc and sysfs files, FIFOs and devices are judged alike.
    pub fn from_file(path: &Path) -> Result<Rom, FirmwareError> {
        let bytes = read_limited(path, MAX_FIRMWARE_SIZE).map_err(|e| match e {
            FileError::TooLarge { path, .. } => FirmwareError::TooLarge { path },
            e => FirmwareError::Read(e),
        })?;
        let p = || path.display().to_string();
        let size = bytes.len() as u64;
        if size == 0 {
            return Err(FirmwareError::Empty { path: p() });
        }
        if !size.is_multiple_of(4 * KIB) {
            return Err(FirmwareError::Unaligned { path: p(), size });
        }
        Ok(Rom {
            bytes: Cow::Owned(bytes),
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// An image from memory, as `from_file` would take it.
    #[cfg(test)]
    pub fn from_bytes(bytes: Vec<u8>) -> Rom {
        let size = bytes.len() as u64;
        Rom {
            bytes: Cow::Owned(bytes),
            size,
        }
    }
}

/// What the firmware starts after POST (its jump table in `firmware/post.s`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u16)]
pub enum BootKind {
    /// The built-in demo: banner, E820 map, vCPU count, halt.
    #[default]
    Demo = 0,
    /// Real mode: segments and registers from the descriptor, far jump to CS:IP.
    Real = 1,
    /// 32-bit protected mode, paging off, the VMM's GDT.
    Protected = 2,
    /// 64-bit long mode with the VMM's identity page tables and GDT.
    Long = 3,
    /// The disk's boot sector, through INT 19h.
    Disk = 4,
}

/// The segment registers at the hand-off: selectors in protected and long mode, segment
/// values in real mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segs {
    pub cs: u16,
    pub ds: u16,
    pub es: u16,
    pub ss: u16,
    pub fs: u16,
    pub gs: u16,
}

impl Segs {
    /// Every data segment the same.
    pub fn flat(cs: u16, data: u16) -> Segs {
        Segs {
            cs,
            ds: data,
            es: data,
            ss: data,
            fs: data,
            gs: data,
        }
    }
}

/// The general registers at the hand-off (zero-extended in long mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
    pub esi: u32,
    pub edi: u32,
    pub ebp: u32,
    pub esp: u32,
}

/// Where and how the firmware hands off to a loaded guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// The entry: a linear address (protected, long), or the IP (real mode).
    pub entry: u32,
    pub segs: Segs,
    pub regs: Regs,
    /// Interrupts enabled at the jump (real mode only).
    pub interrupts: bool,
    /// The GDT the firmware loads before the jump: (linear base, limit).
    pub gdt: (u64, u16),
    /// The top page table (long mode).
    pub cr3: u32,
}

/// The boot descriptor (`opt/minipc/boot`), little-endian; layout in firmware/README.md
/// and firmware/layout.inc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootDescriptor {
    pub kind: BootKind,
    /// Conventional memory in KiB, for the BDA.
    pub base_memory_kib: u16,
    /// Segment of the EBDA, for the BDA.
    pub ebda_segment: u16,
    pub cpus: u16,
    pub handoff: Handoff,
}

/// The descriptor's size in bytes (the firmware reads at most 0xF0).
pub const BOOT_DESCRIPTOR_SIZE: usize = 80;

impl BootDescriptor {
    pub fn to_bytes(self) -> Vec<u8> {
        let h = &self.handoff;
        let mut v = Vec::with_capacity(BOOT_DESCRIPTOR_SIZE);
        v.extend_from_slice(BOOT_MAGIC);
        for w in [
            BOOT_DESCRIPTOR_VERSION,
            self.kind as u16,
            self.base_memory_kib,
            self.ebda_segment,
            self.cpus,
            h.interrupts as u16,
        ] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(&h.entry.to_le_bytes());
        for w in [
            h.segs.cs, h.segs.ds, h.segs.es, h.segs.ss, h.segs.fs, h.segs.gs,
        ] {
            v.extend_from_slice(&w.to_le_bytes());
        }
        v.extend_from_slice(&h.cr3.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&h.gdt.1.to_le_bytes());
        v.extend_from_slice(&h.gdt.0.to_le_bytes());
        let r = &h.regs;
        for d in [r.eax, r.ebx, r.ecx, r.edx, r.esi, r.edi, r.ebp, r.esp] {
            v.extend_from_slice(&d.to_le_bytes());
        }
        debug_assert_eq!(v.len(), BOOT_DESCRIPTOR_SIZE);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_blob_has_a_far_jump_at_the_reset_vector() {
        assert_eq!(EMBEDDED.len(), 64 * 1024);
        let rv = &EMBEDDED[0xFFF0..];
        assert_eq!(rv[0], 0xEA, "reset vector is not a far jump");
        assert_eq!(u16::from_le_bytes([rv[3], rv[4]]), 0xF000);
        let rom = Rom::embedded();
        assert_eq!(rom.size(), 128 * 1024);
        assert_eq!(&rom.bytes[rom.bytes.len() - 16..], rv);
    }

    #[test]
    fn descriptor_layout_matches_the_firmware_abi() {
        // Offsets as in firmware/layout.inc.
        let b = BootDescriptor {
            kind: BootKind::Long,
            base_memory_kib: 639,
            ebda_segment: 0x9FC0,
            cpus: 4,
            handoff: Handoff {
                entry: 0x0100_0200,
                segs: Segs::flat(0x10, 0x18),
                regs: Regs {
                    eax: 1,
                    ebx: 2,
                    ecx: 3,
                    edx: 4,
                    esi: 0x7000,
                    edi: 6,
                    ebp: 7,
                    esp: 0x7C00,
                },
                interrupts: true,
                gdt: (0x8000, 0x1F),
                cr3: 0x9000,
            },
        }
        .to_bytes();
        let w = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let d = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        assert_eq!(b.len(), BOOT_DESCRIPTOR_SIZE);
        assert_eq!(&b[0..4], b"MPCB");
        assert_eq!(
            [w(4), w(6), w(8), w(10), w(12), w(14)],
            [2, 3, 639, 0x9FC0, 4, 1]
        );
        assert_eq!(d(16), 0x0100_0200);
        assert_eq!(
            [w(20), w(22), w(24), w(26), w(28), w(30)],
            [0x10, 0x18, 0x18, 0x18, 0x18, 0x18]
        );
        assert_eq!(d(32), 0x9000);
        assert_eq!(w(38), 0x1F);
        assert_eq!(d(40), 0x8000);
        assert_eq!(d(44), 0);
        assert_eq!(
            [d(48), d(52), d(56), d(60), d(64), d(68), d(72), d(76)],
            [1, 2, 3, 4, 0x7000, 6, 7, 0x7C00]
        );
    }

    fn write_tmp(name: &str, len: usize) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("minipc-fw-{}-{name}", std::process::id()));
        std::fs::write(&p, vec![0x90u8; len]).unwrap();
        p
    }

    #[test]
    fn bad_images_are_refused_with_their_name() {
        let p = write_tmp("odd", 4097);
        let e = Rom::from_file(&p).err().unwrap().to_string();
        assert!(
            e.contains("multiple of 4 KiB") && e.contains("minipc-fw-"),
            "{e}"
        );
        let p2 = write_tmp("big", 512 * 1024);
        assert!(matches!(
            Rom::from_file(&p2),
            Err(FirmwareError::TooLarge { .. })
        ));
        let p3 = write_tmp("empty", 0);
        assert!(matches!(
            Rom::from_file(&p3),
            Err(FirmwareError::Empty { .. })
        ));
        let e = Rom::from_file(Path::new("/nonexistent/rom.bin"))
            .err()
            .unwrap();
        assert!(matches!(e, FirmwareError::Read(_)), "{e}");
        assert!(e
            .to_string()
            .starts_with("--firmware /nonexistent/rom.bin: cannot open"));
        let p4 = write_tmp("ok", 64 * 1024);
        assert_eq!(Rom::from_file(&p4).unwrap().size(), 64 * 1024);
        let p5 = write_tmp("largest", 256 * 1024);
        assert_eq!(Rom::from_file(&p5).unwrap().size(), 256 * 1024);
        let p6 = write_tmp("one-more", 256 * 1024 + 1);
        assert!(matches!(
            Rom::from_file(&p6),
            Err(FirmwareError::TooLarge { .. })
        ));
        for p in [p, p2, p3, p4, p5, p6] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// The checks look at what was read, not at the size the metadata gives.
    #[test]
    fn files_whose_metadata_lies_are_judged_by_their_content() {
        // /proc: metadata 0 bytes, a kilobyte or so of text.
        let e = Rom::from_file(Path::new("/proc/self/status"))
            .err()
            .unwrap();
        assert!(matches!(e, FirmwareError::Unaligned { .. }), "{e}");
        // sysfs: metadata 4096 bytes, a few bytes of text.
        let e = Rom::from_file(Path::new("/sys/devices/system/cpu/online"))
            .err()
            .unwrap();
        assert!(
            matches!(e, FirmwareError::Unaligned { size, .. } if size < 4096),
            "{e}"
        );
        // A device that never ends.
        let e = Rom::from_file(Path::new("/dev/zero")).err().unwrap();
        assert!(matches!(e, FirmwareError::TooLarge { .. }), "{e}");
        // A device that is empty.
        let e = Rom::from_file(Path::new("/dev/null")).err().unwrap();
        assert!(matches!(e, FirmwareError::Empty { .. }), "{e}");
    }
}
