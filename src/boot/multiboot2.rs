//! Multiboot 2 (specification 2.0): the header's tags (information request, address,
//! entry address, console, framebuffer, module alignment, EFI, relocatable) are honoured or
//! refused by name; the information is the tags every loader gives (command line, boot
//! loader name, modules, basic memory, BIOS boot device, memory map, ACPI RSDPs) plus
//! whatever else a kernel may request that minipc has. Entered in 32-bit protected mode,
//! paging off, EAX = 0x36D76289, EBX = the information.

use vm_memory::GuestMemoryMmap;

use super::multiboot::{self, elf_image, kludge_image, Image, Module, Strings, LOADER_NAME};
use super::{area, elf, file_err, put, BootEnv, BootError};
use crate::config::VmConfig;
use crate::firmware::{BootKind, Handoff};
use crate::memory::{MemoryLayout, EBDA_START, KIB};

const MAGIC: u32 = 0xE852_50D6;
const BOOTLOADER_MAGIC: u32 = 0x36D7_6289;
/// The header lies in the first 32 KiB, 8-byte aligned.
const SEARCH: usize = 32768;
const OPTIONAL: u16 = 1;

/// Information tags minipc gives.
mod info {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const LOADER_NAME: u32 = 2;
    pub const MODULE: u32 = 3;
    pub const BASIC_MEMINFO: u32 = 4;
    pub const BOOTDEV: u32 = 5;
    pub const MMAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
}

fn info_name(t: u32) -> &'static str {
    match t {
        7 => "VBE info",
        8 => "framebuffer info",
        9 => "ELF sections",
        10 => "APM table",
        11 | 12 => "EFI system table",
        13 => "SMBIOS tables",
        16 => "network information",
        17 => "EFI memory map",
        18 => "EFI boot services",
        19 | 20 => "EFI image handle",
        21 => "image load base",
        _ => "an unknown tag",
    }
}

/// Finds a multiboot 2 header: its offset.
pub fn find_header(file: &[u8]) -> Option<usize> {
    let n = file.len().min(SEARCH);
    (0..n.saturating_sub(15)).step_by(8).find(|&i| {
        let w = |o: usize| {
            u32::from_le_bytes([
                file[i + o],
                file[i + o + 1],
                file[i + o + 2],
                file[i + o + 3],
            ])
        };
        w(0) == MAGIC
            && w(4) == 0
            && w(0)
                .wrapping_add(w(4))
                .wrapping_add(w(8))
                .wrapping_add(w(12))
                == 0
    })
}

/// What the header's tags say of the image: the address tag's four fields and the entry
/// address, if given. A tag minipc cannot honour and the kernel requires is refused by name.
struct HeaderTags {
    address: Option<[u32; 4]>,
    entry: Option<u32>,
}

fn header_tags(
    path: &str,
    file: &[u8],
    at: usize,
    cfg: &VmConfig,
) -> Result<HeaderTags, BootError> {
    let u32_at = |o: usize| -> Result<u32, BootError> {
        file.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| file_err(path, "multiboot2 header runs past the end of the file"))
    };
    let header_len = u32_at(at + 8)? as usize;
    let end = at
        .checked_add(header_len)
        .filter(|e| *e <= file.len() && header_len >= 16)
        .ok_or_else(|| {
            file_err(
                path,
                format!("multiboot2 header length {header_len} is out of the file"),
            )
        })?;
    let mut address: Option<[u32; 4]> = None;
    let mut entry: Option<u32> = None;
    let mut o = at + 16;
    loop {
        if o + 8 > end {
            return Err(file_err(path, "multiboot2 header has no end tag"));
        }
        let kind = u16::from_le_bytes([file[o], file[o + 1]]);
        let flags = u16::from_le_bytes([file[o + 2], file[o + 3]]);
        let size = u32_at(o + 4)? as usize;
        if size < 8 || o + size > end {
            return Err(file_err(
                path,
                format!("multiboot2 header tag {kind} has a bad size {size}"),
            ));
        }
        let required = flags & OPTIONAL == 0;
        let refuse = |what: &str| {
            file_err(
                path,
                format!("multiboot2 kernel requires {what}, which minipc cannot provide"),
            )
        };
        match kind {
            0 => break,
            1 => {
                for i in 0..(size - 8) / 4 {
                    let t = u32_at(o + 8 + i * 4)?;
                    let given = matches!(
                        t,
                        info::END
                            | info::CMDLINE
                            | info::LOADER_NAME
                            | info::MODULE
                            | info::BASIC_MEMINFO
                            | info::BOOTDEV
                            | info::MMAP
                    ) || (matches!(t, info::ACPI_OLD | info::ACPI_NEW) && cfg.acpi);
                    if required && !given {
                        return Err(refuse(&format!(
                            "boot information tag {t} ({})",
                            info_name(t)
                        )));
                    }
                }
            }
            2 if size >= 24 => {
                address = Some([
                    u32_at(o + 8)?,
                    u32_at(o + 12)?,
                    u32_at(o + 16)?,
                    u32_at(o + 20)?,
                ])
            }
            3 if size >= 12 => entry = Some(u32_at(o + 8)?),
            4 | 6 | 10 => {} // console flags, module alignment (modules are page aligned), relocatable
            5 if required => return Err(refuse("a framebuffer")),
            7..=9 if required => return Err(refuse("EFI")),
            5 | 7..=9 => {}
            k if required => return Err(refuse(&format!("header tag {k}"))),
            _ => {}
        }
        o += (size + 7) & !7;
    }
    Ok(HeaderTags { address, entry })
}

