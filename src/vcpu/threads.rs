//! The vCPU threads: the first started before the machine is built, the others by it, with
//! one full seccomp install for all of them; vCPU 0 runs while the APs are still being set up.
//!
//! A thread's start and its filter (about 100 and 150 µs here) would otherwise come between
//! the last KVM call and the guest's first instruction. So `prestart` starts the first vCPU
//! thread while the machine is still being built: it installs its filter and waits for the
//! vCPUs, which `Prestarted::start` hands over once the machine exists. Until then it has
//! touched nothing the guest controls.
//!
//! Installing a filter costs the kernel about 4 µs per BPF instruction here (it runs the
//! filter over every syscall number to cache its verdicts): some 200 µs for the vCPU
//! filter. So with more than one vCPU, the first vCPU thread installs the vCPU filter
//! widened by what creating a thread and setting an AP's CPUID take
//! (`ThreadKind::VcpuSpawner`), and the other vCPU threads inherit it. Every vCPU thread, the
//! first one included, then stacks the short spawn guard (`seccomp::compile_spawn_guard`),
//! which forbids those additions again: each ends with exactly the vCPU list, before its
//! vCPU first runs. A single vCPU installs the vCPU filter itself.
//!
//! While it waits for the vCPUs, the first thread can run jobs the build lends it
//! (`Prestarted::lend`): it creates vCPUs beside the building thread (vm/vcpus.rs), under the
//! spawner's filter, which allows that until the guard.
//!
//! The APs do not hold vCPU 0 back. Every vCPU exists in KVM before vCPU 0 runs (an INIT or
//! SIPI the guest sends waits in the AP's LAPIC until the AP runs), but an AP's thread start,
//! its CPUID (about 0.2 ms of KVM's time each here, see vm/vcpus.rs) and its spawn
//! guard come after: the first thread starts one AP thread and runs vCPU 0; that AP thread
//! starts the others, and each sets its own AP up and runs it. A monitor's request posted
//! before an AP's thread runs is not lost: `immediate_exit` is already set in its `kvm_run`,
//! so its first `KVM_RUN` returns at once to serve it.

use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, OnceLock};

use kvm_bindings::{kvm_run, CpuId, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::VcpuFd;
use seccompiler::BpfProgram;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Mailbox, ResetState, ThreadRef, Vcpu, VcpuHandle, VcpuMsg};
use crate::bios::Bios;
use crate::bus::Bus;
use crate::coalesced_io::CoalescedIo;
use crate::exit::ExitReason;
use crate::pause::Pause;
use crate::ram_gate::RamGate;
use crate::rendezvous::Rendezvous;
use crate::seccomp::{self, ThreadKind};
use std::time::Duration;

/// What a vCPU thread runs with, once the machine is built.
pub struct Setup {
    pub id: u32,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub tx: Sender<VcpuMsg>,
    pub wake: Arc<EventFd>,
    /// vCPU 0's: where its thread tells the monitor it has its vCPU (and runs it without
    /// waiting). None for an AP, which runs as soon as its own filter is in place.
    pub start: Option<Arc<Rendezvous>>,
    /// The CPUID the thread sets before the vCPU first runs (an AP's); None if set.
    pub cpuid: Option<CpuId>,
    /// Test builds: make a forbidden syscall after the filter is on.
    pub test_forbidden_syscall: bool,
    /// Test builds: how long the thread that sets the APs up waits before this AP's CPUID
    /// (`--x-ap-delay-ms`), so that a guest certainly runs ahead of its APs' set-up.
    pub ap_delay: Duration,
    /// The state a reboot restores; None without `--reboot`.
    pub reset_state: Option<ResetState>,
    /// The BIOS services the firmware calls through its service ports.
    pub bios: Arc<Bios>,
    /// Stops this vCPU outside KVM_RUN while another changes a memory slot.
    pub pause: Arc<Pause>,
    /// Whether all RAM is registered with KVM yet (`ram_gate.rs`).
    pub ram: Arc<RamGate>,
    /// Guest RAM as the host maps it: accesses to RAM KVM does not know yet are made here.
    pub mem: GuestMemoryMmap,
    /// The ring of buffered port writes, emptied at every exit; None without one.
    pub coalesced: Option<Arc<CoalescedIo>>,
}

