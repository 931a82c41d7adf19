//! Command line -> `VmConfig`, validated completely before any KVM call.

use std::path::PathBuf;
use std::time::Duration;

use crate::log::Level;
use crate::memory::{parse_size, LayoutError, MemoryLayout};

pub const DEFAULT_MEM: u64 = 256 << 20;
pub const MAX_CPUS: u32 = 254;

pub const USAGE: &str = "\
minipc: a minimal KVM monitor that boots a legacy PC with its own firmware

Usage: minipc [OPTIONS]

With no options, boots the embedded firmware's built-in demo, which prints a banner,
its E820 memory map and the vCPU count on the serial port, then halts (exit 0).

Options:
  --firmware FILE     run a raw firmware image instead of the embedded one (QEMU -bios
                      convention: ends at 4 GiB, its last 128 KiB also end at 1 MiB;
                      a multiple of 4 KiB, at most 256 KiB)
  --mem SIZE          guest RAM, e.g. 64M, 2G (a bare number means MiB; default 256M;
                      RAM beyond 3 GiB goes above 4 GiB for guests of 3.5 GiB or more)
  --cpus N            vCPUs, 1 to 254 (default 1); APs wait for INIT-SIPI
  --serial MODE       COM1 to stdio (default), file:PATH, or none
  --timeout SECONDS   stop the guest after this long (exit 124); fractions allowed
  --stats             print one JSON line on stderr at exit: reason, exit code, phase times
  --rtc utc|localtime what the CMOS clock counts (default utc)
  --no-acpi           no ACPI tables; an Intel MP table describes the CPUs and IRQs instead
  --reboot            a guest reset (i8042, port 0xCF9, ACPI) restarts the guest at the reset
                      vector, RAM kept, instead of ending the VM
  --seccomp on|off    per-thread seccomp filters (default on; off is for debugging only)
  --log-level LEVEL   error, warn (default), info or debug (also MINIPC_LOG)
  -h, --help          this text
  -V, --version       the version

Exit codes (odd codes are the guest's, even codes the VMM's):
  0      guest powered off, reset, or halted with interrupts off on every vCPU
  v*2+1  guest wrote v to the debug-exit port 0xF4 (QEMU isa-debug-exit)
  2      bad argument or input file; nothing was started
  4      guest crashed: triple fault, KVM internal error, unhandled exit
  6      host error: KVM unavailable or failing, a forbidden syscall (seccomp)
  124    --timeout expired
  128+n  stopped by signal n (SIGHUP 129, SIGINT 130, SIGQUIT 131, SIGTERM 143)

Examples:
  minipc
  minipc --cpus 4 --mem 2G --stats
  minipc --firmware test.bin --serial file:serial.log --timeout 10