#[derive(Debug)]
pub struct Multiboot2 {
    file: Vec<u8>,
    image: Image,
    modules: Vec<Module>,
    cmdline: Vec<u8>,
}

impl Multiboot2 {
    pub fn new(
        path: &str,
        file: Vec<u8>,
        at: usize,
        cfg: &VmConfig,
        layout: &MemoryLayout,
    ) -> Result<Multiboot2, BootError> {
        let HeaderTags { address, entry } = header_tags(path, &file, at, cfg)?;
        let image = match address {
            Some(a) => kludge_image(
                path,
                &file,
                at,
                a,
                entry.ok_or_else(|| {
                    file_err(path, "multiboot2 address tag without an entry address tag")
                })?,
            )?,
            None if elf::is_elf(&file) => elf_image(path, &file, entry)?,
            None => {
                return Err(file_err(
                    path,
                    "multiboot2 kernel is neither ELF nor has an address tag",
                ))
            }
        };
        image.check(path, layout)?;
        let modules = multiboot::modules(cfg, image.end(), layout)?;
        let mut cmdline = cfg.cmdline.clone().unwrap_or_default().into_bytes();
        if cmdline.contains(&0) || cmdline.len() as u64 >= area::CMDLINE_MAX {
            return Err(BootError::Cmdline(
                "contains a NUL byte or is longer than 64 KiB".into(),
            ));
        }
        cmdline.push(0);
        Ok(Multiboot2 {
            file,
            image,
            modules,
            cmdline,
        })
    }

    #[cfg(test)]
    pub fn footprint(&self) -> Vec<super::test_util::Placed> {
        let _ = &self.cmdline;
        multiboot::footprint(&self.file, &self.image, &self.modules)
    }

    pub fn load(
        &self,
        mem: &GuestMemoryMmap,
        env: &BootEnv,
    ) -> Result<(BootKind, Handoff), BootError> {
        self.image.load(mem, &self.file)?;
        for m in &self.modules {
            put(mem, m.addr, &m.bytes)?;
        }
        let mut tags = Tags::default();
        tags.add(info::CMDLINE, &self.cmdline);
        tags.add(info::LOADER_NAME, LOADER_NAME);
        for m in &self.modules {
            let mut body = (m.addr as u32).to_le_bytes().to_vec();
            body.extend_from_slice(&((m.addr + m.bytes.len() as u64) as u32).to_le_bytes());
            body.extend_from_slice(&m.string);
            tags.add(info::MODULE, &body);
        }
        let lower = (EBDA_START / KIB) as u32;
        let upper = (env.layout.extended_ram() / KIB).min(u32::MAX as u64) as u32;
        tags.add(
            info::BASIC_MEMINFO,
            &[lower.to_le_bytes(), upper.to_le_bytes()].concat(),
        );
        tags.add(
            info::BOOTDEV,
            &[0x80u32.to_le_bytes(), [0xFF; 4], [0xFF; 4]].concat(),
        );
        let mut mmap = 24u32.to_le_bytes().to_vec();
        mmap.extend_from_slice(&0u32.to_le_bytes());
        for e in env.e820 {
            mmap.extend_from_slice(&e.to_bytes());
            mmap.extend_from_slice(&0u32.to_le_bytes());
        }
        tags.add(info::MMAP, &mmap);
        if let Some(rsdp) = env.rsdp {
            tags.add(info::ACPI_OLD, &rsdp[..20.min(rsdp.len())]);
            if rsdp.len() >= 36 && rsdp[15] >= 2 {
                tags.add(info::ACPI_NEW, &rsdp[..36]);
            }
        }
        tags.add(info::END, &[]);
        let bytes = tags.finish();
        if bytes.len() as u64 > area::INFO_END - area::INFO {
            return Err(BootError::Config(
                "multiboot2: the boot information exceeds 64 KiB (too many modules?)".into(),
            ));
        }
        put(mem, area::INFO, &bytes)?;
        // The strings live inside the tags; nothing else goes in the string area.
        let _ = Strings::new(0, 0);
        multiboot::handoff(mem, self.image.entry, BOOTLOADER_MAGIC, area::INFO as u32)
    }
}

