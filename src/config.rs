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
  --kernel FILE       boot a kernel: Linux bzImage or ELF vmlinux, multiboot 1 or 2
                      (detected as QEMU -kernel does)
  --initrd FILE       Linux initial ramdisk
  --cmdline TEXT      kernel command line (multiboot: after the kernel's file name)
  --module PATH[,STR] multiboot module with its command line; repeatable
  --boot-protocol P   Linux entry: 64 (default when the kernel has it), 32, 16 (the
                      kernel's real-mode setup on the BIOS services), pvh (ELF PVH note)
  --disk PATH[,rw]    raw disk image for INT 13h; boots its boot sector without --kernel.
                      Guest writes stay in memory unless ,rw writes them to the file
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
  minipc --kernel bzImage --initrd initrd.gz --cmdline \"console=ttyS0\" --mem 512M
  minipc --kernel test.elf --cmdline \"arg1\" --module data.bin,name
  minipc --disk disk.img,rw
  minipc --cpus 4 --mem 2G --stats
  minipc --firmware test.bin --serial file:serial.log --timeout 10
";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    File(PathBuf),
    None,
}

/// How a Linux kernel is entered (`--boot-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// The 64-bit entry when the kernel has one, else the 32-bit entry.
    #[default]
    Auto,
    /// The 64-bit entry (`64`).
    Linux64,
    /// The 32-bit entry (`32`).
    Linux32,
    /// The kernel's real-mode setup code, on the firmware's BIOS services (`16`).
    Linux16,
    /// The PVH entry of an ELF kernel with a Xen PVH note (`pvh`).
    Pvh,
}

/// A multiboot module: `--module PATH[,STRING]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleArg {
    pub path: PathBuf,
    /// The module's command line (the text after the first comma).
    pub string: Option<String>,
}

