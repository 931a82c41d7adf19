//! `--kernel` format detection, in the order QEMU's `-kernel` (and GRUB) use: a multiboot 2
//! header, a multiboot 1 header, a Linux bzImage ("HdrS" at 0x202), then an ELF Linux
//! kernel. Anything else is refused with the reason.

use std::path::Path;

use super::{elf, file_err, linux, multiboot, multiboot2, read_input, BootError, Payload};
use crate::config::{BootProtocol, VmConfig};
use crate::memory::MemoryLayout;

pub(super) fn plan(
    path: &Path,
    cfg: &VmConfig,
    layout: &MemoryLayout,
) -> Result<Payload, BootError> {
    let file = read_input(path, "kernel", layout.ram_size)?;
    plan_bytes(&path.display().to_string(), file, cfg, layout)
}

/// Decides what the kernel `file` (read from `p`) is and checks it for its loader.
pub(super) fn plan_bytes(
    p: &str,
    file: Vec<u8>,
    cfg: &VmConfig,
    layout: &MemoryLayout,
) -> Result<Payload, BootError> {
    let linux_only = |what: &str| -> Result<(), BootError> {
        if cfg.boot_protocol != BootProtocol::Auto {
            return Err(file_err(
                p,
                format!("--boot-protocol is for Linux kernels; this is a {what} kernel"),
            ));
        }
        if cfg.initrd.is_some() {
            return Err(file_err(
                p,
                format!(
                    "--initrd is for Linux kernels; give a {what} kernel its files with --module"
                ),
            ));
        }
        Ok(())
    };
    if let Some(at) = multiboot2::find_header(&file) {
        linux_only("multiboot2")?;
        return Ok(Payload::Multiboot2(Box::new(multiboot2::Multiboot2::new(
            p, file, at, cfg, layout,
        )?)));
    }
    if let Some(at) = multiboot::find_header(&file) {
        linux_only("multiboot")?;
        return Ok(Payload::Multiboot(Box::new(multiboot::Multiboot::new(
            p, file, at, cfg, layout,
        )?)));
    }
    if !cfg.modules.is_empty() {
        return Err(file_err(
            p,
            "--module is for multiboot kernels; this kernel has no multiboot header",
        ));
    }
    if linux::is_bzimage(&file) || elf::is_elf(&file) {
        return Ok(Payload::Linux(Box::new(linux::Linux::new(
            p, file, cfg, layout,
        )?)));
    }
    Err(file_err(
        p,
        "not a kernel minipc can boot (no multiboot header, not a bzImage, not ELF)",
    ))
}

#[cfg(test)]
mod fuzz {
    use std::path::PathBuf;

    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::super::test_util::{memory, Placed};
    use super::super::{area, elf, linux, multiboot, multiboot2, BootEnv, BootPlan};
    use super::*;
    use crate::config::ModuleArg;
    use crate::fuzz::{get_le, mutate, put_le, run, Field, Rng};
    use crate::memory::{EBDA_START, HIGH_MEMORY_START, KIB, MIB};

    const MB1_MAGIC: u32 = 0x1BAD_B002;
    const MB2_MAGIC: u32 = 0xE852_50D6;
    const XEN_PHYS32_ENTRY: u32 = 18;

    /// A seed kernel: its bytes, the fields to aim at, and where a multiboot header is
    /// (its checksum is usually fixed up after a mutation, so the header is still found).
    struct Seed {
        bytes: Vec<u8>,
        fields: Vec<Field>,
        mb1: Option<usize>,
        mb2: Option<usize>,
    }

