//! The VMM's cgroup v2 leaf: `<root>/minipc/<id>` with the `--cgroup KEY=VALUE` limits
//! written to its files.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::describe;

/// Where the cgroup v2 hierarchy is expected.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The directory under the root that holds one leaf per jail.
const PARENT: &str = "minipc";
/// `statfs` magic of a cgroup2 file system.
const CGROUP2_SUPER_MAGIC: libc::c_long = 0x6367_7270;
/// Controllers whose files a `--cgroup` key may name.
const CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];
/// How long removal waits for the last processes of the leaf to be gone.
const REMOVE_PATIENCE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("--cgroup '{0}': expected KEY=VALUE, e.g. memory.max=256M")]
    Syntax(String),
    #[error("--cgroup '{setting}': {reason}")]
    BadKey {
        setting: String,
        reason: &'static str,
    },
    #[error("--cgroup '{0}': the value is empty or spans lines")]
    BadValue(String),
    #[error("--cgroup {0} is given twice")]
    Duplicate(String),
    #[error("--cgroup: cgroup v2 is not mounted at {ROOT}")]
    NotV2,
    #[error("--cgroup {key}: controller '{controller}' is not available in {}", .file.display())]
    ControllerMissing {
        key: String,
        controller: String,
        file: PathBuf,
    },
    #[error("cgroup {}: {}", .path.display(), describe(.err))]
    Io { path: PathBuf, err: io::Error },
    #[error("cgroup {} already exists (another jail with this id?)", .0.display())]
    Exists(PathBuf),
    #[error("--cgroup {key}: no such file in {}", .dir.display())]
    NoSuchFile { key: String, dir: PathBuf },
    #[error("--cgroup '{setting}': the kernel refused it: {}", describe(.err))]
    Refused { setting: String, err: io::Error },
}

/// One validated `--cgroup KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

/// Parses and validates `KEY=VALUE`. KEY must be a plain file name of a controller
/// (`memory.max`), never a path and never one of the `cgroup.*` interface files.
pub fn parse_setting(s: &str) -> Result<Setting, CgroupError> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| CgroupError::Syntax(s.to_string()))?;
    let bad = |reason| CgroupError::BadKey {
        setting: s.to_string(),
        reason,
    };
    if key.is_empty() || key == "." || key == ".." || key.contains('/') || key.contains("..") {
        return Err(bad("KEY must be a plain file name (no '/', no '..')"));
    }
    if key.starts_with("cgroup.") {
        return Err(bad("the cgroup.* files are managed by the jailer"));
    }
    if controller_of(key).is_none() {
        return Err(bad(
            "KEY must be a controller file such as cpu.max, memory.max or pids.max",
        ));
    }
    if value.is_empty() || value.contains('\n') {
        return Err(CgroupError::BadValue(s.to_string()));
    }
    Ok(Setting {
        key: key.to_string(),
        value: value.to_string(),
    })
}

/// The controller a key belongs to: the part before the first '.', if it is a known one.
pub fn controller_of(key: &str) -> Option<&'static str> {
    let (prefix, rest) = key.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    CONTROLLERS.iter().copied().find(|c| *c == prefix)
}

/// Whether a cgroup2 file system is mounted at `root`.
pub fn is_v2(root: &Path) -> bool {
    let Ok(c) = crate::sys::cpath(root) else {
        return false;
    };
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    ret == 0 && st.f_type == CGROUP2_SUPER_MAGIC
}

/// A created leaf. Dropping it removes the leaf (and the `minipc` directory when this
/// leaf created it and it is empty) unless `keep` was called.
#[derive(Debug)]
pub struct Leaf {
    path: PathBuf,
    created_parent: Option<PathBuf>,
    procs: Option<File>,
    keep: bool,
}

impl Leaf {
    /// The leaf's `cgroup.procs`, open for writing; a process writes "0" to it to move
    /// itself in. Taking it leaves the leaf without an open descriptor.
    pub fn take_procs(&mut self) -> Option<File> {
        self.procs.take()
    }

    /// Leaves the leaf in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes the leaf, waiting briefly for exiting processes to leave it.
    fn remove(&mut self) -> Result<(), CgroupError> {
        self.procs = None;
        let start = Instant::now();
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e)
                    if e.raw_os_error() == Some(libc::EBUSY)
                        && start.elapsed() < REMOVE_PATIENCE =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => {
                    return Err(CgroupError::Io {
                        path: self.path.clone(),
                        err,
                    })
                }
            }
        }
        if let Some(p) = self.created_parent.take() {
            // Another jail may be using it; then it is not empty and stays.
            let _ = fs::remove_dir(p);
        }
        Ok(())
    }
}

impl Drop for Leaf {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = self.remove() {
            eprintln!("minipc-jailer: warning: {e}");
        }
    }
}

