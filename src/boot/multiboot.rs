//! Multiboot 1 (the Multiboot Specification 0.6.96): ELF32, ELF64 and "a.out kludge"
//! images, the information block with the memory map, command line, modules and boot
//! loader name; entered in 32-bit protected mode with paging off, EAX = 0x2BADB002,
//! EBX = the information block. The image, its modules and the information never overlap.
//! The image and module placement here is shared with multiboot 2.

use vm_memory::GuestMemoryMmap;

use super::elf;
use super::{area, check_image_range, file_err, put, zero, BootEnv, BootError};
use crate::config::VmConfig;
use crate::firmware::{BootKind, Handoff, Regs};
use crate::memory::{MemoryLayout, EBDA_START, KIB};

const MAGIC: u32 = 0x1BAD_B002;
const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must lie in the first 8 KiB, 4-byte aligned.
const SEARCH: usize = 8192;
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
const FLAG_MEMORY_INFO: u32 = 1 << 1;
const FLAG_VIDEO_MODE: u32 = 1 << 2;
const FLAG_ADDRESSES: u32 = 1 << 16;
pub const LOADER_NAME: &[u8] = b"minipc\0";
/// A BIOS boot device for the information block: drive 0x80, no partition.
pub const BOOT_DEVICE: u32 = 0x80FF_FFFF;
const MAX_MODULES: usize = 256;

/// Bytes of the file that go somewhere in guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub addr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

/// A kernel image as laid out in guest memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Image {
    pub pieces: Vec<Piece>,
    pub entry: u32,
}

impl Image {
    /// The first byte past the image (its BSS included).
    pub fn end(&self) -> u64 {
        self.pieces
            .iter()
            .map(|p| p.addr + p.memsz)
            .max()
            .unwrap_or(0)
    }

    /// Checks every piece against the memory map and the entry against the pieces.
    pub fn check(&self, path: &str, layout: &MemoryLayout) -> Result<(), BootError> {
        for p in &self.pieces {
            check_image_range(path, "the kernel image", p.addr, p.addr + p.memsz, layout)?;
        }
        let e = self.entry as u64;
        if !self
            .pieces
            .iter()
            .any(|p| (p.addr..p.addr + p.memsz).contains(&e))
        {
            return Err(file_err(
                path,
                format!("entry point {e:#x} is not inside the loaded image"),
            ));
        }
        Ok(())
    }

    pub fn load(&self, mem: &GuestMemoryMmap, file: &[u8]) -> Result<(), BootError> {
        for p in &self.pieces {
            let bytes = &file[p.offset as usize..(p.offset + p.filesz) as usize];
            put(mem, p.addr, bytes)?;
            zero(mem, p.addr + p.filesz, p.addr + p.memsz)?;
        }
        Ok(())
    }
}

/// Where an image's pieces and the modules go, for the fuzz targets' checks.
#[cfg(test)]
pub fn footprint(file: &[u8], image: &Image, modules: &[Module]) -> Vec<super::test_util::Placed> {
    use super::test_util::{head, Placed};
    let mut v: Vec<Placed> = image
        .pieces
        .iter()
        .map(|p| Placed {
            what: "image",
            payload: true,
            addr: p.addr,
            len: p.memsz,
            head: head(file, p.offset, p.filesz, p.memsz, true),
        })
        .collect();
    for m in modules {
        let n = m.bytes.len() as u64;
        v.push(Placed {
            what: "module",
            payload: true,
            addr: m.addr,
            len: n,
            head: head(&m.bytes, 0, n, n, false),
        });
    }
    v
}

