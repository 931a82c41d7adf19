//! The guest's serial output to a reader that stalls or is slow: the VMM never blocks on it
//! (`--timeout`, signals and `--stats` work whatever the reader does), the UART tells the
//! guest to wait when the VMM's bounded buffer is full, and a reader that keeps reading gets
//! every byte, in order.

mod common;
use common::*;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A FIFO with a reader that opened it and never reads (returned to keep it open), and a
/// writer for minipc's stdout. The pipe holds 4 KiB, so a flooding guest fills it at once.
fn stalled_fifo(name: &str) -> (File, File) {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path_str(&path)).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // SAFETY: a NUL-terminated path; the descriptor is owned by the File below.
    let r = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    assert!(r >= 0, "open the FIFO for reading");
    // SAFETY: a fresh descriptor we own.
    let reader = unsafe { File::from_raw_fd(r) };
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    shrink_pipe(&writer);
    let _ = std::fs::remove_file(&path);
    (reader, writer)
}

/// Shrinks a pipe to one page.
fn shrink_pipe(f: &impl AsRawFd) {
    // SAFETY: fcntl on a pipe descriptor we hold, integer argument.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        r >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
}

fn spawn_to(args: &[&str], stdout: Stdio) -> Child {
    Command::new(MINIPC)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minipc")
}

/// Waits for `child` up to `limit`; on expiry kills its process group and fails.
fn wait_within(mut child: Child, limit: Duration, what: &str) -> (i32, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            return (code, err);
        }
        if start.elapsed() > limit {
            // SAFETY: killing the process group this test started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("{what}: minipc still runs after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_stalled_reader_does_not_stop_the_timeout_or_the_stats() {
    if !kvm_available() {
        return;
    }
    let g = guest("flood", &[]);
    let (_reader, writer) = stalled_fifo("timeout");
    let start = Instant::now();
    let child = spawn_to(
        &["--firmware", path_str(&g), "--timeout", "1", "--stats"],
        Stdio::from(writer),
    );
    let (code, err) = wait_within(child, Duration::from_secs(15), "--timeout 1");
    assert_eq!(code, 124, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}: {err}",
        start.elapsed()
    );
    assert!(
        err.contains("{\"exit_reason\":\"timeout\",\"exit_code\":124"),
        "{err}"
    );
}

#[test]
fn a_stalled_reader_does_not_stop_sigterm() {
    if !kvm_available() {
        return;
    }
    let g = guest("flood", &[]);
    let (_reader, writer) = stalled_fifo("sigterm");
    let child = spawn_to(
        &["--firmware", path_str(&g), "--timeout", "60", "--stats"],
        Stdio::from(writer),
    );
    // Long enough for the pipe to fill and the guest to be writing into a full one.
    std::thread::sleep(Duration::from_millis(1500));
    let sent = Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, err) = wait_within(child, Duration::from_secs(15), "SIGTERM");
    assert_eq!(code, 143, "{err}");
    assert!(
        sent.elapsed() < Duration::from_secs(4),
        "took {:?} after SIGTERM: {err}",
        sent.elapsed()
    );
    assert!(err.contains("\"exit_reason\":\"signal\""), "{err}");
}

/// The reader sleeps long enough for the VMM's buffer to fill (the guest then sees the
/// transmitter busy and waits), then reads in bursts: every line arrives, once, in order.
#[test]
fn a_slow_reader_gets_every_byte_in_order() {
    if !kvm_available() {
        return;
    }
    const LINES: u64 = 2000;
    let g = guest("lines", &[("LINES", LINES)]);
    let mut child = spawn_to(
        &["--firmware", path_str(&g), "--timeout", "120"],
        Stdio::piped(),
    );
    let mut out = child.stdout.take().unwrap();
    shrink_pipe(&out);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::thread::sleep(Duration::from_millis(4500));
        let mut buf = vec![0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        all
    });
    let (code, err) = wait_within(child, Duration::from_secs(60), "slow reader");
    let all = reader.join().unwrap();
    assert_eq!(code, (0x21 << 1) | 1, "{err}");
    let text = String::from_utf8(all).expect("ASCII output");
    let mut lines = text.split("\r\n");
    for n in 0..LINES {
        let want = format!("line {n:04x} abcdefghijklmnopqrstuvwxyz0123456789");
        assert_eq!(lines.next(), Some(want.as_str()), "line {n}");
    }
    let done = lines.next().unwrap_or_default();
    let busy = done
        .strip_prefix("done busy ")
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| panic!("last line {done:?}"));
    assert!(
        busy > 0,
        "the guest never saw the transmitter busy, so the buffer was not bounded"
    );
    assert_eq!(lines.next(), Some(""));
    assert_eq!(lines.next(), None);
}
