//! The gate in front of guest RAM that KVM does not know yet.
//!
//! On this host KVM uses shadow paging, and registering a memory slot allocates and zeroes
//! arrays of about 10 bytes per 4 KiB guest page: 64 GiB cost ~38 ms before the guest's
//! first instruction. For the boots where the VMM writes no memory map into guest memory
//! (the embedded demo, a user's firmware, a boot sector: `BootPlan::defers_ram`) and at
//! least 4 GiB of RAM above 16 MiB (`memory::DEFER_MIN_RAM`), only the RAM below 16 MiB is
//! registered before the guest starts; the rest (`deferred`) is registered by one
//! background thread while the guest runs (`vm/slots.rs`, `DeferredRam`). The guest never
//! sees a hole: whatever could reach the missing RAM waits on this gate until it is all
//! there:
//! - an MMIO exit inside deferred RAM (a data access): `vcpu.rs` waits, then performs the
//!   access on the host's mapping of guest memory;
//! - a KVM internal error (an instruction fetched from RAM KVM does not know) in a run that
//!   started before the gate opened: `vcpu.rs` waits, then runs the vCPU again;
//! - a question about the memory size: the CMOS memory-size registers, fw_cfg's RAM size
//!   and `etc/e820` (`bus.rs`, `BusDevice::asks_for_memory_map`), the BIOS's INT 15h memory
//!   services (`bios/system.rs`).
//!
//! What the gate cannot cover: KVM walks the guest's page tables itself, without an exit
//! to user space. A guest that points its page tables into RAM above 16 MiB within its
//! first milliseconds, before asking for the memory map, may see a page fault there. Tables
//! the guest wrote itself are not affected (its first write there waited for all RAM);
//! tables that INT 13h or fw_cfg DMA put there (written through the VMM's mapping, which
//! needs no slot and does not wait) are.
//!
//! The background thread is the gate's one owner: it opens the gate (`open`) or reports
//! the region it could not register (`fail`); everyone else only waits. Waiting when the
//! gate is open costs one atomic load. The thread starts registering when the first wait
//! comes, or after a while without one (`wanted_within`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// `status` values.
const PENDING: u8 = 0;
const OPEN: u8 = 1;
const FAILED: u8 = 2;

/// Why the deferred RAM could not be registered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RamFailure {
    /// KVM refused the slot of guest-physical `start..end` with this errno.
    #[error("cannot register guest RAM {start:#x}-{end:#x} with KVM: {}", std::io::Error::from_raw_os_error(*errno))]
    Register { start: u64, end: u64, errno: i32 },
    /// The registering thread could not start or sandbox itself.
    #[error("cannot register guest RAM above 16 MiB: {0}")]
    Thread(String),
}

#[derive(Debug)]
enum State {
    Pending,
    Open(Instant),
    Failed(RamFailure),
}

/// Whether every deferred RAM slot is registered; waiting until it is.
pub struct RamGate {
    /// The guest-physical ranges registered late, `[start, end)`, sorted.
    deferred: Vec<(u64, u64)>,
    /// The fast path: `OPEN` once `state` is `Open`, `FAILED` once it is `Failed`.
    status: AtomicU8,
    state: Mutex<State>,
    changed: Condvar,
    /// Waits that found the gate closed (`--stats` `ram_waits`).
    waits: AtomicU64,
    /// A wait found the gate closed: the registering thread starts at once
    /// (`wanted_within`).
    wanted: AtomicBool,
}

impl fmt::Debug for RamGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RamGate")
            .field("deferred", &self.deferred)
            .field("status", &self.status.load(Ordering::Acquire))
            .finish()
    }
}

impl RamGate {
    /// A gate in front of `deferred` (guest-physical `[start, end)` ranges); open from the
    /// start when there are none.
    pub fn new(mut deferred: Vec<(u64, u64)>) -> RamGate {
        deferred.retain(|(s, e)| s < e);
        deferred.sort_unstable();
        let open = deferred.is_empty();
        RamGate {
            deferred,
            status: AtomicU8::new(if open { OPEN } else { PENDING }),
            state: Mutex::new(if open {
                State::Open(Instant::now())
            } else {
                State::Pending
            }),
            changed: Condvar::new(),
            waits: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
        }
    }

