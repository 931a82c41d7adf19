//! Linux: a bzImage (boot protocol 2.02 or later), loaded with `linux-loader`, or an ELF
//! vmlinux, loaded from the segments `elf.rs` checked; entered through the 64-bit entry
//! (default when the kernel has one), the 32-bit entry, the kernel's own real-mode setup
//! code (`--boot-protocol 16`, on the firmware's BIOS services), or PVH (an ELF with a Xen
//! PVH note).
//!
//! See the kernel's Documentation/arch/x86/boot.rst for every field used here.

use std::io::Cursor;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::pvh;
use super::{area, check_image_range, file_err, put, BootEnv, BootError};
use crate::config::BootProtocol;
use crate::firmware::{BootKind, Handoff, Regs, Segs};
use crate::memory::{MemoryLayout, BIOS_WINDOW_START, HIGH_MEMORY_START, MIB};

const HDRS: u32 = 0x5372_6448;
const LOADED_HIGH: u8 = 0x01;
pub(super) const CAN_USE_HEAP: u8 = 0x80;
const XLF_KERNEL_64: u16 = 0x01;
pub(super) const LOADER_UNDEFINED: u8 = 0xFF;
/// The real-mode segment's layout for the 16-bit protocol: setup code from 0, heap up to
/// HEAP_END, the stack above it.
const HEAP_END: u16 = 0xFE00;
const SETUP_STACK: u32 = 0xFFF0;
const MAX_SETUP_LEN: usize = 0x8000;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Long,
    Protected,
    Real,
    Pvh,
}

#[derive(Debug)]
pub(super) enum Format {
    BzImage {
        /// The setup header as the image has it.
        header: setup_header,
        /// The real-mode part: boot sector and setup code.
        setup_len: usize,
        /// Where the protected-mode kernel goes.
        load_addr: u64,
    },
    Elf {
        entry: u64,
        pvh_entry: Option<u32>,
    },
}

#[derive(Debug)]
pub struct Linux {
    path: String,
    image: Vec<u8>,
    format: Format,
    entry: Entry,
    cmdline: Vec<u8>,
    initrd: Option<(String, Vec<u8>, u64)>,
    acpi: bool,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// True when the image has a bzImage setup header ("HdrS" at 0x202).
pub fn is_bzimage(b: &[u8]) -> bool {
    b.len() >= 0x206 && u32_at(b, 0x202) == HDRS
}

/// The setup header, as the image has it (bytes 0x1F1 onward).
fn read_header(b: &[u8]) -> setup_header {
    let mut h = setup_header::default();
    let n = std::mem::size_of::<setup_header>().min(b.len().saturating_sub(0x1F1));
    h.as_mut_slice()[..n].copy_from_slice(&b[0x1F1..0x1F1 + n]);
    h
}

impl Linux {
    pub fn describe(&self) -> &'static str {
        match (&self.format, self.entry) {
            (Format::BzImage { .. }, Entry::Long) => "linux-bzimage-64",
            (Format::BzImage { .. }, Entry::Protected) => "linux-bzimage-32",
            (Format::BzImage { .. }, Entry::Real) => "linux-bzimage-16",
            (Format::Elf { .. }, Entry::Pvh) => "linux-elf-pvh",
            (Format::Elf { .. }, _) => "linux-elf-64",
            (Format::BzImage { .. }, Entry::Pvh) => "linux-bzimage",
        }
    }

    /// A bzImage of `len` bytes, `b` its first bytes (the setup code at least): every header
    /// field the load relies on is checked here.
    pub(super) fn bzimage(
        path: &str,
        b: &[u8],
        len: usize,
        protocol: BootProtocol,
        layout: &MemoryLayout,
    ) -> Result<(Format, Entry, usize), BootError> {
        if b.len() < 0x268 || len < b.len() {
            return Err(file_err(
                path,
                "bzImage is truncated (no complete setup header)",
            ));
        }
        let header = read_header(b);
        let version = header.version;
        if version < 0x0202 || header.loadflags & LOADED_HIGH == 0 {
            return Err(file_err(
                path,
                format!("Linux boot protocol {}.{:02} is too old (a bzImage of protocol 2.02 or later is needed)", version >> 8, version & 0xFF),
            ));
        }
        let setup_sects = if header.setup_sects == 0 {
            4
        } else {
            header.setup_sects as usize
        };
        let setup_len = (setup_sects + 1) * 512;
        if setup_len >= len {
            return Err(file_err(
                path,
                format!(
                    "bzImage is truncated: {} bytes, its setup code alone is {setup_len}",
                    len
                ),
            ));
        }
        let pm_len = (len - setup_len) as u64;
        // syssize counts 16-byte paragraphs, rounded up.
        let syssize = header.syssize as u64 * 16;
        if version >= 0x0204 && syssize >= pm_len + 16 {
            return Err(file_err(
                path,
                format!(
                    "bzImage is truncated: its kernel is {pm_len} bytes, the header says {syssize}"
                ),
            ));
        }
        let entry = bzimage_entry(path, &header, protocol)?;
        if entry == Entry::Real && setup_len > MAX_SETUP_LEN {
            return Err(file_err(
                path,
                format!("setup code of {setup_len} bytes does not fit the real-mode segment"),
            ));
        }
        let need = if version >= 0x020A {
            (header.init_size as u64).max(pm_len)
        } else {
            pm_len
        };
        let load_addr = load_address(&header, need, layout);
        check_image_range(
            path,
            "the kernel",
            load_addr,
            load_addr.saturating_add(need),
            layout,
        )?;
        let cmdline_size = if version >= 0x0206 {
            header.cmdline_size as usize
        } else {
            255
        };
        Ok((
            Format::BzImage {
                header,
                setup_len,
                load_addr,
            },
            entry,
            cmdline_size,
        ))
    }

