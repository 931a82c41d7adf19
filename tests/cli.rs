//! Bad arguments and bad files: one clear line on stderr, exit code 2, nothing started.

mod common;
use common::*;

fn assert_config_error(args: &[&str], needle: &str) {
    let r = minipc(args);
    assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
    assert!(r.stderr.contains(needle), "{args:?}: {}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    assert_config_error(&["--bogus"], "--bogus");
    assert_config_error(&["--mem", "1M"], "too small");
    assert_config_error(&["--mem", "12Q"], "12Q");
    assert_config_error(&["--mem", "2T"], "too large");
    // B is bytes, not a unit of its own: 4096 bytes is too small.
    assert_config_error(&["--mem", "4096B"], "memory size 4096 bytes is too small");
    assert_config_error(&["--mem", "0"], "too small");
    assert_config_error(&["--mem", ""], "--mem");
    assert_config_error(&["--mem", "99999999999T"], "'99999999999T' is not a size");
    assert_config_error(&["--cpus", "0"], "--cpus");
    assert_config_error(&["--cpus", "1000"], "--cpus");
    assert_config_error(&["--serial", "pty"], "--serial");
    assert_config_error(&["--timeout", "soon"], "--timeout");
    assert_config_error(&["--cpus"], "needs a value");
    assert_config_error(&["stray"], "stray");
}

#[test]
fn an_argument_that_is_not_utf8_is_named() {
    use std::os::unix::ffi::OsStrExt;
    let o = std::process::Command::new(MINIPC)
        .arg("--firmware")
        .arg(std::ffi::OsStr::from_bytes(b"fw\xff.bin"))
        .output()
        .expect("run minipc");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        r#"minipc: argument 2 is not valid UTF-8: "fw\xFF.bin""#
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn bad_firmware_files_are_named() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let odd = dir.join("odd-size.rom");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    assert_config_error(&["--firmware", path_str(&odd)], "odd-size.rom");
    let big = dir.join("too-big.rom");
    std::fs::write(&big, vec![0u8; 512 * 1024]).unwrap();
    assert_config_error(&["--firmware", path_str(&big)], "256 KiB");
    assert_config_error(
        &["--firmware", "/nonexistent/bios.bin"],
        "/nonexistent/bios.bin",
    );
    assert_config_error(
        &["--serial", "file:/nonexistent/dir/serial.log"],
        "/nonexistent/dir/serial.log",
    );
}

/// Files whose metadata does not give their real size are judged by what they hold, before
/// KVM is touched: exit 2 and one line naming the file.
#[test]
fn firmware_files_whose_size_metadata_lies_are_read_whole() {
    assert_config_error(
        &["--firmware", "/proc/self/status"],
        "/proc/self/status: firmware image is",
    );
    assert_config_error(&["--firmware", "/proc/self/status"], "multiple of 4 KiB");
    assert_config_error(
        &["--firmware", "/sys/devices/system/cpu/online"],
        "/sys/devices/system/cpu/online: firmware image is",
    );
    assert_config_error(
        &["--firmware", "/dev/zero"],
        "/dev/zero: firmware image is larger",
    );
    assert_config_error(
        &["--firmware", "/dev/null"],
        "/dev/null: firmware image is empty",
    );

    // A FIFO whose writer writes 5000 bytes, then closes it.
    let fifo = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("firmware-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(path_str(&fifo)).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            f.write_all(&[0x90u8; 5000]).unwrap();
        })
    };
    assert_config_error(
        &["--firmware", path_str(&fifo)],
        "firmware image is 5000 bytes; it must be a multiple of 4 KiB",
    );
    writer.join().unwrap();
    let _ = std::fs::remove_file(&fifo);
}