/// The compiled filters of the vCPU threads.
pub struct VcpuFilters {
    /// The vCPU list: installed by a single vCPU.
    pub vcpu: BpfProgram,
    /// With more than one vCPU: the spawner's filter and the guard stacked on it.
    pub spawn: Option<(BpfProgram, BpfProgram)>,
}

/// A vCPU handed to its thread.
struct Prepared {
    vcpu: Vcpu,
    /// The CPUID this thread sets before the vCPU first runs; None when the build set it.
    cpuid: Option<CpuId>,
    /// vCPU 0's start, common with the monitor; None for an AP.
    start: Option<Arc<Rendezvous>>,
    test_forbidden: bool,
    ap_delay: Duration,
    /// Where this thread makes itself known to the monitor's handle.
    thread: Arc<OnceLock<ThreadRef>>,
}

/// What the first vCPU thread is given while it waits.
enum ToFirst {
    /// Work for the build, run under the thread's filter (`Prestarted::lend`).
    Job(Box<dyn FnOnce() + Send>),
    /// The vCPUs, in id order.
    Vcpus(Vec<Prepared>),
}

/// The first vCPU thread, filtered, waiting for the vCPUs.
pub struct Prestarted {
    to: SyncSender<ToFirst>,
    count: usize,
}

/// Starts the first of `cpus` vCPU threads; with `filters`, it installs its filter before it
/// receives the vCPUs. Call it while the calling thread is the process's only one.
pub fn prestart(cpus: usize, filters: Option<Arc<VcpuFilters>>) -> std::io::Result<Prestarted> {
    size_fd_table(cpus);
    let (to, rx) = sync_channel::<ToFirst>(1);
    std::thread::Builder::new()
        .name("vcpu0".into())
        .stack_size(STACK)
        .spawn(move || first_thread(rx, filters, cpus))?;
    Ok(Prestarted { to, count: cpus })
}

const STACK: usize = 256 * 1024;

/// Descriptors the VMM holds besides two per vCPU (its vCPU and its statistics): KVM, the
/// VM, eventfds and timerfds, the serial output, the disk, the supervisor's pipe.
const FDS_BESIDES_VCPUS: usize = 64;

/// Grows the descriptor table to hold every descriptor the VMM will open, while the calling
/// thread is the process's only one: growing it later, when threads share it, waits for an
/// RCU grace period each time (a few milliseconds here; with `--cpus 64` that added 25 ms
/// to the start). Nothing is lost when the table cannot grow (a low RLIMIT_NOFILE).
fn size_fd_table(cpus: usize) {
    let want = (2 * cpus + FDS_BESIDES_VCPUS).next_power_of_two();
    // SAFETY: a new eventfd, duplicated to the lowest free descriptor at or above `want - 1`,
    // both closed again; only this process's descriptor table changes.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC);
        if fd < 0 {
            return;
        }
        let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, (want - 1) as libc::c_int);
        if high >= 0 {
            libc::close(high);
        }
        libc::close(fd);
    }
}

/// The first vCPU thread: its filter, the jobs the build lends it, then, once the vCPUs come,
/// the first AP's thread (which starts the others), the spawn guard and vCPU 0.
fn first_thread(rx: Receiver<ToFirst>, filters: Option<Arc<VcpuFilters>>, cpus: usize) {
    let spawn = filters
        .as_deref()
        .and_then(|f| f.spawn.as_ref())
        .filter(|_| cpus > 1);
    let filtered = match (filters.as_deref(), spawn) {
        (None, _) => Ok(()),
        (Some(_), Some((spawner, _))) => install(ThreadKind::VcpuSpawner, spawner),
        (Some(f), None) => install(ThreadKind::Vcpu, &f.vcpu),
    };
    let mut vcpus = loop {
        match rx.recv() {
            // Without its filter the thread runs nothing: the job is dropped, which its
            // lender sees.
            Ok(ToFirst::Job(job)) => {
                if filtered.is_ok() {
                    job()
                }
            }
            Ok(ToFirst::Vcpus(v)) if !v.is_empty() => break v,
            // The machine was not built: the process is about to exit. The thread waits for
            // that exit rather than ending: a thread's end makes calls of its own (glibc's),
            // which its filter need not allow.
            _ => loop {
                std::thread::park();
            },
        }
    };
    let own = vcpus.remove(0);
    if let Err(e) = filtered {
        fail(own, e);
    }
    let guard = spawn.map(|s| s.1.clone());
    if !vcpus.is_empty() {
        let first_ap = vcpus[0].vcpu.id;
        if let Err(e) = start_thread(first_ap, (vcpus, guard.clone()), |(aps, g)| {
            ap_threads(aps, g)
        }) {
            fail(own, e);
        }
    }
    let filtered = match &guard {
        Some(g) => install(ThreadKind::Vcpu, g),
        None => Ok(()),
    };
    run(own, filtered)
}