/// The "a.out kludge" addresses of a multiboot 1 header or a multiboot 2 address tag:
/// the file from `header_offset - (header_addr - load_addr)` is loaded at `load_addr` up
/// to `load_end_addr` (0: the end of the file), then zeros up to `bss_end_addr` (0: none).
pub fn kludge_image(
    path: &str,
    file: &[u8],
    header_offset: usize,
    [header_addr, load_addr, load_end_addr, bss_end_addr]: [u32; 4],
    entry: u32,
) -> Result<Image, BootError> {
    let bad = |why: &str| file_err(path, format!("multiboot address fields: {why}"));
    let before_header = header_addr
        .checked_sub(load_addr)
        .ok_or_else(|| bad("header_addr is below load_addr"))? as usize;
    let offset = header_offset
        .checked_sub(before_header)
        .ok_or_else(|| bad("load_addr lies before the start of the file"))?;
    let filesz = if load_end_addr == 0 {
        (file.len() - offset) as u64
    } else {
        load_end_addr
            .checked_sub(load_addr)
            .ok_or_else(|| bad("load_end_addr is below load_addr"))? as u64
    };
    if offset as u64 + filesz > file.len() as u64 {
        return Err(bad("the text and data run past the end of the file"));
    }
    let memsz = if bss_end_addr == 0 {
        filesz
    } else {
        (bss_end_addr as u64)
            .checked_sub(load_addr as u64)
            .filter(|m| *m >= filesz)
            .ok_or_else(|| bad("bss_end_addr is below the end of the data"))?
    };
    Ok(Image {
        pieces: vec![Piece {
            addr: load_addr as u64,
            offset: offset as u64,
            filesz,
            memsz,
        }],
        entry,
    })
}

/// An ELF image (32- or 64-bit) at its physical addresses, entered in 32-bit mode: its
/// entry point must lie below 4 GiB.
pub fn elf_image(path: &str, file: &[u8], entry: Option<u32>) -> Result<Image, BootError> {
    let e = elf::parse(file).map_err(|e| file_err(path, e))?;
    let entry = match entry {
        Some(a) => a,
        None => u32::try_from(e.entry).map_err(|_| {
            file_err(
                path,
                format!(
                    "entry point {:#x} is above 4 GiB (multiboot enters in 32-bit mode)",
                    e.entry
                ),
            )
        })?,
    };
    Ok(Image {
        pieces: e
            .segments
            .iter()
            .map(|s| Piece {
                addr: s.paddr,
                offset: s.offset,
                filesz: s.filesz,
                memsz: s.memsz,
            })
            .collect(),
        entry,
    })
}

/// A module: its bytes, its string (NUL-terminated) and where it goes.
#[derive(Debug)]
pub struct Module {
    pub bytes: Vec<u8>,
    pub string: Vec<u8>,
    pub addr: u64,
}

/// Where a module of `len` bytes goes when the last one (or the image) ends at `next`:
/// `[addr, end)` from the first page boundary at or above `next`, or that range as `Err`
/// when it is not RAM from 1 MiB to the end of low RAM.
fn place_module(next: u64, len: u64, layout: &MemoryLayout) -> Result<(u64, u64), (u64, u64)> {
    let addr = next
        .checked_add(0xFFF)
        .map(|a| a & !0xFFF)
        .unwrap_or(u64::MAX);
    let end = addr.saturating_add(len);
    if end > layout.low_ram_end || addr < crate::memory::HIGH_MEMORY_START {
        return Err((addr, end));
    }
    Ok((addr, end))
}

