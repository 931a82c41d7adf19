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
        if s.memsz == 0 {
            continue;
        }
        if s.filesz > s.memsz {
            return Err(format!(
                "ELF segment {i} has more file bytes ({:#x}) than memory ({:#x})",
                s.filesz, s.memsz
            ));
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
