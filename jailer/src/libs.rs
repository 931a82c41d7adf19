//! The files a dynamically linked executable needs at run time: its ELF interpreter
//! (PT_INTERP) and the shared libraries named by DT_NEEDED, recursively. They are read
//! from the ELF headers, never by running the binary (as `ldd` would).

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

use crate::sys::describe;

/// Library directories searched after DT_RPATH / DT_RUNPATH, as the dynamic loader does
/// on x86_64 Linux distributions.
pub const SEARCH_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
    "/usr/local/lib/x86_64-linux-gnu",
];

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;
const EM_X86_64: u16 = 62;
/// Upper bounds that keep a malformed file from making the parser read without end.
const MAX_PHDRS: u16 = 512;
const MAX_DYN: u64 = 4096;
const MAX_STR: usize = 4096;
const MAX_OBJECTS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    #[error("{}: {}", .path.display(), describe(.err))]
    Io { path: PathBuf, err: io::Error },
    #[error("{}: {reason}", .path.display())]
    Elf { path: PathBuf, reason: ElfError },
    #[error("{}: needs {name}, which is in none of {}", .path.display(), SEARCH_DIRS.join(", "))]
    NotFound { path: PathBuf, name: String },
    #[error("{}: its ELF interpreter {interp} does not exist", .path.display())]
    NoInterpreter { path: PathBuf, interp: String },
    #[error("{}: more than {MAX_OBJECTS} shared objects", .0.display())]
    TooMany(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian x86_64 ELF file")]
    WrongKind,
    #[error("truncated or malformed ELF headers")]
    Malformed,
}

/// What the loader needs to know about one ELF object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfInfo {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    /// DT_RUNPATH, or DT_RPATH when there is no DT_RUNPATH, split at ':'.
    pub search: Vec<String>,
}

