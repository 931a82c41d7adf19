//! The stop signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT): blocked in every VMM thread and read
//! by the monitor from a signalfd, so that each ends the VM cleanly.

use std::io;

/// The signals that stop the VM cleanly (exit 128+n, terminal restored). The supervisor
/// forwards the same ones, and the child gets SIGTERM when the supervisor dies.
pub const STOP_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Blocks the stop signals in the calling thread (and so in every thread it starts later):
/// from then on they wait for the monitor's signalfd instead of killing the process. Called
/// before the terminal goes raw, so that no stop signal can leave it raw.
pub fn block_stop_signals() -> io::Result<libc::sigset_t> {
    let set = crate::supervisor::signal_set(&STOP_SIGNALS);
    // SAFETY: `set` is a valid sigset_t.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(set)
}

/// Blocks the stop signals and returns a signalfd that reports them (including any that
/// arrived since they were blocked).
pub(super) fn signal_fd() -> io::Result<libc::c_int> {
    let set = block_stop_signals()?;
    // SAFETY: a new signalfd for `set`.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

pub(super) fn read_signal(fd: libc::c_int) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most n bytes into `info`.
    let r = unsafe { libc::read(fd, &mut info as *mut _ as *mut libc::c_void, n) };
    (r as usize == n).then_some(info.ssi_signo as i32)
}
