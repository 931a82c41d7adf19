//! QEMU-compatible fw_cfg: selector at 0x510 (16-bit), data at 0x511 (8-bit), DMA at 0x514.
//!
//! Items are byte strings selected by a 16-bit key; named files get keys from 0x20 up and are
//! listed in the file directory (key 0x19). The DMA interface takes the guest-physical address
//! of a descriptor `{ be32 control, be32 length, be64 address }`, written big-endian as two
//! 32-bit halves (high at 0x514, low at 0x518; the low write starts the transfer). Unknown keys
//! read as zeros. A descriptor or buffer outside guest RAM sets the error bit; it never reaches
//! host memory.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::{lock, BusDevice};
use crate::exit::ExitReason;
use crate::log;
use crate::shadow::{Shadow, SHADOW_LEN, SHADOW_START};

pub const FW_CFG_PORT: u64 = 0x510;
/// Selector (2 bytes), data (1), padding, DMA address (8 bytes at 0x514).
pub const FW_CFG_LEN: u64 = 12;

const SELECTOR_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;
const DMA_HIGH_OFFSET: u64 = 4;
const DMA_LOW_OFFSET: u64 = 8;

/// The well-known keys.
pub mod key {
    pub const SIGNATURE: u16 = 0x00;
    pub const ID: u16 = 0x01;
    pub const RAM_SIZE: u16 = 0x03;
    pub const NOGRAPHIC: u16 = 0x04;
    pub const NB_CPUS: u16 = 0x05;
    pub const MAX_CPUS: u16 = 0x0F;
    pub const FILE_DIR: u16 = 0x19;
    pub const FILE_FIRST: u16 = 0x20;
    /// The Linux boot items a firmware loads a kernel from (QEMU's `-kernel` with `-bios`).
    pub const KERNEL_ADDR: u16 = 0x07;
    pub const KERNEL_SIZE: u16 = 0x08;
    pub const INITRD_ADDR: u16 = 0x0A;
    pub const INITRD_SIZE: u16 = 0x0B;
    pub const KERNEL_DATA: u16 = 0x11;
    pub const INITRD_DATA: u16 = 0x12;
    pub const CMDLINE_ADDR: u16 = 0x13;
    pub const CMDLINE_SIZE: u16 = 0x14;
    pub const CMDLINE_DATA: u16 = 0x15;
    pub const SETUP_ADDR: u16 = 0x16;
    pub const SETUP_SIZE: u16 = 0x17;
    pub const SETUP_DATA: u16 = 0x18;
}

/// ID bits: the traditional interface, and DMA.
const ID_TRADITIONAL: u32 = 1;
const ID_DMA: u32 = 2;
/// What a read of the DMA port returns: "QEMU CFG", big-endian.
const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// DMA control bits.
const DMA_CTL_ERROR: u32 = 1;
const DMA_CTL_READ: u32 = 2;
const DMA_CTL_SKIP: u32 = 4;
const DMA_CTL_SELECT: u32 = 8;
const DMA_CTL_WRITE: u32 = 0x10;

/// The E820 map's file name, as QEMU names it.
pub const E820_FILE: &str = "etc/e820";

/// Length of a file name in the directory, NUL included.
const FILE_NAME_LEN: usize = 56;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FwCfgError {
    #[error("fw_cfg file name {0:?} is empty or longer than 55 bytes")]
    BadName(String),
    #[error("fw_cfg file {0:?} is added twice")]
    Duplicate(String),
    #[error("fw_cfg has no key left for file {0:?}")]
    Full(String),
}