/// Reads the `--module` files and places them page-aligned above `image_end`.
pub fn modules(
    cfg: &VmConfig,
    image_end: u64,
    layout: &MemoryLayout,
) -> Result<Vec<Module>, BootError> {
    if cfg.modules.len() > MAX_MODULES {
        return Err(BootError::Config(format!(
            "--module: at most {MAX_MODULES} modules"
        )));
    }
    let mut next = image_end;
    let mut out = Vec::new();
    for m in &cfg.modules {
        let path = m.path.display().to_string();
        let bytes = super::read_input(&m.path, "module", layout.ram_size)?;
        let (addr, end) = place_module(next, bytes.len() as u64, layout).map_err(|(addr, end)| {
            file_err(
                &path,
                format!(
                    "module of {} bytes does not fit in RAM above the kernel ({addr:#x}-{end:#x}, RAM ends at {:#x})",
                    bytes.len(),
                    layout.low_ram_end
                ),
            )
        })?;
        let mut string = m
            .string
            .clone()
            .unwrap_or_else(|| path.clone())
            .into_bytes();
        if string.contains(&0) {
            return Err(file_err(&path, "module string contains a NUL byte"));
        }
        string.push(0);
        next = end;
        out.push(Module {
            bytes,
            string,
            addr,
        });
    }
    Ok(out)
}

/// Appends NUL-terminated strings in the information area, refusing to run past it.
pub struct Strings {
    next: u64,
    end: u64,
}

impl Strings {
    pub fn new(start: u64, end: u64) -> Strings {
        Strings { next: start, end }
    }

    pub fn add(&mut self, mem: &GuestMemoryMmap, s: &[u8]) -> Result<u32, BootError> {
        let at = self.next;
        if at + s.len() as u64 > self.end {
            return Err(BootError::Config(
                "multiboot: the command line and module strings are too long (64 KiB in all)"
                    .into(),
            ));
        }
        put(mem, at, s)?;
        self.next += s.len() as u64;
        Ok(at as u32)
    }
}

/// The command line a multiboot kernel gets: its file name, a space, then `--cmdline`.
pub fn cmdline(cfg: &VmConfig) -> Result<Vec<u8>, BootError> {
    let name = cfg
        .kernel
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut s = match &cfg.cmdline {
        Some(c) => format!("{name} {c}"),
        None => name,
    }
    .into_bytes();
    if s.contains(&0) {
        return Err(BootError::Cmdline("contains a NUL byte".into()));
    }
    if s.len() as u64 >= area::CMDLINE_MAX {
        return Err(BootError::Cmdline(format!(
            "longer than {} bytes",
            area::CMDLINE_MAX - 1
        )));
    }
    s.push(0);
    Ok(s)
}

/// The 32-bit protected-mode hand-off shared by both multiboot versions.
pub fn handoff(
    mem: &GuestMemoryMmap,
    entry: u32,
    magic: u32,
    info: u32,
) -> Result<(BootKind, Handoff), BootError> {
    let regs = Regs {
        eax: magic,
        ebx: info,
        ..Default::default()
    };
    super::flat_handoff(mem, entry.into(), false, regs)
}

/// Finds a multiboot 1 header: (its offset, flags).
pub fn find_header(file: &[u8]) -> Option<usize> {
    let n = file.len().min(SEARCH);
    (0..n.saturating_sub(11)).step_by(4).find(|&i| {
        let w = |o: usize| {
            u32::from_le_bytes([
                file[i + o],
                file[i + o + 1],
                file[i + o + 2],
                file[i + o + 3],
            ])
        };
        w(0) == MAGIC && w(0).wrapping_add(w(4)).wrapping_add(w(8)) == 0
    })
}

#[derive(Debug)]
pub struct Multiboot {
    path: String,
    file: Vec<u8>,
    image: Image,
    modules: Vec<Module>,
    cmdline: Vec<u8>,
    page_align: bool,
}

