//! minipc: a minimal KVM monitor that builds a legacy PC and boots it through its own
//! embedded firmware.
// glibc's start code calls `main` below directly, without std's runtime start (`entry`).
#![cfg_attr(not(test), no_main)]

mod acpi;
mod bios;
mod block;
mod boot;
mod bus;
mod coalesced_io;
mod config;
mod cpuid_cache;
mod devices;
mod exit;
mod files;
mod firmware;
#[cfg(test)]
mod fuzz;
mod halt;
mod log;
mod memory;
mod monitor;
mod mptable;
mod pause;
mod pci_routing;
mod ram_gate;
mod rendezvous;
mod seccomp;
mod shadow;
mod stats;
mod supervisor;
mod terminal;
#[cfg(test)]
mod testing;
mod vcpu;
mod vm;

use std::time::Instant;

use config::{Command, SerialMode, VmConfig};
use exit::{code, ExitReason};
use firmware::Rom;
use stats::Phases;

/// glibc's malloc arenas the process may have. Without a limit, glibc sizes it from the
/// online CPUs, read from /sys when a thread needs the ninth arena: under a vCPU thread's
/// seccomp filter (vcpu/threads.rs). The VMM's threads allocate little after the start.
/// (musl's malloc has no arenas.)
#[cfg(target_env = "gnu")]
const MALLOC_ARENAS: libc::c_int = 4;

/// The musl build's allocator. musl's own malloc maps and unmaps single pages as the heap
/// grows and shrinks (about 40 mmap/munmap calls in a short launch, each unmap a TLB flush
/// in a threaded process); dlmalloc takes memory in 64 KiB steps and keeps it.
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

/// The process's entry, called by the C library's start code. std's runtime start is left
/// out: of what it does, minipc needs only what `entry` does; the rest is its stack-overflow
/// handler, which reads the main thread's stack from /proc/self/maps and gives this thread
/// and every thread std starts an alternate signal stack (a mapping, a guard page and
/// `sigaltstack`, each thread, 64 vCPU threads included). Without it a stack overflow is a
/// plain SIGSEGV. The command-line arguments are taken from `argv` here: std reads them at
/// load time only on glibc (musl passes nothing to initialisers).
///
/// # Safety
/// Called by the C runtime only, with `argv` holding `argc` valid C strings.
#[cfg(not(test))]
#[no_mangle]
pub unsafe extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    entry();
    use std::os::unix::ffi::OsStrExt;
    let raw = (1..usize::try_from(argc).unwrap_or(0)).map(|i| {
        // SAFETY: the C runtime passes argc pointers to NUL-terminated strings in argv,
        // alive for the whole process.
        let arg = unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) };
        std::ffi::OsStr::from_bytes(arg.to_bytes()).to_owned()
    });
    let args = cli_args(raw).unwrap_or_else(|e| config_error(&e));
    // A panic aborts in release builds; in others it ends with std's code for a panic.
    match std::panic::catch_unwind(|| minipc(args)) {
        Ok(()) => 0,
        Err(_) => 101,
    }
}

/// What minipc needs of std's runtime start: descriptors 0, 1 and 2 open (on /dev/null
/// when the caller closed them, so that no file the VMM opens takes their place and gets the
/// guest's output), and SIGPIPE ignored (a closed output is an EPIPE error, handled where
/// it is written).
#[cfg(not(test))]
fn entry() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags; open returns the lowest free
        // descriptor, which is `fd` when it was closed (the lower ones are open by now).
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
                && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != fd
            {
                libc::abort();
            }
        }
    }
    // SAFETY: setting a signal's disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Unit-test builds have the test harness's entry; this keeps `minipc` a used function there.
#[cfg(test)]
fn main() {
    minipc(Vec::new())
}

/// The arguments as text; one that is not UTF-8 is named in the error.
fn cli_args(raw: impl Iterator<Item = std::ffi::OsString>) -> Result<Vec<String>, String> {
    raw.enumerate()
        .map(|(i, a)| {
            a.into_string()
                .map_err(|a| format!("argument {} is not valid UTF-8: {:?}", i + 1, a))
        })
        .collect()
}