/// Creates `<root>/minipc/<id>`, enables the controllers the settings need on the way
/// down, writes the settings and opens `cgroup.procs`.
pub fn create(root: &Path, id: &str, settings: &[Setting]) -> Result<Leaf, CgroupError> {
    let mut needed: Vec<&str> = Vec::new();
    for s in settings {
        if let Some(c) = controller_of(&s.key) {
            if !needed.contains(&c) {
                needed.push(c);
            }
        }
    }
    if !needed.is_empty() {
        let file = root.join("cgroup.controllers");
        let available = read(&file)?;
        for s in settings {
            if let Some(c) = controller_of(&s.key) {
                if !available.split_whitespace().any(|a| a == c) {
                    return Err(CgroupError::ControllerMissing {
                        key: s.key.clone(),
                        controller: c.to_string(),
                        file,
                    });
                }
            }
        }
        enable(root, &needed)?;
    }
    let parent = root.join(PARENT);
    let created_parent = match fs::create_dir(&parent) {
        Ok(()) => Some(parent.clone()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => None,
        Err(err) => return Err(CgroupError::Io { path: parent, err }),
    };
    let path = parent.join(id);
    if let Err(err) = fs::create_dir(&path) {
        if let Some(p) = &created_parent {
            let _ = fs::remove_dir(p);
        }
        return Err(if err.kind() == io::ErrorKind::AlreadyExists {
            CgroupError::Exists(path)
        } else {
            CgroupError::Io { path, err }
        });
    }
    // From here on, dropping `leaf` undoes the creation.
    let mut leaf = Leaf {
        path,
        created_parent,
        procs: None,
        keep: false,
    };
    if !needed.is_empty() {
        enable(&parent, &needed)?;
    }
    for s in settings {
        let file = leaf.path.join(&s.key);
        let mut f = match OpenOptions::new().write(true).open(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CgroupError::NoSuchFile {
                    key: s.key.clone(),
                    dir: leaf.path.clone(),
                })
            }
            Err(err) => return Err(CgroupError::Io { path: file, err }),
        };
        f.write_all(s.value.as_bytes())
            .map_err(|err| CgroupError::Refused {
                setting: format!("{}={}", s.key, s.value),
                err,
            })?;
    }
    let procs = leaf.path.join("cgroup.procs");
    leaf.procs = Some(
        OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&procs)
            .map_err(|err| CgroupError::Io { path: procs, err })?,
    );
    Ok(leaf)
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|err| CgroupError::Io {
        path: path.to_path_buf(),
        err,
    })
}

/// Enables `controllers` in `dir/cgroup.subtree_control`, skipping those already on.
fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.subtree_control");
    let current = read(&file)?;
    for c in controllers {
        let on = current
            .split_whitespace()
            .any(|w| w.trim_start_matches('+') == *c);
        if on {
            continue;
        }
        OpenOptions::new()
            .write(true)
            .open(&file)
            .and_then(|mut f| f.write_all(format!("+{c}").as_bytes()))
            .map_err(|err| CgroupError::Io {
                path: file.clone(),
                err,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_error(s: &str) -> String {
        parse_setting(s).unwrap_err().to_string()
    }

    #[test]
    fn accepts_controller_files() {
        assert_eq!(
            parse_setting("cpu.max=50000 100000").unwrap(),
            Setting {
                key: "cpu.max".into(),
                value: "50000 100000".into()
            }
        );
        assert_eq!(parse_setting("memory.max=256M").unwrap().value, "256M");
        assert_eq!(parse_setting("pids.max=64").unwrap().key, "pids.max");
        assert_eq!(
            parse_setting("memory.swap.max=0").unwrap().key,
            "memory.swap.max"
        );
    }

    #[test]
    fn rejects_paths_and_interface_files() {
        assert!(key_error("../memory.max=1").contains("plain file name"));
        assert!(key_error("a/memory.max=1").contains("plain file name"));
        assert!(key_error("..=1").contains("plain file name"));
        assert!(key_error("memory..max=1").contains("plain file name"));
        assert!(key_error("=1").contains("plain file name"));
        assert!(key_error("cgroup.procs=1").contains("managed by the jailer"));
        assert!(key_error("cgroup.subtree_control=+cpu").contains("managed"));
        assert!(key_error("bogus.max=1").contains("controller file"));
        assert!(key_error("memory=1").contains("controller file"));
        assert!(key_error("memory.=1").contains("controller file"));
        assert!(key_error("memory.max").contains("KEY=VALUE"));
        assert!(key_error("memory.max=").contains("empty"));
        assert!(key_error("memory.max=1\n2").contains("spans lines"));
    }

    #[test]
    fn controller_names() {
        assert_eq!(controller_of("cpu.max"), Some("cpu"));
        assert_eq!(controller_of("cpuset.cpus"), Some("cpuset"));
        assert_eq!(controller_of("memory.high"), Some("memory"));
        assert_eq!(controller_of("cgroup.procs"), None);
        assert_eq!(controller_of("max"), None);
    }

    #[test]
    fn tmpfs_is_not_cgroup2() {
        assert!(!is_v2(Path::new("/")));
        assert!(!is_v2(Path::new("/nonexistent")));
    }

    /// A directory that imitates the files of a cgroup2 root.
    fn fake_root(name: &str, controllers: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "minipc-jailer-cgroup-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(PARENT)).unwrap();
        fs::write(dir.join("cgroup.controllers"), controllers).unwrap();
        fs::write(dir.join("cgroup.subtree_control"), "").unwrap();
        fs::write(dir.join(PARENT).join("cgroup.subtree_control"), "").unwrap();
        dir
    }

    #[test]
    fn create_enables_controllers_and_names_missing_ones() {
        let root = fake_root("enable", "cpu memory pids\n");
        let settings = [parse_setting("pids.max=64").unwrap()];
        // The fake leaf is a plain directory without a pids.max file.
        let err = create(&root, "vm1", &settings).unwrap_err().to_string();
        assert!(err.contains("--cgroup pids.max: no such file"), "{err}");
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert!(!root.join(PARENT).join("vm1").exists(), "leaf left behind");

        let io = [parse_setting("io.max=8:0 rbps=1").unwrap()];
        let err = create(&root, "vm2", &io).unwrap_err().to_string();
        assert!(err.contains("controller 'io' is not available"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn create_refuses_an_existing_leaf() {
        let root = fake_root("exists", "");
        fs::create_dir(root.join(PARENT).join("vm")).unwrap();
        let err = create(&root, "vm", &[]).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }
}
