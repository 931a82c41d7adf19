//! Starting the VMM: fork into the new PID namespace, confine the child step by step,
//! exec; the parent learns of a failure before exec through a close-on-exec pipe, then
//! waits for the VMM and forwards termination signals to it.

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::rlimits::Limits;
use crate::sys::{check, describe};
use crate::{jail, namespaces, privileges};

/// Signals the parent passes on to the VMM.
const FORWARDED: &[libc::c_int] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
/// The VMM's PID as the parent sees it; 0 while there is none (and always in the child).
static CHILD: AtomicI32 = AtomicI32::new(0);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("VMM argument or environment entry '{0}' contains a NUL byte")]
    Nul(String),
    #[error("{step}: {}", describe(.err))]
    Sys { step: &'static str, err: io::Error },
    /// A step in the child failed; the message names it.
    #[error("{0}")]
    Child(String),
}

fn sys(step: &'static str) -> impl FnOnce(io::Error) -> LaunchError {
    move |err| LaunchError::Sys { step, err }
}

/// Everything the child needs to confine itself and exec the VMM.
pub struct Spec {
    pub root: PathBuf,
    pub hostname: String,
    pub uid: u32,
    pub gid: u32,
    pub netns: Option<File>,
    /// The `cgroup.procs` file of each of the leaf's directories.
    pub cgroup_procs: Vec<File>,
    pub limits: Limits,
    pub daemonize: bool,
    pub mount_proc: bool,
    /// The VMM's arguments, without argv[0].
    pub args: Vec<String>,
    pub env: Vec<String>,
}

fn cstrings(items: &[String]) -> Result<Vec<CString>, LaunchError> {
    items
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| LaunchError::Nul(s.clone())))
        .collect()
}

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; `pid` is our child, never 0 or negative.
        unsafe { libc::kill(pid, sig) };
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for &s in signals {
        // SAFETY: `set` is a valid sigset_t and `s` a valid signal number.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    set
}

fn set_mask(how: libc::c_int, set: &libc::sigset_t) {
    // SAFETY: a valid set; the old mask is not needed.
    unsafe { libc::sigprocmask(how, set, std::ptr::null_mut()) };
}

fn install_forwarding() -> io::Result<()> {
    for &sig in FORWARDED {
        // SAFETY: sigaction is plain data; zeroed is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = forward as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: `sa` is initialised; `forward` only calls async-signal-safe functions.
        check(unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) })?;
    }
    Ok(())
}

fn default_signals() {
    for &sig in FORWARDED {
        // SAFETY: restoring the default disposition.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// Forks the VMM as PID 1 of a new PID namespace. Returns its PID once it has exec'd, or
/// the error of the step that failed in the child (the child is then reaped).
pub fn spawn(spec: Spec) -> Result<libc::pid_t, LaunchError> {
    let mut argv = vec![format!("/{}", jail::EXEC_NAME)];
    argv.extend(spec.args.iter().cloned());
    let argv = cstrings(&argv)?;
    let envp = cstrings(&spec.env)?;
    let path = CString::new(format!("/{}", jail::EXEC_NAME))
        .map_err(|_| LaunchError::Nul(jail::EXEC_NAME.into()))?;

    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(sys("pipe2"))?;
    // SAFETY: pipe2 just returned these descriptors; each File owns one.
    let (mut reader, writer) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };

    install_forwarding().map_err(sys("installing signal handlers"))?;
    namespaces::unshare_pid().map_err(sys("unshare(CLONE_NEWPID)"))?;
    let set = signal_set(FORWARDED);
    set_mask(libc::SIG_BLOCK, &set);
    // SAFETY: the jailer is single-threaded, so the child may allocate and run any code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        default_signals();
        set_mask(libc::SIG_UNBLOCK, &set);
        drop(reader);
        let msg = match child(spec, &writer, &path, &argv, &envp) {
            Ok(never) => match never {},
            Err(msg) => msg,
        };
        let mut w = &writer;
        let _ = w.write_all(msg.as_bytes());
        // SAFETY: leaving the child at once, without running the parent's destructors. The
        // parent reports the message (and exits with the host-error code).
        unsafe { libc::_exit(crate::code::HOST_ERROR) };
    }
    if pid > 0 {
        CHILD.store(pid, Ordering::SeqCst);
    }
    set_mask(libc::SIG_UNBLOCK, &set);
    if pid < 0 {
        return Err(sys("fork")(io::Error::last_os_error()));
    }
    drop(writer);
    drop(spec);
    let mut msg = String::new();
    let _ = reader.read_to_string(&mut msg);
    if msg.is_empty() {
        return Ok(pid);
    }
    let _ = wait(pid);
    Err(LaunchError::Child(msg))
}

