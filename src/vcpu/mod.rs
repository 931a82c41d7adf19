//! One thread per vCPU: a `KVM_RUN` loop that dispatches port and MMIO exits to the buses and
//! turns every other exit into an `ExitReason` for the monitor.
//!
//! The monitor reaches a vCPU that sits in `KVM_RUN` by a *kick*: it posts a request in the
//! vCPU's mailbox, sets `immediate_exit` in the vCPU's `kvm_run` page (so a kick that lands
//! between two runs is not lost), then sends `SIGRTMIN` to the thread, whose empty handler
//! makes `KVM_RUN` return `EINTR`. The thread then serves the request and resumes.
//!
//! Requests are bits in the mailbox, never a single value that the next request overwrites:
//! with `--reboot` the monitor releases a vCPU after a reset (`RUN`) and, when the guest resets
//! again at once, asks for the next reset (`RESET`) before the vCPU's thread may even have
//! woken up; both must be seen, in that order. A vCPU clears `immediate_exit` before it takes
//! the pending bits, so a request posted after it looked is still served on its next entry.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_regs, kvm_run, kvm_sregs, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bios::{self, Bios, Caller, Segments, Service};
use crate::bus::Bus;
use crate::coalesced_io::CoalescedIo;
use crate::exit::ExitReason;
use crate::log;
use crate::pause::Pause;
use crate::ram_gate::RamGate;
use crate::stats::{FIRST_EXIT, FIRST_RUN};

mod reset;
mod threads;

pub use reset::ResetState;
pub use threads::{prestart, Prestarted, Setup, VcpuFilters};

/// Requests from the monitor: bits in a vCPU's mailbox.
mod req {
    /// Report `HaltState` for the mailbox's current halt-check generation.
    pub const CHECK_HALT: u8 = 1 << 0;
    /// Go back to the reset state (`--reboot`), report `ResetDone`, wait for `RUN`.
    pub const RESET: u8 = 1 << 1;
    /// Resume after a reset.
    pub const RUN: u8 = 1 << 2;
}

/// A vCPU's pending requests. Posting a request never erases another one.
#[derive(Debug, Default)]
pub struct Mailbox {
    pending: AtomicU8,
    /// The generation of the latest halt check asked for; answers carry it, so that an
    /// answer to an abandoned check (a reboot came between) is not taken for a new one's.
    check: AtomicU64,
}

impl Mailbox {
    fn post(&self, bits: u8) {
        self.pending.fetch_or(bits, Ordering::SeqCst);
    }

    /// Takes the pending requests among `bits`, leaving the others pending.
    fn take(&self, bits: u8) -> u8 {
        self.pending.fetch_and(!bits, Ordering::SeqCst) & bits
    }

    fn take_all(&self) -> u8 {
        self.pending.swap(0, Ordering::SeqCst)
    }

    fn is_empty(&self) -> bool {
        self.pending.load(Ordering::SeqCst) == 0
    }
}

/// The signal that kicks a vCPU out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

/// What a vCPU thread tells the monitor.
#[derive(Debug)]
pub enum VcpuMsg {
    /// The VM must stop; `dump` holds the vCPU's registers for crashes.
    Exit {
        id: u32,
        reason: ExitReason,
        dump: Option<String>,
    },
    /// Answer to halt check number `check`: can this vCPU ever run again without help?
    HaltState { id: u32, check: u64, dead: bool },
    /// Answer to a reset request: the vCPU is at its reset state, waiting for `release`.
    ResetDone { id: u32, ok: bool },
}

/// A vCPU thread, as the monitor reaches it.
pub struct ThreadRef {
    thread: std::thread::Thread,
    pthread: libc::pthread_t,
}

// SAFETY: a pthread_t is an opaque id (a pointer on musl, an integer on glibc); it is only
// passed to pthread_kill, which any thread may call with any live thread's id.
unsafe impl Send for ThreadRef {}
// SAFETY: as for Send; the id is never written after the thread sets it.
unsafe impl Sync for ThreadRef {}

impl ThreadRef {
    fn current() -> ThreadRef {
        ThreadRef {
            thread: std::thread::current(),
            // SAFETY: pthread_self has no preconditions.
            pthread: unsafe { libc::pthread_self() },
        }
    }
}

