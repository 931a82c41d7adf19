//! Stopping every other vCPU outside `KVM_RUN` while a memory slot changes.
//!
//! A PAM write (shadow.rs) deletes and re-creates the KVM slot of a BIOS segment: there is no
//! call that swaps a slot's backing memory in place. A vCPU executing from that segment in
//! between would fetch from a hole (an emulation failure). So the vCPU that changes the
//! slots first stops the others: it raises `stopping`, kicks each one out of `KVM_RUN`
//! (`immediate_exit` and the kick signal, as the monitor does), and waits until none is
//! inside; a vCPU about to enter `KVM_RUN` announces it and then looks at `stopping`, and
//! waits while it is raised. Only one stopper runs at a time (the PCI configuration lock
//! already orders PAM writes; the stopper lock makes it explicit).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;

use crate::bus::lock;
use crate::log;

thread_local! {
    /// The vCPU this thread runs, if it is a vCPU thread.
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// One vCPU as the stopper sees it.
struct Peer {
    /// Inside `KVM_RUN`, or about to enter it.
    in_run: AtomicBool,
    /// Its `kvm_run` page (for `immediate_exit`) and thread, once it registered; 0 before.
    run: AtomicUsize,
    thread: AtomicU64,
}

pub struct Pause {
    peers: Vec<Peer>,
    stopping: AtomicBool,
    /// Held by the one stopper.
    stopper: Mutex<()>,
    /// Signalled when `stopping` falls.
    resumed: Condvar,
    resume_lock: Mutex<()>,
}

impl Pause {
    pub fn new(cpus: usize) -> Pause {
        Pause {
            peers: (0..cpus)
                .map(|_| Peer {
                    in_run: AtomicBool::new(false),
                    run: AtomicUsize::new(0),
                    thread: AtomicU64::new(0),
                })
                .collect(),
            stopping: AtomicBool::new(false),
            stopper: Mutex::new(()),
            resumed: Condvar::new(),
            resume_lock: Mutex::new(()),
        }
    }

    /// Called by vCPU `id`'s thread before its first `KVM_RUN`.
    pub fn register(&self, id: usize, run: *mut kvm_run) {
        CURRENT.with(|c| c.set(Some(id)));
        if let Some(p) = self.peers.get(id) {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            p.thread.store(me as u64, Ordering::SeqCst);
            p.run.store(run as usize, Ordering::SeqCst);
        }
    }

    /// Before `KVM_RUN`: false (and after waiting) when the vCPU must not enter now; the
    /// caller asks again.
    pub fn enter(&self, id: usize) -> bool {
        let Some(p) = self.peers.get(id) else {
            return true;
        };
        p.in_run.store(true, Ordering::SeqCst);
        if !self.stopping.load(Ordering::SeqCst) {
            return true;
        }
        p.in_run.store(false, Ordering::SeqCst);
        let mut g = lock(&self.resume_lock);
        while self.stopping.load(Ordering::SeqCst) {
            g = self
                .resumed
                .wait_timeout(g, Duration::from_millis(10))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        false
    }

    /// After `KVM_RUN` returned.
    pub fn leave(&self, id: usize) {
        if let Some(p) = self.peers.get(id) {
            p.in_run.store(false, Ordering::SeqCst);
        }
    }

    /// Runs `f` with every vCPU but the calling one outside `KVM_RUN`.
    pub fn with_others_stopped<R>(&self, f: impl FnOnce() -> R) -> R {
        let me = CURRENT.with(|c| c.get());
        if self.peers.len() <= 1 && me.is_some() {
            return f();
        }
        let _one = lock(&self.stopper);
        self.stopping.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let mut last_kick: Option<Instant> = None;
        loop {
            let busy: Vec<&Peer> = self
                .peers
                .iter()
                .enumerate()
                .filter(|(i, p)| Some(*i) != me && p.in_run.load(Ordering::SeqCst))
                .map(|(_, p)| p)
                .collect();
            if busy.is_empty() {
                break;
            }
            // Kick now, and again every millisecond: a signal that lands before the vCPU's
            // KVM_RUN is not lost (immediate_exit), but a vCPU that re-entered since needs
            // another.
            if last_kick.is_none_or(|t| t.elapsed() >= Duration::from_millis(1)) {
                for p in &busy {
                    kick(p);
                }
                last_kick = Some(Instant::now());
            }
            if started.elapsed() > Duration::from_secs(5) {
                log::error(format_args!(
                    "a vCPU did not leave KVM_RUN for a memory slot change in 5 s"
                ));
                break;
            }
            std::thread::yield_now();
        }
        let r = f();
        let _g = lock(&self.resume_lock);
        self.stopping.store(false, Ordering::SeqCst);
        self.resumed.notify_all();
        r
    }
}

fn kick(p: &Peer) {
    let run = p.run.load(Ordering::SeqCst) as *mut kvm_run;
    let thread = p.thread.load(Ordering::SeqCst);
    if run.is_null() || thread == 0 {
        return;
    }
    // SAFETY: `run` is the peer's kvm_run mapping, which lives until the process exits
    // (vcpu.rs never drops a VcpuFd); immediate_exit is a byte KVM reads on entry to KVM_RUN.
    unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    // SAFETY: the thread registered itself and never exits; the kick signal has a handler.
    unsafe { libc::pthread_kill(thread as libc::pthread_t, crate::vcpu::kick_signal()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_stopper_waits_for_a_vcpu_to_leave_and_it_waits_for_the_stopper() {
        let p = Arc::new(Pause::new(2));
        // vCPU 1 "inside KVM_RUN": the stopper waits for it to leave.
        assert!(p.enter(1));
        let p2 = p.clone();
        let leaver = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            p2.leave(1);
        });
        let t = Instant::now();
        let in_f = p.with_others_stopped(|| {
            // While stopped, an entering vCPU is held back.
            assert!(p.stopping.load(Ordering::SeqCst));
            t.elapsed()
        });
        assert!(in_f >= Duration::from_millis(40), "{in_f:?}");
        leaver.join().unwrap();
        assert!(p.enter(1), "not stopping any more");
        p.leave(1);
        // A vCPU that tries to enter during a stop waits for the end of it.
        let p3 = p.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let stopper = std::thread::spawn(move || {
            p3.with_others_stopped(|| {
                tx.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            })
        });
        rx.recv().unwrap();
        let t = Instant::now();
        assert!(!p.enter(1));
        assert!(t.elapsed() >= Duration::from_millis(20));
        stopper.join().unwrap();
    }
}
