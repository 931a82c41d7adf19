//! Runs the real minipc-jailer binary. Argument errors are checked as any user; tests that
//! build jails need root and print a loud SKIP otherwise.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

const JAILER: &str = env!("CARGO_BIN_EXE_minipc-jailer");
const PROBE: &str = env!("CARGO_BIN_EXE_jail-probe");
const NOBODY: &str = "65534";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_cmd(mut cmd: Command) -> Out {
    let o = cmd.output().expect("running the jailer");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn jailer(args: &[&str]) -> Out {
    let mut cmd = Command::new(JAILER);
    cmd.args(args);
    run_cmd(cmd)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test's precondition (root, a tool, a kernel feature) is met. When it is not,
/// the test is skipped with a loud message naming what is missing, except under CI=true,
/// where it fails: in CI every test must run.
fn precondition(met: bool, what: &str) -> bool {
    if !met {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{what}, and CI=true: this test must run in CI");
        }
        eprintln!("\n*** SKIP {what} ***\n");
    }
    met
}

/// True when the test must be skipped for lack of root (and says so loudly).
fn skip_unless_root(test: &str) -> bool {
    !precondition(is_root(), &format!("{test}: needs root (euid 0)"))
}

/// Whether a tool runs (`TOOL --help` succeeds).
fn tool_runs(tool: &str) -> bool {
    Command::new(tool)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A fresh id and an empty chroot base for one test.
fn fresh(test: &str) -> (String, PathBuf) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let id = format!("test-{}-{n}", std::process::id());
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("jails-{test}-{id}"));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    (id, base)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The jailer's arguments to run `exec` as nobody in a jail under `base`.
fn nobody_args<'a>(id: &'a str, exec: &'a str, base: &'a Path) -> Vec<&'a str> {
    vec![
        "--id",
        id,
        "--exec-file",
        exec,
        "--uid",
        NOBODY,
        "--gid",
        NOBODY,
        "--chroot-base",
        s(base),
    ]
}

/// The jailer's arguments for a probe run as nobody.
fn probe_args<'a>(id: &'a str, base: &'a Path) -> Vec<&'a str> {
    nobody_args(id, PROBE, base)
}

fn parse_probe(stdout: &str) -> HashMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The exit code of the jailer's own failures on bad input (README.md).
const BAD_INPUT: i32 = 2;

fn assert_error(r: &Out, needle: &str) {
    assert_error_code(r, BAD_INPUT, needle);
}

fn assert_error_code(r: &Out, code: i32, needle: &str) {
    assert_eq!(r.code, code, "stderr: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "stderr: {}", r.stderr);
    assert!(
        r.stderr.starts_with("minipc-jailer: "),
        "stderr: {}",
        r.stderr
    );
    assert!(r.stderr.contains(needle), "{needle:?} not in: {}", r.stderr);
    assert_eq!(r.stdout, "");
}

fn assert_gone(base: &Path, id: &str) {
    let dir = base.join("minipc").join(id);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// How the test can see a cgroup v2 hierarchy at /sys/fs/cgroup from the jailer's view.
enum CgroupView {
    /// cgroup v2 is mounted at /sys/fs/cgroup.
    Direct,
    /// A hybrid host: cgroup v2 is at /sys/fs/cgroup/unified, so the jailer runs under
    /// `unshare --mount` with cgroup2 mounted at /sys/fs/cgroup in that namespace.
    PrivateMount,
}

impl CgroupView {
    fn detect() -> Option<CgroupView> {
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            return Some(CgroupView::Direct);
        }
        let unshare = Command::new("unshare")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists() && unshare {
            return Some(CgroupView::PrivateMount);
        }
        None
    }

    /// The cgroup v2 root as this test process sees it.
    fn root(&self) -> &'static Path {
        match self {
            CgroupView::Direct => Path::new("/sys/fs/cgroup"),
            CgroupView::PrivateMount => Path::new("/sys/fs/cgroup/unified"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        match self {
            CgroupView::Direct => {
                let mut c = Command::new(JAILER);
                c.args(args);
                c
            }
            CgroupView::PrivateMount => {
                let mut c = Command::new("unshare");
                c.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec \"$0\" \"$@\"",
                    JAILER,
                ]);
                c.args(args);
                c
            }
        }
    }
}

/// The PIDs whose parent is `ppid`, from /proc/*/stat.
fn children_of(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // The fields after the parenthesised command name: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if rest.split_whitespace().nth(1) == Some(&ppid.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// Reads the probe's stdout up to its last line ("argv=...") and returns it.
fn read_probe_lines(stdout: &mut impl Read) -> String {
    let mut reader = BufReader::new(stdout);
    let mut text = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        text.push_str(&line);
        if line.starts_with("argv=") {
            break;
        }
    }
    text
}