/// The monitor's handle on a vCPU thread.
pub struct VcpuHandle {
    /// Set by the thread when it starts (an AP's thread may start after the guest does).
    thread: Arc<OnceLock<ThreadRef>>,
    run: *mut kvm_run,
    mailbox: Arc<Mailbox>,
}

// SAFETY: `run` points into the vCPU's kvm_run mapping, which lives until the process exits
// (vCPU threads never drop their VcpuFd; see `park_forever`); only the immediate_exit byte is
// written through it.
unsafe impl Send for VcpuHandle {}

impl VcpuHandle {
    /// Lets a vCPU waiting after a reset run again.
    pub fn release(&self) {
        self.mailbox.post(req::RUN);
        if let Some(t) = self.thread.get() {
            t.thread.unpark();
        }
    }

    /// Asks the vCPU for its `HaltState`, as the answer to halt check number `check`.
    pub fn check_halt(&self, check: u64) {
        self.mailbox.check.store(check, Ordering::SeqCst);
        self.kick(req::CHECK_HALT);
    }

    /// Whether the vCPU's thread has started (an AP's may start after the guest does).
    pub fn started(&self) -> bool {
        self.thread.get().is_some()
    }

    /// Asks the vCPU to go back to its reset state and report `ResetDone` (`--reboot`).
    pub fn reset(&self) {
        self.kick(req::RESET);
    }

