//! A tiny leveled logger on stderr. The level comes from `--log-level` or `MINIPC_LOG`
//! (error, warn, info, debug); the default is warn.

use std::fmt::Arguments;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "error" => Some(Level::Error),
            "warn" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" => Some(Level::Debug),
            _ => None,
        }
    }
}

pub fn set_level(l: Level) {
    LEVEL.store(l as u8, Ordering::Relaxed);
}

pub fn enabled(l: Level) -> bool {
    l as u8 <= LEVEL.load(Ordering::Relaxed)
}

fn emit(l: Level, tag: &str, args: Arguments<'_>) {
    if enabled(l) {
        let _ = writeln!(std::io::stderr().lock(), "minipc: {tag}{args}");
    }
}

/// Writes `text` to stderr, waiting at most `limit` in all for room: a pipe whose reader
/// stopped reading must not hold the VMM forever. Returns whether everything went out.
/// Each write after POLLOUT is at most one pipe buffer page, which a pipe then takes whole
/// without blocking.
pub fn write_stderr_bounded(text: &[u8], limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    let mut rest = text;
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = libc::timespec {
            tv_sec: left.as_secs() as _,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        let mut p = libc::pollfd {
            fd: 2,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd and a valid timespec.
        let n = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 || p.revents & libc::POLLOUT == 0 {
            return false;
        }
        let chunk = &rest[..rest.len().min(4096)];
        // SAFETY: writing from a live buffer of chunk.len() bytes.
        let w = unsafe { libc::write(2, chunk.as_ptr() as *const libc::c_void, chunk.len()) };
        if w <= 0 {
            return false;
        }
        rest = &rest[w as usize..];
    }
    true
}

pub fn error(args: Arguments<'_>) {
    emit(Level::Error, "error: ", args)
}
pub fn warn(args: Arguments<'_>) {
    emit(Level::Warn, "warning: ", args)
}
pub fn info(args: Arguments<'_>) {
    emit(Level::Info, "", args)
}
pub fn debug(args: Arguments<'_>) {
    emit(Level::Debug, "debug: ", args)
}
