//! A block device backed by a raw disk image (`--disk PATH[,rw]`), in 512-byte sectors.
//!
//! By default the guest may write, but its writes stay in memory for the run: a
//! copy-on-write overlay keeps each written sector, and reads see the overlay first (as
//! QEMU's `-snapshot`). With `,rw` writes go through to the file, which `flush` syncs; the
//! VMM flushes on every exit path.
//!
//! The image is checked when it is opened, before any KVM call: a regular file or a block
//! device, readable, a whole number of sectors, at least one.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub const SECTOR_SIZE: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("{path}: cannot open disk image: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("{path}: disk image is not a regular file or a block device")]
    NotAFile { path: String },
    #[error("{path}: disk image is {size} bytes; it must be at least one 512-byte sector")]
    TooSmall { path: String, size: u64 },
    #[error("{path}: disk image is {size} bytes; it must be a multiple of 512 bytes")]
    Unaligned { path: String, size: u64 },
    #[error("{path}: cannot read the disk image's size: {err}")]
    Size { path: String, err: std::io::Error },
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("sectors {lba}+{count} are beyond the end of the disk")]
    OutOfRange { lba: u64, count: u64 },
    #[error("the buffer is not a whole number of sectors")]
    BadBuffer,
    #[error("{0}")]
    Host(#[from] std::io::Error),
}

/// Cylinders, heads and sectors per track, as INT 13h reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub cylinders: u32,
    pub heads: u32,
    pub sectors: u32,
}

/// What the image looks like to a PC BIOS: a diskette of a standard size, or a hard disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// A diskette; `drive_type` is the CMOS/INT 13h AH=08h type (1: 360K, 2: 1.2M, 3: 720K,
    /// 4: 1.44M, 6: 2.88M).
    Floppy {
        drive_type: u8,
    },
    HardDisk,
}

/// The standard diskette sizes: (KiB, cylinders, heads, sectors per track, drive type).
const FLOPPIES: [(u64, u32, u32, u32, u8); 8] = [
    (160, 40, 1, 8, 1),
    (180, 40, 1, 9, 1),
    (320, 40, 2, 8, 1),
    (360, 40, 2, 9, 1),
    (720, 80, 2, 9, 3),
    (1200, 80, 2, 15, 2),
    (1440, 80, 2, 18, 4),
    (2880, 80, 2, 36, 6),
];

/// Hard-disk geometry: 16 heads, 63 sectors per track.
const HD_HEADS: u32 = 16;
const HD_SECTORS: u32 = 63;
/// The most cylinders CHS can address.
pub const CHS_MAX_CYLINDERS: u32 = 1024;

/// The media and geometry of an image of `sectors` sectors. A hard disk's cylinders count
/// the whole cylinders of the image, at least one (`Disk::chs_cylinders` caps them for CHS).
pub fn classify(sectors: u64) -> (Media, Geometry) {
    let kib = sectors * SECTOR_SIZE / 1024;
    if (sectors * SECTOR_SIZE).is_multiple_of(1024) {
        if let Some(&(_, c, h, s, t)) = FLOPPIES.iter().find(|f| f.0 == kib) {
            return (
                Media::Floppy { drive_type: t },
                Geometry {
                    cylinders: c,
                    heads: h,
                    sectors: s,
                },
            );
        }
    }
    let per_cylinder = u64::from(HD_HEADS * HD_SECTORS);
    let cylinders = (sectors / per_cylinder).clamp(1, u64::from(u32::MAX)) as u32;
    (
        Media::HardDisk,
        Geometry {
            cylinders,
            heads: HD_HEADS,
            sectors: HD_SECTORS,
        },
    )
}