/// Waits for the VMM and returns its exit code, or 128+N when signal N killed it.
pub fn wait(pid: libc::pid_t) -> Result<i32, LaunchError> {
    let mut status = 0;
    loop {
        // SAFETY: waiting for our own child with a valid status pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, 0) };
        if ret == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(sys("waitpid")(err));
        }
    }
    CHILD.store(0, Ordering::SeqCst);
    Ok(if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    })
}

fn step<T>(what: &str, r: io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {}", describe(&e)))
}

/// The child's side, in order: cgroup, network namespace, descriptors, namespaces and
/// root, session, rlimits, capabilities, uid/gid, exec. Returns only on failure.
fn child(
    mut spec: Spec,
    errpipe: &File,
    path: &CString,
    argv: &[CString],
    envp: &[CString],
) -> Result<Infallible, String> {
    use std::os::fd::AsRawFd;
    for mut procs in std::mem::take(&mut spec.cgroup_procs) {
        // "0" moves the writing process itself.
        step("moving the VMM into its cgroup", procs.write_all(b"0"))?;
    }
    if let Some(ns) = spec.netns.take() {
        step(
            "joining the network namespace (setns)",
            namespaces::join_netns(&ns),
        )?;
    }
    step(
        "closing inherited descriptors",
        privileges::close_fds_except(errpipe.as_raw_fd()),
    )?;
    step(
        "unshare(CLONE_NEWNS|CLONE_NEWIPC|CLONE_NEWUTS)",
        namespaces::unshare_mount_ipc_uts(),
    )?;
    step("sethostname", namespaces::set_hostname(&spec.hostname))?;
    namespaces::pivot_into(&spec.root, spec.mount_proc)
        .map_err(|(what, e)| format!("{what}: {}", describe(&e)))?;
    if spec.daemonize {
        // SAFETY: setsid takes no arguments; the child is not a process group leader.
        step("setsid", check(unsafe { libc::setsid() }))?;
        let null = step(
            "opening /dev/null in the jail",
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null"),
        )?;
        for fd in 0..3 {
            // SAFETY: duplicating a descriptor we own onto a standard one.
            step(
                "redirecting stdio",
                check(unsafe { libc::dup2(null.as_raw_fd(), fd) }),
            )?;
        }
    }
    spec.limits
        .apply()
        .map_err(|(key, e)| format!("--resource-limit {key}: {}", describe(&e)))?;
    step(
        "dropping the bounding and ambient capabilities",
        privileges::drop_bounding_and_ambient(),
    )?;
    step("prctl(PR_SET_NO_NEW_PRIVS)", privileges::set_no_new_privs())?;
    privileges::become_user(spec.uid, spec.gid)
        .map_err(|(what, e)| format!("{what} to {}:{}: {}", spec.uid, spec.gid, describe(&e)))?;
    privileges::verify(spec.uid, spec.gid)?;

    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    // SAFETY: NUL-terminated path and null-terminated arrays of NUL-terminated strings,
    // all alive across the call.
    unsafe { libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr()) };
    let e = io::Error::last_os_error();
    Err(format!(
        "exec /{} in the jail: {}",
        jail::EXEC_NAME,
        describe(&e)
    ))
}