#[test]
fn help_lists_options_and_exit_codes() {
    let r = minipc(&["--help"]);
    assert_eq!(r.code, 0);
    for s in [
        "--firmware",
        "--mem",
        "--cpus",
        "--serial",
        "--timeout",
        "--stats",
        "124",
    ] {
        assert!(r.stdout.contains(s), "--help lacks {s}");
    }
    // The VMM's own codes are even: a crash is 4, a host error 6 (odd codes are the guest's).
    let codes: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("Exit codes"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        codes,
        ["0", "v*2+1", "2", "4", "6", "124", "128+n"],
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("4      guest crashed"), "{}", r.stdout);
    assert!(r.stdout.contains("6      host error"), "{}", r.stdout);
    let r = minipc(&["--version"]);
    assert_eq!(
        r.stdout.trim(),
        format!("minipc {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Runs minipc in a private mount namespace prepared by `setup` (a shell command), as root.
fn in_private_mounts(setup: &str) -> Option<Run> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !precondition(
        root,
        "needs root to hide /dev/kvm in a private mount namespace",
    ) {
        return None;
    }
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            &format!("{setup} && exec \"$0\"",),
            MINIPC,
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) => Some(Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            wall: std::time::Duration::ZERO,
        }),
        Err(e) => {
            precondition(false, &format!("cannot run unshare (util-linux): {e}"));
            None
        }
    }
}

#[test]
fn without_kvm_the_vmm_says_so_and_exits_6() {
    // /dev without kvm. The first vCPU thread is already filtered when the build fails; it
    // must not end on its own (its end makes calls its filter forbids), which only shows when
    // it wakes before the process exits: hence several tries.
    for _ in 0..16 {
        if let Some(r) = in_private_mounts("mount -t tmpfs none /dev") {
            assert_eq!(r.code, 6, "{}", r.stderr);
            assert!(r.stderr.contains("/dev/kvm"), "{}", r.stderr);
            assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        }
    }
    // Something else where /dev/kvm should be.
    if let Some(r) = in_private_mounts("mount --bind /dev/null /dev/kvm") {
        assert_eq!(r.code, 6, "{}", r.stderr);
        assert!(r.stderr.contains("does not answer as KVM"), "{}", r.stderr);
    }
}

#[test]
fn closed_standard_descriptors_are_reopened_on_dev_null() {
    if !kvm_available() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let rom = guest("bench", &[]);
    let out = concat!(env!("CARGO_TARGET_TMPDIR"), "/closed-fds.out");
    let _ = std::fs::remove_file(out);
    // stdin and stdout closed: whatever the VMM opens must not land on 0 or 1, where the
    // guest's output (stdout) and the console input (stdin) would go.
    for serial in ["stdio".to_string(), format!("file:{out}")] {
        let mut cmd = std::process::Command::new(MINIPC);
        cmd.args([
            "--firmware",
            path_str(&rom),
            "--serial",
            &serial,
            "--timeout",
            "10",
        ])
        .stderr(std::process::Stdio::piped());
        // SAFETY: close only acts on this child's descriptor table, between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::close(0);
                libc::close(1);
                Ok(())
            });
        }
        let o = cmd.output().expect("run minipc");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "--serial {serial}: {stderr}");
        assert!(stderr.is_empty(), "--serial {serial}: {stderr}");
    }
    assert_eq!(std::fs::read_to_string(out).unwrap(), "bench guest\r\n");
}

#[test]
fn too_few_descriptors_end_the_vm_with_a_host_error_that_says_why() {
    if !kvm_available() {
        return;
    }
    use std::os::unix::process::CommandExt;
    let rom = guest("bench", &[]);
    // 16 descriptors: enough to start, not for 16 vCPUs (each has one, and its statistics).
    let mut cmd = std::process::Command::new(MINIPC);
    cmd.args([
        "--firmware",
        path_str(&rom),
        "--cpus",
        "16",
        "--timeout",
        "10",
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit only acts on this child, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 16,
                rlim_max: 16,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = cmd.output().expect("run minipc");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(6), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // The C library's text for EMFILE, and its number.
    let text = std::io::Error::from_raw_os_error(libc::EMFILE).to_string();
    assert!(stderr.contains(&text), "{stderr}");
}