    /// Whether any RAM is registered late.
    pub fn defers(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Whether `addr` lies in RAM registered late (registered by now or not).
    pub fn is_deferred(&self, addr: u64) -> bool {
        self.deferred.iter().any(|(s, e)| (*s..*e).contains(&addr))
    }

    /// Every deferred slot is registered.
    pub fn is_open(&self) -> bool {
        self.status.load(Ordering::Acquire) == OPEN
    }

    /// Blocks until every deferred slot is registered, or registration failed (then the VM
    /// is ending: the monitor was told). Counts the waits that found the gate closed.
    pub fn wait(&self) -> Result<(), RamFailure> {
        match self.status.load(Ordering::Acquire) {
            OPEN => return Ok(()),
            FAILED => return Err(self.failure().unwrap_or(RamFailure::Thread(String::new()))),
            _ => {}
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        let mut s = crate::bus::lock(&self.state);
        if !self.wanted.swap(true, Ordering::AcqRel) {
            self.changed.notify_all();
        }
        loop {
            match &*s {
                State::Pending => {
                    s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
                }
                State::Open(_) => return Ok(()),
                State::Failed(f) => return Err(f.clone()),
            }
        }
    }

    /// Blocks until a vCPU waits for the RAM (true) or `idle` has passed (false), whichever
    /// comes first: the registering thread's start.
    pub fn wanted_within(&self, idle: Duration) -> bool {
        let until = Instant::now() + idle;
        let mut s = crate::bus::lock(&self.state);
        while !self.wanted.load(Ordering::Acquire) {
            let Some(left) = until
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())
            else {
                return false;
            };
            s = self
                .changed
                .wait_timeout(s, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }

    /// Every deferred slot is registered: wakes the waiters. Allocates nothing (the
    /// registering thread's seccomp filter has no memory syscalls).
    pub fn open(&self) {
        let mut s = crate::bus::lock(&self.state);
        if matches!(*s, State::Pending) {
            *s = State::Open(Instant::now());
            self.status.store(OPEN, Ordering::Release);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Registration failed: wakes the waiters, who get `failure`.
    pub fn fail(&self, failure: RamFailure) {
        let mut s = crate::bus::lock(&self.state);
        if matches!(*s, State::Pending) {
            *s = State::Failed(failure);
            self.status.store(FAILED, Ordering::Release);
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Why registration failed, if it did.
    pub fn failure(&self) -> Option<RamFailure> {
        if self.status.load(Ordering::Acquire) != FAILED {
            return None;
        }
        match &*crate::bus::lock(&self.state) {
            State::Failed(f) => Some(f.clone()),
            _ => None,
        }
    }

    /// When the deferred RAM was all registered; None when nothing was deferred or it is
    /// not (yet) registered.
    pub fn opened_at(&self) -> Option<Instant> {
        if !self.defers() || !self.is_open() {
            return None;
        }
        match &*crate::bus::lock(&self.state) {
            State::Open(t) => Some(*t),
            _ => None,
        }
    }

    /// How many waits found the gate closed.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const HIGH: (u64, u64) = (1 << 32, 1 << 36);
    const LOW: (u64, u64) = (16 << 20, 3 << 30);

    #[test]
    fn a_gate_with_nothing_deferred_is_open_and_has_no_time() {
        let g = RamGate::new(vec![]);
        assert!(g.is_open() && !g.defers());
        assert_eq!(g.wait(), Ok(()));
        assert_eq!(g.waits(), 0);
        assert_eq!(g.opened_at(), None);
        assert!(!g.is_deferred(0) && !g.is_deferred(1 << 32));
        // Empty ranges defer nothing.
        assert!(!RamGate::new(vec![(5, 5)]).defers());
    }

    #[test]
    fn deferred_ranges_are_half_open() {
        let g = RamGate::new(vec![HIGH, LOW]);
        assert!(g.defers() && !g.is_open());
        assert!(!g.is_deferred(LOW.0 - 1));
        assert!(g.is_deferred(LOW.0) && g.is_deferred(LOW.1 - 1));
        assert!(!g.is_deferred(LOW.1) && !g.is_deferred(HIGH.0 - 1));
        assert!(g.is_deferred(HIGH.0) && g.is_deferred(HIGH.1 - 1));
        assert!(!g.is_deferred(HIGH.1) && !g.is_deferred(u64::MAX));
    }

    #[test]
    fn waiters_block_until_the_gate_opens() {
        let g = Arc::new(RamGate::new(vec![HIGH]));
        let start = Instant::now();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (g.wait(), Instant::now()))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let opened = Instant::now();
        g.open();
        for w in waiters {
            let (r, woke) = w.join().unwrap();
            assert_eq!(r, Ok(()));
            assert!(woke >= opened, "a waiter returned before the gate opened");
        }
        assert!(g.is_open());
        assert_eq!(g.waits(), 3);
        let t = g.opened_at().unwrap();
        assert!(t >= start && t <= Instant::now());
        // Once open: no wait, not counted.
        assert_eq!(g.wait(), Ok(()));
        assert_eq!(g.waits(), 3);
    }

    #[test]
    fn a_failure_wakes_every_waiter_with_the_region() {
        let g = Arc::new(RamGate::new(vec![LOW, HIGH]));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || g.wait())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        let f = RamFailure::Register {
            start: HIGH.0,
            end: HIGH.1,
            errno: libc::EINVAL,
        };
        g.fail(f.clone());
        for w in waiters {
            assert_eq!(w.join().unwrap(), Err(f.clone()));
        }
        // Later waiters do not block either; the gate stays closed, with no time.
        assert_eq!(g.wait(), Err(f.clone()));
        assert!(!g.is_open());
        assert_eq!(g.opened_at(), None);
        assert_eq!(g.failure(), Some(f.clone()));
        // The message names the region, on one line.
        let msg = f.to_string();
        assert!(msg.contains("0x100000000-0x1000000000"), "{msg}");
        assert!(!msg.contains('\n'));
        // Opening after a failure changes nothing.
        g.open();
        assert!(!g.is_open());
    }

    #[test]
    fn the_first_wait_starts_the_registration_early() {
        let g = Arc::new(RamGate::new(vec![HIGH]));
        // Nobody waits: the idle time passes.
        let t = Instant::now();
        assert!(!g.wanted_within(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        // A vCPU waits: the registering thread starts long before its idle time is over.
        let waiter = {
            let g = g.clone();
            std::thread::spawn(move || g.wait())
        };
        let t = Instant::now();
        assert!(g.wanted_within(Duration::from_secs(20)));
        assert!(t.elapsed() < Duration::from_secs(10));
        g.open();
        assert_eq!(waiter.join().unwrap(), Ok(()));
        // Later calls do not wait.
        assert!(g.wanted_within(Duration::from_secs(20)));
    }

    #[test]
    fn opening_twice_keeps_the_first_time() {
        let g = RamGate::new(vec![HIGH]);
        assert_eq!(g.failure(), None);
        g.open();
        let t = g.opened_at().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        g.open();
        assert_eq!(g.opened_at(), Some(t));
        g.fail(RamFailure::Thread("late".into()));
        assert!(g.is_open() && g.failure().is_none());
    }
}
