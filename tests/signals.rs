//! The VMM is two processes (src/supervisor.rs): the parent the caller started, and the child
//! that runs the VM. They live and die together: stop signals reach the VM whenever they are
//! sent, and no VM outlives its parent, even one killed with SIGKILL.

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts minipc in a process group of its own (the child joins it), stdout and stderr
/// piped.
fn spawn(args: &[&str]) -> Child {
    Command::new(MINIPC)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minipc")
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// The live processes of process group `pgid`.
fn live_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(f) = stat_fields(pid) {
            if f.get(2).map(String::as_str) == Some(&pgid.to_string()) && f[0] != "Z" {
                out.push(pid);
            }
        }
    }
    out
}

/// Waits up to `limit` for `done`.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done()
}

/// The VM process (the supervisor's child), once it runs its vCPU threads.
fn vm_process(parent: u32, threads: usize) -> u32 {
    let mut found = None;
    within(Duration::from_secs(5), || {
        let kids = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        found = kids
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count()) >= threads
            });
        found.is_some()
    });
    found.expect("the VM process did not start its vCPU threads")
}

fn send(pid: u32, sig: i32) {
    // SAFETY: signalling a process this test started (or its child).
    assert_eq!(
        unsafe { libc::kill(pid as i32, sig) },
        0,
        "kill {pid} {sig}"
    );
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[test]
fn killing_the_parent_with_sigkill_stops_the_vm_within_a_second() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    let mut parent = spawn(&["--firmware", path_str(&g), "--cpus", "2", "--timeout", "60"]);
    let vm = vm_process(parent.id(), 3);
    send(parent.id(), libc::SIGKILL);
    let status = parent.wait().unwrap();
    assert_eq!(code_of(status), 128 + libc::SIGKILL);
    assert!(
        within(Duration::from_secs(1), || !alive(vm)),
        "the VM process {vm} still runs a second after its parent was killed"
    );
}

/// SIGHUP and SIGQUIT stop the VM cleanly, as SIGINT and SIGTERM do: exit 128+n, and the VM
/// process itself reports it (its --stats line), rather than dying of the signal.
#[test]
fn sighup_and_sigquit_stop_the_vm_cleanly() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    for sig in [libc::SIGHUP, libc::SIGQUIT, libc::SIGINT, libc::SIGTERM] {
        let parent = spawn(&["--firmware", path_str(&g), "--timeout", "60", "--stats"]);
        let pgid = parent.id();
        vm_process(parent.id(), 2);
        send(parent.id(), sig);
        let out = parent.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(code_of(out.status), 128 + sig, "signal {sig}: {err}");
        assert!(
            err.contains(&format!(
                "\"exit_reason\":\"signal\",\"exit_code\":{}",
                128 + sig
            )),
            "signal {sig}: {err}"
        );
        assert!(!err.contains("killed by signal"), "signal {sig}: {err}");
        assert!(
            within(Duration::from_secs(1), || live_members(pgid).is_empty()),
            "signal {sig}: left running: {:?}",
            live_members(pgid)
        );
    }
}

/// A stop signal sent at any moment of the start-up (before the fork, between the fork and
/// the handlers, while the machine is built, once it runs) never leaves a VM behind.
#[test]
fn a_signal_in_the_first_milliseconds_never_leaves_an_orphan() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    let signals = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];
    for i in 0..20u64 {
        let sig = signals[i as usize % signals.len()];
        let mut parent = spawn(&["--firmware", path_str(&g), "--timeout", "60"]);
        let pgid = parent.id();
        std::thread::sleep(Duration::from_micros(i * 500));
        send(parent.id(), sig);
        let status = parent.wait().unwrap();
        assert_eq!(code_of(status), 128 + sig, "run {i}, signal {sig}");
        assert!(
            within(Duration::from_secs(1), || live_members(pgid).is_empty()),
            "run {i}, signal {sig} after {} us: left running: {:?}",
            i * 500,
            live_members(pgid)
        );
    }
}
