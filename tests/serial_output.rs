//! The guest's serial output to a reader that stalls or is slow: the VMM never blocks on it
//! (`--timeout`, signals and `--stats` work whatever the reader does), the UART tells the
//! guest to wait when the VMM's bounded buffer is full, and a reader that keeps reading gets
//! every byte, in order.

mod common;
use common::*;
use std::fs::File;
use std::io::{Read, Write};
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

/// With a reader that never reads, the guest sees the UART busy once the VMM holds 64 KiB
/// (nothing more), and leaves; those bytes are the ones the exit reports lost.
#[test]
fn a_stalled_reader_makes_the_uart_busy_at_64_kib() {
    if !kvm_available() {
        return;
    }
    let g = guest("lines", &[("LINES", 0xFFFF), ("STOP_WHEN_BUSY", 1)]);
    let (mut reader, writer) = stalled_fifo("busy");
    let child = spawn_to(
        &["--firmware", path_str(&g), "--timeout", "60"],
        Stdio::from(writer),
    );
    let (code, err) = wait_within(child, Duration::from_secs(70), "until busy");
    assert_eq!(
        code,
        (0x22 << 1) | 1,
        "the guest never saw the UART busy: {err}"
    );
    let lost: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("minipc: serial output: "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no lost bytes reported: {err}"));
    // What the pipe took, and nothing else, reached the reader: the start of the output.
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    let expected: String = (0..200)
        .map(|n| format!("line {n:04x} abcdefghijklmnopqrstuvwxyz0123456789\r\n"))
        .collect();
    let n = got.len().min(expected.len());
    assert_eq!(&got[..n], &expected.as_bytes()[..n]);
    // The guest saw the UART busy when the VMM held its 64 KiB (less a transmit FIFO), no
    // sooner and no later; the pipe holds at most a page.
    let sent = lost + got.len() as u64;
    assert!(got.len() <= 4096, "{}", got.len());
    assert!(
        (64 * 1024 - 16..=64 * 1024 + 4096).contains(&sent),
        "{sent} bytes sent ({lost} lost, {} read) before the UART read busy",
        got.len()
    );
}

/// The reader sleeps, then reads in bursts: every line arrives, once, in order.
#[test]
fn a_slow_reader_gets_every_byte_in_order() {
    if !kvm_available() {
        return;
    }
    const LINES: u64 = 1000;
    let g = guest("lines", &[("LINES", LINES)]);
    let mut child = spawn_to(
        &["--firmware", path_str(&g), "--timeout", "120"],
        Stdio::piped(),
    );
    let mut out = child.stdout.take().unwrap();
    shrink_pipe(&out);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::thread::sleep(Duration::from_millis(1500));
        let mut buf = vec![0u8; 8192];
        loop {
            match out.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => panic!("read: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
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
    assert!(done.starts_with("done busy "), "last line {done:?}");
    assert!(!err.contains("lost"), "{err}");
    assert_eq!(lines.next(), Some(""));
    assert_eq!(lines.next(), None);
}

#[test]
fn a_stalled_reader_of_stderr_does_not_hold_the_exit() {
    if !kvm_available() {
        return;
    }
    // stderr goes to a pipe that is full and whose reader never reads: the last lines (the
    // reason, --stats) cannot go out; the VMM must give up on them and exit anyway.
    let g = guest("flood", &[]);
    let (_reader, err) = stalled_fifo("stderr");
    // SAFETY: fcntl on a descriptor we hold, integer arguments.
    let flags = unsafe { libc::fcntl(err.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(err.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
    while (&err).write(&[b'x'; 4096]).is_ok() {}
    // SAFETY: as above: blocking again, as a shell leaves it.
    unsafe { libc::fcntl(err.as_raw_fd(), libc::F_SETFL, flags) };
    let start = Instant::now();
    let mut child = Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--timeout", "1", "--stats"])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .spawn()
        .expect("start minipc");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(15) {
            // SAFETY: killing the process group this test started.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            panic!("minipc still runs 15 s after --timeout 1 with stderr stalled");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(124));
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn an_output_that_fails_is_reported_and_the_guest_still_decides_the_exit_code() {
    if !kvm_available() {
        return;
    }
    let g = guest("lines", &[("LINES", 50)]);
    let full = || File::options().write(true).open("/dev/full").unwrap();
    // The file named by --serial, then stdout: both a full disk.
    let runs = [
        spawn_to(
            &["--firmware", path_str(&g), "--serial", "file:/dev/full"],
            Stdio::null(),
        ),
        spawn_to(&["--firmware", path_str(&g)], Stdio::from(full())),
    ];
    for (i, child) in runs.into_iter().enumerate() {
        let (code, err) = wait_within(child, Duration::from_secs(20), "/dev/full");
        // lines.s leaves through debug-exit with 0x21 once it has sent everything: the
        // output's failure is the VMM's to report, the exit code the guest's.
        assert_eq!(code, (0x21 << 1) | 1, "run {i}: {err}");
        assert!(
            err.contains("serial output failed: No space left on device"),
            "run {i}: {err}"
        );
        let lost: u64 = err
            .split("; ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("run {i}: no count: {err}"));
        assert!(lost >= 50, "run {i}: {lost} bytes lost: {err}");
    }
}

/// Reads `child`'s stdout on a thread; each chunk comes with the moment it arrived.
fn timed_reader(child: &mut Child) -> std::sync::mpsc::Receiver<(Instant, Vec<u8>)> {
    let mut out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 256];
        while let Ok(n) = out.read(&mut b) {
            if n == 0 || tx.send((Instant::now(), b[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects output until it ends with `want`; returns when the last chunk arrived.
fn read_until(
    rx: &std::sync::mpsc::Receiver<(Instant, Vec<u8>)>,
    got: &mut Vec<u8>,
    want: &[u8],
) -> Instant {
    loop {
        let (at, chunk) = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no {want:?} after 10 s: got {got:?}"));
        got.extend_from_slice(&chunk);
        if got.ends_with(want) {
            return at;
        }
    }
}

#[test]
fn a_partial_line_from_an_idle_guest_is_written_out_at_once() {
    if !kvm_available() {
        return;
    }
    // The guest waits in HLT with interrupts on, so the halt detector's checks find it alive
    // and space out; its echo of each byte is a partial line, which must still reach the
    // reader at once (an interactive shell's echo), not at the detector's next check.
    let g = guest("prompt", &[]);
    let mut child = Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--timeout", "60"])
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minipc");
    let rx = timed_reader(&mut child);
    let mut stdin = child.stdin.take().expect("stdin");
    let mut got = Vec::new();
    read_until(&rx, &mut got, b"ready\r\n> ");
    let mut worst = Duration::ZERO;
    // Idle long enough for the checks to reach their longest spacing, then at phases that
    // fall at different points of it.
    for (i, idle_ms) in [1500u64, 370, 610, 290, 830].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(idle_ms));
        let c = b"abcde"[i];
        let sent = Instant::now();
        stdin.write_all(&[c]).expect("write stdin");
        let at = read_until(&rx, &mut got, &[c]);
        worst = worst.max(at.duration_since(sent));
    }
    stdin.write_all(b"q").expect("write stdin");
    let (code, err) = wait_within(child, Duration::from_secs(20), "the prompt guest");
    assert_eq!(code, 0x71 << 1 | 1, "{err}");
    assert_eq!(got, b"ready\r\n> abcde");
    assert!(
        worst < Duration::from_millis(150),
        "an echoed byte took {worst:?} to reach the reader"
    );
}

/// Without /proc, a terminal on stdout cannot get a private description with O_NONBLOCK: its
/// shared one gets the flag only around each write. A terminal nobody reads (its buffer
/// full) then holds back the output, never `--timeout`, and stays blocking for the session.
#[test]
fn a_terminal_nobody_reads_without_proc_does_not_stop_the_timeout() {
    if !kvm_available() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !precondition(
        root,
        "needs root to hide /proc in a private mount namespace",
    ) {
        return;
    }
    let g = guest("flood", &[]);
    // The master stays open and unread.
    let (_master, slave) = openpty();
    let ours = slave.try_clone().expect("dup the pty's slave");
    let child = Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /proc && exec \"$0\" \"$@\"",
            MINIPC,
            "--firmware",
            path_str(&g),
            "--timeout",
            "1",
        ])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => {
            precondition(false, &format!("cannot run unshare (util-linux): {e}"));
            return;
        }
    };
    let start = Instant::now();
    let (code, err) = wait_within(child, Duration::from_secs(20), "a terminal nobody reads");
    assert_eq!(code, 124, "{err}");
    // The terminal's description, shared with the user's session, is blocking again.
    // SAFETY: F_GETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(ours.as_raw_fd(), libc::F_GETFL) };
    assert_eq!(
        flags & libc::O_NONBLOCK,
        0,
        "O_NONBLOCK left on the terminal"
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "took {:?}: {err}",
        start.elapsed()
    );
}

/// `--serial file:` on a FIFO nobody reads yet: minipc waits for its reader (opening it
/// would otherwise block before the VM and its `--timeout` start), within `--timeout`, and
/// runs the guest once a reader comes.
#[test]
fn a_fifo_without_a_reader_is_waited_for_within_the_timeout() {
    if !kvm_available() {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("no-reader-{}.fifo", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path_str(&path)).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    let serial = format!("file:{}", path_str(&path));

    // Nobody reads: the timeout ends it (it used to wait in open(2) forever).
    let start = Instant::now();
    let child = spawn_to(&["--serial", &serial, "--timeout", "1"], Stdio::null());
    let (code, err) = wait_within(child, Duration::from_secs(10), "no reader");
    assert_eq!(code, 124, "{err}");
    assert!(
        err.contains(path_str(&path)) && err.contains("no reader"),
        "{err}"
    );
    assert!(start.elapsed() >= Duration::from_secs(1), "{err}");

    // A reader that comes 300 ms later gets the demo's output.
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let mut out = String::new();
        File::open(&reader_path)
            .and_then(|mut f| f.read_to_string(&mut out))
            .expect("read the FIFO");
        out
    });
    let child = spawn_to(&["--serial", &serial, "--timeout", "20"], Stdio::null());
    let (code, err) = wait_within(child, Duration::from_secs(30), "late reader");
    let out = reader.join().expect("reader");
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("demo done"), "{out}");
}