fn minipc(args: Vec<String>) {
    let start = Instant::now();
    // SAFETY: mallopt only sets a malloc parameter; no other thread exists yet.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS)
    };
    if let Some(l) = std::env::var("MINIPC_LOG")
        .ok()
        .as_deref()
        .and_then(log::Level::parse)
    {
        log::set_level(l);
    }
    let cfg = match config::parse(args) {
        Ok(Command::Run(cfg)) => *cfg,
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            std::process::exit(0);
        }
        Ok(Command::Version) => {
            println!("minipc {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0);
        }
        Err(e) => config_error(&e.to_string()),
    };
    if let Some(l) = cfg.log_level {
        log::set_level(l);
    }
    let filters = if cfg.seccomp {
        if let Err(e) = seccomp::install_sigsys_handler() {
            eprintln!("minipc: cannot install the SIGSYS handler: {e}");
            std::process::exit(code::HOST_ERROR);
        }
        match Filters::compile(cfg.reboot, cfg.cpus) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("minipc: {e}");
                std::process::exit(code::HOST_ERROR);
            }
        }
    } else {
        eprintln!("minipc: warning: seccomp filters are off (--seccomp off): for debugging only");
        None
    };
    let reporter = supervisor::split(filters.as_ref().map(|f| &f.supervisor));
    let (code, teardown) = run(&cfg, start, filters);
    reporter.exit(code, || {
        if let Some(t) = teardown {
            t.hurry();
        }
    });
}

/// One line on stderr, exit code 2, nothing started.
fn config_error(msg: &str) -> ! {
    eprintln!("minipc: {msg}");
    std::process::exit(code::BAD_CONFIG);
}

/// The compiled seccomp filters of every thread kind.
pub struct Filters {
    pub supervisor: seccompiler::BpfProgram,
    pub vmm: seccompiler::BpfProgram,
    pub vcpu: std::sync::Arc<vcpu::VcpuFilters>,
}

impl Filters {
    fn compile(reboot: bool, cpus: u32) -> Result<Filters, seccomp::SeccompError> {
        use seccomp::ThreadKind;
        let spawn = if cpus > 1 {
            Some((
                seccomp::compile(ThreadKind::VcpuSpawner, reboot)?,
                seccomp::compile_spawn_guard()?,
            ))
        } else {
            None
        };
        Ok(Filters {
            supervisor: seccomp::compile(ThreadKind::Supervisor, reboot)?,
            vmm: seccomp::compile(ThreadKind::Vmm, reboot)?,
            vcpu: std::sync::Arc::new(vcpu::VcpuFilters {
                vcpu: seccomp::compile(ThreadKind::Vcpu, reboot)?,
                spawn,
            }),
        })
    }
}

/// How long the output may make no progress at exit before the VMM gives up on it.
const OUTPUT_STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// What the VM is built from: the user's files, opened, and the boot plan.
struct Prepared {
    rom: Rom,
    boot: std::sync::Arc<boot::BootPlan>,
    serial_out: devices::serial::SerialOut,
}

/// Opens and checks everything the user named, before KVM is touched; a bad file or
/// setting ends the process here with exit code 2.
fn prepare(cfg: &VmConfig) -> Prepared {
    let rom = match &cfg.firmware {
        Some(p) => Rom::from_file(p).unwrap_or_else(|e| config_error(&e.to_string())),
        None => Rom::embedded(),
    };
    let layout = memory::MemoryLayout::new(cfg.mem_size)
        .unwrap_or_else(|e| config_error(&format!("--mem: {e}")));
    let boot = std::sync::Arc::new(
        boot::BootPlan::new(cfg, &layout).unwrap_or_else(|e| config_error(&e.to_string())),
    );
    let _ = stats::BOOT.set(boot.describe());
    let serial_out = match vm::open_serial_out(&cfg.serial, cfg.timeout) {
        Ok(s) => s,
        // The user's time ran out before the VM could start: as `--timeout` says.
        Err(e @ vm::VmError::SerialNoReader { .. }) => {
            eprintln!("minipc: {e} (exit code {})", code::TIMEOUT);
            std::process::exit(code::TIMEOUT);
        }
        Err(e) => config_error(&e.to_string()),
    };
    Prepared {
        rom,
        boot,
        serial_out,
    }
}

