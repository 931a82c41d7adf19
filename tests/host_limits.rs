//! The host refusing the VMM a resource it needs (here: threads, through a cgroup's
//! `pids.max`) ends the VM with a host error (exit 6) and a line that says what could not
//! start; never a crash, a hang or a seccomp kill.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A pids cgroup of its own, removed at the end.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    /// A new cgroup with a pids controller: under the cgroup v1 pids hierarchy, or in cgroup
    /// v2 where the root hands the controller down. None (a loud skip, a failure under
    /// CI=true) without root or without either.
    fn new(test: &str) -> Option<PidsCgroup> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !precondition(root, &format!("{test}: needs root to make a cgroup")) {
            return None;
        }
        // Orphans come to this process, which reaps them as soon as they exit, rather than
        // to init, which may take seconds. (This file has one test: no other test's
        // children are affected.)
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let name = format!("minipc-test-{test}-{}", std::process::id());
        for base in [
            "/sys/fs/cgroup/pids",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup",
        ] {
            let dir = Path::new(base).join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            if dir.join("pids.max").exists() {
                return Some(PidsCgroup(dir));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        precondition(
            false,
            &format!("{test}: no cgroup with a pids controller (v1 or v2) could be made"),
        );
        None
    }

    fn set_max(&self, max: u32) {
        std::fs::write(self.0.join("pids.max"), max.to_string()).unwrap();
    }

    /// Waits until no task of an earlier run is left in it (a VM process outlives its exit
    /// status while KVM tears the VM down; an exiting task still counts in `pids.current`
    /// after it left `cgroup.procs`).
    fn wait_empty(&self) {
        let until = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(self.0.join("pids.current"))
            .unwrap_or_default()
            .trim()
            != "0"
        {
            assert!(
                Instant::now() < until,
                "processes left in {}",
                self.0.display()
            );
            // The VM processes of earlier runs, orphaned once their supervisor exited, are
            // this process's to reap (it is their subreaper: see `new`).
            // SAFETY: waitpid with WNOHANG and no status pointer.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Runs minipc with `args` inside the cgroup once no task of an earlier run is left
    /// there, with `pids.max` at `max`: its exit code, stdout and stderr.
    fn run(&self, max: u32, args: &[&str]) -> (Option<i32>, String, String) {
        self.wait_empty();
        self.set_max(max);
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}/cgroup.procs' && exec \"$@\"",
                self.0.display()
            ))
            .arg("sh")
            .arg(MINIPC)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        self.wait_empty();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn threads_the_host_refuses_end_the_vm_with_a_host_error() {
    if !kvm_available() {
        return;
    }
    let Some(cg) = PidsCgroup::new("threads") else {
        return;
    };
    let g = guest("smp", &[]);
    let smp16 = [
        "--firmware",
        path_str(&g),
        "--cpus",
        "16",
        "--timeout",
        "20",
    ];
    // From no room for a second task to none for the last APs' threads: with 16 vCPUs the
    // VMM needs 19 tasks here (README, "pids.max").
    for max in [1, 2, 3, 4, 6, 8, 12, 16] {
        let (code, _, err) = cg.run(max, &smp16);
        assert_eq!(code, Some(6), "pids.max {max}: {err}");
        assert!(err.contains("cannot start"), "pids.max {max}: {err}");
        assert!(!err.contains("forbidden syscall"), "pids.max {max}: {err}");
    }
    // The RAM registering thread (RAM above 16 MiB registered while the guest runs): with
    // one vCPU it is the fourth task, after the supervisor, the VM process and vCPU 0's
    // thread, which starts before the machine is built.
    let args = [
        "--firmware",
        path_str(&g),
        "--mem",
        "64G",
        "--timeout",
        "20",
    ];
    let (code, _, err) = cg.run(3, &args);
    assert_eq!(code, Some(6), "pids.max 3, --mem 64G: {err}");
    assert!(
        err.contains("cannot start the RAM registering thread"),
        "pids.max 3, --mem 64G: {err}"
    );
    // Room for the VMM's own tasks but not for the thread KVM itself starts at a VM's first
    // run on newer kernels (counted in the VMM's cgroup): KVM_RUN then fails with EAGAIN
    // every time. The VM ends with a host error instead of spinning until --timeout; where
    // the kernel starts no such thread, the guest simply runs.
    let started = Instant::now();
    let (code, _, err) = cg.run(3, &["--firmware", path_str(&g), "--timeout", "20"]);
    assert!(
        code == Some(0) || (code == Some(6) && err.contains("KVM_RUN on vCPU 0")),
        "pids.max 3, one vCPU: {code:?}: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    // With room enough, the same guest runs: every AP comes up.
    let (code, out, err) = cg.run(64, &smp16);
    assert_eq!(code, Some(0), "pids.max 64: {err}");
    assert!(out.contains("aps 0f ids 0000fffe"), "pids.max 64: {out}");
}