#[test]
fn bad_ids_are_refused() {
    let long = "x".repeat(65);
    for id in ["", "a b", "a/b", "..", "a_b", "vm.1", long.as_str()] {
        let r = jailer(&[
            "--id",
            id,
            "--exec-file",
            "/bin/true",
            "--uid",
            "1",
            "--gid",
            "1",
        ]);
        assert_error(&r, "--id");
    }
}

#[test]
fn bad_flags_are_refused() {
    let base = [
        "--id",
        "x",
        "--exec-file",
        "/bin/true",
        "--uid",
        "1",
        "--gid",
        "1",
    ];
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "unknown option '--bogus'"),
        (&["--bogus=1"], "unknown option '--bogus'"),
        (&["stray"], "'stray'"),
        (&["--daemonize=yes"], "--daemonize takes no value"),
        (&["--netns"], "--netns needs a value"),
        (&["--uid", "2"], "--uid is given twice"),
        (
            &["--chroot-base", "relative/dir"],
            "--chroot-base 'relative/dir'",
        ),
        (
            &["--resource-limit", "stack=1"],
            "--resource-limit 'stack=1'",
        ),
        (
            &["--resource-limit", "no-file=x"],
            "--resource-limit 'no-file=x'",
        ),
        (&["--cgroup", "../cpu.max=1"], "--cgroup '../cpu.max=1'"),
        (&["--cgroup", "cgroup.procs=1"], "--cgroup 'cgroup.procs=1'"),
        (&["--cgroup", "memory.max"], "--cgroup 'memory.max'"),
    ];
    for (extra, needle) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        assert_error(&jailer(&args), needle);
    }
    assert_error(
        &jailer(&["--id", "x", "--uid", "1", "--gid", "1"]),
        "--exec-file is required",
    );
    assert_error(
        &jailer(&["--id", "x", "--exec-file", "/e", "--uid", "0", "--gid", "1"]),
        "--uid 0",
    );
}