    pub fn new(
        path: &str,
        image: Vec<u8>,
        cfg: &crate::config::VmConfig,
        layout: &MemoryLayout,
    ) -> Result<Linux, BootError> {
        let (format, entry, cmdline_size) = if is_bzimage(&image) {
            Self::bzimage(path, &image, image.len(), cfg.boot_protocol, layout)?
        } else {
            let (f, e) = elf_kernel(path, &image, cfg.boot_protocol, layout)?;
            (f, e, area::CMDLINE_MAX as usize)
        };
        let cmdline = kernel_cmdline(cfg, cmdline_size)?;
        let kernel_end = match &format {
            Format::BzImage {
                header,
                setup_len,
                load_addr,
            } => {
                let pm = (image.len() - setup_len) as u64;
                load_addr + (header.init_size as u64).max(pm)
            }
            Format::Elf { .. } => elf_end(&image),
        };
        let initrd = match &cfg.initrd {
            Some(p) => {
                let ip = p.display().to_string();
                let bytes = super::read_input(p, "initrd", layout.ram_size)?;
                let max = match &format {
                    Format::BzImage { header, .. } if header.version >= 0x0203 => {
                        header.initrd_addr_max as u64
                    }
                    Format::BzImage { .. } => 0x37FF_FFFF,
                    Format::Elf { .. } => u32::MAX as u64,
                };
                let addr = place_initrd(bytes.len() as u64, kernel_end, max, layout)
                    .ok_or_else(|| file_err(&ip, format!(
                        "initrd of {} bytes does not fit between the kernel's end ({kernel_end:#x}) and {:#x}",
                        bytes.len(),
                        max.min(layout.low_ram_end - 1) + 1
                    )))?;
                Some((ip, bytes, addr))
            }
            None => None,
        };
        Ok(Linux {
            path: path.to_string(),
            image,
            format,
            entry,
            cmdline,
            initrd,
            acpi: cfg.acpi,
        })
    }

    pub fn load(
        &self,
        mem: &GuestMemoryMmap,
        env: &BootEnv,
    ) -> Result<(BootKind, Handoff), BootError> {
        let load_err = |e: linux_loader::loader::Error| {
            file_err(&self.path, format!("cannot load the kernel: {e}"))
        };
        put(mem, area::CMDLINE, &self.cmdline)?;
        let (ramdisk_image, ramdisk_size) = match &self.initrd {
            Some((_, bytes, addr)) => {
                put(mem, *addr, bytes)?;
                (*addr as u32, bytes.len() as u32)
            }
            None => (0, 0),
        };
        match &self.format {
            Format::BzImage {
                header,
                setup_len,
                load_addr,
            } => {
                let r = BzImage::load(
                    mem,
                    Some(GuestAddress(*load_addr)),
                    &mut Cursor::new(&self.image),
                    None,
                )
                .map_err(load_err)?;
                let mut hdr = r.setup_header.unwrap_or(*header);
                hdr.type_of_loader = LOADER_UNDEFINED;
                hdr.cmd_line_ptr = area::CMDLINE as u32;
                hdr.ramdisk_image = ramdisk_image;
                hdr.ramdisk_size = ramdisk_size;
                hdr.code32_start = *load_addr as u32;
                if self.entry == Entry::Real {
                    return self.load_real(mem, &hdr, *setup_len);
                }
                let params = self.boot_params(hdr, env);
                LinuxBootConfigurator::write_bootparams(
                    &BootParams::new(&params, GuestAddress(area::ZERO_PAGE)),
                    mem,
                )
                .map_err(|e| BootError::Memory(e.to_string()))?;
                let entry = if self.entry == Entry::Long {
                    load_addr + 0x200
                } else {
                    *load_addr
                };
                self.handoff(mem, entry)
            }
            Format::Elf { entry, pvh_entry } => {
                // The segments `elf_kernel` checked, read by the same parser: their file
                // bytes at their physical addresses (the kernel clears its own BSS).
                let elf = super::elf::parse(&self.image).map_err(|e| file_err(&self.path, e))?;
                for s in &elf.segments {
                    let start = s.offset as usize;
                    put(mem, s.paddr, &self.image[start..start + s.filesz as usize])?;
                }
                if self.entry == Entry::Pvh {
                    let pvh = pvh_entry
                        .ok_or_else(|| file_err(&self.path, "the kernel has no PVH entry"))?;
                    return pvh::load(mem, env, self.acpi, pvh, ramdisk_image, ramdisk_size);
                }
                let hdr = setup_header {
                    boot_flag: 0xAA55,
                    header: HDRS,
                    type_of_loader: LOADER_UNDEFINED,
                    kernel_alignment: 0x100_0000,
                    cmd_line_ptr: area::CMDLINE as u32,
                    cmdline_size: self.cmdline.len() as u32,
                    ramdisk_image,
                    ramdisk_size,
                    ..Default::default()
                };
                let params = self.boot_params(hdr, env);
                LinuxBootConfigurator::write_bootparams(
                    &BootParams::new(&params, GuestAddress(area::ZERO_PAGE)),
                    mem,
                )
                .map_err(|e| BootError::Memory(e.to_string()))?;
                self.handoff(mem, *entry)
            }
        }
    }

