//! The jail directory `<chroot-base>/minipc/<id>/root`: its device nodes, the VMM binary
//! and the files it needs, the guest files, and their removal.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::libs::Needed;
use crate::sys::{check, cpath, describe};
use crate::vmm_args::{Access, GuestFile};

/// The VMM's path inside the jail.
pub const EXEC_NAME: &str = "minipc";
/// The directory the old root is moved to by pivot_root (removed right after).
pub const OLD_ROOT: &str = "old_root";

/// Character devices created in the jail's /dev: name, major, minor, mode, owned by
/// the VMM's uid:gid (else root).
const DEVICES: &[(&str, u32, u32, u32, bool)] = &[
    ("kvm", 10, 232, 0o660, true),
    ("null", 1, 3, 0o666, false),
    ("urandom", 1, 9, 0o666, false),
];

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("{} already exists (another jail with this id?)", .0.display())]
    Exists(PathBuf),
    #[error("--chroot-base: {} is not a directory", .0.display())]
    NotDir(PathBuf),
    #[error("{step} {}: {}", .path.display(), describe(.err))]
    Io {
        step: &'static str,
        path: PathBuf,
        err: io::Error,
    },
}

fn io_err(step: &'static str, path: &Path) -> impl FnOnce(io::Error) -> JailError {
    let path = path.to_path_buf();
    move |err| JailError::Io { step, path, err }
}

/// Ownership and mode of a host file whose inode the jail shares and changed.
#[derive(Debug)]
struct Restore {
    in_jail: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
}

/// A jail file whose content goes back to a host file when the VMM has exited.
#[derive(Debug)]
struct CopyBack {
    from: PathBuf,
    to: PathBuf,
}

/// A jail under construction or in use. Dropping it removes `<chroot-base>/minipc/<id>`
/// and the parent directories it created (when empty), after putting back the ownership
/// of shared disk images, unless `keep` was called.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
    root: PathBuf,
    created: Vec<PathBuf>,
    uid: u32,
    gid: u32,
    names: Vec<String>,
    restores: Vec<Restore>,
    copy_backs: Vec<CopyBack>,
    keep: bool,
}

