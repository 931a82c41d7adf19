//! The VMM's cgroup, on cgroup v2 or on cgroup v1 controllers.
//!
//! cgroup v2: one leaf `<root>/minipc/<id>` of the unified hierarchy, the controllers the
//! `--cgroup KEY=VALUE` limits need enabled on the way down, the values written to its
//! files. cgroup v1 (and hybrid hosts, where the controllers are v1 hierarchies): one leaf
//! `<mount>/minipc/<id>` under each hierarchy a limit uses (`/sys/fs/cgroup/memory/...`),
//! each v2 key translated to its v1 files where there is an equivalent, v1 keys written as
//! given. The hierarchies are found in /proc/self/mountinfo, and a mount point counts only
//! when that file system is really there (a mount hidden by another is not).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sys::describe;

/// Where the cgroup hierarchies are expected; a cgroup2 file system mounted here is the
/// one used on a pure cgroup v2 host.
pub const ROOT: &str = "/sys/fs/cgroup";
/// The directory under a hierarchy's root that holds one leaf per jail.
const PARENT: &str = "minipc";
/// `statfs` magic of a cgroup2 and of a cgroup (v1) file system.
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: u64 = 0x0027_e0eb;
/// Where the mounts are listed.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Controllers of cgroup v2 whose files a `--cgroup` key may name.
const V2_CONTROLLERS: &[&str] = &[
    "cpu", "cpuset", "io", "memory", "pids", "hugetlb", "rdma", "misc",
];
/// Controllers of cgroup v1 (a hierarchy's mount options name those it holds).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
];
/// cgroup v2 keys that have no cgroup v1 file with the same meaning, with the v1 file
/// closest to it (written as a v1 key if that is what the user means), if any.
const NO_V1_EQUIVALENT: &[(&str, Option<&str>)] = &[
    ("memory.high", Some("memory.soft_limit_in_bytes")),
    ("memory.low", None),
    ("memory.min", None),
    ("memory.swap.max", Some("memory.memsw.limit_in_bytes")),
    ("memory.swap.high", None),
    ("memory.zswap.max", None),
    ("memory.oom.group", None),
    (
        "io.max",
        Some("blkio.throttle.read_bps_device and its siblings"),
    ),
    ("io.weight", Some("blkio.weight")),
    ("io.latency", None),
    ("cpu.weight.nice", None),
    ("cpu.uclamp.min", None),
    ("cpu.uclamp.max", None),
];
/// cpu.weight's range, and the cpu.shares its default (100) means.
const WEIGHT_MIN: u64 = 1;
const WEIGHT_MAX: u64 = 10_000;
const WEIGHT_DEFAULT: u64 = 100;
const SHARES_DEFAULT: u64 = 1024;
/// How long removal waits for the last processes of a leaf to be gone.
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
    #[error("--cgroup '{setting}': expected {expected}")]
    BadNumber {
        setting: String,
        expected: &'static str,
    },
    #[error("--cgroup {0} is given twice")]
    Duplicate(String),
    #[error("--cgroup-version '{0}': expected 1 or 2")]
    BadVersion(String),
    #[error("{}", not_mounted(*.0))]
    NotMounted(Option<Version>),
    #[error("--cgroup {key}: controller '{controller}' is not available in {}", .file.display())]
    ControllerMissing {
        key: String,
        controller: String,
        file: PathBuf,
    },
    #[error(
        "--cgroup {key}: controller '{controller}' is not mounted as cgroup v1 (mounted: {})",
        if .mounted.is_empty() { "none".to_string() } else { .mounted.join(", ") }
    )]
    V1ControllerMissing {
        key: String,
        controller: String,
        mounted: Vec<String>,
    },
    #[error("--cgroup {key}: no cgroup v1 equivalent{}", match .closest {
        Some(c) => format!(" (the closest v1 file is {c}; give it as the key to use it)"),
        None => String::new(),
    })]
    NoV1Equivalent {
        key: String,
        closest: Option<&'static str>,
    },
    #[error("cgroup {}: {}", .path.display(), describe(.err))]
    Io { path: PathBuf, err: io::Error },
    #[error("cgroup {} already exists (another jail with this id?)", .0.display())]
    Exists(PathBuf),
    #[error("--cgroup {key}: no such file in {}", .dir.display())]
    NoSuchFile { key: String, dir: PathBuf },
    #[error("--cgroup '{setting}'{}: the kernel refused it: {}",
        .file.as_ref().map(|f| format!(" (as {f})")).unwrap_or_default(), describe(.err))]
    Refused {
        setting: String,
        file: Option<String>,
        err: io::Error,
    },
}

