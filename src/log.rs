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