    fn bzimage_fields() -> Vec<Field> {
        [
            (0x1F1, 1),
            (0x1F4, 4),
            (0x1FE, 2),
            (0x202, 4),
            (0x206, 2),
            (0x211, 1),
            (0x214, 4),
            (0x228, 4),
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

    fn mb1_header(flags: u32, addrs: Option<[u32; 5]>) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [
            MB1_MAGIC,
            flags,
            0u32.wrapping_sub(MB1_MAGIC).wrapping_sub(flags),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in addrs.unwrap_or_default() {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }

    fn mb1_fields(at: usize) -> Vec<Field> {
        (1..8).map(|i| Field(at + 4 * i, 4)).collect()
    }

    /// A multiboot 2 header with the given tags (kind, flags, body) and an end tag.
    fn mb2_header(tags: &[(u16, u16, Vec<u8>)]) -> Vec<u8> {
        let mut t = Vec::new();
        for (kind, flags, body) in tags.iter().chain([(0, 0, Vec::new())].iter()) {
            t.extend_from_slice(&kind.to_le_bytes());
            t.extend_from_slice(&flags.to_le_bytes());
            t.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            t.extend_from_slice(body);
            t.resize(t.len().next_multiple_of(8), 0);
        }
        let len = 16 + t.len() as u32;
        let mut h = Vec::new();
        for v in [
            MB2_MAGIC,
            0,
            len,
            0u32.wrapping_sub(MB2_MAGIC).wrapping_sub(len),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&t);
        h
    }

    /// The header length and every tag's fields and body words.
    fn mb2_fields(b: &[u8], at: usize) -> Vec<Field> {
        let mut f = vec![Field(at + 8, 4)];
        let end = at + get_le(b, at + 8, 4) as usize;
        let mut o = at + 16;
        while o + 8 <= end.min(b.len()) {
            f.extend([Field(o, 2), Field(o + 2, 2), Field(o + 4, 4)]);
            let size = get_le(b, o + 4, 4) as usize;
            f.extend((8..size).step_by(4).map(|i| Field(o + i, 4)));
            if get_le(b, o, 2) == 0 || size < 8 {
                break;
            }
            o += size.next_multiple_of(8);
        }
        f
    }

    fn le32s(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// One valid kernel of a format chosen at random.
    fn seed(rng: &mut Rng) -> Seed {
        let code = |rng: &mut Rng, min: usize, spread: usize| {
            let n = min + rng.index(spread);
            rng.bytes(n)
        };
        match rng.below(9) {
            0 | 1 => {
                let sects = *rng.pick(&[0u8, 1, 4, 20]);
                let pm = 512 + rng.index(0x4000);
                let mut b = linux::tests::bzimage(sects, pm);
                if rng.one_in(3) {
                    put_le(&mut b, 0x236, 2, 0); // no 64-bit entry
                }
                Seed {
                    bytes: b,
                    fields: bzimage_fields(),
                    mb1: None,
                    mb2: None,
                }
            }
            2 | 3 => {
                // An ELF vmlinux, with a PVH note half of the time.
                let text = code(rng, 64, 0x2000);
                let notes: Vec<(u32, &[u8], &[u8])> = if rng.one_in(2) {
                    vec![
                        (1, b"GNU\0", b"abcd"),
                        (XEN_PHYS32_ENTRY, b"Xen\0", &[0x40, 0, 0x10, 0]),
                    ]
                } else {
                    Vec::new()
                };
                let b = elf::tests::elf64(
                    0x10_0000,
                    &[(0x10_0000, &text, text.len() as u64 + 0x1000)],
                    &notes,
                );
                let phnum = 1 + usize::from(!notes.is_empty());
                let mut fields = elf::fuzz::fields(true, phnum);
                if !notes.is_empty() {
                    let noff = get_le(&b, 64 + 56 + 8, 8) as usize;
                    fields.extend((0..8).map(|i| Field(noff + 4 * i, 4)));
                }
                Seed {
                    bytes: b,
                    fields,
                    mb1: None,
                    mb2: None,
                }
            }
            4 => {
                let at = 4 * rng.index(64);
                let len = at + 64 + rng.index(0x3000);
                let b = multiboot::tests::kludge(at, len, 1 << 16 | rng.below(4) as u32);
                Seed {
                    bytes: b,
                    fields: mb1_fields(at),
                    mb1: Some(at),
                    mb2: None,
                }
            }
            5 => {
                // A multiboot 1 ELF32 or ELF64, the header at the start of its text.
                let mut text = mb1_header(rng.below(4) as u32, None);
                text.extend(code(rng, 16, 0x1000));
                let memsz = text.len() as u64 + rng.below(2) * 0x2000;
                let is_64 = rng.one_in(3);
                let b = if is_64 {
                    elf::tests::elf64(0x10_0000, &[(0x10_0000, &text, memsz)], &[])
                } else {
                    elf::tests::elf32(0x10_0000, &[(0x10_0000, &text, memsz as u32)])
                };
                let at = if is_64 { 64 + 56 } else { 52 + 32 };
                let mut fields = elf::fuzz::fields(is_64, 1);
                fields.extend(mb1_fields(at));
                Seed {
                    bytes: b,
                    fields,
                    mb1: Some(at),
                    mb2: None,
                }
            }
            6 | 7 => {
                let extra: Vec<(u16, u16, Vec<u8>)> = match rng.below(4) {
                    0 => vec![(1, 0, le32s(&[1, 2, 4, 6]))],
                    1 => vec![(1, 1, le32s(&[8, 14])), (5, 1, vec![0; 12])],
                    2 => vec![(4, 0, le32s(&[3])), (6, 0, vec![]), (10, 1, vec![0; 16])],
                    _ => Vec::new(),
                };
                let b = multiboot2::tests::image(&extra);
                let fields = mb2_fields(&b, 0);
                Seed {
                    bytes: b,
                    fields,
                    mb1: None,
                    mb2: Some(0),
                }
            }
            _ => {
                // A multiboot 2 ELF, with an entry address tag half of the time.
                let tags = if rng.one_in(2) {
                    vec![(3, 0, le32s(&[0x10_0040]))]
                } else {
                    Vec::new()
                };
                let mut text = mb2_header(&tags);
                text.extend(code(rng, 64, 0x1000));
                let b =
                    elf::tests::elf32(0x10_0000, &[(0x10_0000, &text, text.len() as u32 + 0x1000)]);
                let at = 52 + 32;
                let mut fields = elf::fuzz::fields(false, 1);
                fields.extend(mb2_fields(&b, at));
                Seed {
                    bytes: b,
                    fields,
                    mb1: None,
                    mb2: Some(at),
                }
            }
        }
    }

    /// Mutates a seed; most of the time the multiboot checksum is made right again.
    fn mutated(rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(20) {
            let len = rng.index(0x600);
            let mut b = rng.bytes(len);
            if rng.one_in(2) {
                put_le(&mut b, 0x202, 4, 0x5372_6448);
            }
            return b;
        }
        let mut s = seed(rng);
        if rng.one_in(8) {
            return s.bytes;
        }
        mutate(rng, &mut s.bytes, &s.fields);
        let b = &mut s.bytes;
        if !rng.one_in(4) {
            if let Some(at) = s.mb1 {
                let sum = get_le(b, at, 4) + get_le(b, at + 4, 4);
                put_le(b, at + 8, 4, 0u64.wrapping_sub(sum));
            }
            if let Some(at) = s.mb2 {
                let sum = get_le(b, at, 4) + get_le(b, at + 4, 4) + get_le(b, at + 8, 4);
                put_le(b, at + 12, 4, 0u64.wrapping_sub(sum));
            }
        }
        s.bytes
    }

    /// Files a configuration may name: two modules and an initrd.
    struct Files {
        modules: Vec<PathBuf>,
        initrd: PathBuf,
    }

    impl Files {
        fn new() -> Files {
            let dir = std::env::temp_dir();
            let id = std::process::id();
            let write = |name: &str, len: usize| {
                let p = dir.join(format!("minipc-fuzz-{id}-{name}"));
                std::fs::write(&p, vec![0x5A; len]).unwrap();
                p
            };
            Files {
                modules: vec![write("mod-a", 5000), write("mod-b", 3)],
                initrd: write("initrd", 0x3_0000),
            }
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            for p in self.modules.iter().chain([&self.initrd]) {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// A configuration for the kernel: usually one a kernel of any format takes, else
    /// anything (a protocol or files for another format, odd command lines).
    fn config(rng: &mut Rng, files: &Files) -> VmConfig {
        let plain = VmConfig {
            kernel: Some("fuzzed-kernel".into()),
            cmdline: Some("console=ttyS0".into()),
            acpi: !rng.one_in(4),
            ..Default::default()
        };
        if rng.one_in(2) {
            return plain;
        }
        let protocols = [
            BootProtocol::Auto,
            BootProtocol::Linux64,
            BootProtocol::Linux32,
            BootProtocol::Linux16,
            BootProtocol::Pvh,
        ];
        let cmdline = match rng.below(6) {
            0 => None,
            1 => Some(String::new()),
            2 => Some("x".repeat(rng.index(3000))),
            3 => Some("a\0b".into()),
            _ => Some("console=ttyS0 è".into()),
        };
        let modules = match rng.below(6) {
            0 => vec![ModuleArg {
                path: files.modules[0].clone(),
                string: Some("first".into()),
            }],
            1 => files
                .modules
                .iter()
                .map(|p| ModuleArg {
                    path: p.clone(),
                    string: None,
                })
                .collect(),
            _ => Vec::new(),
        };
        VmConfig {
            cmdline,
            boot_protocol: *rng.pick(&protocols),
            initrd: rng.one_in(4).then(|| files.initrd.clone()),
            modules,
            ..plain
        }
    }

    /// The RAM an image, initrd or module may occupy: above the boot structures and below
    /// the EBDA, or from 1 MiB to the end of low RAM.
    fn allowed(p: &Placed, layout: &MemoryLayout) -> bool {
        let end = p.addr.checked_add(p.len);
        p.len > 0
            && end.is_some_and(|end| {
                (p.addr >= area::INFO_END && end <= EBDA_START)
                    || (p.addr >= HIGH_MEMORY_START && end <= layout.low_ram_end)
            })
    }

    /// Checks a plan's footprint, loads it, and checks that every piece reads back whole.
    fn check_and_load(plan: BootPlan, layout: &MemoryLayout, mem: &GuestMemoryMmap, rng: &mut Rng) {
        let placed = plan.payload.footprint();
        let payload: Vec<&Placed> = placed.iter().filter(|p| p.payload).collect();
        for p in &payload {
            assert!(allowed(p, layout), "{} outside usable RAM: {p:x?}", p.what);
        }
        for (i, a) in payload.iter().enumerate() {
            for b in &payload[i + 1..] {
                assert!(
                    a.addr + a.len <= b.addr || b.addr + b.len <= a.addr,
                    "{} and {} overlap: {a:x?} {b:x?}",
                    a.what,
                    b.what
                );
            }
        }
        let e820 = layout.e820(128 * KIB);
        let mut rsdp = [0x52u8; 36];
        rsdp[15] = 2;
        let env = BootEnv {
            layout,
            e820: &e820,
            rsdp: rng.one_in(2).then_some(&rsdp[..]),
            cpus: 1,
        };
        let plan_text = format!("{:?}", plan.payload)
            .chars()
            .take(300)
            .collect::<String>();
        if let Err(e) = plan.load(mem, &env) {
            panic!("an accepted plan failed to load: {e} ({plan_text})");
        }
        for p in &placed {
            let mut got = vec![0u8; p.head.len()];
            mem.read_slice(&mut got, GuestAddress(p.addr)).unwrap();
            assert!(got == p.head, "{} at {:#x} was overwritten", p.what, p.addr);
        }
    }

    #[test]
    fn kernel_files() {
        let files = Files::new();
        let layouts: Vec<MemoryLayout> = [2 * MIB, 4 * MIB, 64 * MIB]
            .iter()
            .map(|m| MemoryLayout::new(*m).unwrap())
            .collect();
        let mems: Vec<GuestMemoryMmap> = layouts.iter().map(memory).collect();
        let mut accepted = 0u64;
        let mut kinds = std::collections::BTreeMap::<&str, u64>::new();
        let n = run("kernel_files", 8_000, |rng| {
            let file = mutated(rng);
            crate::fuzz::dump(&file);
            let cfg = config(rng, &files);
            let which = rng.index(layouts.len());
            match plan_bytes("fuzzed-kernel", file, &cfg, &layouts[which]) {
                Ok(payload) => {
                    accepted += 1;
                    let plan = BootPlan {
                        payload,
                        disk: None,
                        localtime: false,
                    };
                    *kinds.entry(plan.describe()).or_default() += 1;
                    check_and_load(plan, &layouts[which], &mems[which], rng);
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        });
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!(
            "fuzz kernel_files: accepted and loaded: {}",
            kinds.join(", ")
        );
        // The mutations keep many kernels valid: the loads and their checks ran.
        assert!(
            accepted * 20 >= n,
            "only {accepted} of {n} kernels were accepted"
        );
    }
}