fn not_mounted(version: Option<Version>) -> String {
    match version {
        None => format!(
            "--cgroup: no cgroup hierarchy is mounted (neither cgroup v2 at {ROOT} nor \
             cgroup v1 controllers, see {MOUNTINFO})"
        ),
        Some(Version::V2) => {
            format!("--cgroup-version 2: cgroup v2 is not mounted (no cgroup2 in {MOUNTINFO})")
        }
        Some(Version::V1) => {
            format!("--cgroup-version 1: no cgroup v1 controller is mounted (see {MOUNTINFO})")
        }
    }
}

/// The cgroup interface the jailer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Parses `--cgroup-version`: `1` or `2`.
pub fn parse_version(s: &str) -> Result<Version, CgroupError> {
    match s {
        "1" => Ok(Version::V1),
        "2" => Ok(Version::V2),
        _ => Err(CgroupError::BadVersion(s.to_string())),
    }
}

/// One validated `--cgroup KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub value: String,
}

/// Parses and validates `KEY=VALUE`. KEY must be a plain file name of a controller of
/// cgroup v2 or v1 (`memory.max`, `memory.limit_in_bytes`), never a path and never one of
/// the `cgroup.*` interface files.
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

/// The controller a key belongs to: the part before the first '.', if it is a known
/// controller of cgroup v2 or v1.
pub fn controller_of(key: &str) -> Option<&'static str> {
    let (prefix, rest) = key.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    V2_CONTROLLERS
        .iter()
        .chain(V1_CONTROLLERS)
        .copied()
        .find(|c| *c == prefix)
}

/// The cgroup v1 files (name, value) that carry a `--cgroup` setting, in the order they
/// are written. A cgroup v2 key with a v1 equivalent is translated (`memory.max` to
/// `memory.limit_in_bytes`, `cpu.max` to the CFS quota and period, `cpu.weight` to
/// `cpu.shares`); any other key is a v1 file, written as given.
pub fn v1_files(s: &Setting) -> Result<Vec<(String, String)>, CgroupError> {
    let setting = || format!("{}={}", s.key, s.value);
    let one = |file: &str, value: &str| Ok(vec![(file.to_string(), value.to_string())]);
    // "max" (no limit) is -1 in the v1 files that count.
    let unlimited = |v: &str| if v == "max" { "-1" } else { v }.to_string();
    match s.key.as_str() {
        "memory.max" => one("memory.limit_in_bytes", &unlimited(&s.value)),
        "pids.max" | "cpuset.cpus" | "cpuset.mems" => one(&s.key, &s.value),
        "cpu.max" => {
            let bad = || CgroupError::BadNumber {
                setting: setting(),
                expected: "'QUOTA [PERIOD]' in microseconds, QUOTA a number or max",
            };
            let mut words = s.value.split_whitespace();
            let quota = words.next().ok_or_else(bad)?;
            let period = words.next();
            if words.next().is_some() {
                return Err(bad());
            }
            if quota != "max" && quota.parse::<u64>().is_err() {
                return Err(bad());
            }
            let mut files = Vec::new();
            // The period first: the kernel checks the quota against it.
            if let Some(p) = period {
                p.parse::<u64>().map_err(|_| bad())?;
                files.push(("cpu.cfs_period_us".to_string(), p.to_string()));
            }
            files.push(("cpu.cfs_quota_us".to_string(), unlimited(quota)));
            Ok(files)
        }
        "cpu.weight" => {
            let weight = s
                .value
                .parse::<u64>()
                .ok()
                .filter(|w| (WEIGHT_MIN..=WEIGHT_MAX).contains(w))
                .ok_or_else(|| CgroupError::BadNumber {
                    setting: setting(),
                    expected: "a weight from 1 to 10000",
                })?;
            one("cpu.shares", &weight_to_shares(weight).to_string())
        }
        key if key.starts_with("hugetlb.") && key.ends_with(".max") => {
            let size = &key["hugetlb.".len()..key.len() - ".max".len()];
            one(
                &format!("hugetlb.{size}.limit_in_bytes"),
                &unlimited(&s.value),
            )
        }
        key => match NO_V1_EQUIVALENT.iter().find(|(k, _)| *k == key) {
            Some((_, closest)) => Err(CgroupError::NoV1Equivalent {
                key: key.to_string(),
                closest: *closest,
            }),
            None => one(key, &s.value),
        },
    }
}

