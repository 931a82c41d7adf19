//! Hands the exit status back before the VM is torn down, and never leaves the VM behind.
//!
//! Closing a VM with an in-kernel irqchip costs about 10 ms here, paid by the process
//! whose memory the VM maps, when it exits. A caller waiting for our exit status should not
//! wait for that. So the process forks before it touches KVM: the child builds and runs the
//! machine, writes the exit code into a pipe, closes its stdio and exits (paying for the
//! teardown); the parent, which never opened KVM, exits with that code as soon as it reads
//! it. If the child dies without reporting (a crash, a seccomp kill, SIGKILL), the parent
//! reports how it died and puts the terminal back the way it was before the fork, and the
//! status flags of stdout's shared description (the child may have added O_NONBLOCK,
//! devices/serial.rs).
//!
//! The two processes live and die together:
//! - SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to the parent are forwarded to the child, which
//!   stops the VM cleanly (monitor/signals.rs) and reports 128+n. They are blocked from before the
//!   fork until the parent's forwarding handlers are in place, so one sent in the first
//!   microseconds is forwarded too, never lost and never fatal to the parent alone.
//! - The child asks for SIGTERM when its parent dies (`PR_SET_PDEATHSIG`), and then checks
//!   that the parent is still the one that forked it (the parent may have died before the
//!   request was made). A SIGKILL of the parent thus stops the VM like a SIGTERM: terminal
//!   restored, no VM left running.
//! - The child unblocks the signals at once: until it has opened the user's files (then it
//!   blocks them again, before it starts any thread, and the monitor reads them from a
//!   signalfd), they end it with their default action, so a VMM stuck opening a FIFO still
//!   stops on Ctrl-C.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::exit::code;
use crate::monitor::STOP_SIGNALS;

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
    /// Reports `code` to the parent, closes the standard streams, runs `then` (the caller
    /// has its exit status by now) and exits; the VM is torn down after the parent is gone.
    pub fn exit(self, code: i32, then: impl FnOnce()) -> ! {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        let bytes = code.to_ne_bytes();
        // SAFETY: writing 4 bytes from a live buffer to our pipe, then closing descriptors.
        unsafe {
            if self.fd >= 0 {
                libc::write(self.fd, bytes.as_ptr() as *const libc::c_void, 4);
                libc::close(0);
                libc::close(1);
                libc::close(2);
                libc::close(self.fd);
            }
        }
        then();
        // SAFETY: leaving without destructors (vCPU threads may still run).
        unsafe { libc::_exit(code) }
    }
}

/// A signal set holding `signals`.
pub fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signals are valid numbers.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Sets the calling thread's signal mask to `mask`.
fn set_mask(mask: &libc::sigset_t) {
    // SAFETY: a valid set; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut()) };
}

/// What the parent puts back when the child dies without reporting.
struct Saved {
    /// Stdin's terminal settings, if stdin is a terminal.
    terminal: Option<libc::termios>,
    /// Stdout's status flags; negative when stdout is not open.
    stdout_flags: libc::c_int,
}

/// The terminal settings on stdin before the fork, if stdin is a terminal.
fn terminal_settings() -> Option<libc::termios> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return None;
    }
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal and `t` a valid termios.
    (unsafe { libc::tcgetattr(0, &mut t) } == 0).then_some(t)
}

/// The child's first steps: die with the parent, and make sure it has not died already.
fn bind_to_parent(parent: libc::pid_t) {
    // SAFETY: prctl with integer arguments; getppid has none.
    let bound = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        )
    } == 0;
    // SAFETY: getppid has no arguments and cannot fail.
    let ppid = unsafe { libc::getppid() };
    if !bound || ppid != parent {
        // The parent is gone (or cannot be followed): nobody waits for this VM.
        // SAFETY: leaving at once; nothing was started.
        unsafe { libc::_exit(code::HOST_ERROR) };
    }
}

