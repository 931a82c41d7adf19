//! With a terminal on stdin, the guest gets it in raw mode, and the terminal is restored on
//! every exit path: a halt, a timeout, a signal, a seccomp kill, a SIGKILL of either of the
//! VMM's two processes.

mod common;
use common::*;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

struct Pty {
    _master: OwnedFd,
    slave: OwnedFd,
}

fn pty() -> Pty {
    let (master, slave) = openpty();
    Pty {
        _master: master,
        slave,
    }
}

fn attrs(fd: &OwnedFd) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid terminal descriptor and termios.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t
}

fn same(a: &libc::termios, b: &libc::termios) -> bool {
    a.c_iflag == b.c_iflag
        && a.c_oflag == b.c_oflag
        && a.c_cflag == b.c_cflag
        && a.c_lflag == b.c_lflag
}

/// Runs minipc with the pty's slave as stdin; `during` runs while it is up.
fn run_on_pty(args: &[&str], during: impl FnOnce(&Pty, u32)) -> (Pty, libc::termios, i32) {
    let p = pty();
    let before = attrs(&p.slave);
    let stdin = p.slave.try_clone().unwrap();
    let child = Command::new(MINIPC)
        .args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    during(&p, child.id());
    let out = child.wait_with_output().unwrap();
    (p, before, out.status.code().unwrap_or(-1))
}

#[test]
fn the_terminal_is_raw_while_the_guest_runs_and_restored_after() {
    if !kvm_available() {
        return;
    }
    let spin = guest("spin", &[]);
    let (p, before, code) = run_on_pty(
        &["--firmware", path_str(&spin), "--timeout", "30"],
        |p, pid| {
            // Wait until the VMM has switched the terminal to raw mode.
            let mut raw = false;
            for _ in 0..200 {
                std::thread::sleep(Duration::from_millis(10));
                if attrs(&p.slave).c_lflag & libc::ICANON == 0 {
                    raw = true;
                    break;
                }
            }
            assert!(raw, "the terminal never went raw");
            let t = attrs(&p.slave);
            assert_eq!(t.c_lflag & libc::ECHO, 0, "echo still on");
            assert_ne!(t.c_lflag & libc::ISIG, 0, "Ctrl-C must still stop the VM");
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        },
    );
    assert_eq!(code, 143);
    assert!(
        same(&before, &attrs(&p.slave)),
        "not restored after SIGTERM"
    );

    for (args, expect) in [
        (vec!["--firmware", path_str(&spin), "--timeout", "0.3"], 124),
        (vec!["--mem", "64M"], 0),
        (vec!["--x-test-forbidden-syscall"], 6),
    ] {
        let (p, before, code) = run_on_pty(&args, |_, _| {});
        assert_eq!(code, expect, "{args:?}");
        assert!(
            same(&before, &attrs(&p.slave)),
            "{args:?}: terminal not restored"
        );
    }
}

/// Waits until the VMM has put the pty in raw mode.
fn wait_raw(p: &Pty) {
    for _ in 0..500 {
        if attrs(&p.slave).c_lflag & libc::ICANON == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the terminal never went raw");
}

/// The supervisor's child, the process that runs the VM.
fn vm_child(parent: u32) -> u32 {
    for _ in 0..500 {
        let kids = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no VM process under {parent}");
}

/// The VM process killed with SIGKILL cannot restore the terminal; the supervisor does.
#[test]
fn a_sigkilled_vm_process_has_its_terminal_restored_by_the_supervisor() {
    if !kvm_available() {
        return;
    }
    let spin = guest("spin", &[]);
    let (p, before, code) = run_on_pty(
        &["--firmware", path_str(&spin), "--timeout", "30"],
        |p, pid| {
            wait_raw(p);
            let vm = vm_child(pid);
            // SAFETY: signalling the child of our own child.
            unsafe { libc::kill(vm as i32, libc::SIGKILL) };
        },
    );
    assert_eq!(code, 128 + libc::SIGKILL);
    assert!(
        same(&before, &attrs(&p.slave)),
        "not restored after the VM process was killed"
    );
}

/// The supervisor killed with SIGKILL: the VM process gets SIGTERM (PR_SET_PDEATHSIG) and
/// restores the terminal itself, within a second.
#[test]
fn a_sigkilled_supervisor_leaves_the_terminal_restored() {
    if !kvm_available() {
        return;
    }
    let spin = guest("spin", &[]);
    let (p, before, code) = run_on_pty(
        &["--firmware", path_str(&spin), "--timeout", "30"],
        |p, pid| {
            wait_raw(p);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        },
    );
    assert_eq!(code, -1, "killed by a signal: no exit code");
    let mut restored = false;
    for _ in 0..100 {
        if same(&before, &attrs(&p.slave)) {
            restored = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        restored,
        "the terminal is still raw a second after the supervisor died"
    );
}
