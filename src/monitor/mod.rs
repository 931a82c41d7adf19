//! The main thread once the guest runs: a poll loop over the vCPUs' messages, stdin (to the
//! serial port), the stop signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT), the `--timeout` deadline
//! and the halt detector's tick.

mod output;
mod signals;

pub use signals::{block_stop_signals, STOP_SIGNALS};

use std::io;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::coalesced_io::{CoalescedIo, STOPPING_POLL};
use crate::exit::ExitReason;
use crate::halt::{self, Backoff, BlockingStat, FALLBACK_PERIOD};
use crate::log;
use crate::rendezvous::Rendezvous;
use crate::seccomp::{self, ThreadKind};
use crate::vcpu::{self, VcpuHandle, VcpuMsg};
use crate::vm::Machine;
use output::{OutputSchedule, RingPlan, RingSchedule};
use signals::{read_signal, signal_fd};

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
    /// Each vCPU's `exits` statistic before the kicks (empty without statistics).
    exits: Vec<Option<u64>>,
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
    /// Test builds: the wait before each AP's set-up (`--x-ap-delay-ms`).
    pub ap_delay: Duration,
    /// Test builds: how much later than the others vCPU 0 is kicked (`--x-kick-gap-ms`).
    pub kick_gap: Duration,
    /// Test builds: no halt checks at all (`--x-no-halt-check`).
    pub no_halt_check: bool,
    /// A guest reset restarts the guest instead of ending the VM.
    pub reboot: bool,
}

pub fn run(machine: &mut Machine, opts: Options) -> Outcome {
    let outcome = match run_inner(machine, opts) {
        Ok(o) => o,
        Err(e) => Outcome {
            reason: ExitReason::HostError(e.to_string()),
            dump: None,
        },
    };
    // What the guest wrote before the end and no exit has emptied out of the ring yet.
    drain_coalesced(machine);
    outcome
}

/// Hands the writes waiting in KVM's ring to their devices (coalesced_io.rs).
fn drain_coalesced(machine: &Machine) {
    if let Some(c) = &machine.coalesced {
        c.drain(&machine.pio);
    }
}

fn run_inner(machine: &mut Machine, opts: Options) -> io::Result<Outcome> {
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let sigfd = signal_fd()?;
    vcpu::install_kick_handler()?;
    let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
    lock(&machine.serial).set_output_notifier(wake.clone());
    if let Some(c) = &machine.coalesced {
        c.set_wake(wake.clone());
    }
    let (tx, rx) = channel();

    let stats = BlockingStat::open_all(&machine.vcpus);
    if stats.is_none() {
        log::info(format_args!(
            "no KVM vCPU statistics: halts are checked at least every {FALLBACK_PERIOD:?}"
        ));
    }
    let reboot_on_reset = opts.reboot;
    let kick_gap = opts.kick_gap;
    let no_halt_check = opts.no_halt_check;
    let stdin_open = opts.stdin_to_serial;
    let handles = start_threads(machine, opts, tx, &wake)?;

    // Its fields are evaluated in the order written: the two clock readings come before the
    // timers are locked for their descriptors.
    VmmLoop {
        machine,
        reboot_on_reset,
        deadline,
        sigfd,
        handles,
        stats,
        rx,
        wake,
        stdin_open,
        pending_input: Vec::new(),
        backoff: Backoff::new(),
        next_kick: Instant::now(),
        output: OutputSchedule::default(),
        ring: RingSchedule::new(Instant::now()),
        check: None,
        checks: 0,
        started: Instant::now(),
        reboots: 0,
        timer_fds: machine.timers.iter().map(|t| lock(t).timer_fd()).collect(),
        kick_gap,
        no_halt_check,
    }
    .run()
}

