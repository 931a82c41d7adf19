//! `KVM_GET_SUPPORTED_CPUID` answered once per host boot. The query is the largest single
//! step of a launch here (0.6-0.9 ms) and its answer cannot change while the host runs the
//! same kernel and KVM: the answer is kept in a file, keyed by what makes it valid (the host's
//! boot id, its kernel, KVM's API version and the loaded kvm modules), and used only when
//! every part of the key matches. A cache is never trusted across hosts or reboots: a new
//! boot id misses. The file lives in a directory only this user can write
//! (`$XDG_RUNTIME_DIR/minipc`, or `/run/minipc` for root), checked before it is read; no
//! boot id to read (a jail without /proc) means no cache, and a miss means the query.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::log;

const MAGIC: &str = "minipc supported CPUID v1";

/// The supported CPUID: from the cache when it is valid for this host boot, else from KVM
/// (and then kept for the next launch; a cache that cannot be written is no error).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let cache = cache_dir().zip(host_key(kvm.get_api_version()));
    if let Some((dir, key)) = &cache {
        if let Some(c) = load(&dir.join("cpuid"), key) {
            log::debug(format_args!("cpuid: from the cache in {}", dir.display()));
            return Ok(c);
        }
    }
    let c = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    log::debug(format_args!("cpuid: queried KVM"));
    if let Some((dir, key)) = &cache {
        if let Err(e) = store(dir, key, &c) {
            log::debug(format_args!("cpuid: cannot keep the answer: {e}"));
        }
    }
    Ok(c)
}

/// What makes an answer valid: this boot of this host (boot id), the kernel, KVM's API
/// version, and the kvm modules as loaded (a module reloaded with other parameters shows
/// another size or address to root). None when the boot id cannot be read.
fn host_key(api: i32) -> Option<String> {
    let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    // SAFETY: utsname is plain data that uname fills.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid utsname to fill.
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = |f: &[libc::c_char]| -> String {
        f.iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8 as char)
            .collect()
    };
    let modules: String = fs::read_to_string("/proc/modules")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("kvm"))
        .map(|l| {
            // name, size, instances, users, state, address
            let f: Vec<&str> = l.split_whitespace().collect();
            format!(
                "{} {} {};",
                f.first().unwrap_or(&""),
                f.get(1).unwrap_or(&""),
                f.get(5).unwrap_or(&"")
            )
        })
        .collect();
    Some(format!(
        "boot {} kernel {} {} kvm-api {api} modules {modules}",
        boot_id.trim(),
        field(&u.release),
        field(&u.version)
    ))
}

/// `$XDG_RUNTIME_DIR/minipc` (or `/run/minipc` for root), made if missing, and used only
/// when it belongs to this user and nobody else can write it.
fn cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        // SAFETY: geteuid has no preconditions.
        _ if unsafe { libc::geteuid() } == 0 => PathBuf::from("/run"),
        _ => return None,
    };
    let dir = base.join("minipc");
    let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
    private(&dir).then_some(dir)
}

/// Owned by this user and not writable by anyone else.
fn private(p: &Path) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    fs::symlink_metadata(p).is_ok_and(|m| m.uid() == me && m.mode() & 0o022 == 0)
}

fn encode(key: &str, c: &CpuId) -> Vec<u8> {
    let mut v = format!("{MAGIC}\n{key}\n").into_bytes();
    let entries = c.as_slice();
    v.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        for w in [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx] {
            v.extend_from_slice(&w.to_le_bytes());
        }
    }
    v
}

/// The entries in `bytes` if it is a cache for exactly `key`.
fn decode(bytes: &[u8], key: &str) -> Option<CpuId> {
    let head = format!("{MAGIC}\n{key}\n");
    let rest = bytes.strip_prefix(head.as_bytes())?;
    let count = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let body = &rest[4..];
    if count == 0 || count > KVM_MAX_CPUID_ENTRIES || body.len() != count * 28 {
        return None;
    }
    let entries: Vec<kvm_cpuid_entry2> = body
        .chunks_exact(28)
        .map(|c| {
            let w =
                |i: usize| u32::from_le_bytes([c[i * 4], c[i * 4 + 1], c[i * 4 + 2], c[i * 4 + 3]]);
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                ..Default::default()
            }
        })
        .collect();
    CpuId::from_entries(&entries).ok()
}

fn load(path: &Path, key: &str) -> Option<CpuId> {
    if !private(path) {
        return None;
    }
    decode(&fs::read(path).ok()?, key)
}

/// Writes the cache under a name of its own, then renames it into place: a reader never
/// sees half a file.
fn store(dir: &Path, key: &str, c: &CpuId) -> std::io::Result<()> {
    let tmp = dir.join(format!("cpuid.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&encode(key, c))?;
    drop(f);
    fs::rename(&tmp, dir.join("cpuid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xD,
                ebx: 0x756E_6547,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                index: 0,
                flags: 1,
                ebx: 0x1234,
                ..Default::default()
            },
        ])
        .unwrap()
    }

    #[test]
    fn round_trip_only_for_the_same_key() {
        let c = sample();
        let b = encode("boot A", &c);
        let back = decode(&b, "boot A").unwrap();
        assert_eq!(back.as_slice(), c.as_slice());
        assert!(decode(&b, "boot B").is_none(), "another boot");
        assert!(decode(&b, "boot").is_none(), "a prefix of the key");
        assert!(decode(&b[..b.len() - 1], "boot A").is_none(), "truncated");
        let mut bad = b.clone();
        let at = format!("{MAGIC}\nboot A\n").len();
        bad[at] = 200; // more entries than KVM has
        assert!(decode(&bad, "boot A").is_none());
        assert!(decode(b"", "boot A").is_none());
    }

    #[test]
    fn the_key_names_this_boot() {
        let k = host_key(12).unwrap();
        let id = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert!(k.contains(id.trim()) && k.contains("kvm-api 12"), "{k}");
    }

    #[test]
    fn a_file_others_can_write_is_not_trusted() {
        let dir = std::env::temp_dir().join(format!("minipc-cpuid-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        store(&dir, "k", &sample()).unwrap();
        let p = dir.join("cpuid");
        assert!(load(&p, "k").is_some());
        fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
        assert!(load(&p, "k").is_none());
        let _ = fs::remove_dir_all(&dir);
    }
}