impl Multiboot {
    pub fn new(
        path: &str,
        file: Vec<u8>,
        at: usize,
        cfg: &VmConfig,
        layout: &MemoryLayout,
    ) -> Result<Multiboot, BootError> {
        let w = |o: usize| -> Result<u32, BootError> {
            file.get(at + o..at + o + 4)
                .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                .ok_or_else(|| file_err(path, "multiboot header is truncated"))
        };
        let flags = w(4)?;
        let unknown = flags & 0xFFF8;
        if unknown != 0 {
            return Err(file_err(
                path,
                format!(
                    "multiboot header requires features {unknown:#x} that minipc does not know"
                ),
            ));
        }
        if flags & FLAG_VIDEO_MODE != 0 {
            crate::log::warn(format_args!(
                "{path}: the kernel asks for a video mode; minipc has no display (console on COM1)"
            ));
        }
        let image = if flags & FLAG_ADDRESSES != 0 {
            let addrs = [w(12)?, w(16)?, w(20)?, w(24)?];
            kludge_image(path, &file, at, addrs, w(28)?)?
        } else if elf::is_elf(&file) {
            elf_image(path, &file, None)?
        } else {
            return Err(file_err(
                path,
                "multiboot kernel is neither ELF nor has the address fields (flag 16)",
            ));
        };
        image.check(path, layout)?;
        let modules = modules(cfg, image.end(), layout)?;
        Ok(Multiboot {
            path: path.to_string(),
            cmdline: cmdline(cfg)?,
            file,
            image,
            modules,
            page_align: flags & FLAG_PAGE_ALIGN != 0 || flags & FLAG_MEMORY_INFO != 0,
        })
    }

    #[cfg(test)]
    pub fn footprint(&self) -> Vec<super::test_util::Placed> {
        let mut v = footprint(&self.file, &self.image, &self.modules);
        v.push(super::test_util::Placed {
            what: "command line",
            payload: false,
            addr: area::CMDLINE,
            len: self.cmdline.len() as u64,
            head: self.cmdline.clone(),
        });
        v
    }