/// An item's bytes: its own, a range of bytes shared with their owner, or a range of a file
/// read only when the guest reads it (a kernel or initrd for a user's firmware: nothing is
/// read or copied for a guest that never asks).
enum Item {
    Owned(Vec<u8>),
    Shared(Arc<Vec<u8>>, Range<usize>),
    File {
        file: Arc<std::fs::File>,
        offset: u64,
        len: usize,
    },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Owned(v) => v.len(),
            Item::Shared(v, r) => v.get(r.clone()).map_or(0, |s| s.len()),
            Item::File { len, .. } => *len,
        }
    }

    /// Copies the item's bytes from `at` into `buf`; returns how many there were (0 past the
    /// end). Bytes a file no longer has (it shrank) read as zeros.
    fn read_at(&self, at: usize, buf: &mut [u8]) -> usize {
        let n = self.len().saturating_sub(at).min(buf.len());
        let buf = &mut buf[..n];
        match self {
            Item::Owned(v) => buf.copy_from_slice(&v[at..at + n]),
            Item::Shared(v, r) => buf.copy_from_slice(&v[r.start + at..r.start + at + n]),
            Item::File { file, offset, .. } => {
                use std::os::unix::fs::FileExt;
                let mut done = 0;
                while done < n {
                    match file.read_at(&mut buf[done..], offset + (at + done) as u64) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => done += k,
                    }
                }
                buf[done..].fill(0);
            }
        }
        n
    }
}

pub struct FwCfg {
    items: BTreeMap<u16, Item>,
    files: BTreeMap<String, u16>,
    selected: u16,
    offset: usize,
    dma_high: u32,
    mem: GuestMemoryMmap,
    /// The BIOS shadow areas (0xC0000-0xFFFFF), outside `mem`: a firmware running from
    /// shadow RAM DMAs there.
    shadow: Option<Arc<Mutex<Shadow>>>,
}

impl FwCfg {
    /// A fw_cfg with the signature and ID items; the caller adds the machine's items.
    pub fn new(mem: GuestMemoryMmap) -> Self {
        let mut f = FwCfg {
            items: BTreeMap::new(),
            files: BTreeMap::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
            mem,
            shadow: None,
        };
        f.add_item(key::SIGNATURE, b"QEMU".to_vec());
        f.add_item(key::ID, (ID_TRADITIONAL | ID_DMA).to_le_bytes().to_vec());
        f.rebuild_directory();
        f
    }

    /// DMA reaches the shadow areas too, where the PAM registers make them RAM.
    pub fn set_shadow(&mut self, shadow: Arc<Mutex<Shadow>>) {
        self.shadow = Some(shadow);
    }

    /// Writes guest memory for a DMA transfer: RAM, or shadow RAM below 1 MiB.
    fn guest_write(&self, addr: u64, data: &[u8]) -> Result<(), String> {
        let in_shadow = (SHADOW_START..SHADOW_START + SHADOW_LEN).contains(&addr);
        match (&self.shadow, in_shadow) {
            (Some(s), true) => lock(s)
                .dma_write(addr, data)
                .then_some(())
                .ok_or_else(|| format!("{addr:#x}+{:#x} is not writable shadow RAM", data.len())),
            _ => self
                .mem
                .write_slice(data, GuestAddress(addr))
                .map_err(|e| format!("{addr:#x}+{:#x}: {e}", data.len())),
        }
    }