#[test]
fn help_shows_usage_and_an_example() {
    let r = jailer(&["--help"]);
    assert_eq!(r.code, 0);
    for needle in [
        "--id",
        "--exec-file",
        "--chroot-base",
        "--cgroup",
        "--resource-limit",
        "--daemonize",
        "--mount-proc",
        "Example",
    ] {
        assert!(r.stdout.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn non_root_is_refused() {
    let args = [
        "--id",
        "x",
        "--exec-file",
        "/bin/true",
        "--uid",
        "1",
        "--gid",
        "1",
    ];
    if !is_root() {
        assert_error(&jailer(&args), "must be run as root");
        return;
    }
    if !precondition(
        tool_runs("setpriv"),
        "non_root_is_refused: running as root and setpriv (util-linux) is missing",
    ) {
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        NOBODY,
        "--regid",
        NOBODY,
        "--clear-groups",
        JAILER,
    ]);
    cmd.args(args);
    assert_error(
        &run_cmd(cmd),
        "must be run as root (effective uid is 65534)",
    );
}

#[test]
fn bad_paths_are_named_and_nothing_is_left() {
    if skip_unless_root("bad_paths_are_named_and_nothing_is_left") {
        return;
    }
    let (id, base) = fresh("badpaths");
    let file = base.join("plain-file");
    fs::write(&file, "x").unwrap();
    let b = s(&base);
    let jail = |exec: &str, extra: &[&str]| {
        let mut args = vec![
            "--id",
            id.as_str(),
            "--exec-file",
            exec,
            "--uid",
            NOBODY,
            "--gid",
            NOBODY,
            "--chroot-base",
            b,
        ];
        args.extend_from_slice(extra);
        jailer(&args)
    };
    assert_error(
        &jail("/nonexistent/minipc", &[]),
        "--exec-file /nonexistent/minipc",
    );
    assert_error(&jail(b, &[]), "not a regular file");
    assert_error(&jail(s(&file), &[]), "not executable");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
    assert_error(&jail(s(&file), &[]), "not an ELF file");
    assert_error(
        &jail(PROBE, &["--", "--firmware", "/nonexistent/fw.bin"]),
        "--firmware /nonexistent/fw.bin: No such file",
    );
    assert_error(
        &jail(PROBE, &["--", "--disk=/nonexistent/disk.img"]),
        "--disk /nonexistent/disk.img",
    );
    assert_error(
        &jail(PROBE, &["--", "--serial", "file:/nonexistent/dir/s.log"]),
        "/nonexistent/dir/s.log",
    );
    assert_error(&jail(PROBE, &["--", "--kernel"]), "--kernel needs a value");
    assert_error(
        &jail(PROBE, &["--netns", "/nonexistent/ns"]),
        "--netns /nonexistent/ns",
    );
    assert_error(
        &jail(PROBE, &["--netns", "/proc/self/ns/uts"]),
        "not a network namespace",
    );
    let r = jailer(&[
        "--id",
        &id,
        "--exec-file",
        PROBE,
        "--uid",
        NOBODY,
        "--gid",
        NOBODY,
        "--chroot-base",
        &format!("{}/sub", file.display()),
    ]);
    assert_error(&r, "--chroot-base");
    // Only the plain file the test made is there.
    let left: Vec<_> = fs::read_dir(&base).unwrap().flatten().collect();
    assert_eq!(left.len(), 1, "{left:?}");
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn an_existing_jail_is_not_touched() {
    if skip_unless_root("an_existing_jail_is_not_touched") {
        return;
    }
    let (id, base) = fresh("exists");
    let dir = base.join("minipc").join(&id);
    fs::create_dir_all(dir.join("root")).unwrap();
    fs::write(dir.join("root").join("marker"), "x").unwrap();
    assert_error(&jailer(&probe_args(&id, &base)), "already exists");
    assert!(dir.join("root").join("marker").exists());
    fs::remove_dir_all(&base).unwrap();
}

/// The jailer runs in a private mount namespace where an empty tmpfs hides whatever is
/// mounted at /sys/fs/cgroup, so the test sees a host without any cgroup hierarchy
/// wherever it runs: a limit, or a cgroup version asked for, is refused by name.
#[test]
fn cgroup_limits_need_a_cgroup_hierarchy() {
    if skip_unless_root("cgroup_limits_need_a_cgroup_hierarchy") {
        return;
    }
    if !precondition(
        tool_runs("unshare"),
        "cgroup_limits_need_a_cgroup_hierarchy: unshare (util-linux) is missing",
    ) {
        return;
    }
    let cases: &[(&[&str], &str)] = &[
        (
            &["--cgroup", "pids.max=64"],
            "--cgroup: no cgroup hierarchy is mounted",
        ),
        (
            &["--cgroup-version", "1", "--cgroup", "pids.max=64"],
            "--cgroup-version 1: no cgroup v1 controller is mounted",
        ),
        (
            &["--cgroup-version", "1"],
            "--cgroup-version 1: no cgroup v1 controller is mounted",
        ),
    ];
    for (extra, needle) in cases {
        let (id, base) = fresh("nocgroup");
        let mut args = probe_args(&id, &base);
        args.extend_from_slice(extra);
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/fs/cgroup && exec \"$0\" \"$@\"",
            JAILER,
        ]);
        cmd.args(&args);
        assert_error_code(&run_cmd(cmd), BAD_INPUT, needle);
        assert_gone(&base, &id);
        fs::remove_dir_all(&base).unwrap();
    }
}

/// The cgroup v1 hierarchies of this host, by controller: where each is mounted (from
/// /proc/self/mountinfo; fields after " - ": type, source, super options).
fn v1_mounts() -> HashMap<String, PathBuf> {
    let mut out = HashMap::new();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split(' ');
        if r.next() != Some("cgroup") {
            continue;
        }
        let Some(point) = left.split(' ').nth(4) else {
            continue;
        };
        for opt in r.nth(1).unwrap_or("").split(',') {
            if opt != "rw" && opt != "ro" && !opt.contains('=') && Path::new(point).is_dir() {
                out.entry(opt.to_string())
                    .or_insert_with(|| PathBuf::from(point));
            }
        }
    }
    out
}

/// The first mount point of a cgroup2 file system, from /proc/self/mountinfo.
fn v2_mount() -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = PathBuf::from(left.split(' ').nth(4)?);
        (right.split(' ').next() == Some("cgroup2") && point.join("cgroup.controllers").exists())
            .then_some(point)
    })
}

/// Lines of a /proc/PID/cgroup text (or the probe's, joined by ';') that put the process
/// in the jail's leaf, as "HIERARCHY-ID:CONTROLLERS".
fn in_leaf(cgroup: &str, id: &str) -> Vec<String> {
    cgroup
        .split([';', '\n'])
        .filter_map(|l| l.rsplit_once(':'))
        .filter(|(_, path)| *path == format!("/minipc/{id}"))
        .map(|(h, _)| h.to_string())
        .collect()
}

/// A v1 key the host cannot apply: its controller is not mounted as cgroup v1.
fn unmounted_v1_key(mounts: &HashMap<String, PathBuf>) -> Option<(&'static str, &'static str)> {
    [
        ("rdma", "rdma.max=mlx4_0 hca_handle=2"),
        ("misc", "misc.max=res_a 1"),
        ("net_cls", "net_cls.classid=1"),
        ("perf_event", "perf_event.x=1"),
        ("hugetlb", "hugetlb.2MB.limit_in_bytes=0"),
    ]
    .into_iter()
    .find(|(c, _)| !mounts.contains_key(*c))
}

