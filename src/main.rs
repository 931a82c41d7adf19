//! minipc: a minimal KVM monitor that builds a legacy PC and boots it through its own
//! embedded firmware.

mod bus;
mod config;
mod devices;
mod exit;
mod firmware;
mod halt;
mod log;
mod memory;
mod monitor;
mod stats;
mod supervisor;
mod terminal;
mod vcpu;
mod vm;

use std::time::Instant;

use config::{Command, SerialMode, VmConfig};
use exit::{code, ExitReason};
use firmware::Rom;
use stats::Phases;

fn main() {
    let start = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(l) = std::env::var("MINIPC_LOG")
        .ok()
        .as_deref()
        .and_then(log::Level::parse)
    {
        log::set_level(l);
    }
    let cfg = match config::parse(args) {
        Ok(Command::Run(cfg)) => cfg,
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
    let reporter = supervisor::split();
    let code = run(&cfg, start);
    reporter.exit(code);
}

/// One line on stderr, exit code 2, nothing started.
fn config_error(msg: &str) -> ! {
    eprintln!("minipc: {msg}");
    std::process::exit(code::BAD_CONFIG);
}

fn run(cfg: &VmConfig, start: Instant) -> i32 {
    let mut phases = Phases::new(start);
    // Everything the user named is checked before KVM is touched.
    let rom = match &cfg.firmware {
        Some(p) => Rom::from_file(p).unwrap_or_else(|e| config_error(&e.to_string())),
        None => Rom::embedded(),
    };
    let serial_out =
        vm::open_serial_out(&cfg.serial).unwrap_or_else(|e| config_error(&e.to_string()));
    phases.config = start.elapsed();

    let mut machine = match vm::build(cfg, &rom, serial_out, &mut phases) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("minipc: {e}");
            return code::HOST_ERROR;
        }
    };
    let stdin_to_serial = cfg.serial == SerialMode::Stdio;
    if stdin_to_serial {
        terminal::enter_raw();
    }
    let outcome = monitor::run(&mut machine, cfg.timeout, stdin_to_serial);
    bus::lock(&machine.serial).flush();
    terminal::restore();

    let reason = outcome.reason;
    let exit_code = reason.exit_code();
    match &reason {
        ExitReason::Halted | ExitReason::PowerOff | ExitReason::DebugExit(_) => {
            log::info(format_args!("{reason}"))
        }
        ExitReason::Reset => eprintln!("minipc: {reason}"),
        _ => eprintln!("minipc: {reason} (exit code {exit_code})"),
    }
    if let Some(d) = &outcome.dump {
        eprintln!("{d}");
    }
    if cfg.stats {
        eprintln!("{}", phases.json(&reason, exit_code));
    }
    // The machine is deliberately not dropped: vCPU threads may still be inside KVM_RUN. The
    // process exits without destructors (see supervisor.rs).
    std::mem::forget(machine);
    exit_code
}