    /// Reads guest memory for a DMA descriptor: RAM, or shadow RAM below 1 MiB.
    fn guest_read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let in_shadow = (SHADOW_START..SHADOW_START + SHADOW_LEN).contains(&addr);
        match (&self.shadow, in_shadow) {
            (Some(s), true) => lock(s).dma_read(addr, buf),
            _ => self.mem.read_slice(buf, GuestAddress(addr)).is_ok(),
        }
    }

    pub fn add_item(&mut self, key: u16, data: Vec<u8>) {
        self.items.insert(key, Item::Owned(data));
    }

    /// An item whose bytes are `len` bytes of `file` from `offset`, read when the guest reads
    /// them.
    pub fn add_file_item(&mut self, key: u16, file: Arc<std::fs::File>, offset: u64, len: usize) {
        self.items.insert(key, Item::File { file, offset, len });
    }

    /// An item whose bytes are `range` of `data`, shared, not copied.
    pub fn add_shared_item(&mut self, key: u16, data: Arc<Vec<u8>>, range: Range<usize>) {
        self.items.insert(key, Item::Shared(data, range));
    }

    pub fn add_file(&mut self, name: &str, data: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        if self.files.contains_key(name) {
            return Err(FwCfgError::Duplicate(name.to_string()));
        }
        let k = key::FILE_FIRST
            .checked_add(self.files.len() as u16)
            .filter(|k| *k < 0x4000)
            .ok_or_else(|| FwCfgError::Full(name.to_string()))?;
        self.files.insert(name.to_string(), k);
        self.items.insert(k, Item::Owned(data));
        self.rebuild_directory();
        Ok(k)
    }

    /// The directory: be32 count, then `{ be32 size, be16 select, u16 reserved, name[56] }`
    /// sorted by name.
    fn rebuild_directory(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, k) in &self.files {
            let size = self.items.get(k).map_or(0, |d| d.len()) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&k.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(key::FILE_DIR, Item::Owned(dir));
    }

    fn select(&mut self, k: u16) {
        self.selected = k;
        self.offset = 0;
    }

    /// Whether item `k` tells the guest how much RAM it has: the RAM size and `etc/e820`.
    fn describes_memory(&self, k: u16) -> bool {
        k == key::RAM_SIZE || self.files.get(E820_FILE) == Some(&k)
    }

    /// The item a DMA kick at `offset` with `data` would work on: the one its descriptor
    /// selects, or the current one. None when the write is not a kick or the descriptor
    /// cannot be read.
    fn dma_target(&self, offset: u64, data: &[u8]) -> Option<u16> {
        let addr = match (offset, data.len()) {
            (DMA_LOW_OFFSET, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                (self.dma_high as u64) << 32 | low as u64
            }
            (DMA_HIGH_OFFSET, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                u64::from_be_bytes(b)
            }
            _ => return None,
        };
        let mut control = [0u8; 4];
        if !self.guest_read(addr, &mut control) {
            return None;
        }
        let control = u32::from_be_bytes(control);
        Some(if control & DMA_CTL_SELECT != 0 {
            (control >> 16) as u16
        } else {
            self.selected
        })
    }

    fn current_len(&self) -> usize {
        self.items.get(&self.selected).map_or(0, |v| v.len())
    }

    /// Reads the selected item from the current offset into `buf`; returns how many bytes
    /// the item had (the rest of `buf` is left as it is).
    fn read_current(&self, buf: &mut [u8]) -> usize {
        self.items
            .get(&self.selected)
            .map_or(0, |v| v.read_at(self.offset, buf))
    }

    fn read_data(&mut self) -> u8 {
        let mut b = [0u8];
        let n = self.read_current(&mut b);
        self.offset += n;
        b[0]
    }

    /// Runs the DMA descriptor at `addr` and writes its completion status back.
    fn dma(&mut self, addr: u64) {
        let desc_addr = GuestAddress(addr);
        let mut desc = [0u8; 16];
        if !self.guest_read(addr, &mut desc) {
            log::debug(format_args!(
                "fw_cfg: DMA descriptor at {addr:#x} is outside RAM"
            ));
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]);
        let address = u64::from_be_bytes([
            desc[8], desc[9], desc[10], desc[11], desc[12], desc[13], desc[14], desc[15],
        ]);
        let status = match self.dma_transfer(control, length, address) {
            Ok(()) => 0u32,
            Err(why) => {
                log::debug(format_args!("fw_cfg: DMA at {addr:#x}: {why}"));
                DMA_CTL_ERROR
            }
        };
        // The control word is the first field of the descriptor.
        let _ = self.guest_write(desc_addr.0, &status.to_be_bytes());
    }

    fn dma_transfer(&mut self, control: u32, length: u32, address: u64) -> Result<(), String> {
        if control & DMA_CTL_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let length = length as usize;
        if control & DMA_CTL_READ != 0 {
            // The item's bytes through a bounce buffer (a file item is read here, on demand).
            let mut chunk = vec![0u8; length.min(64 * 1024)];
            let mut done = 0;
            while done < length {
                let want = (length - done).min(chunk.len());
                let got = self.read_current(&mut chunk[..want]);
                if got == 0 {
                    break;
                }
                let at = address
                    .checked_add(done as u64)
                    .ok_or("buffer wraps around")?;
                self.guest_write(at, &chunk[..got])
                    .map_err(|e| format!("read into {e}"))?;
                self.offset += got;
                done += got;
            }
            // Past the end of the item the guest reads zeros.
            let zeros = [0u8; 4096];
            while done < length {
                let n = (length - done).min(zeros.len());
                let at = address
                    .checked_add(done as u64)
                    .ok_or("buffer wraps around")?;
                self.guest_write(at, &zeros[..n])
                    .map_err(|e| format!("read into {e}"))?;
                done += n;
            }
        } else if control & DMA_CTL_SKIP != 0 {
            self.offset = (self.offset + length).min(self.current_len());
        } else if control & DMA_CTL_WRITE != 0 {
            return Err("writes are not supported".into());
        }
        Ok(())
    }
}