/// The first AP's thread: the APs' CPUIDs and the other APs' threads, then its own AP. The
/// CPUIDs are set here one after the other, not by each AP's thread: on a host with few CPUs,
/// dozens of threads in KVM at once would hold vCPU 0 and the monitor back.
///
/// Meanwhile this thread answers the halt checks of the APs it still holds, so that a guest
/// that halts before every AP has its thread (one that never wakes them) ends at once,
/// rather than when the last AP is set up.
fn ap_threads(mut aps: Vec<Prepared>, guard: Option<BpfProgram>) {
    let own = with_cpuid(aps.remove(0));
    // Held APs, the next one last.
    aps.reverse();
    while let Some(p) = aps.pop() {
        if !p.ap_delay.is_zero() {
            std::thread::sleep(p.ap_delay);
        }
        own.vcpu.answer_halt_check();
        p.vcpu.answer_halt_check();
        aps.iter().for_each(|h| h.vcpu.answer_halt_check());
        let p = with_cpuid(p);
        if let Err(e) = start_thread(p.vcpu.id, (p, guard.clone()), |(p, g)| ap(p, g.as_ref())) {
            fail(own, e);
        }
    }
    ap(own, guard.as_ref())
}

/// The AP with the CPUID the build left for it set; on failure, the VM ends from here (and
/// this thread stops, every vCPU still alive).
fn with_cpuid(mut p: Prepared) -> Prepared {
    if let Some(c) = p.cpuid.take() {
        if let Err(e) = p.vcpu.fd.set_cpuid2(&c) {
            let why = format!("vCPU {}: cannot set its CPUID: {e}", p.vcpu.id);
            fail(p, why);
        }
    }
    p
}

/// Starts vCPU `id`'s thread, which runs `f(vcpus)`. When the thread cannot start (the
/// host's thread or memory limits), `vcpus` is not dropped but kept until the process exits:
/// a vCPU's descriptor and its `kvm_run` mapping, to which the monitor may still write,
/// must outlive every handle on it (and a filtered thread may not close descriptors).
fn start_thread<T: Send + 'static>(
    id: u32,
    vcpus: T,
    f: impl FnOnce(T) + Send + 'static,
) -> Result<(), String> {
    let vcpus = std::mem::ManuallyDrop::new(vcpus);
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .stack_size(STACK)
        .spawn(move || f(std::mem::ManuallyDrop::into_inner(vcpus)))
        .map(drop)
        .map_err(|e| format!("cannot start a vCPU thread: {e}"))
}

/// An AP's thread, its CPUID set, with the spawner's filter (if any): the spawn
/// guard, then the AP's run.
fn ap(p: Prepared, guard: Option<&BpfProgram>) {
    let filtered = match guard {
        Some(g) => install(ThreadKind::Vcpu, g),
        None => Ok(()),
    };
    run(p, filtered)
}

fn install(kind: ThreadKind, f: &BpfProgram) -> Result<(), String> {
    seccomp::install(kind, f).map_err(|e| e.to_string())
}