/// On cgroup v1, a key without a v1 equivalent, a key without a file, a controller that
/// is not mounted and a bad value are refused by name (exit 2), and no leaf is left.
#[test]
fn cgroup_v1_keys_the_host_cannot_apply_are_named() {
    let test = "cgroup_v1_keys_the_host_cannot_apply_are_named";
    if skip_unless_root(test) {
        return;
    }
    let mounts = v1_mounts();
    if !precondition(
        mounts.contains_key("memory"),
        &format!("{test}: no cgroup v1 memory controller is mounted"),
    ) {
        return;
    }
    let memory = mounts["memory"].clone();
    let (id, base) = fresh("v1keys");
    let leaf = memory.join("minipc").join(&id);
    let mut cases: Vec<(String, String)> = vec![
        (
            "memory.high=1G".into(),
            "--cgroup memory.high: no cgroup v1 equivalent (the closest v1 file is \
             memory.soft_limit_in_bytes"
                .into(),
        ),
        (
            "memory.no_such_file=1".into(),
            format!(
                "--cgroup memory.no_such_file: no such file in {}",
                leaf.display()
            ),
        ),
        (
            "cpu.weight=0".into(),
            "--cgroup 'cpu.weight=0': expected a weight from 1 to 10000".into(),
        ),
        (
            "cpu.max=half".into(),
            "--cgroup 'cpu.max=half': expected 'QUOTA [PERIOD]'".into(),
        ),
        (
            "memory.limit_in_bytes=lots".into(),
            "--cgroup 'memory.limit_in_bytes=lots': the kernel refused it".into(),
        ),
    ];
    match unmounted_v1_key(&mounts) {
        Some((controller, key)) => cases.push((
            key.to_string(),
            format!("controller '{controller}' is not mounted as cgroup v1 (mounted: "),
        )),
        None => {
            precondition(
                false,
                &format!("{test}: every v1 controller is mounted; the missing one is not checked"),
            );
        }
    }
    for (setting, needle) in &cases {
        let mut args = probe_args(&id, &base);
        args.extend(["--cgroup-version", "1", "--cgroup", setting]);
        assert_error(&jailer(&args), needle);
        assert!(!leaf.exists(), "{setting}: {} left behind", leaf.display());
        assert_gone(&base, &id);
    }
    fs::remove_dir_all(&base).unwrap();
}

