//! Puts a terminal on stdin into raw mode for the guest's console, and restores it on every
//! exit path (normal exit, error exit, panic).

use std::sync::{Mutex, OnceLock};

static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
/// The same settings, readable from a signal handler (no lock).
static FOR_SIGNALS: OnceLock<libc::termios> = OnceLock::new();

/// Raw mode when stdin is a terminal: the guest sees every key as typed, except that
/// Ctrl-C and Ctrl-\ still signal the VMM (which then stops the guest cleanly).
pub fn enter_raw() {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(0) } != 1 {
        return;
    }
    // SAFETY: termios is plain data; tcgetattr fills it or fails.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 is a terminal and `t` is a valid termios.
    if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
        return;
    }
    let saved = t;
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut t) };
    t.c_lflag |= libc::ISIG;
    // SAFETY: as above.
    if unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) } == 0 {
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        let _ = FOR_SIGNALS.set(saved);
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            prev(info);
        }));
    }
}

/// Restores the terminal if `enter_raw` changed it; safe to call more than once.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: `t` is the termios read from fd 0 by enter_raw.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
    }
}

/// Restores the terminal from a signal handler: no locks, only tcsetattr.
pub fn restore_from_signal() {
    if let Some(t) = FOR_SIGNALS.get() {
        // SAFETY: tcsetattr is async-signal-safe; `t` was read from fd 0 by enter_raw.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
    }
}