/// cpu.weight (1 to 10000, default 100) as cpu.shares (default 1024), rounded to the
/// nearest: the conversion the kernel makes when cpu.weight is written on cgroup v2
/// (weight * 1024 / 100), so a weight means the same CPU share on both versions.
pub fn weight_to_shares(weight: u64) -> u64 {
    (weight * SHARES_DEFAULT + WEIGHT_DEFAULT / 2) / WEIGHT_DEFAULT
}

/// A cgroup v1 hierarchy: where it is mounted and the controllers it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Mount {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

/// The cgroup file systems in a mountinfo text: the cgroup2 mount points, and the v1
/// hierarchies that hold controllers (named ones such as `name=systemd` hold none).
pub fn parse_mountinfo(text: &str) -> (Vec<PathBuf>, Vec<V1Mount>) {
    let mut v2 = Vec::new();
    let mut v1 = Vec::new();
    for line in text.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let (fstype, super_options) = (right.next(), right.nth(1));
        let path = PathBuf::from(unescape(mount_point));
        match fstype {
            Some("cgroup2") => v2.push(path),
            Some("cgroup") => {
                let controllers: Vec<String> = super_options
                    .unwrap_or("")
                    .split(',')
                    .filter(|o| V1_CONTROLLERS.contains(o))
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty() {
                    v1.push(V1Mount { path, controllers });
                }
            }
            _ => {}
        }
    }
    (v2, v1)
}

/// A mountinfo path with its octal escapes (`\040` for a space) decoded.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).filter(|d| {
            b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file system type at `path` (its `statfs` magic), if it can be read.
fn fs_magic(path: &Path) -> Option<u64> {
    let c = crate::sys::cpath(path).ok()?;
    // SAFETY: statfs is plain data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // f_type is signed in glibc, unsigned in musl.
    #[allow(clippy::unnecessary_cast)]
    (ret == 0).then_some(st.f_type as u64)
}

/// Whether a cgroup2 file system is mounted at `root`.
pub fn is_v2(root: &Path) -> bool {
    fs_magic(root) == Some(CGROUP2_SUPER_MAGIC)
}

/// The hierarchy the jailer uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2, mounted here.
    V2(PathBuf),
    /// cgroup v1 controllers, one hierarchy per mount.
    V1(Vec<V1Mount>),
}