    /// Where the plan puts the kernel, initrd, command line and setup code.
    #[cfg(test)]
    pub(super) fn footprint(&self) -> Vec<super::test_util::Placed> {
        use super::test_util::{head, Placed};
        let mut v = vec![Placed {
            what: "command line",
            payload: false,
            addr: area::CMDLINE,
            len: self.cmdline.len() as u64,
            head: self.cmdline.clone(),
        }];
        match &self.format {
            Format::BzImage {
                setup_len,
                load_addr,
                ..
            } => {
                let pm = (self.image.len() - setup_len) as u64;
                v.push(Placed {
                    what: "kernel",
                    payload: true,
                    addr: *load_addr,
                    len: pm,
                    head: head(&self.image, *setup_len as u64, pm, pm, false),
                });
                if self.entry == Entry::Real {
                    v.push(Placed {
                        what: "setup",
                        payload: false,
                        addr: area::SETUP,
                        len: *setup_len as u64,
                        head: self.image[..0x1F1].to_vec(),
                    });
                }
            }
            Format::Elf { .. } => {
                for s in super::elf::parse(&self.image)
                    .map(|e| e.segments)
                    .unwrap_or_default()
                {
                    v.push(Placed {
                        what: "ELF segment",
                        payload: true,
                        addr: s.paddr,
                        len: s.memsz,
                        head: head(&self.image, s.offset, s.filesz, s.memsz, false),
                    });
                }
            }
        }
        if let Some((_, bytes, addr)) = &self.initrd {
            let n = bytes.len() as u64;
            v.push(Placed {
                what: "initrd",
                payload: true,
                addr: *addr,
                len: n,
                head: head(bytes, 0, n, n, false),
            });
        }
        v
    }

    /// The zero page for the 32- and 64-bit entries.
    fn boot_params(&self, hdr: setup_header, env: &BootEnv) -> boot_params {
        let mut p = boot_params {
            hdr,
            ..Default::default()
        };
        for (slot, e) in p.e820_table.iter_mut().zip(env.e820) {
            *slot = boot_e820_entry {
                addr: e.addr,
                size: e.size,
                r#type: e.kind as u32,
            };
        }
        p.e820_entries = env.e820.len().min(p.e820_table.len()) as u8;
        if self.acpi && env.rsdp.is_some() {
            p.acpi_rsdp_addr = BIOS_WINDOW_START;
        }
        p
    }

    /// The GDT, page tables (64-bit) and registers of a protected- or long-mode entry: ESI
    /// points at the zero page; EBX, EBP and EDI are zero; interrupts off.
    fn handoff(&self, mem: &GuestMemoryMmap, entry: u64) -> Result<(BootKind, Handoff), BootError> {
        let regs = Regs {
            esi: area::ZERO_PAGE as u32,
            ..Default::default()
        };
        super::flat_handoff(mem, entry, self.entry == Entry::Long, regs)
    }