/// Ends the VM from this vCPU: a host error, reported to the monitor, which vCPU 0 lets go
/// on (an AP is not waited for).
fn fail(p: Prepared, why: String) -> ! {
    p.vcpu.send(VcpuMsg::Exit {
        id: p.vcpu.id,
        reason: ExitReason::HostError(why),
        dump: None,
    });
    if let Some(start) = &p.start {
        start.arrive();
    }
    p.vcpu.park_forever()
}

/// A filtered vCPU thread's life (`filtered`: its filter is in place): the monitor's handle
/// and the pause learn the thread, vCPU 0 tells the monitor (and does not wait for it), the
/// run loop.
fn run(p: Prepared, filtered: Result<(), String>) {
    if let Err(e) = filtered {
        fail(p, e);
    }
    // From here the monitor's kicks reach this thread (before, they wait in immediate_exit).
    let _ = p.thread.set(ThreadRef::current());
    let Prepared {
        vcpu,
        start,
        test_forbidden,
        ..
    } = p;
    vcpu.pause.register(vcpu.id as usize, vcpu.run);
    if let Some(start) = start {
        start.arrive();
    }
    if test_forbidden {
        // SAFETY: no arguments and no effect; each is simply not allowed to a vCPU thread.
        // A lone vCPU tries getppid; otherwise the last vCPU tries gettid, which its
        // inherited spawner filter allows and the spawn guard forbids.
        unsafe {
            if vcpu.id == 0 {
                libc::syscall(libc::SYS_getppid);
            } else {
                libc::syscall(libc::SYS_gettid);
            }
        }
    }
    vcpu.run_loop()
}

impl Prestarted {
    /// Gives the first vCPU thread `job` to run while it waits for the vCPUs (under its filter:
    /// with more than one vCPU, the spawner's, which allows creating vCPUs). When the thread
    /// is gone, the job is dropped.
    pub fn lend(&self, job: Box<dyn FnOnce() + Send>) {
        let _ = self.to.send(ToFirst::Job(job));
    }

    /// Hands the vCPUs (in id order, as many as `prestart` was told) to the first thread,
    /// which starts the first AP's thread (that one starts the others), arrives at its
    /// `start` rendezvous and runs vCPU 0.
    /// The handles are returned at once: an AP's thread makes itself known to its handle
    /// when it starts.
    pub fn start(self, vcpus: Vec<(VcpuFd, Setup)>) -> std::io::Result<Vec<VcpuHandle>> {
        if vcpus.len() != self.count || vcpus.is_empty() {
            return Err(std::io::Error::other(format!(
                "{} vCPUs for {} vCPU threads",
                vcpus.len(),
                self.count
            )));
        }
        let mut handles = Vec::with_capacity(vcpus.len());
        let mut prepared = Vec::with_capacity(vcpus.len());
        for (mut fd, setup) in vcpus {
            let run = fd.get_kvm_run() as *mut kvm_run;
            // SAFETY: `run` is this vCPU's live kvm_run mapping; no thread runs it yet.
            let valid = unsafe { (*run).kvm_valid_regs };
            let sync = u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
            let mailbox = Arc::new(Mailbox::default());
            let thread = Arc::new(OnceLock::new());
            handles.push(VcpuHandle {
                thread: thread.clone(),
                run,
                mailbox: mailbox.clone(),
            });
            prepared.push(Prepared {
                vcpu: Vcpu {
                    id: setup.id,
                    fd,
                    run,
                    pio: setup.pio,
                    mmio: setup.mmio,
                    mailbox,
                    tx: setup.tx,
                    wake: setup.wake,
                    reset_state: setup.reset_state,
                    bios: setup.bios,
                    pause: setup.pause,
                    ram: setup.ram,
                    mem: setup.mem,
                    coalesced: setup.coalesced,
                    sync_regs: valid & sync == sync,
                    alone: self.count == 1,
                    refused: None,
                },
                cpuid: setup.cpuid,
                start: setup.start,
                test_forbidden: setup.test_forbidden_syscall,
                ap_delay: setup.ap_delay,
                thread,
            });
        }
        if self.to.send(ToFirst::Vcpus(prepared)).is_err() {
            return Err(std::io::Error::other("the first vCPU thread ended early"));
        }
        Ok(handles)
    }
}