/// A disk image: `--disk PATH[,rw]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskArg {
    pub path: PathBuf,
    /// Guest writes go to the file; otherwise they stay in memory for the run.
    pub writable: bool,
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    pub firmware: Option<PathBuf>,
    /// A kernel to boot: Linux (bzImage, ELF), multiboot 1 or 2.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub modules: Vec<ModuleArg>,
    pub boot_protocol: BootProtocol,
    pub disk: Option<DiskArg>,
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
    /// Debug builds only: single-step vCPU 0 and count the instructions the firmware runs
    /// before its hand-off (`--stats` `firmware_instructions`).
    pub count_instructions: bool,
    /// Debug builds only: the thread that registers RAM above 16 MiB while the guest runs
    /// waits this long first (`--x-ram-delay-ms`), so tests reach the guest's waits for it.
    pub ram_delay: Duration,
    /// Debug builds only: that thread's last registration fails (`--x-ram-fail`).
    pub ram_fail: bool,
    /// Debug builds only: the thread that sets the APs up waits this long before each AP
    /// after the first (`--x-ap-delay-ms`), so tests run the guest ahead of its APs.
    pub ap_delay: Duration,
    /// Debug builds only: in each halt check, vCPU 0 is kicked this long after the others
    /// (`--x-kick-gap-ms`), so tests let a vCPU run between two answers.
    pub kick_gap: Duration,
    /// Debug builds only: the monitor never checks whether the guest halted for good
    /// (`--x-no-halt-check`), so tests see what ends a guest without the halt detector.
    pub no_halt_check: bool,
    pub log_level: Option<Level>,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            firmware: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            modules: Vec::new(),
            boot_protocol: BootProtocol::Auto,
            disk: None,
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
            count_instructions: false,
            ram_delay: Duration::ZERO,
            ap_delay: Duration::ZERO,
            kick_gap: Duration::ZERO,
            no_halt_check: false,
            ram_fail: false,
            log_level: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Run(Box<VmConfig>),
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
    #[error("--boot-protocol: '{0}' is not 64, 32, 16 or pvh")]
    BadBootProtocol(String),
    #[error("{0} needs --kernel")]
    NeedsKernel(&'static str),
    #[error("--firmware and {0} exclude each other: a user's firmware boots by itself")]
    FirmwareConflict(&'static str),
    #[error("--disk: '{0}' is not PATH or PATH,rw")]
    BadDisk(String),
    #[error("--module: '{0}' has no file name")]
    BadModule(String),
    /// Debug builds only (`--x-ram-delay-ms`, `--x-ap-delay-ms`, `--x-kick-gap-ms`).
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    #[error("{0}: '{1}' is not a number of milliseconds up to 60000")]
    BadTestDelay(&'static str, String),
}

/// What an option does with the configuration.
enum Opt {
    /// Ends the parse with this command, whatever follows (`--help`, `--version`).
    Command(Command),
    /// Takes no value: sets a field.
    Flag(fn(&mut VmConfig)),
    /// Takes a value (`--name=value` or `--name value`): checks it and sets a field.
    Value(fn(&mut VmConfig, String) -> Result<(), ConfigError>),
}

/// The arguments after the program's name. Each option is checked in turn (its value, then
/// a repeat, then what the value says); the checks across options come after the last one.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, ConfigError> {
    let mut cfg = VmConfig::default();
    let mut seen: Vec<String> = Vec::new();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let Some(opt) = option(&name) else {
            return Err(if name.starts_with('-') {
                ConfigError::UnknownOption(arg)
            } else {
                ConfigError::Positional(arg)
            });
        };
        let value = match (&opt, inline) {
            (Opt::Value(_), Some(v)) => v,
            (Opt::Value(_), None) => it
                .next()
                .ok_or_else(|| ConfigError::MissingValue(name.clone()))?,
            (_, Some(_)) => return Err(ConfigError::UnknownOption(arg)),
            (_, None) => String::new(),
        };
        // --module is the one option that may be given more than once.
        if name != "--module" && seen.contains(&name) {
            return Err(ConfigError::Duplicate(name));
        }
        seen.push(name);
        match opt {
            Opt::Command(command) => return Ok(command),
            Opt::Flag(set) => set(&mut cfg),
            Opt::Value(set) => set(&mut cfg, value)?,
        }
    }
    check_together(&cfg)?;
    Ok(Command::Run(Box::new(cfg)))
}

/// The option called `name`, if there is one.
fn option(name: &str) -> Option<Opt> {
    match name {
        "-h" | "--help" => Some(Opt::Command(Command::Help)),
        "-V" | "--version" => Some(Opt::Command(Command::Version)),
        _ => machine_option(name)
            .or_else(|| boot_option(name))
            .or_else(|| runtime_option(name))
            .or_else(|| test_option(name)),
    }
}

/// The guest's hardware: RAM, vCPUs, ACPI or MP tables, the CMOS clock.
fn machine_option(name: &str) -> Option<Opt> {
    Some(match name {
        "--mem" => Opt::Value(|cfg, v| {
            let size = parse_size(&v).ok_or(ConfigError::BadSize(v))?;
            MemoryLayout::new(size)?;
            cfg.mem_size = size;
            Ok(())
        }),
        "--cpus" => Opt::Value(|cfg, v| {
            cfg.cpus = v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_CPUS).contains(n))
                .ok_or(ConfigError::BadCpus(v))?;
            Ok(())
        }),
        "--no-acpi" => Opt::Flag(|cfg| cfg.acpi = false),
        "--rtc" => Opt::Value(|cfg, v| {
            cfg.rtc_localtime = match v.as_str() {
                "utc" => false,
                "localtime" => true,
                _ => return Err(ConfigError::BadRtc(v)),
            };
            Ok(())
        }),
        _ => return None,
    })
}

