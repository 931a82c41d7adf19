//! The vCPU threads: started before the machine is built, with one full seccomp install for
//! all of them.
//!
//! A thread's start and its filter (about 100 and 150 µs here) would otherwise come between
//! the last KVM call and the guest's first instruction. So `prestart` starts one thread per
//! vCPU while the machine is still being built: each installs its filter and waits for its
//! vCPU, which `Prestarted::start` hands over once the machine exists. Until then it has
//! touched nothing the guest controls.
//!
//! Installing a filter costs the kernel about 4 µs per BPF instruction here (it runs the
//! filter over every syscall number to cache its verdicts): some 200 µs for the vCPU
//! filter. So with more than one vCPU, the first vCPU thread installs the vCPU filter
//! widened by what creating a thread takes (`ThreadKind::VcpuSpawner`) and starts the other
//! vCPU threads, which inherit it. Every vCPU thread, the first one included, then stacks
//! the short spawn guard (`seccomp::compile_spawn_guard`), which forbids those additions
//! again: each ends with exactly the vCPU list. A single vCPU installs the vCPU filter
//! itself.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;

use kvm_bindings::kvm_run;
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

/// A started vCPU thread, waiting for its vCPU.
struct Waiting {
    thread: JoinHandle<()>,
    to: Sender<Prepared>,
}

/// The vCPU threads, started and filtered, waiting for their vCPUs.
pub struct Prestarted {
    first: Option<Waiting>,
    /// The other threads, as the first one starts them (with the spawner scheme); otherwise
    /// already in `started`.
    later: Option<Receiver<Result<Waiting, String>>>,
    started: Vec<Waiting>,
    count: usize,
}

/// Starts one thread per vCPU (`cpus`); with `filters`, each installs its filter before it
/// receives its vCPU.
pub fn prestart(cpus: usize, filters: Option<Arc<VcpuFilters>>) -> std::io::Result<Prestarted> {
    let spawner = filters.as_ref().is_some_and(|f| f.spawn.is_some()) && cpus > 1;
    if !spawner {
        let mut started = Vec::with_capacity(cpus);
        for id in 0..cpus {
            let f = filters.clone();
            started.push(start_thread(id, move |rx| {
                let own = f.as_deref().map(|f| (ThreadKind::Vcpu, &f.vcpu));
                wait_and_run(rx, filter(own))
            })?);
        }
        return Ok(Prestarted {
            first: None,
            later: None,
            started,
            count: cpus,
        });
    }

    let (tx, rx) = channel::<Result<Waiting, String>>();
    let first = start_thread(0, move |own_rx| {
        let Some((spawner, guard)) = filters.as_deref().and_then(|f| f.spawn.as_ref()) else {
            return;
        };
        if let Err(e) = seccomp::install(ThreadKind::VcpuSpawner, spawner) {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
        for id in 1..cpus {
            let f = filters.clone();
            let w = start_thread(id, move |rx| {
                let guard = f.as_deref().and_then(|f| f.spawn.as_ref()).map(|s| &s.1);
                wait_and_run(rx, filter(guard.map(|g| (ThreadKind::Vcpu, g))))
            });
            let failed = w.is_err();
            let _ = tx.send(w.map_err(|e| format!("cannot start a vCPU thread: {e}")));
            if failed {
                return;
            }
        }
        drop(tx);
        wait_and_run(own_rx, filter(Some((ThreadKind::Vcpu, guard))))
    })?;
    Ok(Prestarted {
        first: Some(first),
        later: Some(rx),
        started: Vec::new(),
        count: cpus,
    })
}

/// The calling thread's filter, installed: Ok when in place (or none is wanted).
fn filter(own: Option<(ThreadKind, &BpfProgram)>) -> Result<(), String> {
    match own {
        Some((kind, f)) => seccomp::install(kind, f).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}

/// Starts thread `id`, which runs `body` with the receiving end of its channel. It inherits
/// the stop signals blocked (main.rs blocks them first): the monitor's signalfd takes them.
fn start_thread(
    id: usize,
    body: impl FnOnce(Receiver<Prepared>) + Send + 'static,
) -> std::io::Result<Waiting> {
    let (to, rx) = channel();
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .stack_size(256 * 1024)
        .spawn(move || body(rx))?;
    Ok(Waiting { thread, to })
}

/// A vCPU thread's life once filtered (`filtered`): its vCPU, registration, the common start,
/// the run loop. It ends quietly when no vCPU comes (the machine was not built).
fn wait_and_run(rx: Receiver<Prepared>, filtered: Result<(), String>) {
    let Ok(Prepared {
        vcpu,
        start,
        test_forbidden,
    }) = rx.recv()
    else {
        return;
    };
    if let Err(e) = filtered {
        vcpu.send(VcpuMsg::Exit {
            id: vcpu.id,
            reason: ExitReason::HostError(e),
            dump: None,
        });
        start.wait();
        vcpu.park_forever();
    }
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
    /// Why thread `i` ended before its vCPU came: the first thread's report when it failed
    /// to install its filter or to start the others.
    fn why_ended(&self, i: usize) -> std::io::Error {
        let report = self
            .later
            .as_ref()
            .and_then(|rx| rx.try_iter().find_map(|r| r.err()));
        std::io::Error::other(
            report.unwrap_or_else(|| format!("vCPU thread {i} ended before its vCPU came")),
        )
    }

    /// Hands each vCPU (in id order, as many as threads were started) to its thread; they
    /// then wait on their `start` barrier.
    pub fn start(mut self, vcpus: Vec<(VcpuFd, Setup)>) -> std::io::Result<Vec<VcpuHandle>> {
        if vcpus.len() != self.count {
            return Err(std::io::Error::other(format!(
                "{} vCPUs for {} vCPU threads",
                vcpus.len(),
                self.count
            )));
        }
        let mut waiting = std::mem::take(&mut self.started);
        if let Some(first) = self.first.take() {
            waiting.push(first);
        }
        let mut handles = Vec::with_capacity(vcpus.len());
        for (i, (mut fd, setup)) in vcpus.into_iter().enumerate() {
            if i >= waiting.len() {
                let next = self.later.as_ref().map(|rx| rx.recv());
                match next {
                    Some(Ok(Ok(w))) => waiting.push(w),
                    Some(Ok(Err(e))) => return Err(std::io::Error::other(e)),
                    _ => return Err(std::io::Error::other("the vCPU threads did not start")),
                }
            }
            let w = &waiting[i];
            let run = fd.get_kvm_run() as *mut kvm_run;
            let mailbox = Arc::new(Mailbox::default());
            let prepared = Prepared {
                vcpu: Vcpu {
                    id: setup.id,
                    fd,
                    run,
                    pio: setup.pio,
                    mmio: setup.mmio,
                    mailbox: mailbox.clone(),
                    tx: setup.tx,
                    wake: setup.wake,
                    reset_state: setup.reset_state,
                    bios: setup.bios,
                    pause: setup.pause,
                    ram: setup.ram,
                    mem: setup.mem,
                },
                start: setup.start,
                test_forbidden: setup.test_forbidden_syscall,
            };
            if w.to.send(prepared).is_err() {
                return Err(self.why_ended(i));
            }
            handles.push((run as usize, mailbox));
        }
        Ok(waiting
            .into_iter()
            .zip(handles)
            .map(|(w, (run, mailbox))| VcpuHandle {
                thread: w.thread,
                run: run as *mut kvm_run,
                mailbox,
            })
            .collect())
    }
}