/// The boot information being built: total size, reserved, then 8-byte aligned tags.
#[derive(Default)]
struct Tags(Vec<u8>);

impl Tags {
    fn add(&mut self, kind: u32, body: &[u8]) {
        if self.0.is_empty() {
            self.0.extend_from_slice(&[0; 8]);
        }
        self.0.extend_from_slice(&kind.to_le_bytes());
        self.0
            .extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
        self.0.extend_from_slice(body);
        while !self.0.len().is_multiple_of(8) {
            self.0.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let n = self.0.len() as u32;
        self.0[..4].copy_from_slice(&n.to_le_bytes());
        self.0
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::memory::MIB;
    use vm_memory::{Bytes, GuestAddress};

    /// A multiboot 2 image at 1 MiB with the header at 0 and the given extra tags.
    pub fn image(extra: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let mut tags = Vec::new();
        let mut tag = |kind: u16, flags: u16, body: &[u8]| {
            tags.extend_from_slice(&kind.to_le_bytes());
            tags.extend_from_slice(&flags.to_le_bytes());
            tags.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            tags.extend_from_slice(body);
            while tags.len() % 8 != 0 {
                tags.push(0);
            }
        };
        let load = 0x10_0000u32;
        tag(
            2,
            0,
            &[load, load, 0, load + 0x3000]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        tag(3, 0, &(load + 0x100).to_le_bytes());
        for (k, f, b) in extra {
            tag(*k, *f, b);
        }
        tag(0, 0, &[]);
        let len = 16 + tags.len() as u32;
        let mut b = Vec::new();
        for v in [MAGIC, 0, len, 0u32.wrapping_sub(MAGIC).wrapping_sub(len)] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&tags);
        b.resize(0x2000, 0x90);
        b
    }

    fn cfg() -> VmConfig {
        VmConfig {
            kernel: Some("k".into()),
            cmdline: Some("x=1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn loads_with_address_tags_and_writes_the_information() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let b = image(&[(
            1,
            0,
            [1u32, 6, 14].iter().flat_map(|v| v.to_le_bytes()).collect(),
        )]);
        assert_eq!(find_header(&b), Some(0));
        let m = Multiboot2::new("k", b, 0, &cfg(), &layout).unwrap();
        assert_eq!(m.image.entry, 0x10_0100);
        let mem = super::super::test_util::memory(&layout);
        let e820 = layout.e820(128 * KIB);
        let rsdp = [0x52u8; 36];
        let env = BootEnv {
            layout: &layout,
            e820: &e820,
            rsdp: Some(&rsdp),
            cpus: 1,
        };
        let (_, h) = m.load(&mem, &env).unwrap();
        assert_eq!(
            (h.regs.eax, h.regs.ebx),
            (BOOTLOADER_MAGIC, area::INFO as u32)
        );
        // Walk the tags.
        let rd = |a: u64| mem.read_obj::<u32>(GuestAddress(a)).unwrap();
        let total = rd(area::INFO) as u64;
        let mut at = area::INFO + 8;
        let mut seen = Vec::new();
        while at < area::INFO + total {
            let (t, size) = (rd(at), rd(at + 4) as u64);
            seen.push(t);
            if t == info::CMDLINE {
                let mut s = [0u8; 4];
                mem.read_slice(&mut s, GuestAddress(at + 8)).unwrap();
                assert_eq!(&s, b"x=1\0");
            }
            at += (size + 7) & !7;
        }
        assert_eq!(seen, [1, 2, 4, 5, 6, 14, 15, 0]);
    }

    #[test]
    fn required_tags_it_cannot_give_are_refused_by_name() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let err = |b| {
            Multiboot2::new("k", b, 0, &cfg(), &layout)
                .unwrap_err()
                .to_string()
        };
        assert!(err(image(&[(1, 0, 8u32.to_le_bytes().to_vec())])).contains("framebuffer info"));
        assert!(err(image(&[(5, 0, vec![0; 12])])).contains("framebuffer"));
        assert!(err(image(&[(7, 0, vec![])])).contains("EFI"));
        assert!(err(image(&[(42, 0, vec![])])).contains("header tag 42"));
        // Optional ones are fine.
        assert!(Multiboot2::new(
            "k",
            image(&[(5, 1, vec![0; 12]), (1, 1, 8u32.to_le_bytes().to_vec())]),
            0,
            &cfg(),
            &layout
        )
        .is_ok());
        let mut no_end = image(&[]);
        no_end[8..12].copy_from_slice(&40u32.to_le_bytes());
        let sum = 0u32.wrapping_sub(MAGIC).wrapping_sub(40);
        no_end[12..16].copy_from_slice(&sum.to_le_bytes());
        assert!(err(no_end).contains("end tag"));
    }
}