impl Hierarchy {
    /// The hierarchy to use: the one `version` names, or else cgroup v2 when it is
    /// mounted at `/sys/fs/cgroup` (a pure v2 host), the v1 controllers when there are
    /// any (a v1 or hybrid host), and a cgroup2 mount elsewhere last. `None` when there
    /// is none of the kind asked for.
    pub fn find(version: Option<Version>) -> Option<Hierarchy> {
        let text = fs::read_to_string(MOUNTINFO).unwrap_or_default();
        let (v2, v1) = parse_mountinfo(&text);
        // Only the mounts that are really there: another mount may hide one.
        let v2: Vec<PathBuf> = v2.into_iter().filter(|p| is_v2(p)).collect();
        let mut v1: Vec<V1Mount> = v1
            .into_iter()
            .filter(|m| fs_magic(&m.path) == Some(CGROUP_SUPER_MAGIC))
            .collect();
        // One mount per hierarchy: the same one may be mounted twice.
        let mut seen: Vec<Vec<String>> = Vec::new();
        v1.retain(|m| {
            let new = !seen.contains(&m.controllers);
            seen.push(m.controllers.clone());
            new
        });
        let root = Path::new(ROOT);
        let preferred_v2 = || {
            v2.iter()
                .find(|p| p.as_path() == root)
                .or_else(|| v2.first())
                .cloned()
                .map(Hierarchy::V2)
        };
        let v1_hierarchy = (!v1.is_empty()).then(|| Hierarchy::V1(v1.clone()));
        match version {
            Some(Version::V2) => preferred_v2(),
            Some(Version::V1) => v1_hierarchy,
            None if v2.iter().any(|p| p.as_path() == root) => preferred_v2(),
            None => v1_hierarchy.or_else(preferred_v2),
        }
    }

    pub fn version(&self) -> Version {
        match self {
            Hierarchy::V2(_) => Version::V2,
            Hierarchy::V1(_) => Version::V1,
        }
    }
}

/// One directory of a leaf, and the `minipc` directory above it when it was created for
/// it.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    created_parent: Option<PathBuf>,
}

/// A created leaf: one directory on cgroup v2, one per hierarchy used on v1. Dropping it
/// removes the directories (and each `minipc` directory this leaf created, when empty)
/// unless `keep` was called.
#[derive(Debug)]
pub struct Leaf {
    dirs: Vec<Dir>,
    procs: Vec<File>,
    keep: bool,
}

impl Leaf {
    /// The `cgroup.procs` file of each directory, open for writing; a process writes "0"
    /// to each to move itself in. Taking them leaves the leaf without open descriptors.
    pub fn take_procs(&mut self) -> Vec<File> {
        std::mem::take(&mut self.procs)
    }

    /// Leaves the leaf in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Creates `<base>/minipc/<id>` and records it (from here on, dropping the leaf
    /// removes it).
    fn make_dir(&mut self, base: &Path, id: &str) -> Result<PathBuf, CgroupError> {
        let parent = base.join(PARENT);
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
        self.dirs.push(Dir {
            path: path.clone(),
            created_parent,
        });
        Ok(path)
    }

    /// Opens each directory's `cgroup.procs` for writing.
    fn open_procs(&mut self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            let procs = d.path.join("cgroup.procs");
            self.procs.push(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&procs)
                    .map_err(|err| CgroupError::Io { path: procs, err })?,
            );
        }
        Ok(())
    }

    /// Removes the directories, waiting briefly for exiting processes to leave them.
    fn remove(&mut self) -> Result<(), CgroupError> {
        self.procs.clear();
        let mut first_error = None;
        for d in self.dirs.drain(..).rev() {
            let start = Instant::now();
            loop {
                match fs::remove_dir(&d.path) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && start.elapsed() < REMOVE_PATIENCE =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(err) => {
                        first_error.get_or_insert(CgroupError::Io {
                            path: d.path.clone(),
                            err,
                        });
                        break;
                    }
                }
            }
            if let Some(p) = d.created_parent {
                // Another jail may be using it; then it is not empty and stays.
                let _ = fs::remove_dir(p);
            }
        }
        first_error.map_or(Ok(()), Err)
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

/// Creates the leaf in `hierarchy` and writes the settings.
pub fn create(hierarchy: &Hierarchy, id: &str, settings: &[Setting]) -> Result<Leaf, CgroupError> {
    match hierarchy {
        Hierarchy::V2(root) => create_v2(root, id, settings),
        Hierarchy::V1(mounts) => create_v1(mounts, id, settings),
    }
}