/// `--cgroup-version` picks the hierarchy: with 1 the process is in a leaf of the v1
/// controller its limit uses, with 2 in a leaf of the cgroup v2 hierarchy (on a hybrid
/// host, the one at /sys/fs/cgroup/unified); the leaves are gone afterwards.
#[test]
fn cgroup_version_picks_the_hierarchy() {
    let test = "cgroup_version_picks_the_hierarchy";
    if skip_unless_root(test) {
        return;
    }
    let mounts = v1_mounts();
    let v2 = v2_mount();
    if !precondition(
        mounts.contains_key("pids") && v2.is_some(),
        &format!(
            "{test}: needs the cgroup v1 pids controller and a cgroup v2 mount (a hybrid host)"
        ),
    ) {
        return;
    }
    let v2 = v2.unwrap_or_default();
    let (id, base) = fresh("version");

    let mut args = probe_args(&id, &base);
    args.extend([
        "--mount-proc",
        "--cgroup-version",
        "1",
        "--cgroup",
        "pids.max=64",
    ]);
    let r = jailer(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = parse_probe(&r.stdout);
    let lines = in_leaf(&p["cgroup"], &id);
    assert_eq!(lines.len(), 1, "v1: {}", p["cgroup"]);
    assert!(lines[0].ends_with(":pids"), "v1: {}", p["cgroup"]);
    assert!(!mounts["pids"].join("minipc").join(&id).exists());

    let mut args = probe_args(&id, &base);
    args.extend(["--mount-proc", "--cgroup-version", "2"]);
    let r = jailer(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = parse_probe(&r.stdout);
    assert_eq!(in_leaf(&p["cgroup"], &id), ["0:"], "v2: {}", p["cgroup"]);
    assert!(!v2.join("minipc").join(&id).exists());
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn the_probe_sees_its_confinement() {
    if skip_unless_root("the_probe_sees_its_confinement") {
        return;
    }
    let (id, base) = fresh("probe");
    let mut args = probe_args(&id, &base);
    args.extend([
        "--mount-proc",
        "--resource-limit",
        "no-file=123",
        "--resource-limit=fsize=1048576",
        "--",
        "exit=7",
        "--cpus",
        "2",
    ]);
    let r = jailer(&args);
    assert_eq!(r.code, 7, "exit code passes through; stderr: {}", r.stderr);
    let p = parse_probe(&r.stdout);
    let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("<missing>");
    assert_eq!(get("uid"), NOBODY);
    assert_eq!(get("gid"), NOBODY);
    assert_eq!(get("euid"), NOBODY);
    assert_eq!(get("egid"), NOBODY);
    assert_eq!(get("groups"), "");
    assert_eq!(get("pid"), "1");
    assert_eq!(get("passwd_exists"), "false");
    assert_eq!(get("hostname"), id);
    assert_eq!(get("proc_mounted"), "true");
    assert_eq!(get("no_new_privs"), "1");
    for cap in ["cap_inh", "cap_prm", "cap_eff", "cap_bnd", "cap_amb"] {
        assert_eq!(get(cap), "0000000000000000", "{cap}");
    }
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let mine = fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(get(&format!("ns_{ns}")), mine.to_str().unwrap(), "{ns}");
    }
    let net = fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(get("ns_net"), net.to_str().unwrap(), "no --netns: same net");
    assert_eq!(get("nofile_soft"), "123");
    assert_eq!(get("nofile_hard"), "123");
    assert_eq!(get("fsize_hard"), "1048576");
    assert_eq!(get("fds"), "0,1,2");
    assert_eq!(get("argv"), "/minipc exit=7 --cpus 2");
    let entries = get("root_entries");
    assert!(
        entries.contains("minipc") && entries.contains("dev"),
        "{entries}"
    );
    assert!(
        !entries.contains("old_root") && !entries.contains("etc"),
        "{entries}"
    );
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn proc_is_not_mounted_by_default() {
    if skip_unless_root("proc_is_not_mounted_by_default") {
        return;
    }
    let (id, base) = fresh("noproc");
    let r = jailer(&probe_args(&id, &base));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = parse_probe(&r.stdout);
    assert_eq!(p["proc_mounted"], "false");
    let entries: Vec<&str> = p["root_entries"].split(',').collect();
    assert!(!entries.contains(&"proc"), "{entries:?}");
    assert!(
        entries.contains(&"minipc") && entries.contains(&"dev"),
        "{entries:?}"
    );
    assert_eq!(p["uid"], NOBODY);
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn guest_files_are_placed_and_arguments_rewritten() {
    if skip_unless_root("guest_files_are_placed_and_arguments_rewritten") {
        return;
    }
    let (id, base) = fresh("files");
    let input = base.join("input");
    fs::create_dir(&input).unwrap();
    let fw = input.join("fw.bin");
    fs::write(&fw, vec![0u8; 4096]).unwrap();
    fs::set_permissions(&fw, fs::Permissions::from_mode(0o640)).unwrap();
    let kernel = input.join("bzImage");
    fs::write(&kernel, "kernel").unwrap();
    fs::set_permissions(&kernel, fs::Permissions::from_mode(0o444)).unwrap();
    let disk = input.join("disk.img");
    fs::write(&disk, "disk").unwrap();
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o640)).unwrap();
    let serial = input.join("serial.log");
    fs::write(&serial, "old content").unwrap();

    let fw_arg = format!("--firmware={}", fw.display());
    let disk_arg = format!("--disk={}", disk.display());
    let serial_arg = format!("file:{}", serial.display());
    let mut args = probe_args(&id, &base);
    args.extend([
        "--",
        &fw_arg,
        "--kernel",
        s(&kernel),
        &disk_arg,
        "--serial",
        &serial_arg,
    ]);
    let r = jailer(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let p = parse_probe(&r.stdout);
    assert_eq!(
        p["argv"],
        "/minipc --firmware=/fw.bin --kernel /bzImage --disk=/disk.img --serial file:/serial.log"
    );
    assert_eq!(p["file_fw.bin"], "444 0:0");
    assert_eq!(p["file_bzImage"], "444 0:0");
    assert_eq!(p["file_disk.img"], format!("640 {NOBODY}:{NOBODY}"));
    assert_eq!(p["file_serial.log"], format!("600 {NOBODY}:{NOBODY}"));
    assert_eq!(p["file_minipc"].split(' ').nth(1), Some("0:0"));
    // The host files keep their modes and owners; the serial output was copied back.
    let meta = |f: &Path| {
        let m = fs::metadata(f).unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    assert_eq!(meta(&fw), (0o640, 0, 0));
    assert_eq!(meta(&kernel), (0o444, 0, 0));
    assert_eq!(meta(&disk), (0o640, 0, 0));
    assert_eq!(fs::read_to_string(&serial).unwrap(), "");
    assert_eq!(fs::read_to_string(&disk).unwrap(), "disk");
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn signals_reach_the_vmm_and_exit_codes_pass_through() {
    if skip_unless_root("signals_reach_the_vmm_and_exit_codes_pass_through") {
        return;
    }
    for (how, expected) in [
        ("kill-vmm", 128 + libc::SIGKILL),
        ("term-jailer", 100 + libc::SIGTERM),
    ] {
        let (id, base) = fresh("signals");
        let mut args = probe_args(&id, &base);
        args.extend(["--", "sleep=30"]);
        let mut child = Command::new(JAILER)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let text = read_probe_lines(child.stdout.as_mut().unwrap());
        assert!(text.contains("pid=1"), "{text}");
        let jailer_pid = child.id();
        let target = if how == "kill-vmm" {
            let kids = children_of(jailer_pid);
            assert_eq!(kids.len(), 1, "{kids:?}");
            (kids[0], libc::SIGKILL)
        } else {
            (jailer_pid, libc::SIGTERM)
        };
        // SAFETY: signalling a process this test started (or its child).
        assert_eq!(unsafe { libc::kill(target.0 as libc::pid_t, target.1) }, 0);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(expected), "{how}");
        assert_gone(&base, &id);
        fs::remove_dir_all(&base).unwrap();
    }
}

#[test]
fn daemonize_detaches_and_leaves_the_jail() {
    if skip_unless_root("daemonize_detaches_and_leaves_the_jail") {
        return;
    }
    // The detached VMM is re-parented to this process, which can then reap it.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let (id, base) = fresh("daemon");
    let mut args = probe_args(&id, &base);
    args.extend(["--daemonize", "--", "sleep=30"]);
    let r = jailer(&args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let pid: u32 = r.stdout.trim().parse().expect("the VMM's pid on stdout");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(field("Uid:"), "65534 65534 65534 65534");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("CapEff:"), "0000000000000000");
    // A new session, stdio on the jail's /dev/null.
    // SAFETY: getsid only reads.
    let sid = unsafe { libc::getsid(pid as libc::pid_t) };
    assert_eq!(sid, pid as libc::pid_t);
    for fd in 0..3 {
        let target = fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
        assert!(target.ends_with("dev/null"), "{}", target.display());
    }
    let dir = base.join("minipc").join(&id);
    assert!(
        dir.join("root/minipc").exists(),
        "the jail stays while it runs"
    );
    // SAFETY: signalling the process the jailer started for this test.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let mut status = 0;
    // SAFETY: waiting for the re-parented VMM with a valid status pointer.
    let reaped = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    assert_eq!(reaped, pid as libc::pid_t);
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL);
    assert!(dir.exists(), "with --daemonize the caller removes the jail");
    fs::remove_dir_all(&base).unwrap();
    // Without a cgroup v2 at /sys/fs/cgroup there is no leaf; with one, remove it.
    let leaf = Path::new("/sys/fs/cgroup/minipc").join(&id);
    if leaf.exists() {
        fs::remove_dir(&leaf).unwrap();
    }
}

#[test]
fn the_vmm_runs_in_its_cgroup_leaf() {
    if skip_unless_root("the_vmm_runs_in_its_cgroup_leaf") {
        return;
    }
    let Some(view) = CgroupView::detect() else {
        precondition(
            false,
            "the_vmm_runs_in_its_cgroup_leaf: no cgroup v2 hierarchy \
             (/sys/fs/cgroup/cgroup.controllers is missing)",
        );
        return;
    };
    let controllers = fs::read_to_string(view.root().join("cgroup.controllers")).unwrap();
    let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
    // One limit the hierarchy can take, if any.
    let limit = if has("pids") {
        Some(("pids.max", "64"))
    } else if has("memory") {
        Some(("memory.max", "268435456"))
    } else if has("hugetlb") && Path::new("/sys/kernel/mm/hugepages/hugepages-2048kB").exists() {
        Some(("hugetlb.2MB.max", "2097152"))
    } else {
        None
    };
    let (id, base) = fresh("cgroup");
    let setting = limit.map(|(k, v)| format!("{k}={v}"));
    let mut args = probe_args(&id, &base);
    args.push("--mount-proc");
    if let Some(s) = &setting {
        args.extend(["--cgroup", s]);
    }
    args.extend(["--", "sleep=30"]);
    let mut child = view
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let text = read_probe_lines(child.stdout.as_mut().unwrap());
    let p = parse_probe(&text);
    let v2_line = p
        .get("cgroup")
        .and_then(|c| {
            c.split(';')
                .find(|l| l.starts_with("0::"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let leaf = view.root().join("minipc").join(&id);
    let limit_seen = limit.map(|(k, _)| fs::read_to_string(leaf.join(k)).unwrap_or_default());
    let procs = fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
    // SAFETY: signalling the jailer this test started; it forwards SIGTERM to the probe.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    assert!(
        v2_line.ends_with(&format!("minipc/{id}")),
        "{v2_line} / {stderr}"
    );
    if let (Some((k, v)), Some(seen)) = (limit, limit_seen) {
        assert_eq!(seen.trim(), v, "{k}");
    } else {
        precondition(
            false,
            "the_vmm_runs_in_its_cgroup_leaf: no pids, memory or hugetlb controller in \
             cgroup v2, so no limit was checked",
        );
    }
    assert_eq!(
        procs.lines().count(),
        1,
        "the VMM alone is in the leaf: {procs}"
    );
    assert_eq!(status.code(), Some(100 + libc::SIGTERM), "{stderr}");
    assert!(!leaf.exists(), "cgroup leaf {} left behind", leaf.display());
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

/// The minipc binary next to the jailer (present when the whole workspace is built).
fn minipc_binary(test: &str) -> Option<PathBuf> {
    let vmm = Path::new(JAILER).parent().unwrap().join("minipc");
    precondition(
        vmm.exists(),
        &format!(
            "{test}: {} is missing (run `cargo build --workspace` with this target dir)",
            vmm.display()
        ),
    )
    .then_some(vmm)
}

#[test]
fn the_vmm_demo_runs_in_the_jail() {
    if skip_unless_root("the_vmm_demo_runs_in_the_jail") {
        return;
    }
    let Some(vmm) = minipc_binary("the_vmm_demo_runs_in_the_jail") else {
        return;
    };
    if !precondition(
        Path::new("/dev/kvm").exists(),
        "the_vmm_demo_runs_in_the_jail: no /dev/kvm",
    ) {
        return;
    }
    let (id, base) = fresh("vmm");
    let mut args = nobody_args(&id, s(&vmm), &base);
    args.extend(["--", "--stats"]);
    let r = jailer(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("minipc firmware"), "stdout: {}", r.stdout);
    assert!(r.stderr.contains("\"exit_code\":0"), "stderr: {}", r.stderr);
    assert_gone(&base, &id);

    // The serial port into a file: written in the jail, copied back afterwards.
    let serial = base.join("serial.log");
    let serial_arg = format!("file:{}", serial.display());
    let mut args = nobody_args(&id, s(&vmm), &base);
    args.extend(["--", "--serial", &serial_arg]);
    let r = jailer(&args);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    let log = fs::read_to_string(&serial).unwrap();
    assert!(log.contains("minipc firmware"), "serial: {log}");
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

/// One line of /proc/PID/status, e.g. "Uid".
fn status_field(pid: u32, name: &str) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A 4 KiB firmware whose reset vector jumps to itself: the guest spins until stopped.
fn spin_rom(dir: &Path) -> PathBuf {
    let rom = dir.join("spin.bin");
    let mut bytes = vec![0u8; 4096];
    bytes[0xFF0] = 0xEB;
    bytes[0xFF1] = 0xFE;
    fs::write(&rom, &bytes).unwrap();
    rom
}

/// The VMM's two processes under the jailer `jailer`, once its vCPU runs: the jailer's
/// child is the VMM's supervisor (PID 1 of the new PID namespace), whose child runs the
/// VM. Empty when they do not appear within 5 s.
fn vmm_processes(jailer: u32) -> Vec<u32> {
    for _ in 0..200 {
        std::thread::sleep(std::time::Duration::from_millis(25));
        if let Some(sup) = children_of(jailer).first().copied() {
            if let Some(vm) = children_of(sup).first().copied() {
                if fs::read_dir(format!("/proc/{vm}/task")).map_or(0, |d| d.count()) >= 2 {
                    return vec![sup, vm];
                }
            }
        }
    }
    Vec::new()
}

#[test]
fn a_running_vmm_is_confined_as_seen_from_outside() {
    let test = "a_running_vmm_is_confined_as_seen_from_outside";
    if skip_unless_root(test) {
        return;
    }
    let Some(vmm) = minipc_binary(test) else {
        return;
    };
    if !precondition(
        Path::new("/dev/kvm").exists(),
        &format!("{test}: no /dev/kvm"),
    ) {
        return;
    }
    let (id, base) = fresh("outside");
    let rom = spin_rom(&base);
    let mut args = nobody_args(&id, s(&vmm), &base);
    args.extend(["--", "--firmware", s(&rom), "--timeout", "60"]);
    let mut child = Command::new(JAILER)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let procs = vmm_processes(child.id());
    assert_eq!(procs.len(), 2, "the VMM did not start under the jailer");
    let me = std::process::id();
    for pid in procs {
        assert_eq!(
            status_field(pid, "Uid"),
            "65534 65534 65534 65534",
            "pid {pid}"
        );
        assert_eq!(
            status_field(pid, "Gid"),
            "65534 65534 65534 65534",
            "pid {pid}"
        );
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "pid {pid}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "pid {pid}");
        assert_eq!(status_field(pid, "CapEff"), "0000000000000000", "pid {pid}");
        assert_eq!(status_field(pid, "CapBnd"), "0000000000000000", "pid {pid}");
        for ns in ["mnt", "pid", "ipc", "uts"] {
            let theirs = fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let ours = fs::read_link(format!("/proc/{me}/ns/{ns}")).unwrap();
            assert_ne!(theirs, ours, "pid {pid} shares the {ns} namespace");
        }
        // Its root is the jail, which holds no host files.
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        assert!(
            root.join("minipc").exists(),
            "pid {pid}: no /minipc in its root"
        );
        assert!(
            !root.join("etc/passwd").exists(),
            "pid {pid} sees /etc/passwd"
        );
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}

/// A number in a cgroup file.
fn cgroup_number(path: &Path) -> i64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{}: {text:?}", path.display()))
}

/// A `name value` line of a cgroup v1 stat file.
fn stat_value(path: &Path, name: &str) -> i64 {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}: {text}", path.display()))
}

/// The README's launch on a cgroup v1 (or hybrid) host: the v2 keys become the v1 files of
/// a leaf under each controller, both VMM processes are in every leaf, and, read from
/// outside while the guest spins, the limits hold: the CPU quota throttles it, its memory
/// and tasks are counted against the leaf. The leaves are gone afterwards.
#[test]
fn cgroup_v1_limits_apply_to_the_running_vmm() {
    let test = "cgroup_v1_limits_apply_to_the_running_vmm";
    if skip_unless_root(test) {
        return;
    }
    let Some(vmm) = minipc_binary(test) else {
        return;
    };
    if !precondition(
        Path::new("/dev/kvm").exists(),
        &format!("{test}: no /dev/kvm"),
    ) {
        return;
    }
    let mounts = v1_mounts();
    let controllers = ["memory", "pids", "cpu"];
    let v1_host = !Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !precondition(
        v1_host && controllers.iter().all(|c| mounts.contains_key(*c)),
        &format!(
            "{test}: needs a cgroup v1 or hybrid host with the memory, pids and cpu controllers"
        ),
    ) {
        return;
    }
    let (id, base) = fresh("v1limits");
    let rom = spin_rom(&base);
    let mut args = nobody_args(&id, s(&vmm), &base);
    // No --cgroup-version: the jailer finds the v1 controllers itself.
    args.extend([
        "--cgroup",
        "memory.max=256M",
        "--cgroup",
        "pids.max=32",
        "--cgroup",
        "cpu.max=20000 100000",
        "--cgroup",
        "cpu.weight=50",
        "--",
        "--mem",
        "64M",
        "--firmware",
        s(&rom),
        "--timeout",
        "60",
    ]);
    let mut child = Command::new(JAILER)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let procs = vmm_processes(child.id());
    let leaf = |c: &str| mounts[c].join("minipc").join(&id);
    let mut seen = Vec::new();
    if procs.len() == 2 {
        // Long enough for a spinning guest to run into its 20% quota several times.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        for c in controllers {
            let members = fs::read_to_string(leaf(c).join("cgroup.procs")).unwrap_or_default();
            seen.push((c, members));
        }
    }
    let values = (procs.len() == 2).then(|| {
        (
            cgroup_number(&leaf("memory").join("memory.limit_in_bytes")),
            cgroup_number(&leaf("memory").join("memory.max_usage_in_bytes")),
            cgroup_number(&leaf("pids").join("pids.max")),
            cgroup_number(&leaf("pids").join("pids.current")),
            cgroup_number(&leaf("cpu").join("cpu.cfs_quota_us")),
            cgroup_number(&leaf("cpu").join("cpu.cfs_period_us")),
            cgroup_number(&leaf("cpu").join("cpu.shares")),
            stat_value(&leaf("cpu").join("cpu.stat"), "nr_throttled"),
        )
    });
    let proc_cgroup = procs
        .iter()
        .map(|p| fs::read_to_string(format!("/proc/{p}/cgroup")).unwrap_or_default())
        .collect::<Vec<_>>();
    // SAFETY: signalling the jailer this test started; it forwards SIGTERM to the VMM.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(procs.len(), 2, "the VMM did not start: {stderr}");
    let Some((limit, usage, pids_max, pids_now, quota, period, shares, throttled)) = values else {
        unreachable!("read while the VMM ran")
    };
    for (c, members) in &seen {
        for p in &procs {
            assert!(
                members.lines().any(|l| l == p.to_string()),
                "{c}: VMM process {p} not in {}: {members:?}",
                leaf(c).display()
            );
        }
    }
    for text in &proc_cgroup {
        let hierarchies = in_leaf(text, &id);
        for c in controllers {
            assert!(
                hierarchies.iter().any(|h| h
                    .rsplit(':')
                    .next()
                    .is_some_and(|l| l.split(',').any(|x| x == c))),
                "{c} not in the leaf: {text}"
            );
        }
    }
    assert_eq!(limit, 256 << 20, "memory.limit_in_bytes");
    assert!(
        usage > 0 && usage <= limit,
        "memory.max_usage_in_bytes {usage}: the VMM's memory is not counted"
    );
    assert_eq!(pids_max, 32, "pids.max");
    // The supervisor, the VM process and its vCPU thread at least.
    assert!((3..=32).contains(&pids_now), "pids.current {pids_now}");
    assert_eq!(
        (quota, period),
        (20_000, 100_000),
        "cpu.cfs_quota_us, period"
    );
    assert_eq!(shares, 512, "cpu.shares for cpu.weight=50");
    assert!(throttled > 0, "the spinning guest was never throttled");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    for c in controllers {
        assert!(!leaf(c).exists(), "{} left behind", leaf(c).display());
    }
    assert_gone(&base, &id);
    fs::remove_dir_all(&base).unwrap();
}