/// Random access to the bytes of an ELF file.
pub trait Source {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl Source for [u8] {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| short())?;
        let end = start.checked_add(buf.len()).ok_or_else(short)?;
        let src = self.get(start..end).ok_or_else(short)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Source for File {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
}

fn short() -> io::Error {
    io::Error::from(io::ErrorKind::UnexpectedEof)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

struct Phdr {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// Reads PT_INTERP, DT_NEEDED and the run path of an ELF64 little-endian x86_64 object.
/// `Err(ElfError)` for anything else; I/O errors past the header count as malformed.
pub fn parse_elf<S: Source + ?Sized>(src: &S) -> Result<ElfInfo, ElfError> {
    let mut eh = [0u8; 64];
    src.read_at(0, &mut eh[..4]).map_err(|_| ElfError::NotElf)?;
    if &eh[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    src.read_at(0, &mut eh).map_err(|_| ElfError::Malformed)?;
    if eh[4] != 2 || eh[5] != 1 || u16_at(&eh, 0x12) != EM_X86_64 {
        return Err(ElfError::WrongKind);
    }
    let phoff = u64_at(&eh, 0x20);
    let phentsize = u16_at(&eh, 0x36);
    let phnum = u16_at(&eh, 0x38);
    if phnum > MAX_PHDRS || (phnum > 0 && phentsize < 56) {
        return Err(ElfError::Malformed);
    }
    let mut phdrs = Vec::with_capacity(usize::from(phnum));
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        let at = phoff
            .checked_add(i * u64::from(phentsize))
            .ok_or(ElfError::Malformed)?;
        src.read_at(at, &mut ph).map_err(|_| ElfError::Malformed)?;
        phdrs.push(Phdr {
            kind: u32_at(&ph, 0),
            offset: u64_at(&ph, 8),
            vaddr: u64_at(&ph, 16),
            filesz: u64_at(&ph, 32),
        });
    }
    let mut info = ElfInfo::default();
    if let Some(p) = phdrs.iter().find(|p| p.kind == PT_INTERP) {
        let len = usize::try_from(p.filesz.min(MAX_STR as u64)).map_err(|_| ElfError::Malformed)?;
        let mut buf = vec![0u8; len];
        src.read_at(p.offset, &mut buf)
            .map_err(|_| ElfError::Malformed)?;
        info.interp = Some(c_string(&buf)?);
    }
    let Some(dynamic) = phdrs.iter().find(|p| p.kind == PT_DYNAMIC) else {
        return Ok(info);
    };
    let mut entries = Vec::new();
    for i in 0..(dynamic.filesz / 16).min(MAX_DYN) {
        let mut d = [0u8; 16];
        src.read_at(dynamic.offset + i * 16, &mut d)
            .map_err(|_| ElfError::Malformed)?;
        let (tag, val) = (u64_at(&d, 0), u64_at(&d, 8));
        if tag == DT_NULL {
            break;
        }
        entries.push((tag, val));
    }
    let find = |tag| entries.iter().find(|(t, _)| *t == tag).map(|(_, v)| *v);
    let (Some(strtab), Some(strsz)) = (find(DT_STRTAB), find(DT_STRSZ)) else {
        return Ok(info);
    };
    // DT_STRTAB is a virtual address; the PT_LOAD segment containing it gives the offset.
    let strtab_off = phdrs
        .iter()
        .filter(|p| p.kind == PT_LOAD)
        .find(|p| strtab >= p.vaddr && strtab - p.vaddr < p.filesz)
        .map(|p| strtab - p.vaddr + p.offset)
        .ok_or(ElfError::Malformed)?;
    let string = |off: u64| -> Result<String, ElfError> {
        if off >= strsz {
            return Err(ElfError::Malformed);
        }
        let len =
            usize::try_from((strsz - off).min(MAX_STR as u64)).map_err(|_| ElfError::Malformed)?;
        let mut buf = vec![0u8; len];
        src.read_at(strtab_off + off, &mut buf)
            .map_err(|_| ElfError::Malformed)?;
        c_string(&buf)
    };
    for (tag, val) in &entries {
        if *tag == DT_NEEDED {
            info.needed.push(string(*val)?);
        }
    }
    if let Some(rp) = find(DT_RUNPATH).or_else(|| find(DT_RPATH)) {
        info.search = string(rp)?
            .split(':')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
    }
    Ok(info)
}

fn c_string(buf: &[u8]) -> Result<String, ElfError> {
    let end = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(ElfError::Malformed)?;
    String::from_utf8(buf[..end].to_vec()).map_err(|_| ElfError::Malformed)
}

/// A file the jail needs: where it is on the host and where it goes in the jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needed {
    pub host: PathBuf,
    pub jail: PathBuf,
}

/// Lexically resolves "." and ".." of an absolute path (used for paths inside the jail,
/// which holds only real directories).
pub fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Expands the run-path entry `entry` of an object that is at `host_dir` on the host and
/// at `jail_dir` in the jail. Entries with other dynamic string tokens ($LIB, $PLATFORM)
/// or relative ones are skipped.
fn expand(entry: &str, host_dir: &Path, jail_dir: &Path) -> Option<(PathBuf, PathBuf)> {
    for token in ["$ORIGIN", "${ORIGIN}"] {
        if let Some(rest) = entry.strip_prefix(token) {
            if rest.contains('$') {
                return None;
            }
            let rest = rest.trim_start_matches('/');
            return Some((host_dir.join(rest), normalize(&jail_dir.join(rest))));
        }
    }
    if entry.contains('$') || !entry.starts_with('/') {
        return None;
    }
    Some((PathBuf::from(entry), normalize(Path::new(entry))))
}

fn parse_file(path: &Path) -> Result<ElfInfo, LibsError> {
    let f = File::open(path).map_err(|err| LibsError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    parse_elf(&f).map_err(|reason| LibsError::Elf {
        path: path.to_path_buf(),
        reason,
    })
}

/// Whether `path` is an x86_64 ELF object (a library of another architecture in a
/// searched directory is skipped, as the loader does).
fn is_usable(path: &Path) -> bool {
    path.is_file() && File::open(path).ok().is_some_and(|f| parse_elf(&f).is_ok())
}

/// The interpreter and all shared libraries `exec` needs, `exec` being placed in the jail
/// at `exec_jail`. Empty for a static executable. `Err` when `exec` is not an x86_64 ELF
/// file or a library cannot be found.
pub fn resolve(exec: &Path, exec_jail: &Path) -> Result<Vec<Needed>, LibsError> {
    let info = parse_file(exec)?;
    let mut out: Vec<Needed> = Vec::new();
    if let Some(interp) = &info.interp {
        if !Path::new(interp).is_file() {
            return Err(LibsError::NoInterpreter {
                path: exec.to_path_buf(),
                interp: interp.clone(),
            });
        }
        out.push(Needed {
            host: PathBuf::from(interp),
            jail: normalize(Path::new(interp)),
        });
    }
    let mut names: Vec<String> = Vec::new();
    let mut queue = VecDeque::from([(exec.to_path_buf(), exec_jail.to_path_buf(), info)]);
    while let Some((host, jail, info)) = queue.pop_front() {
        let host_dir = host.parent().unwrap_or(Path::new("/")).to_path_buf();
        let jail_dir = jail.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut dirs: Vec<(PathBuf, PathBuf)> = info
            .search
            .iter()
            .filter_map(|e| expand(e, &host_dir, &jail_dir))
            .collect();
        dirs.extend(
            SEARCH_DIRS
                .iter()
                .map(|d| (PathBuf::from(d), PathBuf::from(d))),
        );
        for name in info.needed {
            if names.contains(&name) {
                continue;
            }
            let found = if name.contains('/') {
                let p = PathBuf::from(&name);
                is_usable(&p).then(|| (p.clone(), normalize(&p)))
            } else {
                dirs.iter()
                    .map(|(h, j)| (h.join(&name), j.join(&name)))
                    .find(|(h, _)| is_usable(h))
            };
            let Some((lib_host, lib_jail)) = found else {
                return Err(LibsError::NotFound { path: host, name });
            };
            names.push(name);
            if out.len() >= MAX_OBJECTS {
                return Err(LibsError::TooMany(exec.to_path_buf()));
            }
            let lib_info = parse_file(&lib_host)?;
            if !out.iter().any(|n| n.jail == lib_jail) {
                out.push(Needed {
                    host: lib_host.clone(),
                    jail: lib_jail.clone(),
                });
            }
            queue.push_back((lib_host, lib_jail, lib_info));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal ELF64 x86_64 image: one PT_LOAD covering the file, an optional
    /// PT_INTERP and a PT_DYNAMIC with the given DT_NEEDED names and DT_RUNPATH.
    fn elf(interp: Option<&str>, needed: &[&str], runpath: Option<&str>) -> Vec<u8> {
        const VADDR: u64 = 0x40_0000;
        let phnum = 3u16;
        let ph_off = 64u64;
        let mut strtab = vec![0u8];
        let mut add = |s: &str| {
            let o = strtab.len() as u64;
            strtab.extend_from_slice(s.as_bytes());
            strtab.push(0);
            o
        };
        let needed_offs: Vec<u64> = needed.iter().map(|n| add(n)).collect();
        let rp_off = runpath.map(&mut add);
        let interp_off = ph_off + 56 * u64::from(phnum);
        let interp_bytes = interp
            .map(|s| [s.as_bytes(), b"\0"].concat())
            .unwrap_or_default();
        let str_off = interp_off + interp_bytes.len() as u64;
        let dyn_off = str_off + strtab.len() as u64;
        let mut dynamic: Vec<(u64, u64)> = needed_offs.iter().map(|o| (DT_NEEDED, *o)).collect();
        if let Some(o) = rp_off {
            dynamic.push((DT_RUNPATH, o));
        }
        dynamic.push((DT_STRTAB, VADDR + str_off));
        dynamic.push((DT_STRSZ, strtab.len() as u64));
        dynamic.push((DT_NULL, 0));
        let total = dyn_off + 16 * dynamic.len() as u64;

        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&ph_off.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let mut ph = |kind: u32, off: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[..4].copy_from_slice(&kind.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&(VADDR + off).to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p[40..48].copy_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&p);
        };
        ph(PT_LOAD, 0, total);
        if interp.is_some() {
            ph(PT_INTERP, interp_off, interp_bytes.len() as u64);
        } else {
            ph(6, 0, 0); // PT_PHDR stand-in
        }
        ph(PT_DYNAMIC, dyn_off, 16 * dynamic.len() as u64);
        b.extend_from_slice(&interp_bytes);
        b.extend_from_slice(&strtab);
        for (t, v) in dynamic {
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(b.len() as u64, total);
        b
    }

    #[test]
    fn parses_interp_needed_and_runpath() {
        let img = elf(
            Some("/lib64/ld-linux-x86-64.so.2"),
            &["libgcc_s.so.1", "libc.so.6"],
            Some("$ORIGIN/../lib:/opt/x"),
        );
        let info = parse_elf(img.as_slice()).unwrap();
        assert_eq!(info.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(info.needed, ["libgcc_s.so.1", "libc.so.6"]);
        assert_eq!(info.search, ["$ORIGIN/../lib", "/opt/x"]);
    }

    #[test]
    fn static_binary_needs_nothing() {
        let info = parse_elf(elf(None, &[], None).as_slice()).unwrap();
        assert_eq!(info, ElfInfo::default());
    }

    #[test]
    fn rejects_other_files() {
        assert_eq!(parse_elf(b"#!/bin/sh\n".as_slice()), Err(ElfError::NotElf));
        assert_eq!(parse_elf(b"".as_slice()), Err(ElfError::NotElf));
        let mut img = elf(None, &["libc.so.6"], None);
        img[4] = 1; // 32-bit
        assert_eq!(parse_elf(img.as_slice()), Err(ElfError::WrongKind));
        let img = elf(Some("/ld.so"), &["libc.so.6"], None);
        assert_eq!(parse_elf(&img[..100]), Err(ElfError::Malformed));
        // Dynamic section: DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_NULL, 16 bytes each.
        let mut img = elf(None, &["libc.so.6"], None);
        let n = img.len();
        img[n - 40..n - 32].copy_from_slice(&0xdead_0000u64.to_le_bytes()); // DT_STRTAB
        assert_eq!(parse_elf(img.as_slice()), Err(ElfError::Malformed));
        let mut img = elf(None, &["libc.so.6"], None);
        img[n - 24..n - 16].copy_from_slice(&1_000_000u64.to_le_bytes()); // DT_STRSZ
        assert_eq!(parse_elf(img.as_slice()), Err(ElfError::Malformed));
    }

    #[test]
    fn parses_a_real_binary() {
        let exe = std::env::current_exe().unwrap();
        let info = parse_file(&exe).unwrap();
        if let Some(interp) = &info.interp {
            assert!(interp.starts_with('/'), "{interp}");
            assert!(
                info.needed.iter().any(|n| n.starts_with("libc.so")),
                "{info:?}"
            );
        }
    }

    #[test]
    fn resolves_the_test_binary_libraries() {
        let exe = std::env::current_exe().unwrap();
        let libs = resolve(&exe, Path::new("/minipc")).unwrap();
        if parse_file(&exe).unwrap().interp.is_some() {
            assert!(libs
                .iter()
                .any(|n| n.jail.to_string_lossy().contains("libc.so")));
            for n in &libs {
                assert!(n.host.exists() && n.jail.is_absolute(), "{n:?}");
            }
        }
    }

    #[test]
    fn missing_interpreter_and_library_are_named() {
        let dir = std::env::temp_dir().join(format!("minipc-jailer-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a");
        std::fs::write(&a, elf(Some("/nonexistent/ld.so"), &[], None)).unwrap();
        let e = resolve(&a, Path::new("/minipc")).unwrap_err().to_string();
        assert!(
            e.ends_with("its ELF interpreter /nonexistent/ld.so does not exist"),
            "{e}"
        );
        let b = dir.join("b");
        std::fs::write(&b, elf(None, &["libnonexistent.so.9"], None)).unwrap();
        let e = resolve(&b, Path::new("/minipc")).unwrap_err().to_string();
        assert!(
            e.contains("needs libnonexistent.so.9, which is in none of"),
            "{e}"
        );
        let c = dir.join("c");
        std::fs::write(&c, elf(None, &[], None)).unwrap();
        assert_eq!(resolve(&c, Path::new("/minipc")).unwrap(), vec![]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn origin_expansion() {
        let (h, j) = expand("$ORIGIN/../lib", Path::new("/opt/vmm/bin"), Path::new("/")).unwrap();
        assert_eq!(h, PathBuf::from("/opt/vmm/bin/../lib"));
        assert_eq!(j, PathBuf::from("/lib"));
        let (h, j) = expand("${ORIGIN}", Path::new("/a"), Path::new("/b")).unwrap();
        assert_eq!((h, j), (PathBuf::from("/a/"), PathBuf::from("/b")));
        assert!(expand("$LIB/x", Path::new("/a"), Path::new("/")).is_none());
        assert!(expand("rel/dir", Path::new("/a"), Path::new("/")).is_none());
        assert_eq!(
            expand("/opt/lib", Path::new("/a"), Path::new("/"))
                .unwrap()
                .1,
            PathBuf::from("/opt/lib")
        );
        assert_eq!(
            normalize(Path::new("/a/./b/../../../c")),
            PathBuf::from("/c")
        );
    }
}
