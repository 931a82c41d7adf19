//! The vCPU threads: the first started before the machine is built, the others by it, with
//! one full seccomp install for all of them.
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
//! widened by what creating a thread takes (`ThreadKind::VcpuSpawner`) and starts the other
//! vCPU threads, which inherit it. Every vCPU thread, the first one included, then stacks
//! the short spawn guard (`seccomp::compile_spawn_guard`), which forbids those additions
//! again: each ends with exactly the vCPU list. A single vCPU installs the vCPU filter
//! itself. (Starting all threads before the build was slower with many vCPUs: their starts
//! competed with KVM's vCPU creation for the CPUs and the address space.)

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_run, KVM_SYNC_X86_REGS, KVM_SYNC_X86_SREGS};
use kvm_ioctls::VcpuFd;
use seccompiler::BpfProgram;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{Mailbox, ResetState, Vcpu, VcpuHandle, VcpuMsg};
use crate::bios::Bios;
use crate::bus::Bus;
use crate::exit::ExitReason;
use crate::pause::Pause;
use crate::ram_gate::RamGate;
use crate::seccomp::{self, ThreadKind};

/// What a vCPU thread runs with, once the machine is built.
pub struct Setup {
    pub id: u32,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub tx: Sender<VcpuMsg>,
    pub wake: Arc<EventFd>,
    /// Released once every thread's filter is in place.
    pub start: Arc<Barrier>,
    /// Test builds: make a forbidden syscall after the filter is on.
    pub test_forbidden_syscall: bool,
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
    start: Arc<Barrier>,
    test_forbidden: bool,
}

/// What the first thread reports for each other thread it starts.
type Started = Result<JoinHandle<()>, String>;

/// The first vCPU thread, filtered, waiting for the vCPUs.
pub struct Prestarted {
    thread: JoinHandle<()>,
    to: SyncSender<Vec<Prepared>>,
    others: Receiver<Started>,
    count: usize,
}

/// Starts the first of `cpus` vCPU threads; with `filters`, it installs its filter before it
/// receives the vCPUs. Call it while the calling thread is the process's only one.
pub fn prestart(cpus: usize, filters: Option<Arc<VcpuFilters>>) -> std::io::Result<Prestarted> {
    size_fd_table(cpus);
    let (to, rx) = sync_channel::<Vec<Prepared>>(1);
    let (report, others) = channel::<Started>();
    let thread = std::thread::Builder::new()
        .name("vcpu0".into())
        .stack_size(STACK)
        .spawn(move || first_thread(rx, report, filters, cpus))?;
    Ok(Prestarted {
        thread,
        to,
        others,
        count: cpus,
    })
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

/// The first vCPU thread: its filter, then, once the vCPUs come, the other threads, the spawn
/// guard and its own vCPU.
fn first_thread(
    rx: Receiver<Vec<Prepared>>,
    report: Sender<Started>,
    filters: Option<Arc<VcpuFilters>>,
    cpus: usize,
) {
    let spawn = filters
        .as_deref()
        .and_then(|f| f.spawn.as_ref())
        .filter(|_| cpus > 1);
    let filtered = match (filters.as_deref(), spawn) {
        (None, _) => Ok(()),
        (Some(_), Some((spawner, _))) => install(ThreadKind::VcpuSpawner, spawner),
        (Some(f), None) => install(ThreadKind::Vcpu, &f.vcpu),
    };
    let mut vcpus = match rx.recv() {
        Ok(v) if !v.is_empty() => v,
        // The machine was not built: the process is about to exit. The thread waits for
        // that exit rather than ending: a thread's end makes calls of its own (glibc's),
        // which its filter need not allow.
        _ => loop {
            std::thread::park();
        },
    };
    let own = vcpus.remove(0);
    if let Err(e) = filtered {
        let _ = report.send(Err(e.clone()));
        fail(own, e);
    }
    for p in vcpus {
        let guard = spawn.map(|s| s.1.clone());
        let started = std::thread::Builder::new()
            .name(format!("vcpu{}", p.vcpu.id))
            .stack_size(STACK)
            .spawn(move || {
                let filtered = match &guard {
                    Some(g) => install(ThreadKind::Vcpu, g),
                    None => Ok(()),
                };
                run(p, filtered)
            })
            .map_err(|e| format!("cannot start a vCPU thread: {e}"));
        let failed = started.as_ref().err().cloned();
        let _ = report.send(started);
        if let Some(e) = failed {
            fail(own, e);
        }
    }
    drop(report);
    let filtered = match spawn {
        Some((_, guard)) => install(ThreadKind::Vcpu, guard),
        None => Ok(()),
    };
    run(own, filtered)
}

fn install(kind: ThreadKind, f: &BpfProgram) -> Result<(), String> {
    seccomp::install(kind, f).map_err(|e| e.to_string())
}

/// Ends the VM from this vCPU: a host error, reported once every thread may go.
fn fail(p: Prepared, why: String) -> ! {
    p.vcpu.send(VcpuMsg::Exit {
        id: p.vcpu.id,
        reason: ExitReason::HostError(why),
        dump: None,
    });
    p.start.wait();
    p.vcpu.park_forever()
}

/// A filtered vCPU thread's life (`filtered`: its filter is in place): registration, the
/// common start, the run loop.
fn run(p: Prepared, filtered: Result<(), String>) {
    if let Err(e) = filtered {
        fail(p, e);
    }
    let Prepared {
        vcpu,
        start,
        test_forbidden,
    } = p;
    vcpu.pause.register(vcpu.id as usize, vcpu.run);
    start.wait();
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
    /// Hands the vCPUs (in id order, as many as `prestart` was told) to the first thread,
    /// which starts the others; they all then wait on their `start` barrier.
    pub fn start(self, vcpus: Vec<(VcpuFd, Setup)>) -> std::io::Result<Vec<VcpuHandle>> {
        if vcpus.len() != self.count || vcpus.is_empty() {
            return Err(std::io::Error::other(format!(
                "{} vCPUs for {} vCPU threads",
                vcpus.len(),
                self.count
            )));
        }
        let mut reach = Vec::with_capacity(vcpus.len());
        let mut prepared = Vec::with_capacity(vcpus.len());
        for (mut fd, setup) in vcpus {
            let run = fd.get_kvm_run() as *mut kvm_run;
            // SAFETY: `run` is this vCPU's live kvm_run mapping; no thread runs it yet.
            let valid = unsafe { (*run).kvm_valid_regs };
            let sync = u64::from(KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS);
            let mailbox = Arc::new(Mailbox::default());
            reach.push((run as usize, mailbox.clone()));
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
                    sync_regs: valid & sync == sync,
                },
                start: setup.start,
                test_forbidden: setup.test_forbidden_syscall,
            });
        }
        if self.to.send(prepared).is_err() {
            return Err(std::io::Error::other("the first vCPU thread ended early"));
        }
        let mut threads = vec![self.thread];
        for _ in 1..self.count {
            match self.others.recv() {
                Ok(Ok(t)) => threads.push(t),
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Err(std::io::Error::other("the vCPU threads did not start")),
            }
        }
        Ok(threads
            .into_iter()
            .zip(reach)
            .map(|(thread, (run, mailbox))| VcpuHandle {
                thread,
                run: run as *mut kvm_run,
                mailbox,
            })
            .collect())
    }
}