/// A raw disk image.
pub struct Disk {
    path: PathBuf,
    file: File,
    sectors: u64,
    writable: bool,
    media: Media,
    geometry: Geometry,
    /// Sectors the guest wrote, when writes stay in memory.
    overlay: Mutex<HashMap<u64, Box<[u8]>>>,
    /// Written through since the last flush.
    dirty: AtomicBool,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("path", &self.path)
            .field("sectors", &self.sectors)
            .field("writable", &self.writable)
            .field("media", &self.media)
            .finish()
    }
}

impl Disk {
    /// Opens and checks an image; `writable`: guest writes go to the file.
    pub fn open(path: &Path, writable: bool) -> Result<Disk, BlockError> {
        let p = path.display().to_string();
        let mut file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EISDIR) => BlockError::NotAFile { path: p.clone() },
                _ => BlockError::Open {
                    path: p.clone(),
                    err,
                },
            })?;
        let kind = file
            .metadata()
            .map_err(|err| BlockError::Open {
                path: p.clone(),
                err,
            })?
            .file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(BlockError::NotAFile { path: p });
        }
        // The real size: a block device's metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|err| BlockError::Size {
                path: p.clone(),
                err,
            })?;
        if size < SECTOR_SIZE {
            return Err(BlockError::TooSmall { path: p, size });
        }
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(BlockError::Unaligned { path: p, size });
        }
        // A file that cannot be read fails here rather than at the guest's first read.
        let mut first = [0u8; SECTOR_SIZE as usize];
        file.read_exact_at(&mut first, 0)
            .map_err(|err| BlockError::Open {
                path: p.clone(),
                err,
            })?;
        let sectors = size / SECTOR_SIZE;
        let (media, geometry) = classify(sectors);
        Ok(Disk {
            path: path.to_path_buf(),
            file,
            sectors,
            writable,
            media,
            geometry,
            overlay: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn media(&self) -> Media {
        self.media
    }

    /// The geometry: a floppy's own, or a hard disk's with every whole cylinder counted.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// The geometry CHS calls see: cylinders capped at 1024.
    pub fn chs_geometry(&self) -> Geometry {
        Geometry {
            cylinders: self.geometry.cylinders.min(CHS_MAX_CYLINDERS),
            ..self.geometry
        }
    }

    fn check(&self, lba: u64, buf_len: usize) -> Result<u64, IoError> {
        if !(buf_len as u64).is_multiple_of(SECTOR_SIZE) {
            return Err(IoError::BadBuffer);
        }
        let count = buf_len as u64 / SECTOR_SIZE;
        match lba.checked_add(count) {
            Some(end) if end <= self.sectors => Ok(count),
            _ => Err(IoError::OutOfRange { lba, count }),
        }
    }

    /// Checks that sectors `lba..lba+count` exist.
    pub fn check_range(&self, lba: u64, count: u64) -> Result<(), IoError> {
        match lba.checked_add(count) {
            Some(end) if end <= self.sectors => Ok(()),
            _ => Err(IoError::OutOfRange { lba, count }),
        }
    }

    /// Reads whole sectors from `lba` into `buf`.
    pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let count = self.check(lba, buf.len())?;
        self.file.read_exact_at(buf, lba * SECTOR_SIZE)?;
        if !self.writable {
            let overlay = crate::bus::lock(&self.overlay);
            if !overlay.is_empty() {
                for i in 0..count {
                    if let Some(s) = overlay.get(&(lba + i)) {
                        let at = (i * SECTOR_SIZE) as usize;
                        buf[at..at + SECTOR_SIZE as usize].copy_from_slice(s);
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes whole sectors at `lba` from `buf`: to the file with `,rw`, else to the overlay.
    pub fn write(&self, lba: u64, buf: &[u8]) -> Result<(), IoError> {
        self.check(lba, buf.len())?;
        if self.writable {
            self.file.write_all_at(buf, lba * SECTOR_SIZE)?;
            self.dirty.store(true, Ordering::SeqCst);
        } else {
            let mut overlay = crate::bus::lock(&self.overlay);
            for (i, s) in buf.chunks_exact(SECTOR_SIZE as usize).enumerate() {
                overlay.insert(lba + i as u64, s.into());
            }
        }
        Ok(())
    }

    /// Makes the guest's writes durable (`fsync`) when they go to the file.
    pub fn flush(&self) -> std::io::Result<()> {
        if self.writable && self.dirty.swap(false, Ordering::SeqCst) {
            self.file.sync_all()?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// A temporary image whose sector i is filled with the byte i (mod 256).
    pub fn image(name: &str, sectors: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!("minipc-disk-{}-{name}", std::process::id()));
        let data: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE) as u8)
            .collect();
        std::fs::write(&p, data).unwrap();
        p
    }

    #[test]
    fn floppy_sizes_and_hard_disks() {
        for (kib, c, h, s, t) in FLOPPIES {
            let (m, g) = classify(kib * 2);
            assert_eq!(m, Media::Floppy { drive_type: t }, "{kib}K");
            assert_eq!(g.cylinders * g.heads * g.sectors, kib as u32 * 2, "{kib}K");
            assert_eq!((g.cylinders, g.heads, g.sectors), (c, h, s));
        }
        let (m, g) = classify(8);
        assert_eq!(m, Media::HardDisk);
        assert_eq!((g.cylinders, g.heads, g.sectors), (1, 16, 63));
        let (_, g) = classify(16 * 63 * 1000 + 5);
        assert_eq!(g.cylinders, 1000);
        // 8 GiB: more cylinders than CHS can address.
        let (_, g) = classify(16 << 21);
        assert_eq!(g.cylinders, 16 * 2097152 / (16 * 63));
        assert!(g.cylinders > CHS_MAX_CYLINDERS);
    }

    #[test]
    fn writes_stay_in_memory_unless_rw() {
        let p = image("cow", 8);
        let before = std::fs::read(&p).unwrap();
        let d = Disk::open(&p, false).unwrap();
        assert_eq!(d.sectors(), 8);
        let mut buf = vec![0u8; 1024];
        d.read(3, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 4));
        d.write(4, &[0xEE; 512]).unwrap();
        d.read(3, &mut buf).unwrap();
        assert!(buf[..512].iter().all(|b| *b == 3) && buf[512..].iter().all(|b| *b == 0xEE));
        d.flush().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert!(matches!(
            d.read(7, &mut buf),
            Err(IoError::OutOfRange { lba: 7, count: 2 })
        ));
        assert!(matches!(
            d.write(u64::MAX, &[0; 512]),
            Err(IoError::OutOfRange { .. })
        ));
        assert!(matches!(d.read(0, &mut [0; 100]), Err(IoError::BadBuffer)));

        let d = Disk::open(&p, true).unwrap();
        d.write(4, &[0xEE; 512]).unwrap();
        d.flush().unwrap();
        let after = std::fs::read(&p).unwrap();
        assert!(after[4 * 512..5 * 512].iter().all(|b| *b == 0xEE));
        assert_eq!(after[..4 * 512], before[..4 * 512]);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn bad_images_are_refused_with_their_name() {
        let dir = std::env::temp_dir();
        let odd = dir.join(format!("minipc-disk-{}-odd", std::process::id()));
        std::fs::write(&odd, [0u8; 513]).unwrap();
        let e = Disk::open(&odd, false).unwrap_err();
        assert!(matches!(e, BlockError::Unaligned { size: 513, .. }), "{e}");
        assert!(e.to_string().starts_with(&odd.display().to_string()));
        let empty = dir.join(format!("minipc-disk-{}-empty", std::process::id()));
        std::fs::write(&empty, []).unwrap();
        assert!(matches!(
            Disk::open(&empty, false),
            Err(BlockError::TooSmall { size: 0, .. })
        ));
        for rw in [false, true] {
            assert!(matches!(
                Disk::open(&dir, rw),
                Err(BlockError::NotAFile { .. })
            ));
        }
        assert!(matches!(
            Disk::open(Path::new("/nonexistent/disk.img"), false),
            Err(BlockError::Open { .. })
        ));
        // Character devices have no size to trust.
        assert!(matches!(
            Disk::open(Path::new("/dev/zero"), false),
            Err(BlockError::NotAFile { .. })
        ));
        for p in [odd, empty] {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::tests::image;
    use super::*;
    use crate::fuzz::{run, Rng};

    #[test]
    fn disk_geometry() {
        // Sizes a file or block device can have: up to 2^63 - 1 bytes.
        let max = i64::MAX as u64 / SECTOR_SIZE;
        run("disk_geometry", 200_000, |rng| {
            let sectors = match rng.below(3) {
                0 => rng.below(8000),
                1 => FLOPPIES[rng.index(FLOPPIES.len())].0 * 2 + rng.below(3) - 1,
                _ => rng.interesting() % (max + 1),
            };
            let (media, g) = classify(sectors);
            match media {
                Media::Floppy { .. } => {
                    assert_eq!(u64::from(g.cylinders * g.heads * g.sectors), sectors);
                }
                Media::HardDisk => {
                    assert_eq!((g.heads, g.sectors), (HD_HEADS, HD_SECTORS));
                    let whole = sectors / u64::from(HD_HEADS * HD_SECTORS);
                    assert_eq!(u64::from(g.cylinders), whole.clamp(1, u64::from(u32::MAX)));
                }
            }
        });
    }

    /// An LBA for a disk of `sectors`: inside, at the end, or anywhere.
    fn lba(rng: &mut Rng, sectors: u64) -> u64 {
        match rng.below(3) {
            0 => rng.below(sectors),
            1 => sectors.wrapping_sub(rng.below(3)),
            _ => rng.interesting(),
        }
    }

    /// Reads and writes at fuzzed LBAs and lengths on an image opened copy-on-write or
    /// `,rw`, against a model of its contents: each transfer succeeds exactly when it is
    /// whole sectors inside the disk, reads see every earlier write, and the file changes
    /// only with `,rw`.
    #[test]
    fn disk_transfers() {
        run("disk_transfers", 1_500, |rng| {
            let sectors = *rng.pick(&[1u64, 2, 9, 64]);
            let path = image(&format!("fuzz-{}", rng.next()), sectors);
            let original = std::fs::read(&path).unwrap();
            let writable = rng.one_in(3);
            let d = Disk::open(&path, writable).unwrap();
            let mut model = original.clone();
            for _ in 0..=rng.below(12) {
                let at = lba(rng, sectors);
                let len = match rng.below(4) {
                    0 => SECTOR_SIZE as usize * (1 + rng.index(3)),
                    1 => rng.index(1500),
                    2 => 0,
                    _ => SECTOR_SIZE as usize * rng.index(80),
                };
                let fits = (len as u64).is_multiple_of(SECTOR_SIZE)
                    && at
                        .checked_add(len as u64 / SECTOR_SIZE)
                        .is_some_and(|e| e <= sectors);
                let range = || {
                    let start = (at * SECTOR_SIZE) as usize;
                    start..start + len
                };
                if rng.one_in(2) {
                    let data = rng.bytes(len);
                    let r = d.write(at, &data);
                    assert_eq!(r.is_ok(), fits, "write {len} at {at}: {r:?}");
                    if fits {
                        model[range()].copy_from_slice(&data);
                    }
                } else {
                    let mut buf = vec![0xA5u8; len];
                    let r = d.read(at, &mut buf);
                    assert_eq!(r.is_ok(), fits, "read {len} at {at}: {r:?}");
                    if fits {
                        assert!(buf == model[range()], "read {len} at {at}");
                    }
                }
            }
            d.flush().unwrap();
            let file = std::fs::read(&path).unwrap();
            assert!(file == if writable { model } else { original });
            let _ = std::fs::remove_file(path);
        });
    }
}
