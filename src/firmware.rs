//! The firmware ROM: the embedded blob (built from `firmware/` by build.rs) or a user's image,
//! and the boot descriptor the VMM hands it through fw_cfg (ABI in `firmware/README.md`).

use std::path::Path;

use crate::files::{read_limited, FileError};
use crate::memory::{BIOS_WINDOW_SIZE, KIB, MAX_FIRMWARE_SIZE};

/// The embedded firmware: one 64 KiB real-mode segment, reset vector at its end.
pub static EMBEDDED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/firmware.bin"));

/// The fw_cfg file that carries the boot descriptor.
pub const BOOT_DESCRIPTOR_FILE: &str = "opt/minipc/boot";
const BOOT_MAGIC: &[u8; 4] = b"MPCB";
const BOOT_DESCRIPTOR_VERSION: u16 = 1;

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

/// The bytes of the read-only ROM, mapped so that they end at 4 GiB (and their last
/// 128 KiB end at 1 MiB).
pub struct Rom {
    pub bytes: Vec<u8>,
}

impl Rom {
    /// The embedded firmware in a 128 KiB ROM covering 0xE0000-0xFFFFF: the blob fills the
    /// top 64 KiB, the VMM may place tables in the bottom 64 KiB.
    pub fn embedded() -> Rom {
        let mut bytes = vec![0u8; BIOS_WINDOW_SIZE as usize];
        let at = bytes.len() - EMBEDDED.len();
        bytes[at..].copy_from_slice(EMBEDDED);
        Rom { bytes }
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
        Ok(Rom { bytes })
    }

    pub fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// What the firmware starts after POST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum BootKind {
    /// The built-in demo: banner, E820 map, vCPU count, halt.
    Demo = 0,
}

/// The boot descriptor (`opt/minipc/boot`), little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootDescriptor {
    pub kind: BootKind,
    /// Conventional memory in KiB, for the BDA.
    pub base_memory_kib: u16,
    /// Segment of the EBDA, for the BDA.
    pub ebda_segment: u16,
    pub cpus: u16,
}

impl BootDescriptor {
    pub fn to_bytes(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(BOOT_MAGIC);
        v.extend_from_slice(&BOOT_DESCRIPTOR_VERSION.to_le_bytes());
        v.extend_from_slice(&(self.kind as u16).to_le_bytes());
        v.extend_from_slice(&self.base_memory_kib.to_le_bytes());
        v.extend_from_slice(&self.ebda_segment.to_le_bytes());
        v.extend_from_slice(&self.cpus.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
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
        let b = BootDescriptor {
            kind: BootKind::Demo,
            base_memory_kib: 639,
            ebda_segment: 0x9FC0,
            cpus: 4,
        }
        .to_bytes();
        assert_eq!(&b[0..4], b"MPCB");
        assert_eq!(u16::from_le_bytes([b[4], b[5]]), 1);
        assert_eq!(u16::from_le_bytes([b[6], b[7]]), 0);
        assert_eq!(u16::from_le_bytes([b[8], b[9]]), 639);
        assert_eq!(u16::from_le_bytes([b[10], b[11]]), 0x9FC0);
        assert_eq!(u16::from_le_bytes([b[12], b[13]]), 4);
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