";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    None,
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub firmware: Option<PathBuf>,
    pub mem_size: u64,
    pub cpus: u32,
    pub serial: SerialMode,
    pub timeout: Option<Duration>,
    pub stats: bool,
    /// The CMOS clock counts the host's local time instead of UTC.
    pub rtc_localtime: bool,
    /// A guest reset restarts the guest from the reset vector instead of ending the VM.
    pub reboot: bool,
    /// ACPI tables (default); with `--no-acpi`, an MP table instead.
    pub acpi: bool,
    /// Per-thread seccomp filters (on unless `--seccomp off`).
    pub seccomp: bool,
    /// Test builds only: a vCPU thread makes a forbidden syscall once its filter is on.
    pub test_forbidden_syscall: bool,
    pub log_level: Option<Level>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            firmware: None,
            mem_size: DEFAULT_MEM,
            cpus: 1,
            serial: SerialMode::Stdio,
            timeout: None,
            stats: false,
            rtc_localtime: false,
            reboot: false,
            acpi: true,
            seccomp: true,
            test_forbidden_syscall: false,
            log_level: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(VmConfig),
    Help,
    Version,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("unknown option '{0}' (see --help)")]
    UnknownOption(String),
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    #[error("option '{0}' is given twice")]
    Duplicate(String),
    #[error("--mem: '{0}' is not a size (examples: 64M, 2G)")]
    BadSize(String),
    #[error("--mem: {0}")]
    Layout(#[from] LayoutError),
    #[error("--cpus: '{0}' is not a number from 1 to {MAX_CPUS}")]
    BadCpus(String),
    #[error("--serial: '{0}' is not stdio, none or file:PATH")]
    BadSerial(String),
    #[error("--timeout: '{0}' is not a positive number of seconds")]
    BadTimeout(String),
    #[error("--seccomp: '{0}' is not on or off")]
    BadSeccomp(String),
    #[error("--rtc: '{0}' is not utc or localtime")]
    BadRtc(String),
    #[error("--log-level: '{0}' is not error, warn, info or debug")]
    BadLogLevel(String),
    #[error("unexpected argument '{0}' (see --help)")]
    Positional(String),
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let mut cfg = VmConfig::default();
    let mut seen: Vec<String> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            name.as_str(),
            "--firmware"
                | "--mem"
                | "--cpus"
                | "--serial"
                | "--timeout"
                | "--rtc"
                | "--seccomp"
                | "--log-level"
        );
        let value = if takes_value {
            match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| ConfigError::MissingValue(name.clone()))?,
            }
        } else {
            if inline.is_some() {
                return Err(ConfigError::UnknownOption(arg));
            }
            String::new()
        };
        if name.starts_with('-') && seen.contains(&name) {
            return Err(ConfigError::Duplicate(name));
        }
        seen.push(name.clone());
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--firmware" => cfg.firmware = Some(PathBuf::from(value)),
            "--mem" => {
                let size = parse_size(&value).ok_or(ConfigError::BadSize(value))?;
                MemoryLayout::new(size)?;
                cfg.mem_size = size;
            }
            "--cpus" => {
                cfg.cpus = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_CPUS).contains(n))
                    .ok_or(ConfigError::BadCpus(value))?;
            }
            "--serial" => {
                cfg.serial = match value.as_str() {
                    "stdio" => SerialMode::Stdio,
                    "none" => SerialMode::None,
                    v => match v.strip_prefix("file:") {
                        Some(p) if !p.is_empty() => SerialMode::File(PathBuf::from(p)),
                        _ => return Err(ConfigError::BadSerial(value)),
                    },
                }
            }
            "--timeout" => {
                let secs = value
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                    .ok_or(ConfigError::BadTimeout(value))?;
                cfg.timeout = Some(Duration::from_secs_f64(secs));
            }
            "--stats" => cfg.stats = true,
            "--no-acpi" => cfg.acpi = false,
            "--reboot" => cfg.reboot = true,
            "--seccomp" => {
                cfg.seccomp = match value.as_str() {
                    "on" => true,
                    "off" => false,
                    _ => return Err(ConfigError::BadSeccomp(value)),
                }
            }
            #[cfg(debug_assertions)]
            "--x-test-forbidden-syscall" => cfg.test_forbidden_syscall = true,
            "--rtc" => {
                cfg.rtc_localtime = match value.as_str() {
                    "utc" => false,
                    "localtime" => true,
                    _ => return Err(ConfigError::BadRtc(value)),
                }
            }
            "--log-level" => {
                cfg.log_level = Some(Level::parse(&value).ok_or(ConfigError::BadLogLevel(value))?)
            }
            s if s.starts_with('-') => return Err(ConfigError::UnknownOption(arg)),
            _ => return Err(ConfigError::Positional(arg)),
        }
    }
    Ok(Command::Run(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<VmConfig, ConfigError> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(c) => Ok(c),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&[]).unwrap();
        assert_eq!(c.mem_size, 256 << 20);
        assert_eq!(c.cpus, 1);
        assert_eq!(c.serial, SerialMode::Stdio);
        assert!(c.firmware.is_none() && c.timeout.is_none() && !c.stats);
    }

    #[test]
    fn values_both_forms() {
        let c = run(&[
            "--mem=2G",
            "--cpus",
            "4",
            "--serial",
            "file:/tmp/x",
            "--timeout=1.5",
            "--stats",
        ])
        .unwrap();
        assert_eq!(c.mem_size, 2 << 30);
        assert_eq!(c.cpus, 4);
        assert_eq!(c.serial, SerialMode::File("/tmp/x".into()));
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
        assert!(c.stats);
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            run(&["--cpus", "0"]).unwrap_err(),
            ConfigError::BadCpus("0".into())
        );
        assert!(run(&["--cpus", "255"]).is_err());
        assert!(run(&["--cpus", "x"]).is_err());
        assert_eq!(
            run(&["--mem", "lots"]).unwrap_err(),
            ConfigError::BadSize("lots".into())
        );
        assert!(matches!(
            run(&["--mem", "1M"]).unwrap_err(),
            ConfigError::Layout(_)
        ));
        assert!(run(&["--serial", "tcp:1"]).is_err());
        assert!(run(&["--serial", "file:"]).is_err());
        assert!(run(&["--timeout", "-1"]).is_err());
        assert!(run(&["--timeout", "nan"]).is_err());
        assert!(run(&["--timeout", "0"]).is_err());
        assert_eq!(
            run(&["--bogus"]).unwrap_err(),
            ConfigError::UnknownOption("--bogus".into())
        );
        assert_eq!(
            run(&["--mem"]).unwrap_err(),
            ConfigError::MissingValue("--mem".into())
        );
        assert_eq!(
            run(&["--cpus", "1", "--cpus", "2"]).unwrap_err(),
            ConfigError::Duplicate("--cpus".into())
        );
        assert!(run(&["kernel"]).is_err());
        assert!(run(&["--stats=1"]).is_err());
        assert_eq!(
            run(&["--rtc", "mars"]).unwrap_err(),
            ConfigError::BadRtc("mars".into())
        );
        assert!(run(&["--rtc", "localtime"]).unwrap().rtc_localtime);
        assert!(!run(&["--seccomp", "off"]).unwrap().seccomp);
        assert!(!run(&["--no-acpi"]).unwrap().acpi);
        assert!(run(&["--reboot"]).unwrap().reboot);
        assert!(run(&[]).unwrap().acpi);
        assert!(run(&["--seccomp", "maybe"]).is_err());
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(
            parse(["--help".to_string()]).unwrap(),
            Command::Help
        ));
        assert!(matches!(
            parse(["-V".to_string()]).unwrap(),
            Command::Version
        ));
    }
}
