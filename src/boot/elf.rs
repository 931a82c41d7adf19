//! ELF program headers, as a multiboot loader reads them: 32- and 64-bit little-endian x86
//! executables, their loadable segments (at their physical addresses) and entry point.
//! Every field is checked against the file before use.

/// A loadable segment: `filesz` bytes from `offset` in the file go to `paddr`, then zeros up
/// to `memsz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub paddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub memsz: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElfImage {
    pub is_64: bool,
    pub entry: u64,
    pub segments: Vec<Segment>,
}

const PT_LOAD: u32 = 1;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
const MAX_PHNUM: usize = 1024;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// True when `b` starts like an ELF file.
pub fn is_elf(b: &[u8]) -> bool {
    b.starts_with(b"\x7fELF")
}

/// Parses an x86 ELF executable. The error says what is wrong with it.
pub fn parse(b: &[u8]) -> Result<ElfImage, String> {
    if !is_elf(b) || b.len() < 52 {
        return Err("not an ELF file".into());
    }
    let is_64 = match b[4] {
        1 => false,
        2 => true,
        c => return Err(format!("ELF class {c} is neither 32- nor 64-bit")),
    };
    if b[5] != 1 {
        return Err("ELF file is not little-endian".into());
    }
    let bad = || "ELF header is truncated".to_string();
    let machine = u16_at(b, 18).ok_or_else(bad)?;
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(format!("ELF machine {machine} is not x86"));
    }
    let (entry, phoff, phentsize, phnum) = if is_64 {
        (
            u64_at(b, 24).ok_or_else(bad)?,
            u64_at(b, 32).ok_or_else(bad)?,
            u16_at(b, 54).ok_or_else(bad)? as usize,
            u16_at(b, 56).ok_or_else(bad)? as usize,
        )
    } else {
        (
            u32_at(b, 24).ok_or_else(bad)? as u64,
            u32_at(b, 28).ok_or_else(bad)? as u64,
            u16_at(b, 42).ok_or_else(bad)? as usize,
            u16_at(b, 44).ok_or_else(bad)? as usize,
        )
    };
    let min_entsize = if is_64 { 56 } else { 32 };
    if phnum == 0 {
        return Err("ELF file has no program headers".into());
    }
    if phnum > MAX_PHNUM || phentsize < min_entsize {
        return Err(format!(
            "ELF program header table is malformed ({phnum} entries of {phentsize} bytes)"
        ));
    }
    let table_end = (phnum as u64)
        .checked_mul(phentsize as u64)
        .and_then(|n| n.checked_add(phoff))
        .filter(|end| *end <= b.len() as u64)
        .ok_or_else(|| "ELF program headers run past the end of the file".to_string())?;
    let _ = table_end;
    let mut segments = Vec::new();
    for i in 0..phnum {
        let o = phoff as usize + i * phentsize;
        let p_type = u32_at(b, o).ok_or_else(bad)?;
        if p_type != PT_LOAD {
            continue;
        }
        let s = if is_64 {
            Segment {
                offset: u64_at(b, o + 8).ok_or_else(bad)?,
                paddr: u64_at(b, o + 24).ok_or_else(bad)?,
                filesz: u64_at(b, o + 32).ok_or_else(bad)?,
                memsz: u64_at(b, o + 40).ok_or_else(bad)?,
            }
        } else {
            Segment {
                offset: u32_at(b, o + 4).ok_or_else(bad)? as u64,
                paddr: u32_at(b, o + 12).ok_or_else(bad)? as u64,
                filesz: u32_at(b, o + 16).ok_or_else(bad)? as u64,
                memsz: u32_at(b, o + 20).ok_or_else(bad)? as u64,
            }
        };
        if s.filesz > s.memsz {
            return Err(format!(
                "ELF segment {i} has more file bytes ({:#x}) than memory ({:#x})",
                s.filesz, s.memsz
            ));
        }
        if s.memsz == 0 {
            continue;
        }
        if s.offset
            .checked_add(s.filesz)
            .is_none_or(|e| e > b.len() as u64)
        {
            return Err(format!("ELF segment {i} runs past the end of the file"));
        }
        if s.paddr.checked_add(s.memsz).is_none() {
            return Err(format!("ELF segment {i} wraps around the address space"));
        }
        segments.push(s);
    }
    if segments.is_empty() {
        return Err("ELF file has no loadable segment".into());
    }
    segments.sort_by_key(|s| s.paddr);
    for w in segments.windows(2) {
        if w[0].paddr + w[0].memsz > w[1].paddr {
            return Err(format!(
                "ELF segments at {:#x} and {:#x} overlap",
                w[0].paddr, w[1].paddr
            ));
        }
    }
    Ok(ElfImage {
        is_64,
        entry,
        segments,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF32 executable with the given (paddr, file bytes, memsz) segments.
    pub fn elf32(entry: u32, segs: &[(u32, &[u8], u32)]) -> Vec<u8> {
        let phoff = 52u32;
        let data_start = phoff + 32 * segs.len() as u32;
        let mut b = vec![0u8; data_start as usize];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 1;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&EM_386.to_le_bytes());
        b[24..28].copy_from_slice(&entry.to_le_bytes());
        b[28..32].copy_from_slice(&phoff.to_le_bytes());
        b[42..44].copy_from_slice(&32u16.to_le_bytes());
        b[44..46].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut off = data_start;
        for (i, (paddr, data, memsz)) in segs.iter().enumerate() {
            let o = (phoff + 32 * i as u32) as usize;
            b[o..o + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
            b[o + 4..o + 8].copy_from_slice(&off.to_le_bytes());
            b[o + 8..o + 12].copy_from_slice(&paddr.to_le_bytes());
            b[o + 12..o + 16].copy_from_slice(&paddr.to_le_bytes());
            b[o + 16..o + 20].copy_from_slice(&(data.len() as u32).to_le_bytes());
            b[o + 20..o + 24].copy_from_slice(&memsz.to_le_bytes());
            off += data.len() as u32;
        }
        for (_, data, _) in segs {
            b.extend_from_slice(data);
        }
        b
    }

    /// A minimal ELF64 x86-64 executable with the given (paddr, file bytes, memsz) segments
    /// and, when `notes` is not empty, a PT_NOTE segment holding the notes
    /// (type, name with its NUL, descriptor).
    pub fn elf64(entry: u64, segs: &[(u64, &[u8], u64)], notes: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut note_bytes = Vec::new();
        for (kind, name, desc) in notes {
            note_bytes.extend_from_slice(&(name.len() as u32).to_le_bytes());
            note_bytes.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            note_bytes.extend_from_slice(&kind.to_le_bytes());
            for part in [name, desc] {
                note_bytes.extend_from_slice(part);
                note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
            }
        }
        let phnum = segs.len() + usize::from(!notes.is_empty());
        let phoff = 64u64;
        let mut off = phoff + 56 * phnum as u64;
        let mut b = vec![0u8; off as usize];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[16..18].copy_from_slice(&2u16.to_le_bytes());
        b[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[24..32].copy_from_slice(&entry.to_le_bytes());
        b[32..40].copy_from_slice(&phoff.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        let mut header = |i: usize, kind: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64| {
            let o = phoff as usize + 56 * i;
            b[o..o + 4].copy_from_slice(&kind.to_le_bytes());
            b[o + 8..o + 16].copy_from_slice(&offset.to_le_bytes());
            b[o + 16..o + 24].copy_from_slice(&paddr.to_le_bytes());
            b[o + 24..o + 32].copy_from_slice(&paddr.to_le_bytes());
            b[o + 32..o + 40].copy_from_slice(&filesz.to_le_bytes());
            b[o + 40..o + 48].copy_from_slice(&memsz.to_le_bytes());
        };
        for (i, (paddr, data, memsz)) in segs.iter().enumerate() {
            header(i, PT_LOAD, off, *paddr, data.len() as u64, *memsz);
            off += data.len() as u64;
        }
        if !notes.is_empty() {
            let n = note_bytes.len() as u64;
            header(segs.len(), 4, off, 0, n, 0);
        }
        for (_, data, _) in segs {
            b.extend_from_slice(data);
        }
        b.extend_from_slice(&note_bytes);
        b
    }

    #[test]
    fn reads_segments_and_entry() {
        let b = elf32(
            0x10_0010,
            &[(0x10_1000, b"BB", 0x1000), (0x10_0000, b"AAAA", 4)],
        );
        let e = parse(&b).unwrap();
        assert!(!e.is_64);
        assert_eq!(e.entry, 0x10_0010);
        assert_eq!(e.segments.len(), 2);
        assert_eq!(e.segments[0].paddr, 0x10_0000);
        assert_eq!(e.segments[1].memsz, 0x1000);
    }

    #[test]
    fn malformed_files_are_refused() {
        let good = elf32(0x10_0000, &[(0x10_0000, b"AAAA", 4)]);
        assert!(parse(&good[..40]).is_err());
        let mut b = good.clone();
        b[44] = 0;
        assert!(parse(&b).unwrap_err().contains("no program headers"));
        let mut b = good.clone();
        b[28] = 0xF0; // phoff past the end
        assert!(parse(&b).unwrap_err().contains("past the end"));
        let mut b = good.clone();
        b[52 + 16] = 0xFF; // filesz > memsz
        assert!(parse(&b).is_err());
        let mut b = good.clone();
        b[52 + 4] = 0xFF; // offset past the end
        assert!(parse(&b).unwrap_err().contains("past the end"));
        let overlap = elf32(0, &[(0x10_0000, b"AAAA", 0x100), (0x10_0080, b"B", 1)]);
        assert!(parse(&overlap).unwrap_err().contains("overlap"));
        let mut b = good;
        b[4] = 3;
        assert!(parse(&b).is_err());
    }

    /// Found by fuzzing (`elf_headers`): a PT_LOAD with file bytes and a memory size of 0
    /// was skipped unchecked, though a loader that copies `filesz` bytes writes them at its
    /// address, wherever that is.
    #[test]
    fn file_bytes_without_memory_are_refused() {
        let b = elf32(
            0x10_0000,
            &[
                (0x10_0000, &[0x90; 12], 0x1012),
                (0x10_2000, &[0x90; 18], 0),
            ],
        );
        assert!(parse(&b)
            .unwrap_err()
            .contains("segment 1 has more file bytes"));
        let empty = elf32(0x10_0000, &[(0x10_0000, &[0x90; 12], 0x1012), (0, &[], 0)]);
        assert_eq!(parse(&empty).unwrap().segments.len(), 1);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678u32;
        let base = elf32(0x10_0000, &[(0x10_0000, b"AAAA", 4), (0x20_0000, b"B", 8)]);
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % b.len();
                b[i] = (x >> 8) as u8;
            }
            let _ = parse(&b);
        }
    }
}

#[cfg(test)]
pub(super) mod fuzz {
    use super::tests::{elf32, elf64};
    use super::*;
    use crate::fuzz::{get_le, mutate, run, Field, Rng};

    /// The fields of the ELF header and of the first `phnum` program headers.
    pub fn fields(is_64: bool, phnum: usize) -> Vec<Field> {
        let mut f = vec![Field(4, 1), Field(5, 1), Field(18, 2)];
        let (phoff, size, hdr) = if is_64 {
            f.extend([Field(24, 8), Field(32, 8), Field(54, 2), Field(56, 2)]);
            (64, 56, [(0, 4), (8, 8), (24, 8), (32, 8), (40, 8)])
        } else {
            f.extend([Field(24, 4), Field(28, 4), Field(42, 2), Field(44, 2)]);
            (52, 32, [(0, 4), (4, 4), (12, 4), (16, 4), (20, 4)])
        };
        for i in 0..phnum {
            for (o, w) in hdr {
                f.push(Field(phoff + size * i + o, w));
            }
        }
        f
    }

    /// A valid ELF32 or ELF64 with one to three segments, some with BSS.
    pub fn seed(rng: &mut Rng) -> (Vec<u8>, Vec<Field>) {
        let is_64 = rng.one_in(2);
        let n = 1 + rng.index(3);
        let data: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let len = 1 + rng.index(32 << i);
                rng.bytes(len)
            })
            .collect();
        let mut segs = Vec::new();
        let mut at = 0x10_0000u64;
        for d in &data {
            let memsz = d.len() as u64 + rng.below(3) * 0x800;
            segs.push((at, d.as_slice(), memsz));
            at += memsz.next_multiple_of(0x1000);
        }
        let b = if is_64 {
            elf64(0x10_0000, &segs, &[])
        } else {
            let s32: Vec<(u32, &[u8], u32)> = segs
                .iter()
                .map(|(a, d, m)| (*a as u32, *d, *m as u32))
                .collect();
            elf32(0x10_0000, &s32)
        };
        (b, fields(is_64, n))
    }

    /// Every loadable byte of an accepted file is accounted for: each PT_LOAD header with
    /// file or memory bytes is one of the segments, inside the file, not wrapping, and the
    /// segments do not overlap.
    fn check(b: &[u8], e: &ElfImage) {
        let (phoff, size, phnum) = if e.is_64 {
            (get_le(b, 32, 8), get_le(b, 54, 2), get_le(b, 56, 2))
        } else {
            (get_le(b, 28, 4), get_le(b, 42, 2), get_le(b, 44, 2))
        };
        let mut loads = 0;
        for i in 0..phnum {
            let o = (phoff + i * size) as usize;
            if get_le(b, o, 4) != u64::from(PT_LOAD) {
                continue;
            }
            let s = if e.is_64 {
                Segment {
                    offset: get_le(b, o + 8, 8),
                    paddr: get_le(b, o + 24, 8),
                    filesz: get_le(b, o + 32, 8),
                    memsz: get_le(b, o + 40, 8),
                }
            } else {
                Segment {
                    offset: get_le(b, o + 4, 4),
                    paddr: get_le(b, o + 12, 4),
                    filesz: get_le(b, o + 16, 4),
                    memsz: get_le(b, o + 20, 4),
                }
            };
            if s.filesz == 0 && s.memsz == 0 {
                continue;
            }
            loads += 1;
            assert!(
                e.segments.contains(&s),
                "PT_LOAD {i} {s:x?} is not in {e:x?}"
            );
        }
        assert_eq!(loads, e.segments.len());
        for s in &e.segments {
            assert!(s.filesz <= s.memsz && s.offset + s.filesz <= b.len() as u64);
            assert!(s.paddr.checked_add(s.memsz).is_some());
        }
        for w in e.segments.windows(2) {
            assert!(w[0].paddr + w[0].memsz <= w[1].paddr, "{e:x?}");
        }
    }

    #[test]
    fn elf_headers() {
        run("elf_headers", 60_000, |rng| {
            let b = if rng.one_in(16) {
                let len = rng.index(256);
                let mut b = rng.bytes(len);
                if rng.one_in(2) && b.len() >= 4 {
                    b[..4].copy_from_slice(b"\x7fELF");
                }
                b
            } else {
                let (mut b, f) = seed(rng);
                mutate(rng, &mut b, &f);
                b
            };
            crate::fuzz::dump(&b);
            match parse(&b) {
                Ok(e) => check(&b, &e),
                Err(why) => assert!(!why.is_empty()),
            }
        });
    }
}