/// What the guest boots: a firmware image, a kernel and what goes with it, a disk.
fn boot_option(name: &str) -> Option<Opt> {
    Some(match name {
        "--firmware" => Opt::Value(|cfg, v| {
            cfg.firmware = Some(PathBuf::from(v));
            Ok(())
        }),
        "--kernel" => Opt::Value(|cfg, v| {
            cfg.kernel = Some(PathBuf::from(v));
            Ok(())
        }),
        "--initrd" => Opt::Value(|cfg, v| {
            cfg.initrd = Some(PathBuf::from(v));
            Ok(())
        }),
        "--cmdline" => Opt::Value(|cfg, v| {
            cfg.cmdline = Some(v);
            Ok(())
        }),
        "--module" => Opt::Value(|cfg, v| {
            cfg.modules.push(module_arg(v)?);
            Ok(())
        }),
        "--boot-protocol" => Opt::Value(|cfg, v| {
            cfg.boot_protocol = match v.as_str() {
                "64" => BootProtocol::Linux64,
                "32" => BootProtocol::Linux32,
                "16" => BootProtocol::Linux16,
                "pvh" => BootProtocol::Pvh,
                _ => return Err(ConfigError::BadBootProtocol(v)),
            };
            Ok(())
        }),
        "--disk" => Opt::Value(|cfg, v| {
            cfg.disk = Some(disk_arg(v)?);
            Ok(())
        }),
        _ => return None,
    })
}

/// `--module PATH[,STRING]`: the string is everything after the first comma.
fn module_arg(value: String) -> Result<ModuleArg, ConfigError> {
    let (path, string) = match value.split_once(',') {
        Some((p, s)) => (p, Some(s.to_string())),
        None => (value.as_str(), None),
    };
    if path.is_empty() {
        return Err(ConfigError::BadModule(value));
    }
    Ok(ModuleArg {
        path: PathBuf::from(path),
        string,
    })
}

/// `--disk PATH[,rw]`: a last `,rw` or `,ro` is the mode, anything else is part of the path.
fn disk_arg(value: String) -> Result<DiskArg, ConfigError> {
    let (path, writable) = match value.rsplit_once(',') {
        Some((p, "rw")) => (p, true),
        Some((p, "ro")) => (p, false),
        _ => (value.as_str(), false),
    };
    if path.is_empty() {
        return Err(ConfigError::BadDisk(value));
    }
    Ok(DiskArg {
        path: PathBuf::from(path),
        writable,
    })
}

/// How the VMM runs the guest: its console, time limit, report, resets, sandbox, log.
fn runtime_option(name: &str) -> Option<Opt> {
    Some(match name {
        "--serial" => Opt::Value(|cfg, v| {
            cfg.serial = match v.as_str() {
                "stdio" => SerialMode::Stdio,
                "none" => SerialMode::None,
                s => match s.strip_prefix("file:") {
                    Some(p) if !p.is_empty() => SerialMode::File(PathBuf::from(p)),
                    _ => return Err(ConfigError::BadSerial(v)),
                },
            };
            Ok(())
        }),
        "--timeout" => Opt::Value(|cfg, v| {
            let secs = v
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
                .ok_or(ConfigError::BadTimeout(v))?;
            cfg.timeout = Some(Duration::from_secs_f64(secs));
            Ok(())
        }),
        "--stats" => Opt::Flag(|cfg| cfg.stats = true),
        "--reboot" => Opt::Flag(|cfg| cfg.reboot = true),
        "--seccomp" => Opt::Value(|cfg, v| {
            cfg.seccomp = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => return Err(ConfigError::BadSeccomp(v)),
            };
            Ok(())
        }),
        "--log-level" => Opt::Value(|cfg, v| {
            cfg.log_level = Some(Level::parse(&v).ok_or(ConfigError::BadLogLevel(v))?);
            Ok(())
        }),
        _ => return None,
    })
}