    pub fn load(
        &self,
        mem: &GuestMemoryMmap,
        env: &BootEnv,
    ) -> Result<(BootKind, Handoff), BootError> {
        let _ = (&self.path, self.page_align);
        self.image.load(mem, &self.file)?;
        for m in &self.modules {
            put(mem, m.addr, &m.bytes)?;
        }
        let info = area::ZERO_PAGE;
        put(mem, info, &[0u8; 128])?;
        put(mem, area::CMDLINE, &self.cmdline)?;
        // The memory map: 24-byte entries, each led by its size (20).
        let mmap: Vec<u8> = env
            .e820
            .iter()
            .flat_map(|e| {
                let mut v = 20u32.to_le_bytes().to_vec();
                v.extend_from_slice(&e.to_bytes());
                v
            })
            .collect();
        let mmap_addr = area::INFO;
        put(mem, mmap_addr, &mmap)?;
        let mods_addr = area::INFO + 0x1000;
        let mut strings = Strings::new(area::INFO + 0x2000, area::INFO_END);
        let name = strings.add(mem, LOADER_NAME)?;
        let mut list = Vec::new();
        for m in &self.modules {
            let s = strings.add(mem, &m.string)?;
            for d in [m.addr as u32, (m.addr + m.bytes.len() as u64) as u32, s, 0] {
                list.extend_from_slice(&d.to_le_bytes());
            }
        }
        put(mem, mods_addr, &list)?;
        let flags: u32 = 1 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 6 | 1 << 9;
        let fields: [(u64, u32); 10] = [
            (0, flags),
            (4, (EBDA_START / KIB) as u32),
            (
                8,
                (env.layout.extended_ram() / KIB).min(u32::MAX as u64) as u32,
            ),
            (12, BOOT_DEVICE),
            (16, area::CMDLINE as u32),
            (20, self.modules.len() as u32),
            (24, mods_addr as u32),
            (44, mmap.len() as u32),
            (48, mmap_addr as u32),
            (64, name),
        ];
        for (o, v) in fields {
            put(mem, info + o, &v.to_le_bytes())?;
        }
        handoff(mem, self.image.entry, BOOTLOADER_MAGIC, info as u32)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::memory::MIB;
    use vm_memory::{Bytes, GuestAddress};

    /// A multiboot 1 a.out-kludge image: the header at `at`, loaded at 1 MiB.
    pub fn kludge(at: usize, len: usize, flags: u32) -> Vec<u8> {
        let mut b = vec![0x90u8; len];
        let load = 0x10_0000u32;
        let hdr = load + at as u32;
        for (i, v) in [
            MAGIC,
            flags,
            0u32.wrapping_sub(MAGIC).wrapping_sub(flags),
            hdr,
            load,
            load + len as u32,
            load + len as u32 + 0x1000,
            load + 0x40,
        ]
        .iter()
        .enumerate()
        {
            b[at + i * 4..at + i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: Some("k.elf".into()),
            cmdline: Some("a b".into()),
            ..Default::default()
        }
    }

    #[test]
    fn finds_the_header_only_when_aligned_and_summed() {
        let b = kludge(64, 4096, FLAG_ADDRESSES);
        assert_eq!(find_header(&b), Some(64));
        let mut bad = b.clone();
        bad[64 + 8] ^= 1;
        assert_eq!(find_header(&bad), None);
        let mut late = vec![0u8; 9000];
        late[8192..8192 + 32].copy_from_slice(&b[64..96]);
        assert_eq!(find_header(&late), None);
    }

    #[test]
    fn kludge_image_loads_and_fills_the_info_block() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let b = kludge(64, 4096, FLAG_ADDRESSES | FLAG_PAGE_ALIGN);
        let m = Multiboot::new("k.elf", b, 64, &cfg(), &layout).unwrap();
        assert_eq!(m.image.entry, 0x10_0040);
        assert_eq!(m.image.end(), 0x10_2000);
        let mem = super::super::test_util::memory(&layout);
        let e820 = layout.e820(128 * KIB);
        let env = BootEnv {
            layout: &layout,
            e820: &e820,
            rsdp: None,
            cpus: 1,
        };
        let (kind, h) = m.load(&mem, &env).unwrap();
        assert_eq!(kind, BootKind::Protected);
        assert_eq!(
            (h.regs.eax, h.regs.ebx),
            (BOOTLOADER_MAGIC, area::ZERO_PAGE as u32)
        );
        let rd = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).unwrap();
        assert_eq!(rd(area::ZERO_PAGE + 4), 639);
        assert_eq!(rd(area::ZERO_PAGE + 8), 63 * 1024);
        let mut cl = [0u8; 10];
        mem.read_slice(&mut cl, GuestAddress(rd(area::ZERO_PAGE + 16) as u64))
            .unwrap();
        assert_eq!(&cl, b"k.elf a b\0");
        assert_eq!(rd(area::ZERO_PAGE + 44), 24 * e820.len() as u32);
        // The BSS is zeroed.
        assert_eq!(rd(0x10_1800), 0);
    }