/// Starts the vCPU threads (and the RAM registrar, when some RAM is deferred), lets them run
/// and installs this thread's filter. `tx` is dropped once the vCPUs have their clones.
fn start_threads(
    machine: &mut Machine,
    opts: Options,
    tx: Sender<VcpuMsg>,
    wake: &Arc<EventFd>,
) -> io::Result<Vec<VcpuHandle>> {
    // vCPU 0's thread has its filter (vcpu/threads.rs) and runs its vCPU as soon as it has
    // it: whatever must exist before the guest's first instruction (the RAM registrar) is
    // started before the hand-over. This thread installs its own filter right after the
    // hand-over, while the guest starts, and before it reads anything the vCPUs (or the
    // guest) send; then it waits until vCPU 0's thread has taken its vCPU. Each AP's thread
    // has its filter before its AP first runs.
    let fds = std::mem::take(&mut machine.vcpus);
    let cpuids = std::mem::take(&mut machine.pending_cpuid);
    // Not joined, and not waited for: it touches no guest input and may still be
    // registering at exit, which must not delay the exit status.
    // Its filter is compiled only here: most guests defer no RAM.
    if let Some(d) = machine.deferred.take() {
        let filter = match &opts.filters {
            Some(_) => Some(Arc::new(
                seccomp::compile(ThreadKind::RamRegistrar, opts.reboot)
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
        d.spawn(filter, wake.clone()).map_err(|e| {
            io::Error::other(format!("cannot start the RAM registering thread: {e}"))
        })?;
    }
    // This thread and vCPU 0's: the APs run as soon as each is set up (vcpu/threads.rs).
    let start = Arc::new(Rendezvous::new(2));
    let vcpus = vcpu_setups(machine, &opts, fds, cpuids, &tx, wake, &start)?;
    let handles: Vec<VcpuHandle> = opts.vcpu_threads.start(vcpus)?;
    drop(tx);
    if let Some(f) = &opts.filters {
        seccomp::install(ThreadKind::Vmm, &f.vmm).map_err(io::Error::other)?;
    }
    start.wait();
    Ok(handles)
}

/// What each vCPU thread runs with: its share of the machine, its channel ends and, with
/// `--reboot`, the state a reset restores.
fn vcpu_setups(
    machine: &Machine,
    opts: &Options,
    fds: Vec<VcpuFd>,
    cpuids: Vec<Option<kvm_bindings::CpuId>>,
    tx: &Sender<VcpuMsg>,
    wake: &Arc<EventFd>,
    start: &Arc<Rendezvous>,
) -> io::Result<Vec<(VcpuFd, vcpu::Setup)>> {
    let last = fds.len().saturating_sub(1);
    let mut vcpus = Vec::new();
    for (id, (fd, cpuid)) in fds.into_iter().zip(cpuids).enumerate() {
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
            start: (id == 0).then(|| start.clone()),
            cpuid,
            test_forbidden_syscall: opts.test_forbidden_syscall && id == last,
            ap_delay: opts.ap_delay,
            reset_state,
            bios: machine.bios.clone(),
            pause: machine.pause.clone(),
            ram: machine.ram.clone(),
            mem: machine.guest_mem.clone(),
            coalesced: machine.coalesced.clone(),
        };
        vcpus.push((fd, setup));
    }
    Ok(vcpus)
}

/// The slots of the wake eventfd and the signalfd in every poll.
const WAKE_SLOT: usize = 0;
const SIGNAL_SLOT: usize = 1;

/// The VMM thread's loop and what it keeps from one iteration to the next.
struct VmmLoop<'a> {
    machine: &'a Machine,
    /// A guest reset restarts the guest (`--reboot`).
    reboot_on_reset: bool,
    deadline: Option<Instant>,
    sigfd: libc::c_int,
    handles: Vec<VcpuHandle>,
    /// KVM's per-vCPU blocking statistics; None where KVM has none.
    stats: Option<Vec<BlockingStat>>,
    rx: Receiver<VcpuMsg>,
    wake: Arc<EventFd>,
    /// Stdin is read into the UART and has not ended.
    stdin_open: bool,
    /// What was read from stdin and the UART has not taken yet.
    pending_input: Vec<u8>,
    backoff: Backoff,
    /// When the halt detector may kick next.
    next_kick: Instant,
    /// When the serial output is written out.
    output: OutputSchedule,
    /// When KVM's ring of buffered serial writes is emptied.
    ring: RingSchedule,
    /// The halt check in flight.
    check: Option<HaltCheck>,
    /// How many halt checks went out: the last one's number.
    checks: u64,
    started: Instant,
    reboots: u64,
    timer_fds: Vec<libc::c_int>,
    kick_gap: Duration,
    no_halt_check: bool,
}

/// One poll's descriptors and where each kind sits among them.
struct PollSet {
    fds: Vec<libc::pollfd>,
    first_timer: usize,
    /// The serial output's slot, when it is polled.
    out_slot: Option<usize>,
    /// Stdin's slot; past the end when it is not polled.
    stdin_slot: usize,
}

/// What a wake of the eventfd led to.
enum Woken {
    /// The guest runs on.
    Running,
    /// The guest was reset and restarted: the iteration ends here.
    Rebooted,
    Ended(Outcome),
}

/// An outcome without a register dump.
fn ended(reason: ExitReason) -> Outcome {
    Outcome { reason, dump: None }
}

impl VmmLoop<'_> {
    /// Runs iterations until the VM ends.
    fn run(mut self) -> io::Result<Outcome> {
        loop {
            if let Some(o) = self.step()? {
                return Ok(o);
            }
        }
    }

    /// One iteration: the deadline, the halt detector's tick, one ppoll and what it reported.
    /// Some(outcome) when the VM ended.
    fn step(&mut self) -> io::Result<Option<Outcome>> {
        let now = Instant::now();
        if let Some(d) = self.deadline {
            if now >= d {
                return Ok(Some(ended(ExitReason::Timeout)));
            }
        }
        self.halt_check(now);
        drain_coalesced(self.machine);
        let plan = self.output.plan(&lock(&self.machine.serial));
        let mut wait = self.wait(now);
        if let Some(c) = &self.machine.coalesced {
            wait = wait.min(self.serve_ring(c, now));
        }
        if let Some(at) = plan.write_at {
            wait = wait.min(at.saturating_duration_since(now));
        }
        let mut set = self.poll_fds(plan.poll_out);
        if ppoll(&mut set.fds, wait)? {
            if let Some(o) = self.handle_ready(&set)? {
                return Ok(Some(o));
            }
        }
        let writable = set.out_slot.is_some_and(|slot| set.fds[slot].revents != 0);
        self.output.serve(&mut lock(&self.machine.serial), writable);
        Ok(None)
    }

    /// KVM's ring of the guest's serial writes: a pending stop finished once it is cheap
    /// (polling the ring meanwhile), the zone parked when the guest has been quiet. Returns
    /// the longest the next poll may wait for the ring.
    fn serve_ring(&mut self, c: &CoalescedIo, now: Instant) -> Duration {
        if c.stop_pending() {
            if !c.finish_stop(now) {
                return STOPPING_POLL;
            }
            c.drain(&self.machine.pio);
        }
        if !c.may_hold_output() {
            return Duration::MAX;
        }
        match self.ring.plan(c.activity(), now) {
            RingPlan::WakeWithin(w) => w,
            RingPlan::Park => {
                c.park(now);
                c.drain(&self.machine.pio);
                Duration::MAX
            }
        }
    }

    /// The halt detector's tick: when no check is in flight and the next kick is due, asks
    /// every vCPU whether it is halted, if KVM's statistics say that all of them block (and
    /// always when there are no statistics).
    fn halt_check(&mut self, now: Instant) {
        if self.no_halt_check || self.check.is_some() || now < self.next_kick {
            return;
        }
        // An AP without its thread yet is held by the thread that sets the APs up, which
        // answers for it (vcpu/threads.rs, `ap_threads`).
        let all_blocking = match &self.stats {
            Some(s) => s
                .iter()
                .zip(&self.handles)
                .all(|(s, h)| !h.started() || s.blocking()),
            None => true,
        };
        if all_blocking {
            // Every counter is read before the first kick (see `halt::still_since`).
            let exits = self.exits();
            self.checks += 1;
            for h in self.handles.iter().skip(1) {
                h.check_halt(self.checks);
            }
            if !self.kick_gap.is_zero() {
                let _ = ppoll(&mut [], self.kick_gap);
            }
            if let Some(h) = self.handles.first() {
                h.check_halt(self.checks);
            }
            self.check = Some(HaltCheck {
                number: self.checks,
                answers: vec![None; self.handles.len()],
                exits,
            });
        }
    }

    /// Every vCPU's `exits` statistic (empty without statistics).
    fn exits(&self) -> Vec<Option<u64>> {
        self.stats
            .iter()
            .flatten()
            .map(BlockingStat::exits)
            .collect()
    }

    /// How long the poll may wait: never past the deadline.
    fn wait(&self, now: Instant) -> Duration {
        // Sample on the tick; but while the last check's backoff runs (an idle guest), no
        // kick may happen anyway, so sleep until it ends.
        let tick = halt::tick(now - self.started);
        let wait = if self.check.is_none() {
            self.next_kick.saturating_duration_since(now).max(tick)
        } else {
            tick
        };
        match self.deadline {
            Some(d) => wait.min(d.saturating_duration_since(now)),
            None => wait,
        }
    }

    /// The descriptors to poll: the wake eventfd, the signalfd, the timers, the serial output
    /// when `poll_out` (see `OutputSchedule::plan`), and stdin while the UART can take what is read.
    fn poll_fds(&self, poll_out: bool) -> PollSet {
        let mut fds = vec![
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&*self.wake),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.sigfd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let first_timer = fds.len();
        for fd in &self.timer_fds {
            fds.push(libc::pollfd {
                fd: *fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // The guest's output, when its schedule asks for POLLOUT.
        let out_slot = fds.len();
        let out_fd = poll_out
            .then(|| lock(&self.machine.serial).output_fd())
            .flatten();
        if let Some(fd) = out_fd {
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            });
        }
        let stdin_slot = fds.len();
        // Only read stdin when the UART can take what we read.
        if self.stdin_open && self.pending_input.is_empty() {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        PollSet {
            fds,
            first_timer,
            out_slot: out_fd.map(|_| out_slot),
            stdin_slot,
        }
    }

    /// Handles what the poll reported, in order: a stop signal, the wake eventfd, the halt
    /// check's answers, the timers, stdin, and the input the UART can take.
    /// Some(outcome) when the VM ended.
    fn handle_ready(&mut self, set: &PollSet) -> io::Result<Option<Outcome>> {
        if set.fds[SIGNAL_SLOT].revents & libc::POLLIN != 0 {
            if let Some(sig) = read_signal(self.sigfd) {
                return Ok(Some(ended(ExitReason::Signal(sig))));
            }
        }
        if set.fds[WAKE_SLOT].revents & libc::POLLIN != 0 {
            match self.on_wake()? {
                Woken::Running => {}
                Woken::Rebooted => return Ok(None),
                Woken::Ended(o) => return Ok(Some(o)),
            }
        }
        if let Some(o) = self.check_answers() {
            return Ok(Some(o));
        }
        for (i, t) in self.machine.timers.iter().enumerate() {
            if set.fds[set.first_timer + i].revents & libc::POLLIN != 0 {
                lock(t).expire();
            }
        }
        self.read_ready_stdin(set);
        self.serve_stdin();
        Ok(None)
    }

    /// The wake eventfd fired: a RAM registration failure ends the VM; otherwise the vCPUs'
    /// messages are handled, and a guest reset restarts the guest with `--reboot`.
    fn on_wake(&mut self) -> io::Result<Woken> {
        let _ = self.wake.read();
        if let Some(f) = self.machine.ram.failure() {
            return Ok(Woken::Ended(ended(ExitReason::HostError(f.to_string()))));
        }
        let Some(o) = drain(&self.rx, &mut self.check) else {
            return Ok(Woken::Running);
        };
        if o.reason == ExitReason::Reset && self.reboot_on_reset {
            self.reboots += 1;
            log::info(format_args!(
                "guest reset: restarting it (reboot {})",
                self.reboots
            ));
            reboot(self.machine, &self.handles, &self.rx)?;
            self.check = None;
            self.backoff = Backoff::new();
            self.next_kick = Instant::now();
            return Ok(Woken::Rebooted);
        }
        Ok(Woken::Ended(o))
    }

    /// Once every vCPU answered the check in flight: all halted ends the VM; otherwise the
    /// backoff grows and the next kick waits for it.
    fn check_answers(&mut self) -> Option<Outcome> {
        let c = self.check.as_ref()?;
        if !c.answers.iter().all(Option::is_some) {
            return None;
        }
        if c.answers.iter().all(|a| *a == Some(true)) {
            if halt::still_since(&c.exits, &self.exits()) {
                return Some(ended(ExitReason::Halted));
            }
            // A vCPU ran while the answers came in: ask again at the next tick.
            log::debug(format_args!(
                "halt check {}: a vCPU ran during it",
                c.number
            ));
            self.check = None;
            return None;
        }
        self.backoff.alive();
        self.next_kick = Instant::now() + self.backoff.wait(self.stats.is_some());
        self.check = None;
        None
    }

    /// Reads stdin when the poll says it has something (or hung up); end of file, an error or
    /// an invalid descriptor closes it.
    fn read_ready_stdin(&mut self, set: &PollSet) {
        if let Some(p) = set.fds.get(set.stdin_slot) {
            if p.revents & (libc::POLLIN | libc::POLLHUP) != 0 {
                self.stdin_open = read_stdin(&mut self.pending_input);
            } else if p.revents & (libc::POLLNVAL | libc::POLLERR) != 0 {
                self.stdin_open = false;
            }
        }
    }

    /// Hands the UART as much of the pending input as it has room for.
    fn serve_stdin(&mut self) {
        if !self.pending_input.is_empty() {
            let mut serial = lock(&self.machine.serial);
            let room = serial.input_room();
            let take = room.min(self.pending_input.len());
            if take > 0 {
                let n = serial.enqueue_input(&self.pending_input[..take]);
                self.pending_input.drain(..n);
                self.ring.input_given();
            }
        }
    }
}

/// Waits up to `wait` for the descriptors in `fds`; false when a signal interrupted the wait.
fn ppoll(fds: &mut [libc::pollfd], wait: Duration) -> io::Result<bool> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as _,
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
        return Ok(false);
    }
    Ok(true)
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
    // What the guest wrote before its reset goes out before the UART is reset.
    drain_coalesced(machine);
    machine.reset_platform().map_err(io::Error::other)?;
    // The UART is reset: the ring serves the next boot, whatever this one enabled.
    if let Some(c) = &machine.coalesced {
        c.restart();
    }
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
