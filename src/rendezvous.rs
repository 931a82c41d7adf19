//! A one-shot meeting point for a fixed number of threads: each `wait` returns once all of
//! them have arrived; `arrive` counts a thread in without waiting.
//!
//! The monitor waits at start until vCPU 0's thread has taken its vCPU, which arrives and
//! runs on (monitor/mod.rs, vcpu/threads.rs). This does what `std::sync::Barrier` would,
//! without its mutex: the std barrier's last thread wakes the others while it holds the
//! mutex, so a woken thread blocks on the mutex once more. On this host every such wake-up
//! is a cross-CPU wake (a context switch and an interrupt, tens of µs). Here the count is
//! one atomic, the last thread wakes the waiters with one futex call, and a waiter sleeps on
//! the count itself.

use std::sync::atomic::{AtomicU32, Ordering};

pub struct Rendezvous {
    arrived: AtomicU32,
    parties: u32,
}

impl Rendezvous {
    pub fn new(parties: u32) -> Rendezvous {
        Rendezvous {
            arrived: AtomicU32::new(0),
            parties,
        }
    }

    /// Counts the caller in without waiting for the others; wakes those waiting when the
    /// caller is the last. Returns whether everybody has arrived.
    pub fn arrive(&self) -> bool {
        let n = self
            .arrived
            .fetch_add(1, Ordering::AcqRel)
            .saturating_add(1);
        if n == self.parties {
            futex_wake_all(&self.arrived);
        }
        n >= self.parties
    }

    /// Counts the caller in and returns once `parties` threads have arrived (at once for
    /// the last of them). For one meeting only: calls after that return at once.
    pub fn wait(&self) {
        if self.arrive() {
            return;
        }
        loop {
            let seen = self.arrived.load(Ordering::Acquire);
            if seen >= self.parties {
                return;
            }
            // Sleeps only while the count is still `seen`; a wake or a change ends it, and
            // a spurious return is checked again above.
            futex_wait(&self.arrived, seen);
        }
    }
}

fn futex_wait(word: &AtomicU32, expected: u32) {
    // SAFETY: FUTEX_WAIT on a live, aligned 32-bit atomic, with no timeout; it only reads
    // the word and sleeps.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a live, aligned 32-bit atomic; it only wakes sleepers on it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn nobody_leaves_before_everybody_arrived() {
        for parties in [1u32, 2, 5] {
            let r = Arc::new(Rendezvous::new(parties));
            let arrived = Arc::new(AtomicU32::new(0));
            let early = Arc::new(AtomicBool::new(false));
            let threads: Vec<_> = (0..parties)
                .map(|i| {
                    let (r, arrived, early) = (r.clone(), arrived.clone(), early.clone());
                    std::thread::spawn(move || {
                        // The last ones come late, so that the first ones really sleep.
                        std::thread::sleep(Duration::from_millis(u64::from(i) * 20));
                        arrived.fetch_add(1, Ordering::SeqCst);
                        r.wait();
                        if arrived.load(Ordering::SeqCst) != parties {
                            early.store(true, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert!(!early.load(Ordering::SeqCst), "{parties} parties");
            // Once met, it stays open.
            r.wait();
        }
    }

    /// How long a thread that waits first is kept, when the second party comes 100 ms later
    /// and calls `last`.
    fn first_waits_for(last: impl FnOnce(&Rendezvous)) -> Duration {
        let r = Arc::new(Rendezvous::new(2));
        let r2 = r.clone();
        let t = std::thread::spawn(move || {
            let at = std::time::Instant::now();
            r2.wait();
            at.elapsed()
        });
        std::thread::sleep(Duration::from_millis(100));
        last(&r);
        t.join().unwrap()
    }

    #[test]
    fn a_waiter_sleeps_until_the_last_arrives() {
        let waited = first_waits_for(|r| r.wait());
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
    }

    #[test]
    fn arriving_does_not_wait_but_lets_the_waiter_go() {
        let waited = first_waits_for(|r| assert!(r.arrive(), "the second of two completes it"));
        assert!(waited >= Duration::from_millis(90), "{waited:?}");
        // The first of two to arrive does not complete it, and returns at once.
        let lone = Rendezvous::new(2);
        assert!(!lone.arrive());
        assert!(lone.arrive());
    }
}