    #[test]
    fn bad_headers_are_refused() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let err = |b: Vec<u8>| {
            Multiboot::new("k", b, 64, &cfg(), &layout)
                .unwrap_err()
                .to_string()
        };
        assert!(err(kludge(64, 4096, FLAG_ADDRESSES | 1 << 5)).contains("features"));
        assert!(err(kludge(64, 4096, 0)).contains("neither ELF"));
        let mut b = kludge(64, 4096, FLAG_ADDRESSES);
        b[64 + 12..64 + 16].copy_from_slice(&0x1000u32.to_le_bytes()); // header_addr < load_addr
        assert!(err(b).contains("header_addr"));
        let mut b = kludge(64, 4096, FLAG_ADDRESSES);
        b[64 + 20..64 + 24].copy_from_slice(&0x20_0000u32.to_le_bytes()); // past the file
        assert!(err(b).contains("past the end"));
        let mut b = kludge(64, 4096, FLAG_ADDRESSES);
        b[64 + 28..64 + 32].copy_from_slice(&0x50_0000u32.to_le_bytes()); // entry outside
        assert!(err(b).contains("entry point"));
        let mut b = kludge(64, 4096, FLAG_ADDRESSES);
        b[64 + 16..64 + 20].copy_from_slice(&0xA_0000u32.to_le_bytes()); // load in the VGA hole
        b[64 + 12..64 + 16].copy_from_slice(&0xA_0040u32.to_le_bytes());
        b[64 + 20..64 + 28].fill(0);
        b[64 + 28..64 + 32].copy_from_slice(&0xA_0040u32.to_le_bytes());
        assert!(err(b).contains("outside the guest's usable RAM"));
    }

    #[test]
    fn modules_are_page_aligned_above_the_kernel() {
        let dir = std::env::temp_dir();
        let p1 = dir.join(format!("minipc-mod1-{}", std::process::id()));
        let p2 = dir.join(format!("minipc-mod2-{}", std::process::id()));
        std::fs::write(&p1, vec![1u8; 5000]).unwrap();
        std::fs::write(&p2, b"two").unwrap();
        let mut c = cfg();
        c.modules = vec![
            crate::config::ModuleArg {
                path: p1.clone(),
                string: Some("first x".into()),
            },
            crate::config::ModuleArg {
                path: p2.clone(),
                string: None,
            },
        ];
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let m = modules(&c, 0x10_2345, &layout).unwrap();
        assert_eq!(m[0].addr, 0x10_3000);
        assert_eq!(m[1].addr, 0x10_5000);
        assert_eq!(m[0].string, b"first x\0");
        assert!(m[1].string.starts_with(p2.display().to_string().as_bytes()));
        let tiny = MemoryLayout::new(2 * MIB).unwrap();
        assert!(modules(&c, 0x1F_F000, &tiny)
            .unwrap_err()
            .to_string()
            .contains("does not fit"));
        let _ = std::fs::remove_file(p1);
        let _ = std::fs::remove_file(p2);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{run, Rng};
    use crate::memory::{HIGH_MEMORY_START, MIB};

    /// A module size: small, page-sized, or an edge.
    fn size(rng: &mut Rng) -> u64 {
        match rng.below(4) {
            0 => rng.below(0x3000),
            1 => rng.below(64) * 0x1000,
            2 => rng.below(8 * MIB),
            _ => rng.interesting(),
        }
    }

    #[test]
    fn module_placement() {
        let layouts: Vec<MemoryLayout> = [2 * MIB, 4 * MIB, 64 * MIB, 3584 * MIB]
            .iter()
            .map(|m| MemoryLayout::new(*m).unwrap())
            .collect();
        run("module_placement", 200_000, |rng| {
            let layout = rng.pick(&layouts);
            let image_end = match rng.below(3) {
                0 => HIGH_MEMORY_START + rng.below(4 * MIB),
                1 => layout.low_ram_end - rng.below(0x3000),
                _ => rng.interesting(),
            };
            let mut next = image_end;
            let mut placed: Vec<(u64, u64)> = Vec::new();
            for _ in 0..=rng.below(5) {
                let len = size(rng);
                match place_module(next, len, layout) {
                    Ok((addr, end)) => {
                        assert_eq!(addr % 0x1000, 0);
                        assert!(
                            addr >= next && addr - next < 0x1000,
                            "{next:#x} -> {addr:#x}"
                        );
                        assert_eq!(end - addr, len);
                        assert!(addr >= HIGH_MEMORY_START && end <= layout.low_ram_end);
                        assert!(placed.iter().all(|(_, e)| *e <= addr));
                        placed.push((addr, end));
                        next = end;
                    }
                    Err(_) => {
                        // Refused only when the page-aligned range would leave RAM.
                        let addr = (u128::from(next) + 0xFFF) & !0xFFF;
                        let end = addr + u128::from(len);
                        assert!(
                            end > u128::from(layout.low_ram_end)
                                || addr < u128::from(HIGH_MEMORY_START),
                            "{next:#x}+{len:#x} refused"
                        );
                        break;
                    }
                }
            }
        });
    }
}