/// cgroup v2: creates `<root>/minipc/<id>`, enables the controllers the settings need on
/// the way down, writes the settings and opens `cgroup.procs`.
pub fn create_v2(root: &Path, id: &str, settings: &[Setting]) -> Result<Leaf, CgroupError> {
    check(&Hierarchy::V2(root.to_path_buf()), settings)?;
    let mut needed: Vec<&str> = Vec::new();
    for s in settings {
        if let Some(c) = controller_of(&s.key) {
            if !needed.contains(&c) {
                needed.push(c);
            }
        }
    }
    if !needed.is_empty() {
        enable(root, &needed)?;
    }
    let mut leaf = Leaf {
        dirs: Vec::new(),
        procs: Vec::new(),
        keep: false,
    };
    let path = leaf.make_dir(root, id)?;
    if !needed.is_empty() {
        let parent = root.join(PARENT);
        enable(&parent, &needed)?;
    }
    for s in settings {
        write_setting(&path, &s.key, &s.value, s)?;
    }
    leaf.open_procs()?;
    Ok(leaf)
}

/// One file to write on cgroup v1: the hierarchy (an index into the mounts), the file,
/// the value, and the setting it comes from.
type V1Write<'a> = (usize, String, String, &'a Setting);

/// cgroup v1: the files the settings become, each with the hierarchy it is in. Fails on a
/// key without a v1 equivalent, a bad value, or a controller that is not mounted.
fn plan_v1<'a>(
    mounts: &[V1Mount],
    settings: &'a [Setting],
) -> Result<Vec<V1Write<'a>>, CgroupError> {
    let mut writes = Vec::new();
    for s in settings {
        for (file, value) in v1_files(s)? {
            let prefix = file.split('.').next().unwrap_or_default();
            let m = V1_CONTROLLERS
                .contains(&prefix)
                .then(|| {
                    mounts
                        .iter()
                        .position(|m| m.controllers.iter().any(|c| c == prefix))
                })
                .flatten()
                .ok_or_else(|| CgroupError::V1ControllerMissing {
                    key: s.key.clone(),
                    controller: prefix.to_string(),
                    mounted: mounted_controllers(mounts),
                })?;
            writes.push((m, file, value, s));
        }
    }
    Ok(writes)
}

/// Checks, before anything is created, that the settings can be applied in `hierarchy`:
/// on cgroup v2 that their controllers are available, on v1 that each key has its v1
/// files, their values make sense and their controllers are mounted. (That each file
/// exists is known only once the leaf is made.)
pub fn check(hierarchy: &Hierarchy, settings: &[Setting]) -> Result<(), CgroupError> {
    match hierarchy {
        Hierarchy::V2(root) => {
            if settings.is_empty() {
                return Ok(());
            }
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
            Ok(())
        }
        Hierarchy::V1(mounts) => plan_v1(mounts, settings).map(|_| ()),
    }
}

/// cgroup v1: translates the settings, creates `<mount>/minipc/<id>` under each
/// hierarchy they use, writes them and opens each `cgroup.procs`.
pub fn create_v1(mounts: &[V1Mount], id: &str, settings: &[Setting]) -> Result<Leaf, CgroupError> {
    let writes = plan_v1(mounts, settings)?;
    let mut used: Vec<usize> = writes.iter().map(|w| w.0).collect();
    used.sort_unstable();
    used.dedup();
    let mut leaf = Leaf {
        dirs: Vec::new(),
        procs: Vec::new(),
        keep: false,
    };
    let mut paths = Vec::new();
    for &m in &used {
        let mount = &mounts[m];
        let path = leaf.make_dir(&mount.path, id)?;
        if mount.controllers.iter().any(|c| c == "cpuset") {
            // A new cpuset has no CPUs and no memory nodes; a process cannot join it
            // until it is given its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                inherit(&mount.path, &mount.path.join(PARENT), file)?;
                inherit(&mount.path.join(PARENT), &path, file)?;
            }
        }
        paths.push((m, path));
    }
    for (m, file, value, s) in &writes {
        if let Some((_, dir)) = paths.iter().find(|(i, _)| i == m) {
            write_setting(dir, file, value, s)?;
        }
    }
    leaf.open_procs()?;
    Ok(leaf)
}

