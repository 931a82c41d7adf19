//! Test harness: builds the tiny guests under tests/guests/ with binutils and runs them through
//! the real minipc binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const MINIPC: &str = env!("CARGO_BIN_EXE_minipc");

/// Whether a test's precondition (KVM, root, a tool) is met. When it is not, the test is
/// skipped with a loud message naming `what` is missing, except under CI=true, where it
/// fails: in CI every test must run.
pub fn precondition(met: bool, what: &str) -> bool {
    if !met {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{what}, and CI=true: this test must run in CI");
        }
        eprintln!("\n*** SKIPPED: {what} ***\n");
    }
    met
}

/// True when /dev/kvm can be used (see `precondition`).
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    precondition(
        ok,
        "/dev/kvm is not usable on this machine; this test needs KVM",
    )
}

fn run_tool(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assembles tests/guests/NAME.s (with `--defsym` values) into a 4 KiB ROM image.
pub fn guest(name: &str, defs: &[(&str, u64)]) -> PathBuf {
    let bin = build_guest(name, defs, "rom.ld");
    assert_eq!(
        std::fs::metadata(&bin).unwrap().len(),
        4096,
        "{name}: ROM size"
    );
    bin
}

/// Assembles tests/guests/NAME.s into a boot sector and the sectors after it
/// (`bootsector.ld`), padded to whole sectors.
pub fn boot_sector(name: &str, defs: &[(&str, u64)]) -> Vec<u8> {
    let mut b = std::fs::read(build_guest(name, defs, "bootsector.ld")).expect("boot sector");
    assert!(
        b.len() >= 512 && b[510..512] == [0x55, 0xAA],
        "{name}: no boot signature"
    );
    b.resize(b.len().div_ceil(512) * 512, 0);
    b
}

/// Assembles and links tests/guests/NAME.s with the linker script SCRIPT; returns the flat
/// binary. Tests running at the same time may build the same guest: each builds under its
/// own names and renames the image into place, so no test ever sees a half-written one.
fn build_guest(name: &str, defs: &[(&str, u64)], script: &str) -> PathBuf {
    static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let tag: String = defs.iter().map(|(k, v)| format!("-{k}{v}")).collect();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&dir).expect("create guest dir");
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let stem = script.trim_end_matches(".ld");
    let unique = format!("{name}{tag}-{stem}-{}-{n}", std::process::id());
    let obj = dir.join(format!("{unique}.o"));
    let elf = dir.join(format!("{unique}.elf"));
    let built = dir.join(format!("{unique}.bin"));
    let bin = dir.join(format!("{name}{tag}-{stem}.bin"));
    let mut asm = Command::new("as");
    asm.arg("--32").arg("-I").arg(&src);
    for (k, v) in defs {
        asm.arg(format!("--defsym={k}={v}"));
    }
    run_tool(asm.arg("-o").arg(&obj).arg(src.join(format!("{name}.s"))));
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_i386", "-nostdlib", "-T"])
            .arg(src.join(script))
            .arg("-o")
            .arg(&elf)
            .arg(&obj),
    );
    run_tool(
        Command::new("objcopy")
            .args(["-O", "binary"])
            .arg(&elf)
            .arg(&built),
    );
    std::fs::rename(&built, &bin).expect("move the guest image into place");
    let _ = std::fs::remove_file(&obj);
    let _ = std::fs::remove_file(&elf);
    bin
}

/// The result of one run of minipc.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub wall: Duration,
}

impl Run {
    /// The `--stats` JSON line, if there is one.
    pub fn stats(&self) -> Option<&str> {
        stats_line(&self.stderr)
    }
    /// A number in the `--stats` line.
    pub fn stat(&self, key: &str) -> Option<u64> {
        stat_value(self.stats()?, key)
    }
    pub fn reason(&self) -> Option<String> {
        let s = self.stats()?;
        let rest = s.strip_prefix("{\"exit_reason\":\"")?;
        Some(rest[..rest.find('"')?].to_string())
    }
}

/// The `--stats` JSON line in minipc's standard error, if there is one.
pub fn stats_line(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| l.starts_with("{\"exit_reason\""))
}

/// The number after `"key":` in a `--stats` line (or text that holds one).
pub fn stat_value(stats: &str, key: &str) -> Option<u64> {
    let rest = stats.split(&format!("\"{key}\":")).nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

fn finish(out: Output, start: Instant) -> Run {
    let code = out.status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + out.status.signal().unwrap_or(0)
    });
    Run {
        code,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        wall: start.elapsed(),
    }
}

/// Runs minipc with `args` and no input.
pub fn minipc(args: &[&str]) -> Run {
    minipc_with_input(args, None)
}

