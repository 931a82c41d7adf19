//! Starting the vCPU threads, with one full seccomp install for all of them.
//!
//! Installing a filter costs the kernel about 4 µs per BPF instruction here (it runs the
//! filter over every syscall number to cache its verdicts): some 200 µs for the vCPU filter,
//! once per thread. So with more than one vCPU, the first vCPU thread installs the vCPU
//! filter widened by what creating a thread takes (`ThreadKind::VcpuSpawner`) and creates
//! the other vCPU threads, which inherit it. Every vCPU thread, the first one included, then
//! stacks the short spawn guard (`seccomp::compile_spawn_guard`), which forbids those
//! additions again, before it touches guest input: each ends with exactly the vCPU list.
//! A single vCPU installs the vCPU filter itself, as before.

use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Barrier};

use kvm_bindings::kvm_run;
use kvm_ioctls::VcpuFd;
use seccompiler::BpfProgram;
use vmm_sys_util::eventfd::EventFd;

use super::{Mailbox, ResetState, Vcpu, VcpuHandle, VcpuMsg};
use crate::bios::Bios;
use crate::bus::Bus;
use crate::exit::ExitReason;
use crate::pause::Pause;
use crate::seccomp::{self, ThreadKind};

/// What a vCPU thread starts with.
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
}

/// The compiled filters of the vCPU threads.
pub struct VcpuFilters {
    /// The vCPU list: installed by a single vCPU.
    pub vcpu: BpfProgram,
    /// With more than one vCPU: the spawner's filter and the guard stacked on it.
    pub spawn: Option<(BpfProgram, BpfProgram)>,
}

/// A vCPU thread ready to start: its state, and how it is reached from the monitor.
struct Prepared {
    vcpu: Vcpu,
    start: Arc<Barrier>,
    test_forbidden: bool,
    run: usize,
    mailbox: Arc<Mailbox>,
}

fn prepare(mut fd: VcpuFd, setup: Setup) -> Prepared {
    let run = fd.get_kvm_run() as *mut kvm_run;
    let mailbox = Arc::new(Mailbox::default());
    Prepared {
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
        },
        start: setup.start,
        test_forbidden: setup.test_forbidden_syscall,
        run: run as usize,
        mailbox,
    }
}

/// Starts a thread running `body` on the prepared vCPU.
fn start_thread(
    p: Prepared,
    body: impl FnOnce(Prepared) + Send + 'static,
) -> std::io::Result<VcpuHandle> {
    let (run, mailbox) = (p.run, p.mailbox.clone());
    let thread = std::thread::Builder::new()
        .name(format!("vcpu{}", p.vcpu.id))
        .stack_size(256 * 1024)
        .spawn(move || body(p))?;
    Ok(VcpuHandle {
        thread,
        run: run as *mut kvm_run,
        mailbox,
    })
}

/// A vCPU thread's life: its filter (`own`), registration, the common start, the run loop.
fn run_vcpu(p: Prepared, own: Option<(ThreadKind, &BpfProgram)>) {
    let Prepared {
        vcpu,
        start,
        test_forbidden,
        ..
    } = p;
    if let Some((kind, f)) = own {
        if let Err(e) = seccomp::install(kind, f) {
            vcpu.send(VcpuMsg::Exit {
                id: vcpu.id,
                reason: ExitReason::HostError(e.to_string()),
                dump: None,
            });
            start.wait();
            vcpu.park_forever();
        }
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

/// Starts one thread per vCPU, in id order; with `filters`, each installs its filter before
/// it touches guest input. The threads wait on their `start` barrier.
pub fn spawn_all(
    vcpus: Vec<(VcpuFd, Setup)>,
    filters: Option<Arc<VcpuFilters>>,
) -> std::io::Result<Vec<VcpuHandle>> {
    let mut prepared = vcpus.into_iter().map(|(fd, s)| prepare(fd, s));
    let Some(first) = prepared.next() else {
        return Ok(Vec::new());
    };
    let others: Vec<Prepared> = prepared.collect();
    let spawn = filters.as_ref().and_then(|f| f.spawn.as_ref()).is_some();
    if others.is_empty() || !spawn {
        let mut handles = Vec::new();
        for p in std::iter::once(first).chain(others) {
            let f = filters.clone();
            handles.push(start_thread(p, move |p| {
                run_vcpu(p, f.as_deref().map(|f| (ThreadKind::Vcpu, &f.vcpu)))
            })?);
        }
        return Ok(handles);
    }

    let n = others.len();
    let (tx, rx) = channel::<Result<VcpuHandle, String>>();
    let first = start_thread(first, move |p| {
        let Some((spawner, guard)) = filters.as_deref().and_then(|f| f.spawn.as_ref()) else {
            return;
        };
        if let Err(e) = seccomp::install(ThreadKind::VcpuSpawner, spawner) {
            let _ = tx.send(Err(e.to_string()));
            p.vcpu.park_forever();
        }
        for o in others {
            let f = filters.clone();
            let h = start_thread(o, move |o| {
                let guard = f.as_deref().and_then(|f| f.spawn.as_ref()).map(|s| &s.1);
                run_vcpu(o, guard.map(|g| (ThreadKind::Vcpu, g)))
            });
            let failed = h.is_err();
            let _ = tx.send(h.map_err(|e| format!("cannot start a vCPU thread: {e}")));
            if failed {
                p.vcpu.park_forever();
            }
        }
        drop(tx);
        run_vcpu(p, Some((ThreadKind::Vcpu, guard)))
    })?;
    let mut handles = vec![first];
    for _ in 0..n {
        match rx.recv() {
            Ok(Ok(h)) => handles.push(h),
            Ok(Err(e)) => return Err(std::io::Error::other(e)),
            Err(_) => return Err(std::io::Error::other("the vCPU threads did not start")),
        }
    }
    Ok(handles)
}
