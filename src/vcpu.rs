//! One thread per vCPU: a `KVM_RUN` loop that dispatches port and MMIO exits to the buses and
//! turns every other exit into an `ExitReason` for the monitor.
//!
//! The monitor reaches a vCPU that sits in `KVM_RUN` by a *kick*: it stores a request, sets
//! `immediate_exit` in the vCPU's `kvm_run` page (so a kick that lands between two runs is not
//! lost), then sends `SIGRTMIN` to the thread, whose empty handler makes `KVM_RUN` return
//! `EINTR`. The thread then serves the request and resumes.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::Instant;

use kvm_bindings::{
    kvm_run, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bios::{self, Bios, Caller, Segments};
use crate::bus::Bus;
use crate::exit::ExitReason;
use crate::log;
use crate::seccomp::{self, ThreadKind};
use crate::stats::{FIRST_EXIT, FIRST_RUN};
use seccompiler::BpfProgram;

/// Requests from the monitor, served after a kick.
pub const REQ_NONE: u8 = 0;
pub const REQ_CHECK_HALT: u8 = 1;
pub const REQ_STOP: u8 = 2;
/// Go back to the reset state (`--reboot`), report `ResetDone`, wait for `REQ_RUN`.
pub const REQ_RESET: u8 = 3;
/// Resume after a reset.
pub const REQ_RUN: u8 = 4;

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
    /// Answer to REQ_CHECK_HALT: can this vCPU ever run again without help?
    HaltState { id: u32, dead: bool },
    /// Answer to REQ_RESET: the vCPU is at its reset state, waiting for REQ_RUN.
    ResetDone { id: u32, ok: bool },
}

/// A vCPU's state as created: the architectural reset state, restored on a reboot.
pub struct ResetState {
    regs: kvm_bindings::kvm_regs,
    sregs: kvm_bindings::kvm_sregs,
    fpu: kvm_bindings::kvm_fpu,
    lapic: kvm_bindings::kvm_lapic_state,
    mp_state: kvm_bindings::kvm_mp_state,
    events: kvm_bindings::kvm_vcpu_events,
}

impl ResetState {
    pub fn capture(fd: &VcpuFd) -> Result<Self, kvm_ioctls::Error> {
        Ok(ResetState {
            regs: fd.get_regs()?,
            sregs: fd.get_sregs()?,
            fpu: fd.get_fpu()?,
            lapic: fd.get_lapic()?,
            mp_state: fd.get_mp_state()?,
            events: fd.get_vcpu_events()?,
        })
    }

    fn restore(&self, fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
        fd.set_vcpu_events(&self.events)?;
        fd.set_sregs(&self.sregs)?;
        fd.set_regs(&self.regs)?;
        fd.set_fpu(&self.fpu)?;
        fd.set_lapic(&self.lapic)?;
        fd.set_mp_state(self.mp_state)
    }
}

/// The monitor's handle on a vCPU thread.
pub struct VcpuHandle {
    pub thread: JoinHandle<()>,
    run: *mut kvm_run,
    request: Arc<AtomicU8>,
}

// SAFETY: `run` points into the vCPU's kvm_run mapping, which lives until the process exits
// (vCPU threads never drop their VcpuFd; see `park_forever`); only the immediate_exit byte is
// written through it.
unsafe impl Send for VcpuHandle {}

impl VcpuHandle {
    /// Lets a vCPU waiting after a reset run again.
    pub fn release(&self) {
        self.request.store(REQ_RUN, Ordering::SeqCst);
        self.thread.thread().unpark();
    }

