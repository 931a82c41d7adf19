//! Seccomp: every thread of a running VM is filtered, and a forbidden syscall stops the VM
//! with a message naming it and exit code 6 (a host error, not a guest crash).

mod common;
use common::*;
use std::time::Duration;

fn seccomp_mode(pid: u32, tid: &str) -> String {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn tasks(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_thread_of_a_running_vm_is_filtered() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    let child = std::process::Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--cpus", "2", "--timeout", "30"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let parent = child.id();
    // The supervisor's child runs the VM: wait until it has its main thread and two vCPUs.
    let mut vm = None;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let kids = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = kids
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
        {
            if tasks(pid).len() >= 3 {
                vm = Some(pid);
                break;
            }
        }
    }
    let vm = vm.expect("the VM process did not start its vCPU threads");
    // Give the threads time to install their filters and run.
    std::thread::sleep(Duration::from_millis(200));
    let mut checked = 0;
    for tid in tasks(vm) {
        assert_eq!(
            seccomp_mode(vm, &tid),
            "2",
            "VM thread {tid} is not filtered"
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} VM threads");
    assert_eq!(
        seccomp_mode(parent, &parent.to_string()),
        "2",
        "the supervisor is not filtered"
    );
    // SAFETY: signalling our own child.
    unsafe { kill(parent as i32, 15) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_forbidden_syscall_stops_the_vm_with_its_name() {
    if !kvm_available() {
        return;
    }
    let r = minipc(&["--x-test-forbidden-syscall", "--timeout", "20"]);
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("forbidden syscall 110 (getppid)"),
        "{}",
        r.stderr
    );
}

/// With several vCPUs, the threads after the first inherit its wider spawner filter and stack
/// the spawn guard on it (vcpu/threads.rs): the last vCPU tries gettid, which only the
/// guard forbids. The guest spins, so it cannot end before the last AP's thread starts.
#[test]
fn inherited_vcpu_filters_are_as_narrow_as_the_vcpu_list() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    for cpus in ["2", "3"] {
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--x-test-forbidden-syscall",
            "--cpus",
            cpus,
            "--timeout",
            "20",
        ]);
        assert_eq!(r.code, 6, "--cpus {cpus}: {}", r.stderr);
        assert!(
            r.stderr.contains("forbidden syscall 186 (gettid)"),
            "--cpus {cpus}: {}",
            r.stderr
        );
    }
}

#[test]
fn seccomp_off_warns() {
    if !kvm_available() {
        return;
    }
    let r = minipc(&["--seccomp", "off"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("seccomp filters are off"), "{}", r.stderr);
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