    /// Posts `bits` and makes the vCPU leave KVM_RUN (or its wait after a stop) to serve them.
    /// A thread not started yet finds `immediate_exit` set at its first KVM_RUN.
    fn kick(&self, bits: u8) {
        self.mailbox.post(bits);
        // SAFETY: see the Send impl; immediate_exit is a byte KVM reads on entry to KVM_RUN.
        unsafe { std::ptr::addr_of_mut!((*self.run).immediate_exit).write_volatile(1) };
        // The store above before the load below (the thread, for its part, passes a SeqCst
        // store in `Pause::enter` between making itself known and entering KVM_RUN): either
        // the thread is known here, or its KVM_RUN sees immediate_exit.
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(t) = self.thread.get() {
            t.thread.unpark();
            // SAFETY: the thread is alive (it never returns) and the signal has a handler.
            unsafe { libc::pthread_kill(t.pthread, kick_signal()) };
        }
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler, without SA_RESTART so KVM_RUN returns EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// The size of the current port access, from kvm_run: the crate hands over `size * count`
/// bytes for string instructions (one exit for a whole `REP OUTSB`), not the size.
fn io_size(run: *const kvm_run) -> usize {
    // SAFETY: `run` is the live kvm_run mapping of the calling vCPU, whose exit reason is
    // KVM_EXIT_IO, so the io member of the union is the valid one.
    let size = unsafe { (*run).__bindgen_anon_1.io.size };
    (size as usize).max(1)
}

/// An MMIO access the vCPU made to RAM that had no KVM slot yet.
enum LateAccess<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

/// Performs a data access to RAM that KVM did not know when the guest made it (an MMIO exit
/// inside deferred RAM): waits until all RAM is registered, then reads or writes the host's
/// mapping of it, which the slot maps too. Later accesses go straight to the slot. KVM splits
/// emulated accesses at page boundaries, so an access never reaches past the RAM's end.
fn late_ram_access(ram: &RamGate, mem: &GuestMemoryMmap, addr: u64, access: LateAccess) -> Step {
    if let Err(f) = ram.wait() {
        return Step::Stop(ExitReason::HostError(f.to_string()), None);
    }
    let at = GuestAddress(addr);
    match access {
        LateAccess::Read(data) => {
            if mem.read_slice(data, at).is_err() {
                data.fill(0xFF);
            }
        }
        LateAccess::Write(data) => {
            if let Err(e) = mem.write_slice(data, at) {
                log::debug(format_args!("write at {addr:#x} in RAM: {e}"));
            }
        }
    }
    Step::Continue
}

/// A port write of `size`-byte units to the bus.
fn write_port(pio: &Bus, port: u16, data: &[u8], size: usize) -> Step {
    for chunk in data.chunks(size) {
        if let Some(r) = pio.write(port as u64, chunk) {
            return Step::Stop(r, None);
        }
    }
    Step::Continue
}

/// A port read of `size`-byte units from the bus.
fn read_port(pio: &Bus, port: u16, data: &mut [u8], size: usize) -> Step {
    for chunk in data.chunks_mut(size) {
        pio.read(port as u64, chunk);
    }
    Step::Continue
}

/// Whether a port write goes to the embedded firmware's BIOS services (`Vcpu::bios_call`).
fn is_service_port(bios: &Bios, port: u16) -> bool {
    bios.embedded() && (bios::SERVICE_PORT_BASE..=bios::SERVICE_PORT_LAST).contains(&port)
}

/// An MMIO read: from RAM that had no slot yet (`late_ram_access`), else from the bus.
fn mmio_read(mmio: &Bus, ram: &RamGate, mem: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> Step {
    if ram.is_deferred(addr) {
        return late_ram_access(ram, mem, addr, LateAccess::Read(data));
    }
    mmio.read(addr, data);
    Step::Continue
}

/// An MMIO write: to RAM that had no slot yet (`late_ram_access`), else to the bus, which may
/// stop the VM.
fn mmio_write(mmio: &Bus, ram: &RamGate, mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> Step {
    if ram.is_deferred(addr) {
        return late_ram_access(ram, mem, addr, LateAccess::Write(data));
    }
    match mmio.write(addr, data) {
        Some(r) => Step::Stop(r, None),
        None => Step::Continue,
    }
}

struct Vcpu {
    id: u32,
    fd: VcpuFd,
    run: *mut kvm_run,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mailbox: Arc<Mailbox>,
    tx: Sender<VcpuMsg>,
    wake: Arc<EventFd>,
    reset_state: Option<ResetState>,
    bios: Arc<Bios>,
    pause: Arc<Pause>,
    ram: Arc<RamGate>,
    mem: GuestMemoryMmap,
    /// The ring of buffered port writes (coalesced_io.rs): emptied before each exit is
    /// handled, so that the exit sees every write the guest made before it.
    coalesced: Option<Arc<CoalescedIo>>,
    /// KVM keeps the registers in kvm_run (vm/vcpus.rs, `Plan::set_up`).
    sync_regs: bool,
    /// The VM's only vCPU.
    alone: bool,
    /// Since when, and how many times in a row, KVM_RUN refused to run (`refused`).
    refused: Option<(Instant, u32)>,
}

/// RFLAGS.IF: interrupts enabled.
const RFLAGS_IF: u64 = 1 << 9;

/// How long KVM_RUN may refuse to run (EAGAIN) in a row before the VM ends with a host error.
const REFUSED_FOR: Duration = Duration::from_secs(1);

// SAFETY: the raw kvm_run pointer belongs to the VcpuFd moved along with it.
unsafe impl Send for Vcpu {}

enum Step {
    Continue,
    Stop(ExitReason, Option<String>),
}

impl Vcpu {
    fn send(&self, msg: VcpuMsg) {
        let _ = self.tx.send(msg);
        let _ = self.wake.write(1);
    }

    fn run_loop(mut self) {
        if self.id == 0 {
            let _ = FIRST_RUN.set(Instant::now());
        }
        loop {
            let step = self.run_once();
            if self.id == 0 && FIRST_EXIT.get().is_none() {
                let _ = FIRST_EXIT.set(Instant::now());
            }
            if let Step::Stop(reason, dump) = step {
                self.send(VcpuMsg::Exit {
                    id: self.id,
                    reason,
                    dump,
                });
                // The monitor either ends the process or (on a reboot) resets this vCPU.
                while !self.serve_requests() {
                    std::thread::park();
                }
            }
        }
    }

    /// The VM is ending: the monitor exits the process. The VcpuFd (and with it the
    /// kvm_run page the monitor may still write to) stays alive until then.
    fn park_forever(&self) -> ! {
        loop {
            std::thread::park();
        }
    }

    /// Back to the state the vCPU was created in; then wait until the monitor has reset the
    /// platform and says run.
    fn reset(&mut self) {
        // Registers a BIOS call left for the next KVM_RUN must not overwrite the reset state.
        self.fd.clear_sync_dirty_reg(SyncReg::Register);
        self.fd.clear_sync_dirty_reg(SyncReg::SystemRegister);
        let ok = match &self.reset_state {
            Some(s) => match s.restore(&self.fd) {
                Ok(()) => true,
                Err(e) => {
                    log::error(format_args!("vCPU {}: cannot reset: {e}", self.id));
                    false
                }
            },
            None => false,
        };
        self.send(VcpuMsg::ResetDone { id: self.id, ok });
        // Only RUN ends the wait; whatever else was posted meanwhile stays pending, and its
        // kick has set immediate_exit, so the next KVM_RUN returns at once to serve it.
        while self.mailbox.take(req::RUN) == 0 {
            std::thread::park();
        }
        if !self.mailbox.is_empty() {
            self.fd.set_kvm_immediate_exit(1);
        }
    }

    /// One KVM_RUN, then its exit handed to the method or function for its kind. Port and MMIO
    /// data live in the kvm_run page, which the exit borrows along with the VcpuFd, so their
    /// handlers take only the fields they need.
    fn run_once(&mut self) -> Step {
        let run = self.run;
        let id = self.id as usize;
        // Whether every RAM slot existed when this run began: if not, an internal error in it
        // may come from RAM KVM did not know yet (`internal_error`).
        let ram_was_open = self.ram.is_open();
        // Not while another vCPU changes a memory slot (pause.rs).
        while !self.pause.enter(id) {}
        let exit = self.fd.run();
        self.pause.leave(id);
        if let Some(c) = &self.coalesced {
            c.drain(&self.pio);
        }
        if !matches!(&exit, Err(e) if e.errno() == libc::EAGAIN) {
            self.refused = None;
        }
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => read_port(&self.pio, port, data, io_size(run)),
            Ok(VcpuExit::IoOut(port, data)) if is_service_port(&self.bios, port) => {
                // Copied: `data` is in kvm_run, borrowed with the VcpuFd; the BIOS call needs
                // the whole vCPU.
                let data = data.to_vec();
                self.service_port_out(port, &data)
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let step = write_port(&self.pio, port, data, io_size(run));
                if let Some(c) = &self.coalesced {
                    c.unpark_after(port);
                }
                step
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio_read(&self.mmio, &self.ram, &self.mem, addr, data)
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio_write(&self.mmio, &self.ram, &self.mem, addr, data)
            }
            Ok(VcpuExit::Hlt) => self.halt(),
            Ok(VcpuExit::Shutdown) => Step::Stop(ExitReason::TripleFault, Some(self.dump())),
            Ok(VcpuExit::InternalError) => self.internal_error(ram_was_open),
            Ok(VcpuExit::FailEntry(reason, cpu)) => self.fail_entry(reason, cpu),
            Ok(VcpuExit::SystemEvent(kind, _)) => self.system_event(kind),
            Ok(VcpuExit::Intr) => self.interrupted(),
            Ok(VcpuExit::Debug(_)) => self.count_instruction(),
            Ok(other) => Step::Stop(
                ExitReason::UnhandledExit(format!("{other:?}")),
                Some(self.dump()),
            ),
            Err(e) if e.errno() == libc::EINTR => self.interrupted(),
            Err(e) if e.errno() == libc::EAGAIN => self.refused(e),
            Err(e) => Step::Stop(
                ExitReason::HostError(format!("KVM_RUN on vCPU {}: {e}", self.id)),
                None,
            ),
        }
    }

    /// A write to a service port of the embedded firmware (`data` copied out of kvm_run): the
    /// BIOS service if the firmware's handler made it, else a write to the bus.
    fn service_port_out(&mut self, port: u16, data: &[u8]) -> Step {
        let size = io_size(self.run);
        match self.bios_call(port) {
            Some(step) => step,
            None => write_port(&self.pio, port, data, size),
        }
    }

    /// KVM_EXIT_HLT, only without an in-kernel LAPIC: treated as a halt check.
    fn halt(&self) -> Step {
        if self.is_dead() {
            Step::Stop(ExitReason::Halted, None)
        } else {
            Step::Continue
        }
    }

    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    fn fail_entry(&self, reason: u64, cpu: u32) -> Step {
        Step::Stop(
            ExitReason::InternalError(format!(
                "VM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
            )),
            Some(self.dump()),
        )
    }

    /// KVM_EXIT_SYSTEM_EVENT: a power-off or a reset by the guest; any other kind stops the VM.
    fn system_event(&self, kind: u32) -> Step {
        match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(ExitReason::PowerOff, None),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Step::Stop(ExitReason::Reset, None),
            k => Step::Stop(
                ExitReason::UnhandledExit(format!("system event {k}")),
                Some(self.dump()),
            ),
        }
    }

    /// KVM_RUN interrupted (KVM_EXIT_INTR, EINTR or EAGAIN), as a kick does: serves the
    /// pending requests, then runs on.
    fn interrupted(&mut self) -> Step {
        self.serve_requests();
        Step::Continue
    }

    /// KVM_RUN failed with EAGAIN: KVM could not get something it needs from the host right
    /// now. (Measured here: the thread KVM starts at a VM's first run, which a cgroup's
    /// `pids.max` can refuse; KVM then refuses every run.) A few in a row are retried at
    /// once, then 1 ms apart; refused for `REFUSED_FOR` in a row, the VM ends with a host
    /// error rather than spinning until `--timeout`.
    fn refused(&mut self, e: kvm_ioctls::Error) -> Step {
        let now = Instant::now();
        let (since, times) = self.refused.get_or_insert((now, 0));
        *times += 1;
        if now.duration_since(*since) >= REFUSED_FOR {
            return Step::Stop(
                ExitReason::HostError(format!(
                    "KVM_RUN on vCPU {}: {e}, {} times in {REFUSED_FOR:?} (the host refuses \
                     KVM something it needs, such as a thread: a cgroup's pids.max?)",
                    self.id, times
                )),
                None,
            );
        }
        if *times > 10 {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.interrupted()
    }

    /// KVM_EXIT_INTERNAL_ERROR; `ram_was_open`: every RAM slot existed when the run began.
    fn internal_error(&mut self, ram_was_open: bool) -> Step {
        // SAFETY: exit reason is KVM_EXIT_INTERNAL_ERROR: `internal` is valid.
        let internal = unsafe { (*self.run).__bindgen_anon_1.internal };
        if !ram_was_open {
            // Measured on this host (PVM): an instruction fetched from RAM that has
            // no slot yet ends KVM_RUN with an emulation failure, RIP still at the
            // instruction. Once the RAM is all there, running again fetches it; the
            // same failure in a run that starts with the gate open is a real one.
            log::debug(format_args!(
                "vCPU {}: KVM internal error (suberror {}) while RAM is being registered: retrying once it is",
                self.id, internal.suberror
            ));
            return match self.ram.wait() {
                Ok(()) => Step::Continue,
                Err(f) => Step::Stop(ExitReason::HostError(f.to_string()), None),
            };
        }
        let n = (internal.ndata as usize).min(internal.data.len());
        let what = match internal.suberror {
            1 => "emulation failure (an instruction KVM cannot emulate)".to_string(),
            2 => "simultaneous exceptions".to_string(),
            3 => "delivery event failure".to_string(),
            s => format!("suberror {s}"),
        };
        Step::Stop(
            ExitReason::InternalError(format!("{what}, data {:x?}", &internal.data[..n])),
            Some(self.dump()),
        )
    }

    /// A write to a service port: when it comes from the firmware's handler (bios.rs,
    /// `service_call`), the BIOS service runs on the registers and segment bases; None when it
    /// does not, and the write goes to the bus like any other.
    fn bios_call(&mut self, port: u16) -> Option<Step> {
        let fail = |id: u32, e: kvm_ioctls::Error| {
            Some(Step::Stop(
                ExitReason::HostError(format!("vCPU {id}: BIOS call: {e}")),
                None,
            ))
        };
        let (mut regs, mut sregs) = match self.caller_registers() {
            Ok(r) => r,
            Err(e) => return fail(self.id, e),
        };
        let caller = Caller {
            cr0: sregs.cr0,
            cs_base: sregs.cs.base,
            rip: regs.rip,
        };
        let service = bios::service_call(port, self.bios.embedded(), &caller)?;
        if service == Service::Halt {
            return Some(self.halts_for_good(&regs));
        }
        // A question about the memory size waits until all RAM is registered.
        if bios::reports_memory(service, &regs) {
            if let Err(f) = self.ram.wait() {
                return Some(Step::Stop(ExitReason::HostError(f.to_string()), None));
            }
        }
        let segs = Segments {
            cs: sregs.cs.base,
            ds: sregs.ds.base,
            es: sregs.es.base,
            ss: sregs.ss.base,
            fs: sregs.fs.base,
            gs: sregs.gs.base,
        };
        let outcome = self.bios.call(service, &mut regs, &segs);
        if let Some(es) = outcome.es {
            sregs.es.selector = es;
            sregs.es.base = u64::from(es) << 4;
        }
        match self.return_registers(&regs, outcome.es.is_some().then_some(&sregs)) {
            Ok(()) => Some(Step::Continue),
            Err(e) => fail(self.id, e),
        }
    }

    /// The firmware is about to halt this vCPU for good, interrupts off (`halt_forever`). The
    /// VM ends now, as the halt detector would once it noticed the halt (that costs a
    /// detector tick, a kick and every vCPU's answer), when nothing else can run: this is
    /// the only vCPU, or the firmware has not handed off to a guest yet (the demo, a missing
    /// boot descriptor), so only the firmware has run, on this vCPU, and it never wakes an
    /// AP. Otherwise (INT 18h after a boot sector, with more vCPUs) another vCPU may still
    /// run: this one halts and the detector decides.
    fn halts_for_good(&self, regs: &kvm_regs) -> Step {
        let nothing_else_runs = self.alone || crate::devices::post_code::HANDOFF.get().is_none();
        if nothing_else_runs && regs.rflags & RFLAGS_IF == 0 {
            crate::devices::post_code::keep_steps();
            Step::Stop(ExitReason::Halted, None)
        } else {
            Step::Continue
        }
    }

    /// KVM_EXIT_DEBUG while single-stepping (`--x-count-instructions`): one exit per
    /// instruction. KVM does not halt a single-stepped vCPU (its HLT ends with the step), so
    /// the embedded firmware's `cli; hlt` loop (`halt_forever`, after the demo or a fatal
    /// error) would be stepped for ever: reaching its HLT ends the run as a halt.
    fn count_instruction(&self) -> Step {
        crate::devices::post_code::STEPS.fetch_add(1, Ordering::Relaxed);
        let Ok((regs, sregs)) = self.caller_registers() else {
            return Step::Continue;
        };
        let hlt = u64::from(bios::symbols::HALT_HLT);
        if self.bios.embedded()
            && sregs.cr0 & 1 == 0
            && sregs.cs.base == 0xF_0000
            && regs.rip == hlt
        {
            crate::devices::post_code::keep_steps();
            return Step::Stop(ExitReason::Halted, None);
        }
        Step::Continue
    }

    /// The general registers as the last KVM_RUN left them: from kvm_run when KVM keeps them
    /// there (no vCPU ioctl: each loads the vCPU, whose MSR reads trap here), else by ioctl.
    fn registers(&self) -> Result<kvm_regs, kvm_ioctls::Error> {
        if self.sync_regs {
            return Ok(self.fd.sync_regs().regs);
        }
        self.fd.get_regs()
    }

    /// The registers and segments of a BIOS call, as `registers` reads them.
    fn caller_registers(&self) -> Result<(kvm_regs, kvm_sregs), kvm_ioctls::Error> {
        let regs = self.registers()?;
        let sregs = if self.sync_regs {
            self.fd.sync_regs().sregs
        } else {
            self.fd.get_sregs()?
        };
        Ok((regs, sregs))
    }

    /// Hands the registers a BIOS call changed back to the vCPU (`sregs` when it changed a
    /// segment): into kvm_run, which KVM takes back at the next KVM_RUN before it runs the
    /// guest, else by ioctl.
    fn return_registers(
        &mut self,
        regs: &kvm_regs,
        sregs: Option<&kvm_sregs>,
    ) -> Result<(), kvm_ioctls::Error> {
        if self.sync_regs {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            if let Some(s) = sregs {
                self.fd.sync_regs_mut().sregs = *s;
                self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            }
            return Ok(());
        }
        self.fd.set_regs(regs)?;
        if let Some(s) = sregs {
            self.fd.set_sregs(s)?;
        }
        Ok(())
    }

    /// Serves every pending request: a halt check first (about the state before a reset),
    /// then a reset. Returns whether the vCPU was reset. immediate_exit is cleared before the
    /// requests are taken, so one posted after this looked makes the next KVM_RUN return.
    fn serve_requests(&mut self) -> bool {
        self.fd.set_kvm_immediate_exit(0);
        let bits = self.mailbox.take_all();
        if bits & req::CHECK_HALT != 0 {
            self.answer_halt_state();
        }
        // A RUN without a RESET before it has nothing to release (never posted so).
        if bits & req::RESET != 0 {
            self.reset();
            return true;
        }
        false
    }

    /// Answers a pending halt check, and only that, for an AP whose thread has not started
    /// (vcpu/threads.rs, `ap_threads`): its state is read here, by the thread that holds it.
    /// Other requests stay pending for the AP's own thread.
    pub(super) fn answer_halt_check(&self) {
        if self.mailbox.take(req::CHECK_HALT) != 0 {
            self.answer_halt_state();
        }
    }

    /// The answer to the latest halt check: whether this vCPU is dead.
    fn answer_halt_state(&self) {
        let check = self.mailbox.check.load(Ordering::SeqCst);
        let dead = self.is_dead();
        self.send(VcpuMsg::HaltState {
            id: self.id,
            check,
            dead,
        });
    }

    /// Halted with interrupts off, or an AP still waiting for INIT/SIPI.
    fn is_dead(&self) -> bool {
        let Ok(mp) = self.fd.get_mp_state() else {
            return false;
        };
        match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
            KVM_MP_STATE_HALTED => self
                .registers()
                .map(|r| r.rflags & RFLAGS_IF == 0)
                .unwrap_or(false),
            _ => false,
        }
    }

    /// The register dump printed on a crash.
    fn dump(&self) -> String {
        let mut s = format!("vCPU {} registers:\n", self.id);
        match self.fd.get_regs() {
            Ok(r) => s.push_str(&format!(
                "  rax={:016x} rbx={:016x} rcx={:016x} rdx={:016x}\n  rsi={:016x} rdi={:016x} rbp={:016x} rsp={:016x}\n  r8 ={:016x} r9 ={:016x} r10={:016x} r11={:016x}\n  r12={:016x} r13={:016x} r14={:016x} r15={:016x}\n  rip={:016x} rflags={:016x}\n",
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15, r.rip, r.rflags
            )),
            Err(e) => s.push_str(&format!("  (registers unavailable: {e})\n")),
        }
        if let Ok(sr) = self.fd.get_sregs() {
            for (name, seg) in [
                ("cs", sr.cs),
                ("ds", sr.ds),
                ("es", sr.es),
                ("ss", sr.ss),
                ("fs", sr.fs),
                ("gs", sr.gs),
            ] {
                s.push_str(&format!(
                    "  {name}={:04x} base={:016x} limit={:08x} type={:x} dpl={}\n",
                    seg.selector, seg.base, seg.limit, seg.type_, seg.dpl
                ));
            }
            s.push_str(&format!(
                "  cr0={:016x} cr2={:016x} cr3={:016x} cr4={:016x} efer={:016x}\n  gdt={:016x}/{:04x} idt={:016x}/{:04x}",
                sr.cr0, sr.cr2, sr.cr3, sr.cr4, sr.efer, sr.gdt.base, sr.gdt.limit, sr.idt.base,
                sr.idt.limit
            ));
        }
        log::debug(format_args!("vCPU {} dumped its registers", self.id));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lost request of a single-value mailbox: RUN for one reboot, then RESET for the
    /// next before the vCPU looked. Both stay pending; the wait for RUN takes RUN only.
    #[test]
    fn a_request_never_erases_one_not_yet_seen() {
        let m = Mailbox::default();
        m.post(req::RUN);
        m.post(req::RESET);
        m.post(req::CHECK_HALT);
        assert_eq!(m.take(req::RUN), req::RUN);
        assert_eq!(m.take(req::RUN), 0);
        assert!(!m.is_empty());
        assert_eq!(m.take_all(), req::RESET | req::CHECK_HALT);
        assert!(m.is_empty());
        assert_eq!(m.take_all(), 0);
    }

    #[test]
    fn requests_from_another_thread_all_arrive() {
        let m = Arc::new(Mailbox::default());
        let seen = std::thread::scope(|s| {
            let poster = s.spawn(|| {
                for _ in 0..10_000 {
                    m.post(req::CHECK_HALT);
                    m.post(req::RESET);
                }
                m.post(req::RUN);
            });
            let mut seen = 0u8;
            while seen & req::RUN == 0 {
                seen |= m.take_all();
            }
            poster.join().unwrap();
            seen | m.take_all()
        });
        assert_eq!(seen, req::RUN | req::RESET | req::CHECK_HALT);
    }
}