    /// The 16-bit protocol: the real-mode part at `area::SETUP` with its header filled in;
    /// the setup code then calls the BIOS itself and enters the protected-mode kernel.
    fn load_real(
        &self,
        mem: &GuestMemoryMmap,
        hdr: &setup_header,
        setup_len: usize,
    ) -> Result<(BootKind, Handoff), BootError> {
        let mut setup = self.image[..setup_len].to_vec();
        let mut hdr = *hdr;
        hdr.loadflags |= CAN_USE_HEAP;
        hdr.heap_end_ptr = HEAP_END - 0x200;
        let n = std::mem::size_of::<setup_header>().min(setup.len() - 0x1F1);
        setup[0x1F1..0x1F1 + n].copy_from_slice(&hdr.as_slice()[..n]);
        put(mem, area::SETUP, &setup)?;
        let seg = (area::SETUP >> 4) as u16;
        Ok((
            BootKind::Real,
            Handoff {
                entry: ((seg as u32 + 0x20) << 16),
                segs: Segs::flat(seg + 0x20, seg),
                regs: Regs {
                    esp: SETUP_STACK,
                    ..Default::default()
                },
                interrupts: false,
                gdt: (0, 0),
                cr3: 0,
            },
        ))
    }
}

/// `--cmdline` as a kernel that takes `size` bytes (NUL included) accepts it, NUL-terminated.
pub(super) fn kernel_cmdline(
    cfg: &crate::config::VmConfig,
    size: usize,
) -> Result<Vec<u8>, BootError> {
    let text = cfg.cmdline.clone().unwrap_or_default();
    Ok(
        Cmdline::try_from(&text, size.min(area::CMDLINE_MAX as usize))
            .map_err(|e| BootError::Cmdline(format!("{e} (the kernel takes {size} bytes)")))?
            .as_cstring()
            .map_err(|e| BootError::Cmdline(e.to_string()))?
            .into_bytes_with_nul(),
    )
}

/// How a bzImage of this header is entered under `protocol`: the 64-bit entry by default
/// when it has one (protocol 2.12 and XLF_KERNEL_64), else the 32-bit one.
fn bzimage_entry(
    path: &str,
    header: &setup_header,
    protocol: BootProtocol,
) -> Result<Entry, BootError> {
    Ok(match protocol {
        BootProtocol::Pvh => {
            return Err(file_err(
                path,
                "PVH needs an ELF kernel with a PVH note, not a bzImage",
            ))
        }
        BootProtocol::Linux16 => Entry::Real,
        BootProtocol::Linux32 => Entry::Protected,
        BootProtocol::Linux64 | BootProtocol::Auto => {
            let has_64 = header.version >= 0x020C && header.xloadflags & XLF_KERNEL_64 != 0;
            match (has_64, protocol) {
                (true, _) => Entry::Long,
                (false, BootProtocol::Auto) => Entry::Protected,
                (false, _) => {
                    return Err(file_err(
                        path,
                        "the kernel has no 64-bit entry (XLF_KERNEL_64); try --boot-protocol 32",
                    ))
                }
            }
        }
    })
}

/// Where the protected-mode kernel of a bzImage goes: a relocatable kernel at its
/// preferred address when that fits, else at the first aligned address above 1 MiB; a
/// fixed one at 1 MiB.
fn load_address(h: &setup_header, need: u64, layout: &MemoryLayout) -> u64 {
    let relocatable = h.version >= 0x0205 && h.relocatable_kernel != 0;
    if !relocatable {
        // A bzImage's protected-mode part goes at 1 MiB (code32_start is where the setup
        // code jumps, which the loader sets to where it put the kernel).
        return HIGH_MEMORY_START;
    }
    let align = (h.kernel_alignment as u64)
        .clamp(0x1000, 1 << 30)
        .next_power_of_two();
    if h.version >= 0x020A {
        let pref = h.pref_address;
        if pref >= HIGH_MEMORY_START
            && pref
                .checked_add(need)
                .is_some_and(|e| e <= layout.low_ram_end)
        {
            return pref;
        }
    }
    (HIGH_MEMORY_START + align - 1) & !(align - 1)
}

/// The initrd's address: as high as it fits below `max` and the end of low RAM, page
/// aligned, above the kernel.
pub(super) fn place_initrd(
    size: u64,
    kernel_end: u64,
    max: u64,
    layout: &MemoryLayout,
) -> Option<u64> {
    let top = max.min(layout.low_ram_end - 1).checked_add(1)?;
    let addr = top.checked_sub(size)? & !0xFFF;
    let floor = kernel_end.checked_add(0xFFF)? & !0xFFF;
    (addr >= floor && addr >= MIB).then_some(addr)
}

