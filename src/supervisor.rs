//! Hands the exit status back before the VM is torn down.
//!
//! Closing a VM with an in-kernel irqchip and PIT costs 10-20 ms here, paid by the process
//! whose memory the VM maps, when it exits. A caller waiting for our exit status should not
//! wait for that. So the process forks before it touches KVM: the child builds and runs the
//! machine, writes the exit code into a pipe, closes its stdio and exits (paying for the
//! teardown); the parent, which never opened KVM, exits with that code as soon as it reads
//! it. SIGINT and SIGTERM sent to the parent are forwarded to the child. If the child dies
//! without reporting (a crash, a seccomp kill), the parent reports how it died.

use std::sync::atomic::{AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// The child's side: where to report the exit code.
pub struct Reporter {
    fd: libc::c_int,
}

impl Reporter {
    /// Reports `code` to the parent and exits; the VM is torn down after the parent is gone.
    pub fn exit(self, code: i32) -> ! {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let bytes = code.to_ne_bytes();
        // SAFETY: writing 4 bytes from a live buffer to our pipe, then closing descriptors
        // and leaving without destructors (vCPU threads may still run).
        unsafe {
            if self.fd >= 0 {
                libc::write(self.fd, bytes.as_ptr() as *const libc::c_void, 4);
                libc::close(0);
                libc::close(1);
                libc::close(2);
                libc::close(self.fd);
            }
            libc::_exit(code)
        }
    }
}

/// Forks. Returns in the child, with its reporter; the parent never returns. When the fork
/// is impossible, the caller runs in this process and reports by exiting.
pub fn split(filter: Option<&seccompiler::BpfProgram>) -> Reporter {
    let mut p = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Reporter { fd: -1 };
    }
    // SAFETY: no other thread exists yet (this runs before any is started).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        // SAFETY: closing our own fresh descriptors.
        unsafe {
            libc::close(p[0]);
            libc::close(p[1]);
        }
        return Reporter { fd: -1 };
    }
    if pid == 0 {
        // SAFETY: closing the read end we do not use.
        unsafe { libc::close(p[0]) };
        return Reporter { fd: p[1] };
    }
    CHILD.store(pid, Ordering::Relaxed);
    // SAFETY: installing a handler that only calls kill; closing the unused write end.
    unsafe {
        libc::signal(
            libc::SIGINT,
            forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGHUP,
            forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::close(p[1]);
    }
    if let Some(f) = filter {
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Supervisor, f) {
            eprintln!("minipc: {e}");
            forward(libc::SIGKILL);
            // SAFETY: exiting; the child has been killed.
            unsafe { libc::_exit(crate::exit::code::HOST_ERROR) };
        }
    }
    let mut b = [0u8; 4];
    let mut got = 0usize;
    while got < 4 {
        // SAFETY: reading into the rest of a live 4-byte buffer.
        let r = unsafe { libc::read(p[0], b[got..].as_mut_ptr() as *mut libc::c_void, 4 - got) };
        if r > 0 {
            got += r as usize;
        } else if r == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    let code = if got == 4 {
        i32::from_ne_bytes(b)
    } else {
        // The child died without reporting: tell how.
        let mut status = 0;
        // SAFETY: waiting for our own child.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else if libc::WIFSIGNALED(status) {
            eprintln!(
                "minipc: the VM process was killed by signal {}",
                libc::WTERMSIG(status)
            );
            crate::exit::code::SIGNAL_BASE + libc::WTERMSIG(status)
        } else {
            crate::exit::code::HOST_ERROR
        }
    };
    // SAFETY: exiting without destructors; nothing of ours needs cleanup.
    unsafe { libc::_exit(code) }
}