/// Runs minipc with `args`, feeding `input` on stdin when given.
pub fn minipc_with_input(args: &[&str], input: Option<&[u8]>) -> Run {
    let start = Instant::now();
    let mut child = Command::new(MINIPC)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minipc");
    if let Some(data) = input {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(data).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait for minipc");
    finish(out, start)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// How a test kernel is linked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// An ELF executable, 32- or 64-bit.
    Elf32,
    Elf64,
    /// A flat binary from a 32- or 64-bit object (objcopy -O binary).
    Flat32,
    Flat64,
}

/// Assembles tests/guests/SRC.s with `defs` and links it with tests/guests/SCRIPT.ld into a
/// test kernel; returns its path.
pub fn kernel(src: &str, script: &str, link: Link, defs: &[(&str, u64)]) -> PathBuf {
    let dir_src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let tag: String = defs.iter().map(|(k, v)| format!("-{k}{v}")).collect();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernels");
    std::fs::create_dir_all(&dir).expect("create kernel dir");
    // Tests build the same kernel in parallel: each builds under its own name, then
    // renames the result into place.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("{src}{tag}-{link:?}");
    let base = dir.join(format!("{name}-tmp{}-{seq}", std::process::id()));
    let obj = base.with_extension("o");
    let elf = base.with_extension("elf");
    let (bits, emul) = match link {
        Link::Elf32 | Link::Flat32 => ("--32", "elf_i386"),
        Link::Elf64 | Link::Flat64 => ("--64", "elf_x86_64"),
    };
    let mut asm = Command::new("as");
    asm.arg(bits).arg("-I").arg(&dir_src);
    for (k, v) in defs {
        asm.arg(format!("--defsym={k}={v}"));
    }
    run_tool(
        asm.arg("-o")
            .arg(&obj)
            .arg(dir_src.join(format!("{src}.s"))),
    );
    run_tool(
        Command::new("ld")
            .args(["-m", emul, "-nostdlib", "--no-warn-rwx-segments", "-T"])
            .arg(dir_src.join(format!("{script}.ld")))
            .arg("-o")
            .arg(&elf)
            .arg(&obj),
    );
    let (built, ext) = match link {
        Link::Elf32 | Link::Elf64 => (elf, "elf"),
        Link::Flat32 | Link::Flat64 => {
            let bin = base.with_extension("bin");
            run_tool(
                Command::new("objcopy")
                    .args(["-O", "binary"])
                    .arg(&elf)
                    .arg(&bin),
            );
            (bin, "bin")
        }
    };
    let out = dir.join(format!("{name}.{ext}"));
    std::fs::rename(&built, &out).expect("move the kernel into place");
    let _ = std::fs::remove_file(&obj);
    let _ = std::fs::remove_file(base.with_extension("elf"));
    out
}

/// The `name=value` lines a test kernel printed, in order.
pub fn report(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The first value of `key` in a report, as a number when it is hex.
pub fn value(r: &[(String, String)], key: &str) -> String {
    r.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key}= line in the report: {r:?}"))
}

pub fn hex(r: &[(String, String)], key: &str) -> u64 {
    let v = value(r, key);
    u64::from_str_radix(&v, 16).unwrap_or_else(|_| panic!("{key}={v} is not hex"))
}

/// Every value of `key`, as numbers.
pub fn hexes(r: &[(String, String)], key: &str) -> Vec<u64> {
    r.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| u64::from_str_radix(v, 16).unwrap_or_else(|_| panic!("{key}={v}")))
        .collect()
}

/// The E820 map minipc gives a guest of `mem` bytes below 3.5 GiB with the embedded
/// firmware: (base, length, type), as the README documents it.
pub fn expected_e820(mem: u64) -> Vec<(u64, u64, u64)> {
    vec![
        (0, 0x9_FC00, 1),
        (0x9_FC00, 0x400, 2),
        (0xC_0000, 0x4_0000, 2),
        (0x10_0000, mem - 0x10_0000, 1),
        (0xFFFE_0000, 0x2_0000, 2),
    ]
}

/// A file a tests/fixtures script leaves in the fixture cache (`$MINIPC_FIXTURES`, by
/// default ~/.cache/minipc): skips loudly when it is missing, fails under CI=true.
pub fn fixture(dir: &str, name: &str, script: &str) -> Option<PathBuf> {
    let root = std::env::var_os("MINIPC_FIXTURES")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("minipc")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/minipc")))?;
    let p = root.join(dir).join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing and CI=true: run tests/fixtures/debian-kernel.sh",
            p.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: {} is missing; run tests/fixtures/{script} ***\n",
        p.display()
    );
    None
}

/// A new pseudo-terminal: (master, slave).
pub fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty fills two descriptors that we then own.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty");
    // SAFETY: fresh descriptors from openpty.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    }
}