    /// Asks the vCPU to leave KVM_RUN (or its wait after a stop) and serve `req`.
    pub fn kick(&self, req: u8) {
        self.request.store(req, Ordering::SeqCst);
        self.thread.thread().unpark();
        // SAFETY: see the Send impl; immediate_exit is a byte KVM reads on entry to KVM_RUN.
        unsafe { std::ptr::addr_of_mut!((*self.run).immediate_exit).write_volatile(1) };
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the thread is alive (it never returns) and the signal has a handler.
        unsafe { libc::pthread_kill(self.thread.as_pthread_t(), kick_signal()) };
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

/// A port write of `size`-byte units to the bus.
fn write_port(pio: &Bus, port: u16, data: &[u8], size: usize) -> Step {
    for chunk in data.chunks(size) {
        if let Some(r) = pio.write(port as u64, chunk) {
            return Step::Stop(r, None);
        }
    }
    Step::Continue
}

struct Vcpu {
    id: u32,
    fd: VcpuFd,
    run: *mut kvm_run,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    request: Arc<AtomicU8>,
    tx: Sender<VcpuMsg>,
    wake: Arc<EventFd>,
    reset_state: Option<ResetState>,
    bios: Arc<Bios>,
}

/// What a vCPU thread starts with.
pub struct Setup {
    pub id: u32,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub tx: Sender<VcpuMsg>,
    pub wake: Arc<EventFd>,
    /// Installed first thing in the thread; None with `--seccomp off`.
    pub filter: Option<Arc<BpfProgram>>,
    /// Released once every thread's filter is in place.
    pub start: Arc<Barrier>,
    /// Test builds: make a forbidden syscall after the filter is on.
    pub test_forbidden_syscall: bool,
    /// The state a reboot restores; None without `--reboot`.
    pub reset_state: Option<ResetState>,
    /// The BIOS services the firmware calls through its service ports.
    pub bios: Arc<Bios>,
}

pub fn spawn(mut fd: VcpuFd, setup: Setup) -> std::io::Result<VcpuHandle> {
    let run = fd.get_kvm_run() as *mut kvm_run;
    let request = Arc::new(AtomicU8::new(REQ_NONE));
    let id = setup.id;
    let vcpu = Vcpu {
        id,
        fd,
        run,
        pio: setup.pio,
        mmio: setup.mmio,
        request: request.clone(),
        tx: setup.tx,
        wake: setup.wake,
        reset_state: setup.reset_state,
        bios: setup.bios,
    };
    let (filter, start, test_forbidden) = (setup.filter, setup.start, setup.test_forbidden_syscall);
    let run_addr = run as usize;
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .stack_size(256 * 1024)
        .spawn(move || {
            if let Some(f) = filter {
                if let Err(e) = seccomp::install(ThreadKind::Vcpu, &f) {
                    vcpu.send(VcpuMsg::Exit {
                        id,
                        reason: ExitReason::HostError(e.to_string()),
                        dump: None,
                    });
                    start.wait();
                    vcpu.park_forever();
                }
            }
            start.wait();
            if test_forbidden {
                // SAFETY: getppid has no arguments and no effect; it is simply not allowed.
                unsafe { libc::syscall(libc::SYS_getppid) };
            }
            vcpu.run_loop()
        })?;
    Ok(VcpuHandle {
        thread,
        run: run_addr as *mut kvm_run,
        request,
    })
}

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
                loop {
                    if self.request.load(Ordering::SeqCst) == REQ_RESET {
                        self.fd.set_kvm_immediate_exit(0);
                        self.request.store(REQ_NONE, Ordering::SeqCst);
                        self.reset();
                        break;
                    }
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
    fn reset(&self) {
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
        while self.request.load(Ordering::SeqCst) != REQ_RUN {
            std::thread::park();
        }
        self.request.store(REQ_NONE, Ordering::SeqCst);
    }

    fn run_once(&mut self) -> Step {
        let run = self.run;
        let exit = self.fd.run();
        match exit {
            Ok(VcpuExit::IoIn(port, data)) => {
                let size = io_size(run);
                for chunk in data.chunks_mut(size) {
                    self.pio.read(port as u64, chunk);
                }
                Step::Continue
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                let size = io_size(run);
                if self.bios.embedded()
                    && (bios::SERVICE_PORT_BASE..=bios::SERVICE_PORT_LAST).contains(&port)
                {
                    let data = data.to_vec();
                    return match self.bios_call(port) {
                        Some(step) => step,
                        None => write_port(&self.pio, port, &data, size),
                    };
                }
                write_port(&self.pio, port, data, size)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                self.mmio.read(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => match self.mmio.write(addr, data) {
                Some(r) => Step::Stop(r, None),
                None => Step::Continue,
            },
            Ok(VcpuExit::Hlt) => {
                // Only without an in-kernel LAPIC; treat it as a halt check.
                if self.is_dead() {
                    Step::Stop(ExitReason::Halted, None)
                } else {
                    Step::Continue
                }
            }
            Ok(VcpuExit::Shutdown) => Step::Stop(ExitReason::TripleFault, Some(self.dump())),
            Ok(VcpuExit::InternalError) => {
                // SAFETY: exit reason is KVM_EXIT_INTERNAL_ERROR: `internal` is valid.
                let internal = unsafe { (*self.run).__bindgen_anon_1.internal };
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
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::Stop(
                ExitReason::InternalError(format!(
                    "VM entry failed: hardware reason {reason:#x} on host CPU {cpu}"
                )),
                Some(self.dump()),
            ),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(ExitReason::PowerOff, None),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Step::Stop(ExitReason::Reset, None),
                k => Step::Stop(
                    ExitReason::UnhandledExit(format!("system event {k}")),
                    Some(self.dump()),
                ),
            },
            Ok(VcpuExit::Intr) => self.serve_request(),
            Ok(VcpuExit::Debug(_)) => {
                // Single-stepping (`--x-count-instructions`): one exit per instruction.
                crate::devices::post_code::STEPS.fetch_add(1, Ordering::Relaxed);
                Step::Continue
            }
            Ok(other) => Step::Stop(
                ExitReason::UnhandledExit(format!("{other:?}")),
                Some(self.dump()),
            ),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => self.serve_request(),
            Err(e) => Step::Stop(
                ExitReason::HostError(format!("KVM_RUN on vCPU {}: {e}", self.id)),
                None,
            ),
        }
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
        let (mut regs, mut sregs) = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => return fail(self.id, e),
        };
        let caller = Caller {
            cr0: sregs.cr0,
            cs_base: sregs.cs.base,
            rip: regs.rip,
        };
        let service = bios::service_call(port, self.bios.embedded(), &caller)?;
        let segs = Segments {
            cs: sregs.cs.base,
            ds: sregs.ds.base,
            es: sregs.es.base,
            ss: sregs.ss.base,
            fs: sregs.fs.base,
            gs: sregs.gs.base,
        };
        let outcome = self.bios.call(service, &mut regs, &segs);
        if let Err(e) = self.fd.set_regs(&regs) {
            return fail(self.id, e);
        }
        if let Some(es) = outcome.es {
            sregs.es.selector = es;
            sregs.es.base = u64::from(es) << 4;
            if let Err(e) = self.fd.set_sregs(&sregs) {
                return fail(self.id, e);
            }
        }
        Some(Step::Continue)
    }

    fn serve_request(&mut self) -> Step {
        self.fd.set_kvm_immediate_exit(0);
        match self.request.swap(REQ_NONE, Ordering::SeqCst) {
            REQ_CHECK_HALT => {
                let dead = self.is_dead();
                self.send(VcpuMsg::HaltState { id: self.id, dead });
                Step::Continue
            }
            REQ_STOP => self.park_forever(),
            REQ_RESET => {
                self.reset();
                Step::Continue
            }
            _ => Step::Continue,
        }
    }

    /// Halted with interrupts off, or an AP still waiting for INIT/SIPI.
    fn is_dead(&self) -> bool {
        let Ok(mp) = self.fd.get_mp_state() else {
            return false;
        };
        match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => true,
            KVM_MP_STATE_HALTED => self
                .fd
                .get_regs()
                .map(|r| r.rflags & (1 << 9) == 0)
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