/// Runs the VM; returns the exit code and what shortens the teardown afterwards.
fn run(cfg: &VmConfig, start: Instant, filters: Option<Filters>) -> (i32, Option<vm::Teardown>) {
    let mut phases = Phases::new(start);
    let Prepared {
        rom,
        boot,
        serial_out,
    } = prepare(cfg);
    phases.config = start.elapsed();

    // From here on a stop signal waits for the monitor, which stops the VM cleanly; the
    // threads started below inherit the mask.
    if let Err(e) = monitor::block_stop_signals() {
        eprintln!("minipc: cannot block the stop signals: {e}");
        return (code::HOST_ERROR, None);
    }
    // The vCPU threads start, and install their filters, while the machine is built.
    let vcpu_threads =
        match vcpu::prestart(cfg.cpus as usize, filters.as_ref().map(|f| f.vcpu.clone())) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("minipc: cannot start the vCPU threads: {e}");
                return (code::HOST_ERROR, None);
            }
        };
    let lend = |job| vcpu_threads.lend(job);
    let mut machine = match vm::build(cfg, &rom, boot, serial_out, &mut phases, &lend) {
        Ok(m) => m,
        Err(e @ vm::VmError::Boot(_)) => config_error(&e.to_string()),
        Err(e) => {
            eprintln!("minipc: {e}");
            return (code::HOST_ERROR, None);
        }
    };
    let stdin_to_serial = cfg.serial == SerialMode::Stdio;
    if stdin_to_serial {
        terminal::enter_raw();
    }
    let outcome = monitor::run(
        &mut machine,
        monitor::Options {
            timeout: cfg.timeout,
            stdin_to_serial,
            filters,
            vcpu_threads,
            test_forbidden_syscall: cfg.test_forbidden_syscall,
            ap_delay: cfg.ap_delay,
            kick_gap: cfg.kick_gap,
            no_halt_check: cfg.no_halt_check,
            reboot: cfg.reboot,
        },
    );
    machine.bios.flush_disk();
    // What the guest printed goes out, unless the reader stalls for a second.
    let output = devices::serial::Serial::finish_output(&machine.serial, OUTPUT_STALL);
    terminal::restore();

    // The last lines on stderr, written so that a reader who stopped reading stderr cannot
    // hold the exit: what does not go out within OUTPUT_STALL is dropped.
    let last = last_lines(cfg, &outcome, &output, &mut phases, &machine);
    log::write_stderr_bounded(last.as_bytes(), OUTPUT_STALL);
    // The machine is deliberately not dropped: vCPU threads may still be inside KVM_RUN. The
    // process exits without destructors (see supervisor.rs).
    let teardown = machine.teardown.take();
    std::mem::forget(machine);
    (outcome.reason.exit_code(), teardown)
}

/// The last lines for stderr: the serial bytes lost (and why, when the output failed), how
/// the VM ended (a normal end only at log level info, a reset always, anything else with its
/// exit code), the register dump of a crash, and with --stats the phases as JSON, completed
/// from the machine's RAM gate.
fn last_lines(
    cfg: &VmConfig,
    outcome: &monitor::Outcome,
    output: &devices::serial::OutputEnd,
    phases: &mut Phases,
    machine: &vm::Machine,
) -> String {
    let mut last = String::new();
    let lost = output.lost;
    match &output.failure {
        Some(why) => last += &format!("minipc: serial output failed: {why}; {lost} bytes lost\n"),
        None if lost > 0 => {
            last +=
                &format!("minipc: serial output: {lost} bytes lost (the reader did not keep up)\n")
        }
        None => {}
    }
    let reason = &outcome.reason;
    let exit_code = reason.exit_code();
    match reason {
        ExitReason::Halted | ExitReason::PowerOff | ExitReason::DebugExit(_) => {
            if log::enabled(log::Level::Info) {
                last += &format!("minipc: {reason}\n");
            }
        }
        ExitReason::Reset => last += &format!("minipc: {reason}\n"),
        _ => last += &format!("minipc: {reason} (exit code {exit_code})\n"),
    }
    if let Some(d) = &outcome.dump {
        last += &format!("{d}\n");
    }
    if cfg.stats {
        phases.ram_ready = machine.ram.opened_at();
        phases.ram_waits = machine.ram.waits();
        phases.coalesced_writes = machine.coalesced.as_ref().map(|c| c.carried());
        last += &format!("{}\n", phases.json(reason, exit_code));
    }
    last
}

#[cfg(test)]
mod tests {
    use super::cli_args;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn arguments_that_are_not_utf8_are_named() {
        let ok = cli_args(["--cpus", "2"].into_iter().map(OsString::from));
        assert_eq!(ok, Ok(vec!["--cpus".to_string(), "2".to_string()]));
        let bad = [
            OsString::from("--firmware"),
            OsString::from_vec(vec![0xff, b'x']),
        ];
        let e = cli_args(bad.into_iter()).unwrap_err();
        assert_eq!(e, r#"argument 2 is not valid UTF-8: "\xFFx""#);
    }
}
