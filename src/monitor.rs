//! The main thread once the guest runs: a poll loop over the vCPUs' messages, stdin (to the
//! serial port), the stop signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT), the `--timeout` deadline
//! and the halt detector's tick.

use std::io;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::exit::ExitReason;
use crate::halt::{self, Backoff, BlockingStat, FALLBACK_PERIOD};
use crate::log;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{self, VcpuHandle, VcpuMsg};
use crate::vm::Machine;

/// How the VM ended.
pub struct Outcome {
    pub reason: ExitReason,
    /// The register dump of the vCPU that crashed.
    pub dump: Option<String>,
}

/// A halt check in flight: the kick went out, answers are coming back.
struct HaltCheck {
    /// Its number: answers to an earlier check (abandoned by a reboot) carry another.
    number: u64,
    answers: Vec<Option<bool>>,
}

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
fn signal_fd() -> io::Result<libc::c_int> {
    let set = block_stop_signals()?;
    // SAFETY: a new signalfd for `set`.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn read_signal(fd: libc::c_int) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let n = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading at most n bytes into `info`.
    let r = unsafe { libc::read(fd, &mut info as *mut _ as *mut libc::c_void, n) };
    (r as usize == n).then_some(info.ssi_signo as i32)
}

/// How to run the machine.
pub struct Options {
    pub timeout: Option<Duration>,
    pub stdin_to_serial: bool,
    /// Seccomp filters; None with `--seccomp off`.
    pub filters: Option<crate::Filters>,
    /// The vCPU threads, started and filtered while the machine was built.
    pub vcpu_threads: vcpu::Prestarted,
    pub test_forbidden_syscall: bool,
    /// A guest reset restarts the guest instead of ending the VM.
    pub reboot: bool,
}

pub fn run(machine: &mut Machine, opts: Options) -> Outcome {
    match run_inner(machine, opts) {
        Ok(o) => o,
        Err(e) => Outcome {
            reason: ExitReason::HostError(e.to_string()),
            dump: None,
        },
    }
}