/// The hidden `--x-...` options of the tests, in debug builds only.
#[cfg(debug_assertions)]
fn test_option(name: &str) -> Option<Opt> {
    Some(match name {
        "--x-test-forbidden-syscall" => Opt::Flag(|cfg| cfg.test_forbidden_syscall = true),
        "--x-count-instructions" => Opt::Flag(|cfg| cfg.count_instructions = true),
        "--x-ram-delay-ms" => Opt::Value(|cfg, v| {
            cfg.ram_delay = Duration::from_millis(test_delay_ms("--x-ram-delay-ms", v)?);
            Ok(())
        }),
        "--x-ram-fail" => Opt::Flag(|cfg| cfg.ram_fail = true),
        "--x-ap-delay-ms" => Opt::Value(|cfg, v| {
            cfg.ap_delay = Duration::from_millis(test_delay_ms("--x-ap-delay-ms", v)?);
            Ok(())
        }),
        "--x-kick-gap-ms" => Opt::Value(|cfg, v| {
            cfg.kick_gap = Duration::from_millis(test_delay_ms("--x-kick-gap-ms", v)?);
            Ok(())
        }),
        "--x-no-halt-check" => Opt::Flag(|cfg| cfg.no_halt_check = true),
        _ => return None,
    })
}

/// A test delay: whole milliseconds up to a minute.
#[cfg(debug_assertions)]
fn test_delay_ms(name: &'static str, v: String) -> Result<u64, ConfigError> {
    v.parse::<u64>()
        .ok()
        .filter(|ms| *ms <= 60_000)
        .ok_or(ConfigError::BadTestDelay(name, v))
}

/// Release builds have no test options: there, `--x-...` is an unknown option.
#[cfg(not(debug_assertions))]
fn test_option(_name: &str) -> Option<Opt> {
    None
}

