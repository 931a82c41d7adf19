//! The VM process after the exit status is out: it still exits by itself, with the code it
//! reported, once it has shortened and paid for the VM's teardown (src/vm/teardown.rs) under
//! its seccomp filter. A forbidden syscall there would end it with code 6 instead, unseen by
//! the caller, who has the status already.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Waits for any child of this process (orphans come here: it is a subreaper), for at most
/// `limit`; returns its pid and raw status.
fn wait_any(limit: Duration) -> Option<(libc::pid_t, libc::c_int)> {
    let deadline = Instant::now() + limit;
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid status pointer; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            return Some((pid, status));
        }
        if pid < 0 || Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn vm_process_exits_with_its_reported_code_after_the_teardown() {
    if !kvm_available() {
        return;
    }
    // SAFETY: prctl with integer arguments; makes orphaned descendants our children.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let rom = guest("bench", &[]);
    let cases: [(Vec<&str>, i32); 3] = [
        (vec!["--firmware", path_str(&rom)], 1),
        (vec!["--firmware", path_str(&rom), "--cpus", "2"], 1),
        (vec![], 0),
    ];
    for (args, code) in cases {
        let mut child = Command::new(MINIPC)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{args:?}: exit status");
        let (pid, st) = wait_any(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{args:?}: the VM process did not end"));
        assert!(pid != child.id() as libc::pid_t);
        assert!(
            libc::WIFEXITED(st),
            "{args:?}: the VM process was killed by signal {}",
            libc::WTERMSIG(st)
        );
        assert_eq!(
            libc::WEXITSTATUS(st),
            code,
            "{args:?}: the VM process's own exit code (6: a seccomp kill after reporting)"
        );
        assert!(
            wait_any(Duration::ZERO).is_none(),
            "{args:?}: more processes left"
        );
    }
}