/// Forks. Returns in the child, with its reporter; the parent never returns (`supervise`).
/// When the fork is impossible, the caller runs in this process and reports by exiting.
pub fn split(filter: Option<&seccompiler::BpfProgram>) -> Reporter {
    let stop = signal_set(&STOP_SIGNALS);
    // SAFETY: sigset_t is plain data.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid sets; blocks the stop signals until each side has set up its handling.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &stop, &mut old) };
    let terminal = terminal_settings();
    // SAFETY: F_GETFL takes no argument; -1 when stdout is not open.
    let stdout_flags = unsafe { libc::fcntl(1, libc::F_GETFL) };
    // SAFETY: getpid has no arguments and cannot fail.
    let parent = unsafe { libc::getpid() };

    let mut p = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        set_mask(&old);
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
        set_mask(&old);
        return Reporter { fd: -1 };
    }
    if pid == 0 {
        bind_to_parent(parent);
        set_mask(&old);
        // SAFETY: closing the read end we do not use.
        unsafe { libc::close(p[0]) };
        return Reporter { fd: p[1] };
    }
    let saved = Saved {
        terminal,
        stdout_flags,
    };
    supervise(pid, p, &old, saved, filter)
}

/// The parent's side after the fork: forwards the stop signals to `child`, restores the
/// signal mask `old`, installs its own filter, then exits with the code the child writes
/// into `pipe` or, when the child dies without writing it, puts the terminal back to
/// `saved` and exits with how the child ended.
fn supervise(
    child: libc::pid_t,
    pipe: [libc::c_int; 2],
    old: &libc::sigset_t,
    saved: Saved,
    filter: Option<&seccompiler::BpfProgram>,
) -> ! {
    CHILD.store(child, Ordering::Relaxed);
    for sig in STOP_SIGNALS {
        // SAFETY: sigaction is plain data; zeroed is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa` is initialised; `forward` only calls kill, which is async-signal-safe.
        unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
    }
    // Whatever arrived while blocked is forwarded now.
    set_mask(old);
    // SAFETY: closing the unused write end.
    unsafe { libc::close(pipe[1]) };
    if let Some(f) = filter {
        if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Supervisor, f) {
            eprintln!("minipc: {e}");
            forward(libc::SIGKILL);
            // SAFETY: exiting; the child has been killed.
            unsafe { libc::_exit(code::HOST_ERROR) };
        }
    }
    let status = match reported_code(pipe[0]) {
        Some(c) => c,
        None => {
            // The child died without reporting: it may have left the terminal raw, and
            // stdout's shared description non-blocking.
            if let Some(t) = &saved.terminal {
                // SAFETY: `t` was read from fd 0 before the fork.
                unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
            }
            if saved.stdout_flags >= 0 {
                // SAFETY: F_SETFL with the integer flags read before the fork.
                unsafe { libc::fcntl(1, libc::F_SETFL, saved.stdout_flags) };
            }
            child_status(child)
        }
    };
    // SAFETY: exiting without destructors; nothing of ours needs cleanup.
    unsafe { libc::_exit(status) }
}

/// The 4-byte exit code the child writes into `fd`, or `None` when the pipe closes (or
/// fails) before all of it arrived. Reads again when a signal interrupts the read.
fn reported_code(fd: libc::c_int) -> Option<i32> {
    let mut b = [0u8; 4];
    let mut got = 0usize;
    while got < 4 {
        // SAFETY: reading into the rest of a live 4-byte buffer.
        let r = unsafe { libc::read(fd, b[got..].as_mut_ptr() as *mut libc::c_void, 4 - got) };
        if r > 0 {
            got += r as usize;
        } else if r == 0
            || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    (got == 4).then(|| i32::from_ne_bytes(b))
}

/// Waits for `child` and returns the exit code that stands for how it ended: its own exit
/// status, or 128+n (with a line on stderr) when signal n killed it.
fn child_status(child: libc::pid_t) -> i32 {
    let mut status = 0;
    // SAFETY: waiting for our own child.
    while unsafe { libc::waitpid(child, &mut status, 0) } < 0
        && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
    {}
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        eprintln!(
            "minipc: the VM process was killed by signal {}",
            libc::WTERMSIG(status)
        );
        code::SIGNAL_BASE + libc::WTERMSIG(status)
    } else {
        code::HOST_ERROR
    }
}