impl BusDevice for FwCfg {
    /// Selecting the RAM size or `etc/e820`, reading either through the data port, or a DMA
    /// transfer on either.
    fn asks_for_memory_map(&self, offset: u64, access: crate::bus::Access<'_>) -> bool {
        use crate::bus::Access;
        match (offset, access) {
            (DATA_OFFSET, Access::Read(_)) => self.describes_memory(self.selected),
            (SELECTOR_OFFSET, Access::Write(&[lo, hi])) => {
                self.describes_memory(u16::from_le_bytes([lo, hi]))
            }
            (SELECTOR_OFFSET, Access::Write(&[lo])) => self.describes_memory(u16::from(lo)),
            (o, Access::Write(d)) => self
                .dma_target(o, d)
                .is_some_and(|k| self.describes_memory(k)),
            _ => false,
        }
    }

    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            DATA_OFFSET => {
                for b in data.iter_mut() {
                    *b = self.read_data();
                }
            }
            o @ DMA_HIGH_OFFSET..=11 => {
                for (i, b) in data.iter_mut().enumerate() {
                    let at = (o - DMA_HIGH_OFFSET) as usize + i;
                    *b = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        match (offset, data.len()) {
            (SELECTOR_OFFSET, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (SELECTOR_OFFSET, 1) => self.select(data[0] as u16),
            (DMA_HIGH_OFFSET, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            (DMA_LOW_OFFSET, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let addr = (self.dma_high as u64) << 32 | low as u64;
                self.dma_high = 0;
                self.dma(addr);
            }
            (DMA_HIGH_OFFSET, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma(u64::from_be_bytes(b));
            }
            _ => log::debug(format_args!(
                "fw_cfg: ignored write of {data:02x?} at offset {offset}"
            )),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn read_item(f: &mut FwCfg, k: u16, n: usize) -> Vec<u8> {
        f.write(SELECTOR_OFFSET, &k.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                f.read(DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn file_items_are_read_when_the_guest_reads_them() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut f = FwCfg::new(m.clone());
        let path = std::env::temp_dir().join(format!("minipc-fwcfg-{}", std::process::id()));
        std::fs::write(&path, b"headerKERNEL-BYTES").unwrap();
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        f.add_file_item(key::KERNEL_DATA, file, 6, 12);
        // Changed after the item was made: the guest reads what the file holds then.
        std::fs::write(&path, b"headerkernel-bytes").unwrap();
        f.write(SELECTOR_OFFSET, &key::KERNEL_DATA.to_le_bytes());
        let mut b = [0u8];
        f.read(DATA_OFFSET, &mut b);
        assert_eq!(b, *b"k");
        // A DMA read of the rest, then past the end: zeros.
        let desc = |len: u32| {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&DMA_CTL_READ.to_be_bytes());
            d[4..8].copy_from_slice(&len.to_be_bytes());
            d[8..].copy_from_slice(&0x2000u64.to_be_bytes());
            d
        };
        m.write_slice(&desc(14), GuestAddress(0x1000)).unwrap();
        f.write(DMA_HIGH_OFFSET, &[0; 4]);
        f.write(DMA_LOW_OFFSET, &0x1000u32.to_be_bytes());
        let mut got = [0xAAu8; 14];
        m.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got, b"ernel-bytes\0\0\0");
        // The file shrank: what it no longer has reads as zeros, never an error.
        std::fs::write(&path, b"header").unwrap();
        f.write(SELECTOR_OFFSET, &key::KERNEL_DATA.to_le_bytes());
        m.write_slice(&desc(12), GuestAddress(0x1000)).unwrap();
        f.write(DMA_LOW_OFFSET, &0x1000u32.to_be_bytes());
        m.read_slice(&mut got[..12], GuestAddress(0x2000)).unwrap();
        assert_eq!(&got[..12], &[0u8; 12]);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn shared_items_serve_a_range_of_their_owner() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut f = FwCfg::new(m);
        let image = Arc::new(b"setupKERNEL".to_vec());
        f.add_shared_item(key::KERNEL_DATA, image.clone(), 5..11);
        f.write(SELECTOR_OFFSET, &key::KERNEL_DATA.to_le_bytes());
        let mut got = Vec::new();
        for _ in 0..8 {
            let mut b = [0u8];
            f.read(DATA_OFFSET, &mut b);
            got.push(b[0]);
        }
        assert_eq!(&got, b"KERNEL\0\0");
        // A range past its owner reads as empty, never out of bounds.
        f.add_shared_item(key::INITRD_DATA, image, 9..99);
        f.write(SELECTOR_OFFSET, &key::INITRD_DATA.to_le_bytes());
        let mut b = [0xAAu8];
        f.read(DATA_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn signature_id_and_unknown_keys() {
        let mut f = FwCfg::new(mem());
        assert_eq!(read_item(&mut f, key::SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut f, key::ID, 4), vec![3, 0, 0, 0]);
        assert_eq!(read_item(&mut f, 0x1234, 4), vec![0; 4]);
        // Reading past the end of an item gives zeros.
        assert_eq!(read_item(&mut f, key::SIGNATURE, 6), b"QEMU\0\0");
        let mut sig = [0u8; 8];
        for (i, b) in sig.iter_mut().enumerate() {
            let mut x = [0u8];
            f.read(DMA_HIGH_OFFSET + i as u64, &mut x);
            *b = x[0];
        }
        assert_eq!(&sig, b"QEMU CFG");
    }

    #[test]
    fn file_directory_lists_files_sorted_big_endian() {
        let mut f = FwCfg::new(mem());
        assert_eq!(f.add_file("etc/e820", vec![1; 40]).unwrap(), 0x20);
        assert_eq!(f.add_file("bootorder", vec![]).unwrap(), 0x21);
        assert!(f.add_file("bootorder", vec![]).is_err());
        assert!(f.add_file(&"x".repeat(56), vec![]).is_err());
        let dir = read_item(&mut f, key::FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[0..4], &[0, 0, 0, 2]);
        // "bootorder" sorts first.
        assert_eq!(&dir[4..8], &[0, 0, 0, 0]);
        assert_eq!(&dir[8..10], &[0, 0x21]);
        assert_eq!(&dir[12..21], b"bootorder");
        assert_eq!(&dir[68..72], &[0, 0, 0, 40]);
        assert_eq!(&dir[72..74], &[0, 0x20]);
        assert_eq!(&dir[76..84], b"etc/e820");
    }

    fn dma_desc(m: &GuestMemoryMmap, at: u64, control: u32, len: u32, addr: u64) {
        let mut d = Vec::new();
        d.extend_from_slice(&control.to_be_bytes());
        d.extend_from_slice(&len.to_be_bytes());
        d.extend_from_slice(&addr.to_be_bytes());
        m.write_slice(&d, GuestAddress(at)).unwrap();
    }

    fn kick(f: &mut FwCfg, at: u64) {
        f.write(DMA_HIGH_OFFSET, &((at >> 32) as u32).to_be_bytes());
        f.write(DMA_LOW_OFFSET, &(at as u32).to_be_bytes());
    }

    /// Selecting, reading or DMA-ing the RAM size or etc/e820 waits for the RAM
    /// (ram_gate.rs); other items, the signature and the DMA port's reads do not.
    #[test]
    fn ram_size_and_e820_accesses_ask_for_the_memory_map() {
        use crate::bus::Access;
        let m = mem();
        let mut f = FwCfg::new(m.clone());
        f.add_item(key::RAM_SIZE, 64u64.to_le_bytes().to_vec());
        f.add_file("bootorder", vec![]).unwrap();
        let e820 = f.add_file(E820_FILE, vec![1; 40]).unwrap();
        let asks = |f: &FwCfg, offset: u64, a: Access| f.asks_for_memory_map(offset, a);
        for (k, memory) in [
            (key::RAM_SIZE, true),
            (e820, true),
            (key::SIGNATURE, false),
            (key::FILE_DIR, false),
            (0x20, false),
        ] {
            assert_eq!(
                asks(&f, SELECTOR_OFFSET, Access::Write(&k.to_le_bytes())),
                memory,
                "{k:#x}"
            );
            f.write(SELECTOR_OFFSET, &k.to_le_bytes());
            assert_eq!(asks(&f, DATA_OFFSET, Access::Read(1)), memory, "{k:#x}");
            // A DMA read of the current item, and one that selects it first.
            dma_desc(&m, 0x1000, DMA_CTL_READ, 8, 0x2000);
            f.write(DMA_HIGH_OFFSET, &[0; 4]);
            assert_eq!(
                asks(&f, DMA_LOW_OFFSET, Access::Write(&0x1000u32.to_be_bytes())),
                memory
            );
            f.write(SELECTOR_OFFSET, &key::SIGNATURE.to_le_bytes());
            dma_desc(
                &m,
                0x1000,
                u32::from(k) << 16 | DMA_CTL_SELECT | DMA_CTL_READ,
                8,
                0x2000,
            );
            assert_eq!(
                asks(&f, DMA_HIGH_OFFSET, Access::Write(&0x1000u64.to_be_bytes())),
                memory
            );
        }
        // An 8-bit selector write selects RAM_SIZE (0x03) too.
        assert!(asks(&f, SELECTOR_OFFSET, Access::Write(&[3])));
        // Reads of the DMA port (its signature) and descriptors outside RAM do not wait.
        f.write(SELECTOR_OFFSET, &key::RAM_SIZE.to_le_bytes());
        assert!(!asks(&f, DMA_HIGH_OFFSET, Access::Read(4)));
        assert!(!asks(
            &f,
            DMA_HIGH_OFFSET,
            Access::Write(&0xFFFF_0000u64.to_be_bytes())
        ));
    }

    #[test]
    fn dma_select_skip_and_read() {
        let m = mem();
        let mut f = FwCfg::new(m.clone());
        f.add_file("opt/test", (0u8..32).collect()).unwrap();
        dma_desc(
            &m,
            0x1000,
            (0x20 << 16) | DMA_CTL_SELECT | DMA_CTL_SKIP,
            4,
            0,
        );
        kick(&mut f, 0x1000);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
        dma_desc(&m, 0x1000, DMA_CTL_READ, 8, 0x2000);
        kick(&mut f, 0x1000);
        assert_eq!(m.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0);
        let mut buf = [0u8; 8];
        m.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        assert_eq!(buf, [4, 5, 6, 7, 8, 9, 10, 11]);
        // A read past the end pads with zeros.
        m.write_slice(&[0xAA; 32], GuestAddress(0x3000)).unwrap();
        dma_desc(&m, 0x1000, DMA_CTL_READ, 32, 0x3000);
        kick(&mut f, 0x1000);
        let mut buf = [0u8; 32];
        m.read_slice(&mut buf, GuestAddress(0x3000)).unwrap();
        assert_eq!(buf[0], 12);
        assert_eq!(buf[19], 31);
        assert!(buf[20..].iter().all(|b| *b == 0));
    }

    #[test]
    fn dma_to_bad_addresses_sets_the_error_bit() {
        let m = mem();
        let mut f = FwCfg::new(m.clone());
        dma_desc(&m, 0x1000, DMA_CTL_READ | DMA_CTL_SELECT, 4, 0xFFFF_0000);
        kick(&mut f, 0x1000);
        let ctl = u32::from_be_bytes(m.read_obj::<[u8; 4]>(GuestAddress(0x1000)).unwrap());
        assert_eq!(ctl, DMA_CTL_ERROR);
        // A huge length that runs off the end of RAM.
        dma_desc(&m, 0x1000, DMA_CTL_READ, u32::MAX, 0xF000);
        kick(&mut f, 0x1000);
        let ctl = u32::from_be_bytes(m.read_obj::<[u8; 4]>(GuestAddress(0x1000)).unwrap());
        assert_eq!(ctl, DMA_CTL_ERROR);
        // A descriptor outside RAM is ignored.
        kick(&mut f, 0x1_0000_0000);
        // Writes are refused.
        dma_desc(&m, 0x1000, DMA_CTL_WRITE, 4, 0x2000);
        kick(&mut f, 0x1000);
        let ctl = u32::from_be_bytes(m.read_obj::<[u8; 4]>(GuestAddress(0x1000)).unwrap());
        assert_eq!(ctl, DMA_CTL_ERROR);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{run, Rng};
    use crate::memory::{HIGH_MEMORY_START, LOW_RAM_END};

    /// RAM as the machine maps it below 1 MiB and a little above: nothing at the VGA hole
    /// or the shadow area 0xC0000-0xFFFFF (no shadow attached).
    const RAM: [(u64, u64); 2] = [(0, LOW_RAM_END), (HIGH_MEMORY_START, 0x2_0000)];
    const EDGES: [u64; 7] = [
        0,
        LOW_RAM_END,
        SHADOW_START,
        0xF_0000,
        HIGH_MEMORY_START,
        HIGH_MEMORY_START + 0x2_0000,
        0x1_0000_0000,
    ];

    fn in_ram(start: u64, len: u64) -> bool {
        start
            .checked_add(len)
            .is_some_and(|end| RAM.iter().any(|&(s, l)| start >= s && end <= s + l))
    }

    fn address(rng: &mut Rng) -> u64 {
        match rng.below(4) {
            0 => rng.below(LOW_RAM_END),
            1 => HIGH_MEMORY_START + rng.below(0x2_0000),
            2 => {
                let e = *rng.pick(&EDGES);
                let d = rng.below(64);
                if rng.one_in(2) {
                    e.wrapping_add(d)
                } else {
                    e.wrapping_sub(d)
                }
            }
            _ => rng.interesting(),
        }
    }

    fn item_data(f: &FwCfg, k: u16) -> Vec<u8> {
        f.items.get(&k).map_or(Vec::new(), |i| {
            let mut v = vec![0u8; i.len()];
            i.read_at(0, &mut v);
            v
        })
    }

    /// Random selector writes, data reads at every width and offset, DMA descriptors with
    /// fuzzed control bits, lengths and addresses near the edges of RAM and the holes, and
    /// descriptors outside RAM. A read DMA into RAM must deliver the item's bytes (zeros
    /// past its end) and write nothing else; anything that leaves RAM sets the error bit.
    #[test]
    fn fw_cfg_accesses() {
        let mem = GuestMemoryMmap::from_ranges(
            &RAM.iter()
                .map(|&(s, l)| (GuestAddress(s), l as usize))
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let image = Arc::new((0..=255u8).cycle().take(5000).collect::<Vec<u8>>());
        run("fw_cfg_accesses", 8_000, |rng| {
            let mut f = FwCfg::new(mem.clone());
            f.add_file("etc/e820", vec![7; 100]).unwrap();
            f.add_file("opt/big", rng.bytes(9000)).unwrap();
            f.add_shared_item(key::KERNEL_DATA, image.clone(), 100..4100);
            f.add_shared_item(key::INITRD_DATA, image.clone(), 4000..9000);
            let keys = [
                0u16,
                1,
                0x19,
                0x20,
                0x21,
                key::KERNEL_DATA,
                key::INITRD_DATA,
                0x1234,
            ];
            for _ in 0..=rng.below(16) {
                match rng.below(6) {
                    0 => {
                        let k = if rng.one_in(4) {
                            rng.next() as u16
                        } else {
                            *rng.pick(&keys)
                        };
                        let width = *rng.pick(&[1usize, 2, 4]);
                        f.write(SELECTOR_OFFSET, &k.to_le_bytes()[..width.min(2)]);
                    }
                    1 => {
                        let offset = rng.below(16);
                        let width = *rng.pick(&[1usize, 2, 4, 8]);
                        let mut data = vec![0u8; width];
                        f.read(offset, &mut data);
                    }
                    2 => {
                        let offset = rng.below(16);
                        let width = *rng.pick(&[1usize, 2, 4, 8]);
                        let data = rng.bytes(width);
                        f.write(offset, &data);
                    }
                    _ => dma(rng, &mut f, &mem, &keys),
                }
            }
        });
    }

    /// One DMA transfer with a fuzzed descriptor, checked against what it must do.
    fn dma(rng: &mut Rng, f: &mut FwCfg, mem: &GuestMemoryMmap, keys: &[u16]) {
        let desc_at = address(rng);
        let mut control = match rng.below(4) {
            0 => DMA_CTL_READ,
            1 => DMA_CTL_SKIP,
            2 => DMA_CTL_WRITE,
            _ => rng.next() as u32 & 0x1F,
        };
        if rng.one_in(2) {
            control |= DMA_CTL_SELECT | u32::from(*rng.pick(keys)) << 16;
        }
        let length = match rng.below(3) {
            0 => rng.below(64) as u32,
            1 => rng.below(0x3000) as u32,
            _ => rng.interesting() as u32,
        };
        let address = address(rng);
        let mut desc = Vec::new();
        desc.extend_from_slice(&control.to_be_bytes());
        desc.extend_from_slice(&length.to_be_bytes());
        desc.extend_from_slice(&address.to_be_bytes());
        let desc_ok = in_ram(desc_at, 16);
        if desc_ok {
            mem.write_slice(&desc, GuestAddress(desc_at)).unwrap();
        }
        // What a read must deliver.
        if control & DMA_CTL_SELECT != 0 {
            f.select((control >> 16) as u16);
        }
        let data = item_data(f, f.selected);
        let offset = f.offset;
        let reading = control & DMA_CTL_READ != 0;
        let target_ok = in_ram(address, u64::from(length));
        // Sentinels on either side of the buffer, and the buffer itself, before.
        let window = |at: u64| {
            let mut b = [0u8; 8];
            mem.read_slice(&mut b, GuestAddress(at)).ok().map(|_| b)
        };
        let before = address.checked_sub(8).and_then(window);
        let after = address.checked_add(u64::from(length)).and_then(window);
        if rng.one_in(2) {
            f.write(DMA_HIGH_OFFSET, &((desc_at >> 32) as u32).to_be_bytes());
            f.write(DMA_LOW_OFFSET, &(desc_at as u32).to_be_bytes());
        } else {
            f.write(DMA_HIGH_OFFSET, &desc_at.to_be_bytes());
        }
        if !desc_ok {
            return;
        }
        let status = mem.read_obj::<[u8; 4]>(GuestAddress(desc_at)).unwrap();
        let status = u32::from_be_bytes(status);
        let overlaps_desc = |at: u64| (desc_at..desc_at + 16).contains(&at);
        if reading {
            if target_ok || length == 0 {
                assert_eq!(status, 0, "read {length:#x} into {address:#x}");
                let n = (length as usize).min(64);
                let mut got = vec![0u8; n];
                mem.read_slice(&mut got, GuestAddress(address)).unwrap();
                let want: Vec<u8> = (0..n)
                    .map(|i| data.get(offset + i).copied().unwrap_or(0))
                    .collect();
                let clash = (address..address + n as u64).any(overlaps_desc);
                assert!(clash || got == want, "read {length:#x} into {address:#x}");
            } else {
                assert_eq!(status, DMA_CTL_ERROR, "read {length:#x} into {address:#x}");
            }
            // Nothing outside the buffer (the descriptor's status aside).
            let end = address.wrapping_add(u64::from(length));
            for (at, was) in [(address.wrapping_sub(8), before), (end, after)] {
                if let Some(was) = was.filter(|_| !(at..at + 8).any(overlaps_desc)) {
                    assert_eq!(
                        window(at),
                        Some(was),
                        "wrote beside {address:#x}+{length:#x}"
                    );
                }
            }
        } else if control & DMA_CTL_SKIP != 0 {
            assert_eq!(status, 0);
            assert_eq!(f.offset, (offset + length as usize).min(data.len()));
        } else if control & DMA_CTL_WRITE != 0 {
            assert_eq!(status, DMA_CTL_ERROR);
        } else {
            assert_eq!(status, 0);
        }
    }
}