/// Creates the missing directories of `path`, outermost first, and returns them.
fn create_dirs(path: &Path) -> Result<Vec<PathBuf>, JailError> {
    let mut missing = Vec::new();
    let mut p = path;
    loop {
        match fs::metadata(p) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(JailError::NotDir(p.to_path_buf())),
            // ENOTDIR: an ancestor is a file, which the next round reports.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                missing.push(p.to_path_buf())
            }
            Err(err) => return Err(io_err("checking", p)(err)),
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    missing.reverse();
    let mut created = Vec::new();
    for d in missing {
        match DirBuilder::new().mode(0o755).create(&d) {
            Ok(()) => created.push(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(err) => {
                remove_created(&created);
                return Err(io_err("creating", &d)(err));
            }
        }
    }
    Ok(created)
}

fn remove_created(created: &[PathBuf]) {
    for d in created.iter().rev() {
        // Not empty means another jail uses it; it stays.
        let _ = fs::remove_dir(d);
    }
}

/// Whether the VMM's user could change a host file reachable through a hard link, or
/// could not read and execute it: then the jail gets a copy instead.
fn may_share_executable(m: &fs::Metadata, uid: u32, gid: u32) -> bool {
    let mode = m.mode();
    m.uid() != uid
        && (m.gid() != gid || mode & 0o020 == 0)
        && mode & 0o002 == 0
        && mode & 0o005 == 0o005
}

/// A read-only guest input is shared only when it already is mode 0444 and not owned by
/// the VMM's user (who could chmod it); otherwise the jail gets a 0444 copy.
fn may_share_read_only(m: &fs::Metadata, uid: u32) -> bool {
    m.mode() & 0o7777 == 0o444 && m.uid() != uid
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Copies `from` to the new file `to` with the given owner and mode.
fn copy_new(from: &Path, to: &Path, uid: u32, gid: u32, mode: u32) -> Result<(), JailError> {
    let mut src = File::open(from).map_err(io_err("reading", from))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(io_err("creating", to))?;
    io::copy(&mut src, &mut dst).map_err(io_err("copying into", to))?;
    std::os::unix::fs::fchown(&dst, Some(uid), Some(gid)).map_err(io_err("chown", to))?;
    dst.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", to))?;
    Ok(())
}

impl Jail {
    /// Creates `<base>/minipc/<id>/root`; fails if `<base>/minipc/<id>` exists.
    pub fn create(base: &Path, id: &str, uid: u32, gid: u32) -> Result<Jail, JailError> {
        let parent = base.join("minipc");
        let created = create_dirs(&parent)?;
        let dir = parent.join(id);
        if let Err(err) = DirBuilder::new().mode(0o700).create(&dir) {
            remove_created(&created);
            return Err(if err.kind() == io::ErrorKind::AlreadyExists {
                JailError::Exists(dir)
            } else {
                io_err("creating", &dir)(err)
            });
        }
        // From here on, dropping `jail` removes what was made.
        let jail = Jail {
            root: dir.join("root"),
            dir,
            created,
            uid,
            gid,
            names: [EXEC_NAME, "dev", "proc", OLD_ROOT]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            restores: Vec::new(),
            copy_backs: Vec::new(),
            keep: false,
        };
        jail.mkdir(&jail.root)?;
        Ok(jail)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mkdir(&self, path: &Path) -> Result<(), JailError> {
        DirBuilder::new()
            .mode(0o755)
            .create(path)
            .map_err(io_err("creating", path))?;
        chmod(path, 0o755).map_err(io_err("chmod", path))
    }

    /// Creates the directory `/name` in the jail (e.g. proc).
    pub fn make_dir(&self, name: &str) -> Result<(), JailError> {
        self.mkdir(&self.root.join(name))
    }

    /// Creates /dev with kvm (owned by the VMM's user, 0660), null and urandom (0666).
    pub fn make_devices(&self) -> Result<(), JailError> {
        let dev = self.root.join("dev");
        self.mkdir(&dev)?;
        for &(name, major, minor, mode, owned) in DEVICES {
            let path = dev.join(name);
            let c = cpath(&path).map_err(io_err("creating device", &path))?;
            // SAFETY: mknod with a NUL-terminated path; it creates a node or fails.
            let ret = unsafe {
                libc::mknod(
                    c.as_ptr(),
                    libc::S_IFCHR | mode,
                    libc::makedev(major, minor),
                )
            };
            check(ret).map_err(io_err("creating device", &path))?;
            let (uid, gid) = if owned { (self.uid, self.gid) } else { (0, 0) };
            chown(&path, uid, gid).map_err(io_err("chown", &path))?;
            chmod(&path, mode).map_err(io_err("chmod", &path))?;
        }
        Ok(())
    }

    /// Places the VMM binary at /minipc: a hard link when safe and possible, else a copy
    /// (root-owned, 0555).
    pub fn install_exec(&self, host: &Path) -> Result<(), JailError> {
        self.place_executable(host, &self.root.join(EXEC_NAME))
    }

    /// Places the interpreter and libraries at their paths inside the jail.
    pub fn install_needed(&mut self, needed: &[Needed]) -> Result<(), JailError> {
        for n in needed {
            let rel = n.jail.strip_prefix("/").unwrap_or(&n.jail);
            if let Some(std::path::Component::Normal(first)) = rel.components().next() {
                let first = first.to_string_lossy().into_owned();
                if !self.names.contains(&first) {
                    self.names.push(first);
                }
            }
            let dest = self.root.join(rel);
            if dest.exists() {
                continue;
            }
            let mut missing = Vec::new();
            let mut p = dest.parent();
            while let Some(d) = p {
                if d == self.root || d.exists() {
                    break;
                }
                missing.push(d.to_path_buf());
                p = d.parent();
            }
            for d in missing.iter().rev() {
                self.mkdir(d)?;
            }
            // The real file behind the loader's symlinks.
            let real = fs::canonicalize(&n.host).map_err(io_err("resolving", &n.host))?;
            self.place_executable(&real, &dest)?;
        }
        Ok(())
    }

    fn place_executable(&self, host: &Path, dest: &Path) -> Result<(), JailError> {
        let m = fs::metadata(host).map_err(io_err("reading", host))?;
        if may_share_executable(&m, self.uid, self.gid) && fs::hard_link(host, dest).is_ok() {
            return Ok(());
        }
        copy_new(host, dest, 0, 0, 0o555)
    }

    /// A name for `/NAME` in the jail: the basename of `host`, prefixed with a number when
    /// it is taken.
    fn unique_name(&mut self, host: &Path) -> String {
        let base = host
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".to_string());
        let mut name = base.clone();
        let mut n = 2;
        while self.names.contains(&name) {
            name = format!("{n}-{base}");
            n += 1;
        }
        self.names.push(name.clone());
        name
    }

    /// Puts a guest input file into the jail and returns its path there. Read-only
    /// inputs are 0444; a disk image is owned by the VMM's user (a shared inode gets its
    /// ownership back when the jail is removed; a copy is written back to the host file).
    pub fn install_guest(&mut self, file: &GuestFile) -> Result<String, JailError> {
        let name = self.unique_name(&file.host);
        let dest = self.root.join(&name);
        let m = fs::metadata(&file.host).map_err(io_err("reading", &file.host))?;
        match file.access {
            Access::ReadOnly => {
                if !(may_share_read_only(&m, self.uid) && fs::hard_link(&file.host, &dest).is_ok())
                {
                    copy_new(&file.host, &dest, 0, 0, 0o444)?;
                }
            }
            Access::ReadWrite => {
                if fs::hard_link(&file.host, &dest).is_ok() {
                    self.restores.push(Restore {
                        in_jail: dest.clone(),
                        uid: m.uid(),
                        gid: m.gid(),
                        mode: m.mode() & 0o7777,
                    });
                    chown(&dest, self.uid, self.gid).map_err(io_err("chown", &dest))?;
                    chmod(&dest, (m.mode() & 0o777) | 0o600).map_err(io_err("chmod", &dest))?;
                } else {
                    copy_new(&file.host, &dest, self.uid, self.gid, 0o600)?;
                    self.copy_backs.push(CopyBack {
                        from: dest.clone(),
                        to: file.host.clone(),
                    });
                }
            }
        }
        Ok(format!("/{name}"))
    }

    /// Creates an empty serial output file owned by the VMM's user; its content goes to
    /// `host` when the VMM has exited. Returns its path in the jail.
    pub fn create_serial(&mut self, host: &Path) -> Result<String, JailError> {
        let name = self.unique_name(host);
        let dest = self.root.join(&name);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(io_err("creating", &dest))?;
        std::os::unix::fs::fchown(&f, Some(self.uid), Some(self.gid))
            .map_err(io_err("chown", &dest))?;
        self.copy_backs.push(CopyBack {
            from: dest,
            to: host.to_path_buf(),
        });
        Ok(format!("/{name}"))
    }

    /// Copies serial output and copied disk images back to their host files. Failures
    /// are reported as warnings: the VMM has already run.
    pub fn copy_back(&mut self) {
        for cb in self.copy_backs.drain(..) {
            let result = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&cb.from)
                .and_then(|mut src| {
                    let mut dst = File::create(&cb.to)?;
                    io::copy(&mut src, &mut dst)
                });
            if let Err(e) = result {
                eprintln!(
                    "minipc-jailer: warning: copying {} to {}: {}",
                    cb.from.display(),
                    cb.to.display(),
                    describe(&e)
                );
            }
        }
    }

    /// Leaves the jail in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Jail {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        for r in &self.restores {
            let res = chown(&r.in_jail, r.uid, r.gid).and_then(|()| chmod(&r.in_jail, r.mode));
            if let Err(e) = res {
                eprintln!(
                    "minipc-jailer: warning: restoring owner and mode of {}: {}",
                    r.in_jail.display(),
                    describe(&e)
                );
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!(
                    "minipc-jailer: warning: removing {}: {}",
                    self.dir.display(),
                    describe(&e)
                );
            }
        }
        remove_created(&self.created);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minipc-jailer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn names_are_unique_and_avoid_reserved_ones() {
        let base = tmp("names");
        let mut j = Jail::create(&base, "n", 1000, 1000).unwrap();
        assert_eq!(j.unique_name(Path::new("/a/fw.bin")), "fw.bin");
        assert_eq!(j.unique_name(Path::new("/b/fw.bin")), "2-fw.bin");
        assert_eq!(j.unique_name(Path::new("/b/fw.bin")), "3-fw.bin");
        assert_eq!(j.unique_name(Path::new("/x/minipc")), "2-minipc");
        assert_eq!(j.unique_name(Path::new("/x/dev")), "2-dev");
        drop(j);
        assert!(!base.exists(), "created parents are removed");
    }

    #[test]
    fn an_existing_jail_is_refused_and_kept() {
        let base = tmp("exists");
        let j = Jail::create(&base, "same", 1000, 1000).unwrap();
        let e = Jail::create(&base, "same", 1000, 1000).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(j.root().is_dir());
        drop(j);
        assert!(!base.exists());
    }

    #[test]
    fn a_file_as_chroot_base_is_named() {
        let base = tmp("file");
        fs::write(&base, "").unwrap();
        let e = Jail::create(&base.join("sub"), "x", 1, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("--chroot-base: {} is not a directory", base.display())
        );
        fs::remove_file(&base).unwrap();
    }

    #[test]
    fn sharing_rules() {
        let base = tmp("share");
        fs::create_dir_all(&base).unwrap();
        let f = base.join("f");
        fs::write(&f, "x").unwrap();
        let meta = |mode| {
            chmod(&f, mode).unwrap();
            fs::metadata(&f).unwrap()
        };
        // Owned by the test's uid; the VMM's user is someone else.
        let me = fs::metadata(&f).unwrap().uid();
        let other = me.wrapping_add(1);
        assert!(may_share_executable(&meta(0o755), other, other));
        assert!(!may_share_executable(&meta(0o757), other, other));
        assert!(!may_share_executable(&meta(0o750), other, other));
        assert!(!may_share_executable(&meta(0o755), me, other));
        assert!(may_share_read_only(&meta(0o444), other));
        assert!(!may_share_read_only(&meta(0o644), other));
        assert!(!may_share_read_only(&meta(0o444), me));
        fs::remove_dir_all(&base).unwrap();
    }
}