/// The checks across options, once every argument is in: what needs `--kernel`, then what
/// excludes `--firmware`.
fn check_together(cfg: &VmConfig) -> Result<(), ConfigError> {
    if cfg.kernel.is_none() {
        for (given, name) in [
            (cfg.initrd.is_some(), "--initrd"),
            (cfg.cmdline.is_some(), "--cmdline"),
            (!cfg.modules.is_empty(), "--module"),
            (cfg.boot_protocol != BootProtocol::Auto, "--boot-protocol"),
        ] {
            if given {
                return Err(ConfigError::NeedsKernel(name));
            }
        }
    }
    if cfg.firmware.is_some() && cfg.disk.is_some() {
        return Err(ConfigError::FirmwareConflict("--disk"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<VmConfig, ConfigError> {
        match parse(args.iter().map(|s| s.to_string()))? {
            Command::Run(c) => Ok(*c),
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
    fn boot_options() {
        let c = run(&[
            "--kernel",
            "k",
            "--initrd=i",
            "--cmdline",
            "a b=c",
            "--module",
            "m1,name x",
            "--module",
            "m2",
            "--boot-protocol",
            "16",
            "--disk",
            "d.img,rw",
        ])
        .unwrap();
        assert_eq!(c.kernel, Some(PathBuf::from("k")));
        assert_eq!(c.initrd, Some(PathBuf::from("i")));
        assert_eq!(c.cmdline.as_deref(), Some("a b=c"));
        assert_eq!(
            c.modules,
            [
                ModuleArg {
                    path: "m1".into(),
                    string: Some("name x".into())
                },
                ModuleArg {
                    path: "m2".into(),
                    string: None
                }
            ]
        );
        assert_eq!(c.boot_protocol, BootProtocol::Linux16);
        assert_eq!(
            c.disk,
            Some(DiskArg {
                path: "d.img".into(),
                writable: true
            })
        );
        assert!(!run(&["--disk", "a,b"]).unwrap().disk.unwrap().writable);
        assert_eq!(
            run(&["--disk", "x,ro"]).unwrap().disk.unwrap().path,
            PathBuf::from("x")
        );
        assert_eq!(
            run(&["--initrd", "i"]).unwrap_err(),
            ConfigError::NeedsKernel("--initrd")
        );
        assert_eq!(
            run(&["--cmdline", "x"]).unwrap_err(),
            ConfigError::NeedsKernel("--cmdline")
        );
        assert_eq!(
            run(&["--kernel", "k", "--boot-protocol", "8"]).unwrap_err(),
            ConfigError::BadBootProtocol("8".into())
        );
        assert!(run(&["--kernel", "k", "--module", ",x"]).is_err());
        assert!(run(&["--disk", ",rw"]).is_err());
        assert!(run(&["--firmware", "f", "--disk", "d"]).is_err());
        assert!(run(&["--kernel", "a", "--kernel", "b"]).is_err());
    }

    #[cfg(debug_assertions)]
    #[test]
    fn ram_test_options_in_debug_builds() {
        let c = run(&["--x-ram-delay-ms", "200", "--x-ram-fail"]).unwrap();
        assert_eq!(
            run(&["--x-ap-delay-ms", "300"]).unwrap().ap_delay,
            Duration::from_millis(300)
        );
        assert!(run(&["--x-ap-delay-ms", "60001"]).is_err());
        assert_eq!(c.ram_delay, Duration::from_millis(200));
        assert!(c.ram_fail);
        let c = run(&[]).unwrap();
        assert!(c.ram_delay.is_zero() && !c.ram_fail);
        assert!(run(&["--x-ram-delay-ms", "-1"]).is_err());
        assert!(run(&["--x-ram-delay-ms", "60001"]).is_err());
        assert!(run(&["--x-ram-delay-ms"]).is_err());
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

    fn err(args: &[&str]) -> ConfigError {
        match parse(args.iter().map(|s| s.to_string())) {
            Err(e) => e,
            Ok(other) => panic!("{args:?}: {other:?}"),
        }
    }

    /// `--name=value` splits at the first `=`, an empty value included; `--name value` takes
    /// the next argument whatever it looks like; options without a value refuse one.
    #[test]
    fn value_forms() {
        let c = run(&["--kernel=", "--cmdline=a=b"]).unwrap();
        assert_eq!(c.kernel, Some(PathBuf::new()));
        assert_eq!(c.cmdline.as_deref(), Some("a=b"));
        let c = run(&["--kernel", "k", "--cmdline=", "--initrd", "--stats"]).unwrap();
        assert_eq!(c.cmdline.as_deref(), Some(""));
        assert_eq!(c.initrd, Some(PathBuf::from("--stats")));
        assert!(!c.stats);
        assert_eq!(err(&["--mem="]), ConfigError::BadSize("".into()));
        assert_eq!(
            err(&["--mem", "--help"]),
            ConfigError::BadSize("--help".into())
        );
        assert_eq!(
            err(&["--kernel", "k", "--cmdline"]),
            ConfigError::MissingValue("--cmdline".into())
        );
        for arg in [
            "--stats=1",
            "--no-acpi=",
            "--help=x",
            "--version=",
            "-h=x",
            "--bogus=1",
            "--MEM=1G",
            "--",
            "--=x",
            "-",
            "-x",
        ] {
            assert_eq!(err(&[arg]), ConfigError::UnknownOption(arg.into()), "{arg}");
        }
        assert_eq!(err(&["kernel"]), ConfigError::Positional("kernel".into()));
        assert_eq!(err(&["a=b"]), ConfigError::Positional("a=b".into()));
        assert_eq!(
            err(&["--mem", "1G", "x"]),
            ConfigError::Positional("x".into())
        );
    }

    /// Each argument in turn: its value first, then a repeat, then what the value says.
    #[test]
    fn repeated_options() {
        assert_eq!(
            err(&["--cpus=1", "--cpus", "2"]),
            ConfigError::Duplicate("--cpus".into())
        );
        assert_eq!(
            err(&["--stats", "--stats"]),
            ConfigError::Duplicate("--stats".into())
        );
        assert_eq!(
            err(&["--cpus", "1", "--cpus"]),
            ConfigError::MissingValue("--cpus".into())
        );
        assert_eq!(
            err(&["--cpus", "0", "--cpus", "1"]),
            ConfigError::BadCpus("0".into())
        );
        assert_eq!(
            err(&["--cpus", "1", "--cpus", "0"]),
            ConfigError::Duplicate("--cpus".into())
        );
        assert_eq!(
            err(&["--stats", "--stats=1"]),
            ConfigError::UnknownOption("--stats=1".into())
        );
        let c = run(&["--kernel", "k", "--module=a", "--module", "b", "--module=a"]).unwrap();
        let paths: Vec<_> = c.modules.iter().map(|m| m.path.clone()).collect();
        assert_eq!(paths, [PathBuf::from("a"), "b".into(), "a".into()]);
    }

    /// `--help` and `--version` answer at once, unless an earlier argument failed.
    #[test]
    fn help_and_version_where_they_stand() {
        for args in [
            &["--help", "--help"][..],
            &["-h", "--help"],
            &["--help", "--bogus"],
            &["--help", "--cpus", "0"],
            &["--initrd", "i", "--help"],
            &["--firmware", "f", "--disk", "d", "-h"],
        ] {
            let r = parse(args.iter().map(|s| s.to_string()));
            assert!(matches!(r, Ok(Command::Help)), "{args:?}: {r:?}");
        }
        assert!(matches!(
            parse(["--version", "--help"].map(String::from)),
            Ok(Command::Version)
        ));
        assert_eq!(
            err(&["--bogus", "--help"]),
            ConfigError::UnknownOption("--bogus".into())
        );
        assert_eq!(
            err(&["--cpus", "0", "-V"]),
            ConfigError::BadCpus("0".into())
        );
        assert_eq!(
            err(&["--help=", "--help"]),
            ConfigError::UnknownOption("--help=".into())
        );
    }

    #[test]
    fn machine_and_runtime_values() {
        assert_eq!(
            err(&["--serial", "tcp:1"]),
            ConfigError::BadSerial("tcp:1".into())
        );
        assert_eq!(run(&["--serial=none"]).unwrap().serial, SerialMode::None);
        assert_eq!(run(&["--serial=stdio"]).unwrap().serial, SerialMode::Stdio);
        assert_eq!(
            err(&["--timeout", "soon"]),
            ConfigError::BadTimeout("soon".into())
        );
        assert_eq!(
            err(&["--timeout", "1e9"]),
            ConfigError::BadTimeout("1e9".into())
        );
        assert_eq!(
            run(&["--timeout", "999999999"]).unwrap().timeout,
            Some(Duration::from_secs(999_999_999))
        );
        assert_eq!(
            err(&["--seccomp", "maybe"]),
            ConfigError::BadSeccomp("maybe".into())
        );
        assert!(run(&["--seccomp=on"]).unwrap().seccomp);
        assert!(!run(&["--rtc=utc"]).unwrap().rtc_localtime);
        assert_eq!(run(&[]).unwrap().log_level, None);
        assert_eq!(
            run(&["--log-level", "debug"]).unwrap().log_level,
            Some(Level::Debug)
        );
        assert_eq!(
            err(&["--log-level", "loud"]),
            ConfigError::BadLogLevel("loud".into())
        );
        assert_eq!(err(&["--cpus", " 2"]), ConfigError::BadCpus(" 2".into()));
        assert_eq!(run(&["--mem", " 64m "]).unwrap().mem_size, 64 << 20);
    }

    #[test]
    fn boot_values() {
        for (p, want) in [
            ("64", BootProtocol::Linux64),
            ("32", BootProtocol::Linux32),
            ("pvh", BootProtocol::Pvh),
        ] {
            let c = run(&["--kernel", "k", "--boot-protocol", p]).unwrap();
            assert_eq!(c.boot_protocol, want);
        }
        let module = |v: &str| run(&["--kernel", "k", "--module", v]).map(|c| c.modules);
        assert_eq!(
            module("m,a,b").unwrap(),
            [ModuleArg {
                path: "m".into(),
                string: Some("a,b".into())
            }]
        );
        assert_eq!(module("m,").unwrap()[0].string.as_deref(), Some(""));
        assert_eq!(
            module(",x").unwrap_err(),
            ConfigError::BadModule(",x".into())
        );
        assert_eq!(module("").unwrap_err(), ConfigError::BadModule("".into()));
        let disk = |v: &str| run(&["--disk", v]).map(|c| c.disk);
        assert_eq!(
            disk("d,rw,rw").unwrap(),
            Some(DiskArg {
                path: "d,rw".into(),
                writable: true
            })
        );
        assert_eq!(
            disk("a,b").unwrap(),
            Some(DiskArg {
                path: "a,b".into(),
                writable: false
            })
        );
        assert_eq!(disk(",ro").unwrap_err(), ConfigError::BadDisk(",ro".into()));
        assert_eq!(disk("").unwrap_err(), ConfigError::BadDisk("".into()));
    }

    /// The checks across options run after the last argument, in a fixed order.
    #[test]
    fn checks_across_options() {
        assert_eq!(
            err(&["--module", "m"]),
            ConfigError::NeedsKernel("--module")
        );
        assert_eq!(
            err(&["--boot-protocol", "pvh"]),
            ConfigError::NeedsKernel("--boot-protocol")
        );
        assert_eq!(
            err(&["--module", "m", "--cmdline", "c", "--initrd", "i"]),
            ConfigError::NeedsKernel("--initrd")
        );
        assert_eq!(
            err(&["--firmware", "f", "--disk", "d", "--cmdline", "c"]),
            ConfigError::NeedsKernel("--cmdline")
        );
        assert_eq!(
            err(&["--disk", "d", "--firmware", "f"]),
            ConfigError::FirmwareConflict("--disk")
        );
        assert!(run(&["--firmware", "f", "--kernel", "k", "--initrd", "i"]).is_ok());
        assert!(run(&["--kernel", "k", "--disk", "d"]).is_ok());
    }

    #[cfg(debug_assertions)]
    #[test]
    fn test_options_in_debug_builds() {
        let c = run(&["--x-test-forbidden-syscall", "--x-count-instructions"]).unwrap();
        assert!(c.test_forbidden_syscall && c.count_instructions);
        let c = run(&[]).unwrap();
        assert!(!c.test_forbidden_syscall && !c.count_instructions && !c.no_halt_check);
        assert!(run(&["--x-no-halt-check"]).unwrap().no_halt_check);
        assert_eq!(
            run(&["--x-ram-delay-ms=0"]).unwrap().ram_delay,
            Duration::ZERO
        );
        assert_eq!(
            err(&["--x-ram-delay-ms", "60001"]),
            ConfigError::BadTestDelay("--x-ram-delay-ms", "60001".into())
        );
        assert_eq!(
            err(&["--x-ram-delay-ms"]),
            ConfigError::MissingValue("--x-ram-delay-ms".into())
        );
        assert_eq!(
            err(&["--x-ram-fail=1"]),
            ConfigError::UnknownOption("--x-ram-fail=1".into())
        );
        assert_eq!(
            err(&["--x-ram-fail", "--x-ram-fail"]),
            ConfigError::Duplicate("--x-ram-fail".into())
        );
        assert_eq!(
            err(&["--x-bogus"]),
            ConfigError::UnknownOption("--x-bogus".into())
        );
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn no_test_options_in_release_builds() {
        for args in [
            &["--x-test-forbidden-syscall"][..],
            &["--x-count-instructions"],
            &["--x-ram-fail"],
            &["--x-ram-delay-ms", "5"],
            &["--x-ram-delay-ms=5"],
        ] {
            assert_eq!(err(args), ConfigError::UnknownOption(args[0].into()));
        }
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::fuzz::{run, Rng};

    const OPTIONS: [&str; 24] = [
        "--firmware",
        "--kernel",
        "--initrd",
        "--cmdline",
        "--module",
        "--boot-protocol",
        "--disk",
        "--mem",
        "--cpus",
        "--serial",
        "--timeout",
        "--stats",
        "--rtc",
        "--no-acpi",
        "--reboot",
        "--seccomp",
        "--log-level",
        "-h",
        "-V",
        "--help",
        "--version",
        "--bogus",
        "-",
        "--",
    ];

    fn value(rng: &mut Rng) -> String {
        let numbers = [
            "0",
            "1",
            "254",
            "255",
            "-1",
            "4294967297",
            "18446744073709551616",
            "1e9",
            "0.000001",
            "inf",
            "NaN",
        ];
        let words = [
            "",
            "64M",
            "2G",
            "1T",
            "16",
            "32",
            "64",
            "pvh",
            "stdio",
            "none",
            "file:",
            "file:/x",
            "utc",
            "localtime",
            "on",
            "off",
            "debug",
            "k,rw",
            ",rw",
            "m,",
            "a=b",
            "é",
            "\u{1F600}",
            " 5 ",
            "--mem",
            "x\0y",
        ];
        match rng.below(4) {
            0 => (*rng.pick(&numbers)).to_string(),
            1 => (*rng.pick(&words)).to_string(),
            2 => rng.next().to_string(),
            _ => {
                let n = rng.index(12);
                (0..n)
                    .map(|_| char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'))
                    .collect()
            }
        }
    }

    /// A value the option takes.
    fn good_value(rng: &mut Rng, option: &str) -> String {
        let values: &[&str] = match option {
            "--mem" => &["2M", "64M", "1G", "3584M", "5G", "128"],
            "--cpus" => &["1", "4", "254"],
            "--boot-protocol" => &["64", "32", "16", "pvh"],
            "--serial" => &["stdio", "none", "file:out.log"],
            "--timeout" => &["0.5", "10", "999999999"],
            "--rtc" => &["utc", "localtime"],
            "--seccomp" => &["on", "off"],
            "--log-level" => &["error", "warn", "info", "debug"],
            "--disk" => &["d.img", "d.img,rw", "d.img,ro"],
            "--module" => &["m.bin", "m.bin,name arg", "m,a,b"],
            _ => &["k.bin", "console=ttyS0 quiet", "x"],
        };
        (*rng.pick(values)).to_string()
    }

    /// Argument vectors of real option names (and some not), with random values, in both
    /// forms, repeated; what parses must hold together and what does not says why.
    #[test]
    fn command_lines() {
        run("command_lines", 30_000, |rng| {
            let mut args = Vec::new();
            for _ in 0..=rng.below(8) {
                let name = *rng.pick(&OPTIONS);
                let v = if rng.one_in(2) {
                    good_value(rng, name)
                } else {
                    value(rng)
                };
                match rng.below(6) {
                    0 | 1 => args.push(format!("{name}={v}")),
                    2 if rng.one_in(4) => args.push(v),
                    _ => {
                        args.push(name.to_string());
                        if !rng.one_in(6) {
                            args.push(v);
                        }
                    }
                }
            }
            match parse(args.clone()) {
                Ok(Command::Run(c)) => {
                    assert!((1..=MAX_CPUS).contains(&c.cpus), "{args:?}");
                    assert!(MemoryLayout::new(c.mem_size).is_ok(), "{args:?}");
                    assert!(c.timeout.is_none_or(|t| !t.is_zero()), "{args:?}");
                    assert!(!(c.firmware.is_some() && c.disk.is_some()), "{args:?}");
                    if c.kernel.is_none() {
                        assert!(c.initrd.is_none() && c.cmdline.is_none() && c.modules.is_empty());
                        assert_eq!(c.boot_protocol, BootProtocol::Auto);
                    }
                    assert!(c.modules.iter().all(|m| !m.path.as_os_str().is_empty()));
                }
                Ok(_) => {}
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        });
    }
}