fn run_inner(machine: &mut Machine, opts: Options) -> io::Result<Outcome> {
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let sigfd = signal_fd()?;
    vcpu::install_kick_handler()?;
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    lock(&machine.serial).set_output_notifier(wake.clone());
    let (tx, rx) = channel();

    let stats = BlockingStat::open_all(&machine.vcpus);
    if stats.is_none() {
        log::info(format_args!(
            "no KVM vCPU statistics: halts are checked every {FALLBACK_PERIOD:?}"
        ));
    }
    // The vCPU threads have their filters (vcpu/threads.rs) and wait until this thread lets
    // them run; it installs its own right after that, before it reads anything they (or the
    // guest) send, so its install does not delay the guest's first instruction.
    let fds = std::mem::take(&mut machine.vcpus);
    let deferred = machine.deferred.take();
    let start = Arc::new(Barrier::new(fds.len() + 1));
    let last = fds.len().saturating_sub(1);
    let mut vcpus = Vec::new();
    for (id, fd) in fds.into_iter().enumerate() {
        let reset_state = if opts.reboot {
            Some(vcpu::ResetState::capture(&fd).map_err(io::Error::other)?)
        } else {
            None
        };
        let setup = vcpu::Setup {
            id: id as u32,
            pio: machine.pio.clone(),
            mmio: machine.mmio.clone(),
            tx: tx.clone(),
            wake: wake.clone(),
            start: start.clone(),
            test_forbidden_syscall: opts.test_forbidden_syscall && id == last,
            reset_state,
            bios: machine.bios.clone(),
            pause: machine.pause.clone(),
            ram: machine.ram.clone(),
            mem: machine.guest_mem.clone(),
        };
        vcpus.push((fd, setup));
    }
    let handles: Vec<VcpuHandle> = opts.vcpu_threads.start(vcpus)?;
    drop(tx);
    // Not joined, and not waited for: it touches no guest input and may still be
    // registering at exit, which must not delay the exit status.
    // Its filter is compiled only here: most guests defer no RAM.
    if let Some(d) = deferred {
        let filter = match &opts.filters {
            Some(_) => Some(Arc::new(
                seccomp::compile(ThreadKind::RamRegistrar, opts.reboot)
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
        d.spawn(filter, wake.clone())?;
    }
    start.wait();
    if let Some(f) = &opts.filters {
        seccomp::install(ThreadKind::Vmm, &f.vmm).map_err(io::Error::other)?;
    }

    let mut stdin_open = opts.stdin_to_serial;
    let mut pending_input: Vec<u8> = Vec::new();
    let mut backoff = Backoff::new();
    let mut next_kick = Instant::now();
    let mut check: Option<HaltCheck> = None;
    let mut checks = 0u64;
    let started = Instant::now();
    let mut reboots = 0u64;
    let timer_fds: Vec<libc::c_int> = machine.timers.iter().map(|t| lock(t).timer_fd()).collect();

    loop {
        let now = Instant::now();
        if let Some(d) = deadline {
            if now >= d {
                return Ok(Outcome {
                    reason: ExitReason::Timeout,
                    dump: None,
                });
            }
        }

        // The halt detector's tick.
        if check.is_none() && now >= next_kick {
            let all_blocking = match &stats {
                Some(s) => s.iter().all(BlockingStat::blocking),
                None => true,
            };
            if all_blocking {
                checks += 1;
                for h in &handles {
                    h.check_halt(checks);
                }
                check = Some(HaltCheck {
                    number: checks,
                    answers: vec![None; handles.len()],
                });
            } else if stats.is_none() {
                next_kick = now + FALLBACK_PERIOD;
            }
        }

        // Sample on the tick; but while the last check's backoff runs (an idle guest), no
        // kick may happen anyway, so sleep until it ends.
        let tick = halt::tick(now - started);
        let wait = if check.is_none() {
            next_kick.saturating_duration_since(now).max(tick)
        } else {
            tick
        };
        let wait = match deadline {
            Some(d) => wait.min(d.saturating_duration_since(now)),
            None => wait,
        };

        let mut fds = vec![
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&*wake),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let first_timer = fds.len();
        for fd in &timer_fds {
            fds.push(libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // The guest's output, while some waits for the descriptor to take it.
        let out_slot = fds.len();
        let out_fd = {
            let serial = lock(&machine.serial);
            serial
                .output_pending()
                .then(|| serial.output_fd())
                .flatten()
        };
        if let Some(fd) = out_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        let stdin_slot = fds.len();
        // Only read stdin when the UART can take what we read.
        if stdin_open && pending_input.is_empty() {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `fds` is a valid array of pollfd and `ts` a valid timespec for the call.
        let n = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            continue;
        }

        if fds[1].revents & libc::POLLIN != 0 {
            if let Some(sig) = read_signal(sigfd) {
                return Ok(Outcome {
                    reason: ExitReason::Signal(sig),
                    dump: None,
                });
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = wake.read();
            if let Some(f) = machine.ram.failure() {
                return Ok(Outcome {
                    reason: ExitReason::HostError(f.to_string()),
                    dump: None,
                });
            }
            if let Some(o) = drain(&rx, &mut check) {
                if o.reason == ExitReason::Reset && opts.reboot {
                    reboots += 1;
                    log::info(format_args!(
                        "guest reset: restarting it (reboot {reboots})"
                    ));
                    reboot(machine, &handles, &rx)?;
                    check = None;
                    backoff = Backoff::new();
                    next_kick = Instant::now();
                    continue;
                }
                return Ok(o);
            }
        }
        if let Some(c) = &check {
            if c.answers.iter().all(Option::is_some) {
                if c.answers.iter().all(|a| *a == Some(true)) {
                    return Ok(Outcome {
                        reason: ExitReason::Halted,
                        dump: None,
                    });
                }
                backoff.alive();
                next_kick = Instant::now() + backoff.next_kick_after;
                check = None;
            }
        }
        for (i, t) in machine.timers.iter().enumerate() {
            if fds[first_timer + i].revents & libc::POLLIN != 0 {
                lock(t).expire();
            }
        }
        if let Some(p) = fds.get(stdin_slot) {
            if p.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                stdin_open = read_stdin(&mut pending_input);
            } else if p.revents & (libc::POLLNVAL | libc::POLLERR) != 0 {
                stdin_open = false;
            }
        }
        if out_fd.is_some() && fds[out_slot].revents != 0 {
            // Writable, or failed (POLLERR, POLLHUP: the write says which).
            lock(&machine.serial).write_out();
        }
        if !pending_input.is_empty() {
            let mut serial = lock(&machine.serial);
            let room = serial.input_room();
            let take = room.min(pending_input.len());
            if take > 0 {
                let n = serial.enqueue_input(&pending_input[..take]);
                pending_input.drain(..n);
            }
        }
    }
}

/// Restarts the guest: every vCPU back to its reset state, then the platform, then run.
fn reboot(machine: &Machine, handles: &[VcpuHandle], rx: &Receiver<VcpuMsg>) -> io::Result<()> {
    for h in handles {
        h.reset();
    }
    let mut done = vec![false; handles.len()];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done.iter().all(|d| *d) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(VcpuMsg::ResetDone { id, ok }) => {
                if !ok {
                    return Err(io::Error::other(format!("vCPU {id} could not be reset")));
                }
                if let Some(d) = done.get_mut(id as usize) {
                    *d = true;
                }
            }
            // Anything else a vCPU said before it saw the reset no longer matters.
            Ok(_) => {}
            Err(_) => return Err(io::Error::other("the vCPUs did not reset in time")),
        }
    }
    machine.reset_platform().map_err(io::Error::other)?;
    for h in handles {
        h.release();
    }
    Ok(())
}

/// Reads what stdin has; false at end of file or on error.
fn read_stdin(buf: &mut Vec<u8>) -> bool {
    let mut b = [0u8; 64];
    // SAFETY: reading at most 64 bytes into `b`.
    let r = unsafe { libc::read(0, b.as_mut_ptr() as *mut libc::c_void, b.len()) };
    if r <= 0 {
        return false;
    }
    buf.extend_from_slice(&b[..r as usize]);
    true
}

/// Handles every message the vCPUs sent; an exit message ends the VM.
fn drain(rx: &Receiver<VcpuMsg>, check: &mut Option<HaltCheck>) -> Option<Outcome> {
    while let Ok(msg) = rx.try_recv() {
        match msg {
            VcpuMsg::Exit { id, reason, dump } => {
                log::debug(format_args!("vCPU {id}: {reason}"));
                return Some(Outcome { reason, dump });
            }
            VcpuMsg::ResetDone { .. } => {}
            VcpuMsg::HaltState {
                id,
                check: number,
                dead,
            } => {
                if let Some(c) = check.as_mut().filter(|c| c.number == number) {
                    if let Some(slot) = c.answers.get_mut(id as usize) {
                        *slot = Some(dead);
                    }
                }
            }
        }
    }
    None
}