fn mounted_controllers(mounts: &[V1Mount]) -> Vec<String> {
    let mut all: Vec<String> = mounts.iter().flat_map(|m| m.controllers.clone()).collect();
    all.sort();
    all
}

/// Copies `file` from `from` to `to` when `to`'s is empty.
fn inherit(from: &Path, to: &Path, file: &str) -> Result<(), CgroupError> {
    if !read(&to.join(file))?.trim().is_empty() {
        return Ok(());
    }
    let value = read(&from.join(file))?;
    let path = to.join(file);
    fs::write(&path, value.trim()).map_err(|err| CgroupError::Io { path, err })
}

/// Writes `value` to `dir/file`, reporting a missing file or a refused value in the
/// terms of the setting `s`.
fn write_setting(dir: &Path, file: &str, value: &str, s: &Setting) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let mut f = match OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(CgroupError::NoSuchFile {
                key: if file == s.key {
                    s.key.clone()
                } else {
                    format!("{} ({file})", s.key)
                },
                dir: dir.to_path_buf(),
            })
        }
        Err(err) => return Err(CgroupError::Io { path, err }),
    };
    f.write_all(value.as_bytes())
        .map_err(|err| CgroupError::Refused {
            setting: format!("{}={}", s.key, s.value),
            file: (file != s.key).then(|| format!("{file}={value}")),
            err,
        })
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
        // cgroup v1 files.
        assert_eq!(
            parse_setting("memory.limit_in_bytes=1G").unwrap().key,
            "memory.limit_in_bytes"
        );
        assert_eq!(parse_setting("blkio.weight=500").unwrap().value, "500");
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
        assert!(key_error("tasks=1").contains("controller file"));
        assert!(key_error("memory.max").contains("KEY=VALUE"));
        assert!(key_error("memory.max=").contains("empty"));
        assert!(key_error("memory.max=1\n2").contains("spans lines"));
    }

    #[test]
    fn controller_names() {
        assert_eq!(controller_of("cpu.max"), Some("cpu"));
        assert_eq!(controller_of("cpuset.cpus"), Some("cpuset"));
        assert_eq!(controller_of("memory.high"), Some("memory"));
        assert_eq!(controller_of("blkio.weight"), Some("blkio"));
        assert_eq!(controller_of("cpuacct.usage"), Some("cpuacct"));
        assert_eq!(controller_of("cgroup.procs"), None);
        assert_eq!(controller_of("max"), None);
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1").unwrap(), Version::V1);
        assert_eq!(parse_version("2").unwrap(), Version::V2);
        for bad in ["", "3", "v2", "1 "] {
            assert_eq!(
                parse_version(bad).unwrap_err().to_string(),
                format!("--cgroup-version '{bad}': expected 1 or 2")
            );
        }
    }

    fn v1(key: &str, value: &str) -> Result<Vec<(String, String)>, String> {
        v1_files(&Setting {
            key: key.into(),
            value: value.into(),
        })
        .map_err(|e| e.to_string())
    }

    fn files(list: &[(&str, &str)]) -> Result<Vec<(String, String)>, String> {
        Ok(list
            .iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect())
    }

    #[test]
    fn v2_keys_map_to_their_v1_files() {
        assert_eq!(
            v1("memory.max", "512M"),
            files(&[("memory.limit_in_bytes", "512M")])
        );
        assert_eq!(
            v1("memory.max", "max"),
            files(&[("memory.limit_in_bytes", "-1")])
        );
        assert_eq!(v1("pids.max", "64"), files(&[("pids.max", "64")]));
        assert_eq!(v1("pids.max", "max"), files(&[("pids.max", "max")]));
        assert_eq!(
            v1("cpu.max", "50000 100000"),
            files(&[
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "50000")
            ])
        );
        assert_eq!(
            v1("cpu.max", "max 20000"),
            files(&[("cpu.cfs_period_us", "20000"), ("cpu.cfs_quota_us", "-1")])
        );
        assert_eq!(
            v1("cpu.max", "25000"),
            files(&[("cpu.cfs_quota_us", "25000")])
        );
        assert_eq!(v1("cpuset.cpus", "0-1"), files(&[("cpuset.cpus", "0-1")]));
        assert_eq!(v1("cpuset.mems", "0"), files(&[("cpuset.mems", "0")]));
        assert_eq!(
            v1("hugetlb.2MB.max", "4194304"),
            files(&[("hugetlb.2MB.limit_in_bytes", "4194304")])
        );
    }

    #[test]
    fn cpu_weight_becomes_shares_as_the_kernel_converts_it() {
        assert_eq!(weight_to_shares(100), 1024);
        assert_eq!(weight_to_shares(1), 10);
        assert_eq!(weight_to_shares(50), 512);
        assert_eq!(weight_to_shares(200), 2048);
        assert_eq!(weight_to_shares(10_000), 102_400);
        assert_eq!(v1("cpu.weight", "100"), files(&[("cpu.shares", "1024")]));
        for bad in ["0", "10001", "-1", "x", "1.5"] {
            let e = v1("cpu.weight", bad).unwrap_err();
            assert!(e.contains("a weight from 1 to 10000"), "{bad}: {e}");
            assert!(
                e.starts_with(&format!("--cgroup 'cpu.weight={bad}'")),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_cpu_max_values_are_refused() {
        for bad in ["", "x", "50000 y", "1 2 3", "-5 100000", "max max"] {
            let e = v1("cpu.max", bad).unwrap_err();
            assert!(e.contains("'QUOTA [PERIOD]'"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn v1_keys_pass_as_given_and_v2_keys_without_an_equivalent_are_named() {
        assert_eq!(
            v1("memory.limit_in_bytes", "1G"),
            files(&[("memory.limit_in_bytes", "1G")])
        );
        assert_eq!(v1("cpu.shares", "512"), files(&[("cpu.shares", "512")]));
        assert_eq!(v1("blkio.weight", "500"), files(&[("blkio.weight", "500")]));
        let e = v1("memory.swap.max", "0").unwrap_err();
        assert_eq!(
            e,
            "--cgroup memory.swap.max: no cgroup v1 equivalent (the closest v1 file is \
             memory.memsw.limit_in_bytes; give it as the key to use it)"
        );
        assert_eq!(
            v1("memory.low", "1M").unwrap_err(),
            "--cgroup memory.low: no cgroup v1 equivalent"
        );
        assert!(v1("io.max", "8:0 rbps=1").unwrap_err().contains("io.max"));
    }

    const MOUNTINFO_HYBRID: &str = "\
24 1 254:1 / / rw,relatime - ext4 /dev/vda rw
30 24 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
33 30 0:29 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/cpuset,pids rw,relatime - cgroup cgroup rw,cpuset,pids
36 24 0:32 / /mnt/with\\040space rw - cgroup cgroup rw,blkio
";

    #[test]
    fn mountinfo_names_the_hierarchies() {
        let (v2, v1) = parse_mountinfo(MOUNTINFO_HYBRID);
        assert_eq!(v2, [PathBuf::from("/sys/fs/cgroup/unified")]);
        let list: Vec<(String, Vec<String>)> = v1
            .iter()
            .map(|m| (m.path.display().to_string(), m.controllers.clone()))
            .collect();
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            list,
            [
                ("/sys/fs/cgroup/cpu".to_string(), c(&["cpu"])),
                ("/sys/fs/cgroup/memory".to_string(), c(&["memory"])),
                (
                    "/sys/fs/cgroup/cpuset,pids".to_string(),
                    c(&["cpuset", "pids"])
                ),
                ("/mnt/with space".to_string(), c(&["blkio"])),
            ]
        );
        assert_eq!(parse_mountinfo("garbage\n\n1 2 3\n"), (vec![], vec![]));
    }

    #[test]
    fn tmpfs_is_not_cgroup2() {
        assert!(!is_v2(Path::new("/")));
        assert!(!is_v2(Path::new("/nonexistent")));
    }

    /// A fresh directory under the temporary directory.
    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "minipc-jailer-cgroup-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A directory that imitates the files of a cgroup2 root.
    fn fake_root(name: &str, controllers: &str) -> PathBuf {
        let dir = temp(name);
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
        let err = create_v2(&root, "vm1", &settings).unwrap_err().to_string();
        assert!(err.contains("--cgroup pids.max: no such file"), "{err}");
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
        assert!(!root.join(PARENT).join("vm1").exists(), "leaf left behind");

        let io = [parse_setting("io.max=8:0 rbps=1").unwrap()];
        let err = create_v2(&root, "vm2", &io).unwrap_err().to_string();
        assert!(err.contains("controller 'io' is not available"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn create_refuses_an_existing_leaf() {
        let root = fake_root("exists", "");
        fs::create_dir(root.join(PARENT).join("vm")).unwrap();
        let err = create_v2(&root, "vm", &[]).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_names_a_controller_that_is_not_mounted_and_leaves_nothing() {
        let dir = temp("v1-missing");
        let mounts = [V1Mount {
            path: dir.join("memory"),
            controllers: vec!["memory".into()],
        }];
        fs::create_dir(&mounts[0].path).unwrap();
        let settings = [
            parse_setting("memory.max=1G").unwrap(),
            parse_setting("pids.max=64").unwrap(),
        ];
        let err = create_v1(&mounts, "vm", &settings).unwrap_err().to_string();
        assert_eq!(
            err,
            "--cgroup pids.max: controller 'pids' is not mounted as cgroup v1 (mounted: memory)"
        );
        let err = create_v1(&mounts, "vm", &[parse_setting("memory.high=1G").unwrap()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("memory.high: no cgroup v1 equivalent"),
            "{err}"
        );
        assert!(
            !mounts[0].path.join(PARENT).exists(),
            "created before checking"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    fn two_hierarchies(name: &str) -> (PathBuf, [V1Mount; 2]) {
        let dir = temp(name);
        let mounts = [
            V1Mount {
                path: dir.join("cpu,cpuacct"),
                controllers: vec!["cpu".into(), "cpuacct".into()],
            },
            V1Mount {
                path: dir.join("memory"),
                controllers: vec!["memory".into()],
            },
        ];
        for m in &mounts {
            fs::create_dir(&m.path).unwrap();
        }
        (dir, mounts)
    }

    #[test]
    fn v1_refuses_an_existing_leaf_and_leaves_it_alone() {
        let (dir, mounts) = two_hierarchies("v1-exists");
        let theirs = mounts[1].path.join(PARENT).join("vm");
        fs::create_dir_all(&theirs).unwrap();
        fs::write(theirs.join("marker"), "x").unwrap();
        let settings = [
            parse_setting("cpu.weight=50").unwrap(),
            parse_setting("memory.max=256M").unwrap(),
        ];
        let err = create_v1(&mounts, "vm", &settings).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert!(theirs.join("marker").exists());
        // The cpu leaf made before the refusal is gone again.
        assert!(!mounts[0].path.join(PARENT).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn v1_names_the_translated_file_and_removes_its_leaves() {
        let (dir, mounts) = two_hierarchies("v1-write");
        // A plain directory made by create_dir has no controller files.
        let settings = [
            parse_setting("cpu.max=50000 100000").unwrap(),
            parse_setting("memory.max=256M").unwrap(),
        ];
        let err = create_v1(&mounts, "vm", &settings).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "--cgroup cpu.max (cpu.cfs_period_us): no such file in {}",
                mounts[0].path.join(PARENT).join("vm").display()
            )
        );
        for m in &mounts {
            assert!(!m.path.join(PARENT).exists(), "{} left", m.path.display());
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