/// The highest address an ELF kernel's segments reach.
fn elf_end(image: &[u8]) -> u64 {
    super::elf::parse(image)
        .map(|e| {
            e.segments
                .iter()
                .map(|s| s.paddr + s.memsz)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// An ELF vmlinux: a 64-bit x86 executable whose segments fit in RAM from 1 MiB.
fn elf_kernel(
    path: &str,
    b: &[u8],
    protocol: BootProtocol,
    layout: &MemoryLayout,
) -> Result<(Format, Entry), BootError> {
    let elf = super::elf::parse(b).map_err(|e| file_err(path, e))?;
    if !elf.is_64 {
        return Err(file_err(
            path,
            "a 32-bit ELF without a multiboot header is not a Linux kernel",
        ));
    }
    for s in &elf.segments {
        check_image_range(path, "an ELF segment", s.paddr, s.paddr + s.memsz, layout)?;
    }
    let pvh_entry = pvh::note(b);
    let entry = match protocol {
        BootProtocol::Pvh if pvh_entry.is_some() => Entry::Pvh,
        BootProtocol::Pvh => {
            return Err(file_err(
                path,
                "the kernel has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY)",
            ))
        }
        BootProtocol::Auto | BootProtocol::Linux64 => Entry::Long,
        BootProtocol::Linux32 | BootProtocol::Linux16 => return Err(file_err(
            path,
            "an ELF kernel is entered at its 64-bit entry or by PVH (--boot-protocol 64 or pvh)",
        )),
    };
    if elf.entry < HIGH_MEMORY_START || elf.entry >= layout.low_ram_end {
        return Err(file_err(
            path,
            format!("entry point {:#x} is outside the kernel's RAM", elf.entry),
        ));
    }
    Ok((
        Format::Elf {
            entry: elf.entry,
            pvh_entry,
        },
        entry,
    ))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::boot::pvh::XEN_ELFNOTE_PHYS32_ENTRY;
    use crate::memory::MemoryLayout;

    /// A bzImage of protocol 2.15 with `setup_sects` sectors of setup and `pm` bytes of
    /// protected-mode kernel.
    pub fn bzimage(setup_sects: u8, pm: usize) -> Vec<u8> {
        let mut b = vec![0u8; (setup_sects as usize + 1) * 512 + pm];
        b[0x1F1] = setup_sects;
        b[0x1FE..0x200].copy_from_slice(&0xAA55u16.to_le_bytes());
        b[0x202..0x206].copy_from_slice(&HDRS.to_le_bytes());
        b[0x206..0x208].copy_from_slice(&0x020Fu16.to_le_bytes());
        b[0x211] = LOADED_HIGH;
        b[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        b[0x22C..0x230].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        b[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
        b[0x234] = 1;
        b[0x236..0x238].copy_from_slice(&0x3u16.to_le_bytes());
        b[0x238..0x23C].copy_from_slice(&2048u32.to_le_bytes());
        b[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
        b[0x260..0x264].copy_from_slice(&(pm as u32 * 2).to_le_bytes());
        b
    }

    fn cfg(protocol: BootProtocol) -> crate::config::VmConfig {
        crate::config::VmConfig {
            boot_protocol: protocol,
            cmdline: Some("console=ttyS0".into()),
            ..Default::default()
        }
    }

    #[test]
    fn bzimage_entries_and_placement() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let l = Linux::new("k", bzimage(4, 8192), &cfg(BootProtocol::Auto), &layout).unwrap();
        assert_eq!(l.entry, Entry::Long);
        let Format::BzImage {
            load_addr,
            setup_len,
            ..
        } = l.format
        else {
            panic!()
        };
        assert_eq!((load_addr, setup_len), (0x100_0000, 2560));
        // 4 MiB of RAM cannot hold the kernel at 16 MiB: the first aligned address instead.
        let small = MemoryLayout::new(4 * MIB).unwrap();
        let l = Linux::new("k", bzimage(4, 8192), &cfg(BootProtocol::Linux32), &small).unwrap();
        let Format::BzImage { load_addr, .. } = l.format else {
            panic!()
        };
        assert_eq!(load_addr, 0x20_0000);
        assert_eq!(l.entry, Entry::Protected);
    }

    #[test]
    fn bad_bzimages_name_the_problem() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let err = |b: Vec<u8>, p| {
            Linux::new("vmlinuz", b, &cfg(p), &layout)
                .unwrap_err()
                .to_string()
        };
        let mut old = bzimage(4, 4096);
        old[0x206] = 0x01;
        assert!(err(old, BootProtocol::Auto).contains("too old"));
        assert!(err(bzimage(4, 4096)[..0x300].to_vec(), BootProtocol::Auto).contains("truncated"));
        let mut no64 = bzimage(4, 4096);
        no64[0x236] = 0;
        assert!(err(no64.clone(), BootProtocol::Linux64).contains("64-bit entry"));
        assert!(Linux::new("k", no64, &cfg(BootProtocol::Auto), &layout).is_ok());
        assert!(err(bzimage(4, 4096), BootProtocol::Pvh).contains("PVH"));
        assert!(err(bzimage(80, 4096), BootProtocol::Linux16).contains("real-mode segment"));
        let mut huge = bzimage(4, 4096);
        huge[0x260..0x264].copy_from_slice(&0x1000_0000u32.to_le_bytes());
        assert!(err(huge, BootProtocol::Auto).starts_with("vmlinuz: the kernel at"));
        let mut c = cfg(BootProtocol::Auto);
        c.cmdline = Some("x".repeat(3000));
        let e = Linux::new("k", bzimage(4, 4096), &c, &layout)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--cmdline"), "{e}");
    }

    /// An ELF vmlinux with a PVH note whose descriptor size is `descsz` (the entry is
    /// there either way).
    fn vmlinux_with_pvh_descsz(descsz: u32) -> Vec<u8> {
        let text = [0x90u8; 64];
        let mut b = crate::boot::elf::tests::elf64(
            0x10_0000,
            &[(0x10_0000, &text, 0x2000)],
            &[(
                XEN_ELFNOTE_PHYS32_ENTRY,
                b"Xen\0",
                &0x10_0040u32.to_le_bytes(),
            )],
        );
        let note = 64 + 2 * 56 + text.len();
        b[note + 4..note + 8].copy_from_slice(&descsz.to_le_bytes());
        b
    }

    /// Found by fuzzing (`pvh_notes`): a program header table offset within a few bytes of
    /// the top of the address space overflowed reading the first header (a panic in debug
    /// builds). `elf::parse` refuses such a file first; this parser stands on its own.
    #[test]
    fn a_program_header_offset_at_the_top_is_no_note() {
        let mut b = vmlinux_with_pvh_descsz(4);
        b[32..40].copy_from_slice(&0xFFFF_FFFF_FFFF_FFFDu64.to_le_bytes());
        b[54..56].copy_from_slice(&0x35u16.to_le_bytes());
        assert_eq!(pvh::note(&b), None);
    }

    /// Found by fuzzing (`pvh_notes`, in a longer run): a PT_NOTE whose offset is within 12
    /// bytes of the top of the address space overflowed walking its notes.
    #[test]
    fn a_note_segment_at_the_top_is_no_note() {
        let mut b = vmlinux_with_pvh_descsz(4);
        let note_header = 64 + 56;
        b[note_header + 8..note_header + 16].copy_from_slice(&(u64::MAX - 2).to_le_bytes());
        b[note_header + 32..note_header + 40].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(pvh::note(&b), None);
    }

    /// Found by fuzzing (`kernel_files`): a PVH note with a descriptor too short for the
    /// entry was taken as the entry, and the ELF passed the plan's checks but failed to load
    /// after the machine was built ("Invalid PVH note header" from a second parser).
    #[test]
    fn a_short_pvh_note_is_no_entry_and_the_elf_loads_as_planned() {
        assert_eq!(pvh::note(&vmlinux_with_pvh_descsz(4)), Some(0x10_0040));
        let short = vmlinux_with_pvh_descsz(0);
        assert_eq!(pvh::note(&short), None);
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let e = Linux::new("k", short.clone(), &cfg(BootProtocol::Pvh), &layout)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PVH note"), "{e}");
        let l = Linux::new("k", short, &cfg(BootProtocol::Auto), &layout).unwrap();
        let mem = super::super::test_util::memory(&layout);
        let e820 = layout.e820(128 * 1024);
        let env = BootEnv {
            layout: &layout,
            e820: &e820,
            rsdp: None,
            cpus: 1,
        };
        let (kind, h) = l.load(&mem, &env).unwrap();
        assert_eq!((kind, h.entry), (BootKind::Long, 0x10_0000));
        let mut text = [0u8; 64];
        vm_memory::Bytes::read_slice(&mem, &mut text, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(text, [0x90; 64]);
    }

    #[test]
    fn initrd_goes_high_and_page_aligned() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        assert_eq!(
            place_initrd(0x1800, 0x20_0000, 0x7FFF_FFFF, &layout),
            Some(64 * MIB - 0x2000)
        );
        assert_eq!(
            place_initrd(0x1000, 0x20_0000, 0x3F_FFFF, &layout),
            Some(0x3F_F000)
        );
        assert_eq!(place_initrd(60 * MIB, 8 * MIB, 0x7FFF_FFFF, &layout), None);
        assert_eq!(place_initrd(u64::MAX, 0, u64::MAX, &layout), None);
    }

    /// Found by fuzzing (`initrd_placement`): a kernel end within a page of the top of the
    /// address space overflowed rounding up (a panic in debug builds).
    #[test]
    fn a_kernel_ending_at_the_top_leaves_no_room_for_an_initrd() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        assert_eq!(
            place_initrd(0x1000, u64::MAX - 0x800, u64::MAX, &layout),
            None
        );
    }

    #[test]
    fn loads_zero_page_and_handoff() {
        let layout = MemoryLayout::new(64 * MIB).unwrap();
        let mem = super::super::test_util::memory(&layout);
        let e820 = layout.e820(128 * 1024);
        let env = BootEnv {
            layout: &layout,
            e820: &e820,
            rsdp: None,
            cpus: 1,
        };
        for (p, kind, entry) in [
            (BootProtocol::Auto, BootKind::Long, 0x100_0200),
            (BootProtocol::Linux32, BootKind::Protected, 0x100_0000),
        ] {
            let l = Linux::new("k", bzimage(4, 8192), &cfg(p), &layout).unwrap();
            let (k, h) = l.load(&mem, &env).unwrap();
            assert_eq!((k, h.entry), (kind, entry));
            assert_eq!(h.regs.esi, area::ZERO_PAGE as u32);
            let zp: boot_params =
                vm_memory::Bytes::read_obj(&mem, GuestAddress(area::ZERO_PAGE)).unwrap();
            assert_eq!(zp.hdr.type_of_loader, 0xFF);
            assert_eq!({ zp.hdr.cmd_line_ptr }, area::CMDLINE as u32);
            assert_eq!(zp.e820_entries as usize, e820.len());
            assert_eq!({ zp.e820_table[3].addr }, 0x10_0000);
        }
        let l = Linux::new("k", bzimage(4, 8192), &cfg(BootProtocol::Linux16), &layout).unwrap();
        let (k, h) = l.load(&mem, &env).unwrap();
        assert_eq!(k, BootKind::Real);
        assert_eq!(h.entry, 0x1020 << 16);
        assert_eq!(h.segs.ds, 0x1000);
        let mut hdr = [0u8; 4];
        vm_memory::Bytes::read_slice(&mem, &mut hdr, GuestAddress(area::SETUP + 0x228)).unwrap();
        assert_eq!(u32::from_le_bytes(hdr), area::CMDLINE as u32);
    }
}

#[cfg(test)]
mod fuzz {
    use super::tests::bzimage;
    use super::*;
    use crate::boot::elf::tests::elf64;
    use crate::boot::firmware_linux::FwCfgLinux;
    use crate::boot::pvh::XEN_ELFNOTE_PHYS32_ENTRY;
    use crate::devices::fw_cfg::{key, FwCfg};
    use crate::fuzz::{get_le, mutate, put_le, run, Field};

    #[test]
    fn pvh_notes() {
        run("pvh_notes", 40_000, |rng| {
            let text = [0x90u8; 32];
            let mut notes: Vec<(u32, &[u8], &[u8])> = vec![(1, b"GNU\0", b"abcdefgh")];
            let entry = 0x10_0000u32 + rng.below(0x1000) as u32;
            let desc = entry.to_le_bytes();
            let at = rng.index(2);
            notes.insert(at, (XEN_ELFNOTE_PHYS32_ENTRY, b"Xen\0", &desc));
            let mut b = elf64(0x10_0000, &[(0x10_0000, &text, 0x1000)], &notes);
            // The ELF header's table fields, the note header, and each note's words.
            let noff = get_le(&b, 64 + 56 + 8, 8) as usize;
            let mut fields = vec![Field(32, 8), Field(54, 2), Field(56, 2)];
            fields.extend([56, 64, 96, 112].map(|o| Field(64 + o, 8)));
            fields.extend([
                Field(64 + 56, 4),
                Field(64 + 56 + 8, 8),
                Field(64 + 56 + 32, 8),
            ]);
            fields.extend((0..12).map(|i| Field(noff + 4 * i, 4)));
            mutate(rng, &mut b, &fields);
            if rng.one_in(10) {
                put_le(&mut b, 32, 8, rng.interesting());
            }
            crate::fuzz::dump(&b);
            if let Some(e) = pvh::note(&b) {
                // The entry is a descriptor's bytes, right after a "Xen" name.
                let found = b
                    .windows(8)
                    .any(|w| w[..4] == *b"Xen\0" && w[4..] == e.to_le_bytes());
                assert!(found, "entry {e:#x} is not after a Xen note name");
            }
        });
    }

    #[test]
    fn initrd_placement() {
        let layouts: Vec<MemoryLayout> = [2 * MIB, 4 * MIB, 64 * MIB, 3584 * MIB]
            .iter()
            .map(|m| MemoryLayout::new(*m).unwrap())
            .collect();
        run("initrd_placement", 200_000, |rng| {
            let layout = rng.pick(&layouts);
            let size = match rng.below(3) {
                0 => rng.below(64 * MIB),
                1 => rng.below(0x3000),
                _ => rng.interesting(),
            };
            let kernel_end = match rng.below(3) {
                0 => HIGH_MEMORY_START + rng.below(32 * MIB),
                1 => layout.low_ram_end.saturating_sub(rng.below(4 * MIB)),
                _ => rng.interesting(),
            };
            let max = match rng.below(4) {
                0 => 0x37FF_FFFF,
                1 => u64::from(u32::MAX),
                2 => 0x7FFF_FFFF,
                _ => rng.interesting(),
            };
            let top = (u128::from(max) + 1).min(u128::from(layout.low_ram_end));
            let floor = (u128::from(kernel_end) + 0xFFF) & !0xFFF;
            match place_initrd(size, kernel_end, max, layout) {
                Some(addr) => {
                    let (a, end) = (u128::from(addr), u128::from(addr) + u128::from(size));
                    assert_eq!(addr % 0x1000, 0);
                    assert!(addr >= MIB && a >= floor && end <= top, "{addr:#x}");
                    // As high as it goes: the next page up does not fit.
                    assert!(end + 0x1000 > top);
                }
                None => {
                    // Nothing page aligned between the kernel (and 1 MiB) and the top fits.
                    let highest = top.checked_sub(u128::from(size)).map(|a| a & !0xFFF);
                    assert!(
                        highest.is_none_or(|a| a < floor || a < u128::from(MIB)),
                        "{size:#x} above {kernel_end:#x} below {max:#x} refused"
                    );
                }
            }
        });
    }

    /// The fields of the setup header a bzImage's checks read.
    fn bzimage_fields() -> Vec<Field> {
        [
            (0x1F1, 1),
            (0x1F4, 4),
            (0x206, 2),
            (0x211, 1),
            (0x22C, 4),
            (0x230, 4),
            (0x234, 1),
            (0x236, 2),
            (0x238, 4),
            (0x258, 8),
            (0x260, 4),
        ]
        .iter()
        .map(|&(o, w)| Field(o, w))
        .collect()
    }

    /// An fw_cfg item's first `n` bytes, read through the data port.
    fn item(fw: &mut FwCfg, k: u16, n: usize) -> Vec<u8> {
        use crate::bus::BusDevice;
        fw.write(0, &k.to_le_bytes());
        let mut v = vec![0u8; n];
        fw.read(1, &mut v);
        v
    }

    #[test]
    fn firmware_bzimage() {
        let layouts: Vec<MemoryLayout> = [2 * MIB, 4 * MIB, 64 * MIB]
            .iter()
            .map(|m| MemoryLayout::new(*m).unwrap())
            .collect();
        let mem = vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        run("firmware_bzimage", 12_000, |rng| {
            let sects = *rng.pick(&[0u8, 1, 4, 30, 70]);
            let pm = 128 + rng.index(0x3000);
            let mut b = bzimage(sects, pm);
            if !rng.one_in(8) {
                mutate(rng, &mut b, &bzimage_fields());
            }
            crate::fuzz::dump(&b);
            let cfg = crate::config::VmConfig {
                cmdline: match rng.below(4) {
                    0 => None,
                    1 => Some("x".repeat(rng.index(3000))),
                    _ => Some("console=ttyS0".into()),
                },
                ..Default::default()
            };
            let layout = rng.pick(&layouts);
            let Ok(l) = FwCfgLinux::new("k", b.clone(), &cfg, layout) else {
                return;
            };
            // The setup code fits below the command line; the kernel in RAM from 1 MiB.
            let setup_len = l.setup.len();
            assert!(area::SETUP + setup_len as u64 <= area::CMDLINE);
            assert!(HIGH_MEMORY_START + (b.len() - setup_len) as u64 <= layout.low_ram_end);
            let mut fw = FwCfg::new(mem.clone());
            l.add_items(&mut fw);
            let u32_item = |fw: &mut FwCfg, k| get_le(&item(fw, k, 4), 0, 4) as usize;
            assert_eq!(u32_item(&mut fw, key::SETUP_SIZE), setup_len);
            assert_eq!(u32_item(&mut fw, key::KERNEL_SIZE), b.len() - setup_len);
            assert_eq!(u32_item(&mut fw, key::CMDLINE_SIZE), l.cmdline.len());
            let n = 16.min(b.len() - setup_len);
            assert_eq!(
                item(&mut fw, key::KERNEL_DATA, n),
                b[setup_len..setup_len + n]
            );
            assert_eq!(item(&mut fw, key::SETUP_DATA, 0x1F1), b[..0x1F1]);
        });
    }
}
