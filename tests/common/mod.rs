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

/// Assembles tests/guests/NAME.s (with `--defsym` values) into a 4 KiB ROM image. Tests
/// running at the same time may build the same guest: each builds under its own names and
/// renames the image into place, so no test ever sees a half-written one.
pub fn guest(name: &str, defs: &[(&str, u64)]) -> PathBuf {
    static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests");
    let tag: String = defs.iter().map(|(k, v)| format!("-{k}{v}")).collect();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guests");
    std::fs::create_dir_all(&dir).expect("create guest dir");
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let unique = format!("{name}{tag}-{}-{n}", std::process::id());
    let obj = dir.join(format!("{unique}.o"));
    let elf = dir.join(format!("{unique}.elf"));
    let built = dir.join(format!("{unique}.bin"));
    let bin = dir.join(format!("{name}{tag}.bin"));
    let mut asm = Command::new("as");
    asm.arg("--32").arg("-I").arg(&src);
    for (k, v) in defs {
        asm.arg(format!("--defsym={k}={v}"));
    }
    run_tool(asm.arg("-o").arg(&obj).arg(src.join(format!("{name}.s"))));
    run_tool(
        Command::new("ld")
            .args(["-m", "elf_i386", "-nostdlib", "-T"])
            .arg(src.join("rom.ld"))
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
    assert_eq!(
        std::fs::metadata(&built).unwrap().len(),
        4096,
        "{name}: ROM size"
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
        self.stderr
            .lines()
            .find(|l| l.starts_with("{\"exit_reason\""))
    }
    pub fn reason(&self) -> Option<String> {
        let s = self.stats()?;
        let rest = s.strip_prefix("{\"exit_reason\":\"")?;
        Some(rest[..rest.find('"')?].to_string())
    }
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
