//! Port writes that KVM keeps in a ring instead of leaving `KVM_RUN` for each one
//! (`KVM_REGISTER_COALESCED_MMIO` on the port bus, `KVM_CAP_COALESCED_PIO`).
//!
//! A guest printing on COM1 by polling (firmware, boot loaders, Linux's early console, test
//! ROMs) costs two exits to user space per byte: the LSR read and the THR write. Each costs
//! about 20 µs here, where KVM handles a port write it can buffer in about 5 µs. So the THR
//! write goes to KVM's ring, and the bytes come out in order at the next exit of any vCPU (the
//! LSR read that follows), before that exit is handled: a guest sees every register as if
//! each write had reached the UART at once. The monitor also empties the ring on every wake,
//! and wakes for it while the guest uses it (monitor/output.rs, `RingSchedule`), so a guest
//! that prints and then runs or idles without exits is shown promptly; a ring that fills up
//! makes the next write exit as usual.
//!
//! A buffered write must not change anything the guest could see before its next exit. That
//! holds while the UART raises no interrupt for it: so the zone is given up for good
//! (`stop`) when the guest enables the THR-empty interrupt or loopback (a byte then becomes
//! an interrupt or received data), and every later write exits as it did without the ring.
//!
//! Unregistering waits for an SRCU grace period of the VM, and within about 20 ms of an
//! I/O-bus registration (the irqchip's, the zone's own) that takes 3-7 ms here; later, tens of
//! microseconds. So a `stop` that early only asks: the monitor unregisters once the last
//! registration is `QUIET_BUS` old (`finish_stop`), and until then empties the ring every
//! `STOPPING_POLL`, so that a buffered byte's interrupt comes that late at most; a guest that
//! keeps sending by interrupts meanwhile gets the zone unregistered at once, by the monitor.
//! The vCPU never waits long.
//!
//! A guest that has printed and then idles would keep the monitor waking to look at the
//! ring. So once the guest has written nothing for a while the monitor parks the zone
//! (`park`): the next write exits, shows at once, and registers the zone again from that
//! vCPU (`unpark_after`).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_coalesced_mmio;
use kvm_ioctls::{Cap, IoEventAddress, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, Bus};
use crate::log;

/// How long after the zone's last registration unregistering it is cheap (see the module
/// doc).
pub const QUIET_BUS: Duration = Duration::from_millis(30);
/// While a stop waits for `QUIET_BUS`, the monitor empties the ring at least this often.
pub const STOPPING_POLL: Duration = Duration::from_micros(200);
/// A guest that sends this many bytes through the ring while a stop waits sends by
/// interrupts at `STOPPING_POLL` a byte: the monitor unregisters at once, slow or not.
const STOPPING_WRITES: u64 = 16;

/// The ring as KVM lays it out in its page: `first` (the reader's next entry), `last` (the
/// writer's next entry), then the entries.
const RING_HEADER: usize = 8;
const ENTRY: usize = std::mem::size_of::<kvm_coalesced_mmio>();

/// A reader of KVM's ring page. The kernel appends at `last`; the reader takes entries from
/// `first` and hands each slot back by advancing `first`.
struct Ring {
    page: *mut u8,
    /// Entries the page holds.
    entries: u32,
}

// SAFETY: the page is shared with the kernel and read only through atomics and volatile
// reads; `CoalescedIo` serialises the readers.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

/// One buffered write: the port, and its bytes.
#[derive(Debug, PartialEq, Eq)]
struct Write {
    port: u64,
    len: usize,
    data: [u8; 8],
}

impl Ring {
    /// A ring over `page` of `page_size` bytes.
    ///
    /// # Safety
    /// `page` is valid for reads and writes of `page_size` bytes, 8-byte aligned, for the
    /// life of the ring.
    unsafe fn new(page: *mut u8, page_size: usize) -> Ring {
        Ring {
            page,
            entries: (page_size.saturating_sub(RING_HEADER) / ENTRY) as u32,
        }
    }

    fn index(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offsets 0 and 4 lie in the page's header, 4-byte aligned (`new`).
        unsafe { &*self.page.add(offset).cast::<AtomicU32>() }
    }

    /// Entry `i` of the ring, for `i` < `entries`.
    fn entry(&self, i: u32) -> *mut kvm_coalesced_mmio {
        debug_assert!(i < self.entries);
        // SAFETY: entry `i` < `entries` lies inside the page (`new`).
        unsafe {
            self.page
                .add(RING_HEADER + i as usize * ENTRY)
                .cast::<kvm_coalesced_mmio>()
        }
    }

    fn is_empty(&self) -> bool {
        self.index(0).load(Ordering::Relaxed) == self.index(4).load(Ordering::Acquire)
    }

    /// How many writes the ring holds now; 0 when an index lies outside the ring (KVM never
    /// writes one there).
    fn len(&self) -> u32 {
        let first = self.index(0).load(Ordering::Relaxed);
        let last = self.index(4).load(Ordering::Acquire);
        if first >= self.entries || last >= self.entries {
            return 0;
        }
        (last + self.entries - first) % self.entries
    }

    /// Takes out the writes the ring holds when it is called, oldest first, and hands each
    /// to `f`; returns how many. Writes that come in meanwhile stay for the next call: a
    /// guest that refills the ring as fast as `f` empties it (each write raising the
    /// interrupt whose handler sends the next) cannot keep the caller here.
    fn take_present(&self, mut f: impl FnMut(Write)) -> u32 {
        let n = self.len();
        for taken in 0..n {
            match self.pop() {
                Some(w) => f(w),
                None => return taken,
            }
        }
        n
    }

    /// The oldest write, taken out of the ring; None when it is empty. Indexes outside the
    /// ring (which KVM never writes) read as empty.
    fn pop(&self) -> Option<Write> {
        let first = self.index(0).load(Ordering::Relaxed);
        // Acquire: the entry the kernel wrote before it advanced `last` is visible.
        let last = self.index(4).load(Ordering::Acquire);
        if first == last || first >= self.entries || last >= self.entries {
            return None;
        }
        // SAFETY: `first` < `entries`, so the entry lies inside the page; read volatile, the
        // kernel owns the memory around it.
        let e: kvm_coalesced_mmio = unsafe { std::ptr::read_volatile(self.entry(first)) };
        // Release: the entry is read before the kernel may reuse its slot.
        self.index(0)
            .store((first + 1) % self.entries, Ordering::Release);
        Some(Write {
            port: e.phys_addr,
            len: (e.len as usize).min(e.data.len()),
            data: e.data,
        })
    }
}

/// The VM's coalesced port zone and the reader of its ring.
pub struct CoalescedIo {
    vm: Arc<VmFd>,
    ring: Ring,
    port: u16,
    len: u32,
    /// One reader at a time, so that writes come out in the order the guest made them.
    reader: Mutex<()>,
    /// `LIVE`, `PARKED`, `STOPPING` or `STOPPED`; changed only under `zone`, with the ioctl
    /// that makes it so.
    state: AtomicU8,
    /// When the zone was last registered.
    zone: Mutex<Instant>,
    /// `carried` when the stop was asked for.
    carried_at_stop: AtomicU64,
    /// The monitor's wake-up, for a stop request.
    wake: OnceLock<Arc<EventFd>>,
    /// How many writes came through the ring.
    carried: AtomicU64,
    /// How many times the zone was registered again after a park.
    unparks: AtomicU64,
}

/// The zone is registered: writes to it may wait in the ring.
const LIVE: u8 = 0;
/// Unregistered while the guest is quiet; the next write to it registers it again.
const PARKED: u8 = 1;
/// Registered, to be unregistered for good by the monitor (`finish_stop`).
const STOPPING: u8 = 2;
/// Unregistered for good.
const STOPPED: u8 = 3;

impl CoalescedIo {
    /// Registers `len` ports from `port` as a coalesced zone and maps the ring through
    /// `vcpu`. None when KVM lacks coalesced port I/O or a step fails: every write then exits
    /// as it would without the ring.
    pub fn new(vm: Arc<VmFd>, vcpu: &VcpuFd, port: u16, len: u32) -> Option<Arc<CoalescedIo>> {
        if !vm.check_extension(Cap::CoalescedPio) {
            return None;
        }
        // KVM_CAP_COALESCED_MMIO answers with the ring's page offset in the vCPU mapping.
        let page_offset = vm.check_extension_int(Cap::CoalescedMmio);
        if page_offset <= 0 {
            return None;
        }
        // SAFETY: sysconf has no preconditions.
        let page_size = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        // SAFETY: a new shared mapping of the vCPU fd's ring page; nothing else in the process
        // is affected.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(vcpu),
                page_offset as libc::off_t * page_size as libc::off_t,
            )
        };
        if page == libc::MAP_FAILED {
            log::debug(format_args!(
                "coalesced I/O: cannot map the ring: {}",
                std::io::Error::last_os_error()
            ));
            return None;
        }
        // SAFETY: the mapping is page_size bytes, page-aligned, and never unmapped (the
        // process exits with it).
        let ring = unsafe { Ring::new(page.cast(), page_size) };
        if let Err(e) = vm.register_coalesced_mmio(IoEventAddress::Pio(port.into()), len) {
            log::debug(format_args!("coalesced I/O: cannot register the zone: {e}"));
            // SAFETY: unmapping the page mapped above, which nothing refers to.
            unsafe { libc::munmap(page, page_size) };
            return None;
        }
        Some(Arc::new(CoalescedIo {
            vm,
            ring,
            port,
            len,
            reader: Mutex::new(()),
            state: AtomicU8::new(LIVE),
            zone: Mutex::new(Instant::now()),
            carried_at_stop: AtomicU64::new(0),
            wake: OnceLock::new(),
            carried: AtomicU64::new(0),
            unparks: AtomicU64::new(0),
        }))
    }

    /// Replays the writes buffered when it is called on `pio`, oldest first; returns how
    /// many. An empty ring costs two loads.
    pub fn drain(&self, pio: &Bus) -> usize {
        if self.ring.is_empty() {
            return 0;
        }
        let _reader = lock(&self.reader);
        let n = self.ring.take_present(|w| {
            // The zone's ports belong to devices that end nothing on a write (the UART).
            let _ = pio.write(w.port, &w.data[..w.len]);
        });
        self.carried.fetch_add(n.into(), Ordering::Relaxed);
        n as usize
    }

    /// The monitor's wake-up, written when a stop is asked for.
    pub fn set_wake(&self, wake: Arc<EventFd>) {
        let _ = self.wake.set(wake);
    }

    /// Gives the zone up for good: every later write to it exits. Called by the device while
    /// the guest's register write that made buffering wrong is being handled, so it never
    /// waits for a busy bus: within `QUIET_BUS` of the zone's registration it only asks, and
    /// the monitor unregisters it later (`finish_stop`). What is in the ring still comes out
    /// at the next drain.
    pub fn stop(&self) {
        let zone = lock(&self.zone);
        match self.state.load(Ordering::Relaxed) {
            LIVE if zone.elapsed() >= QUIET_BUS => {
                self.unregister();
                self.state.store(STOPPED, Ordering::Release);
            }
            LIVE => {
                self.carried_at_stop
                    .store(self.carried(), Ordering::Relaxed);
                self.state.store(STOPPING, Ordering::Release);
                if let Some(w) = self.wake.get() {
                    let _ = w.write(1);
                }
            }
            PARKED => self.state.store(STOPPED, Ordering::Release),
            _ => {}
        }
    }

    /// A stop was asked for and the zone is still registered: the monitor calls
    /// `finish_stop`, and empties the ring every `STOPPING_POLL` meanwhile.
    pub fn stop_pending(&self) -> bool {
        self.state.load(Ordering::Acquire) == STOPPING
    }

    /// Unregisters a zone whose stop is pending once that is cheap (`QUIET_BUS` after its
    /// last registration), or at once when the guest keeps sending through the ring
    /// (`STOPPING_WRITES`); true when it is unregistered. What is in the ring still comes out
    /// at the next drain.
    pub fn finish_stop(&self, now: Instant) -> bool {
        let zone = lock(&self.zone);
        let since_stop = self
            .carried()
            .saturating_sub(self.carried_at_stop.load(Ordering::Relaxed));
        let busy = since_stop >= STOPPING_WRITES;
        match self.state.load(Ordering::Relaxed) {
            STOPPING if busy || now.saturating_duration_since(*zone) >= QUIET_BUS => {
                self.unregister();
                self.state.store(STOPPED, Ordering::Release);
                true
            }
            STOPPING => false,
            _ => true,
        }
    }

    /// The guest has been quiet: its next write to the zone exits (and shows at once)
    /// instead of waiting for the monitor. What is in the ring still comes out at the next
    /// drain. Not within `QUIET_BUS` of a registration, where unregistering is slow.
    pub fn park(&self, now: Instant) {
        let zone = lock(&self.zone);
        if self.state.load(Ordering::Relaxed) == LIVE
            && now.saturating_duration_since(*zone) >= QUIET_BUS
        {
            self.unregister();
            self.state.store(PARKED, Ordering::Release);
        }
    }

    /// The guest was reset (`--reboot`), and its UART with it: writes may wait in the ring
    /// again, whatever the boot before did.
    pub fn restart(&self) {
        let mut zone = lock(&self.zone);
        match self.state.load(Ordering::Relaxed) {
            LIVE => {}
            STOPPING => self.state.store(LIVE, Ordering::Release),
            _ => {
                if self.register() {
                    *zone = Instant::now();
                    self.state.store(LIVE, Ordering::Release);
                }
            }
        }
    }

    /// After a port write that exited: if it was to the parked zone, the guest writes again,
    /// so the zone is registered again. Otherwise (the usual case) one load.
    pub fn unpark_after(&self, port: u16) {
        if self.state.load(Ordering::Acquire) != PARKED
            || !(self.port..self.port.saturating_add(self.len as u16)).contains(&port)
        {
            return;
        }
        let mut zone = lock(&self.zone);
        if self.state.load(Ordering::Relaxed) != PARKED {
            return;
        }
        if self.register() {
            *zone = Instant::now();
            self.unparks.fetch_add(1, Ordering::Relaxed);
            self.state.store(LIVE, Ordering::Release);
        } else {
            self.state.store(STOPPED, Ordering::Release);
        }
    }

    fn register(&self) -> bool {
        let at = IoEventAddress::Pio(self.port.into());
        match self.vm.register_coalesced_mmio(at, self.len) {
            Ok(()) => true,
            Err(e) => {
                log::debug(format_args!(
                    "coalesced I/O: cannot register the zone again: {e}"
                ));
                false
            }
        }
    }

    fn unregister(&self) {
        let at = IoEventAddress::Pio(self.port.into());
        if let Err(e) = self.vm.unregister_coalesced_mmio(at, self.len) {
            log::error(format_args!(
                "coalesced I/O: cannot unregister ports {:#x}+{}: {e}",
                self.port, self.len
            ));
        }
    }

    /// Writes may be waiting in the ring, or come to it, that a drain would show: the zone
    /// is registered and the guest has used it, or something is left from before it was
    /// unregistered.
    pub fn may_hold_output(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            LIVE => self.carried() > 0 || !self.ring.is_empty(),
            STOPPING => true,
            _ => !self.ring.is_empty(),
        }
    }

    /// How many writes came through the ring so far (`--stats`).
    pub fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }

    /// A count that changes whenever the guest used the ring or woke the parked zone.
    pub fn activity(&self) -> u64 {
        self.carried()
            .wrapping_add(self.unparks.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring page in ordinary memory, filled as KVM fills it.
    struct FakePage(Vec<u64>);

    impl FakePage {
        fn new(bytes: usize) -> FakePage {
            FakePage(vec![0; bytes / 8])
        }
        fn ring(&mut self) -> Ring {
            // SAFETY: the vector outlives the ring in every test, and is 8-byte aligned.
            unsafe { Ring::new(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
        }
        fn push(&mut self, port: u64, byte: u8) {
            let ring = self.ring();
            let last = ring.index(4).load(Ordering::Relaxed);
            let e = kvm_coalesced_mmio {
                phys_addr: port,
                len: 1,
                data: [byte, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            };
            // SAFETY: `last` < entries, inside the page.
            unsafe { std::ptr::write(ring.entry(last), e) };
            ring.index(4)
                .store((last + 1) % ring.entries, Ordering::Release);
        }
    }

    #[test]
    fn writes_come_out_in_order_across_the_wrap() {
        let mut page = FakePage::new(4096);
        assert_eq!(
            page.ring().entries,
            170,
            "KVM's ring holds 170 entries in 4 KiB"
        );
        let ring = page.ring();
        assert!(ring.is_empty());
        assert_eq!(ring.pop(), None);
        let mut out = Vec::new();
        // Several times round the ring, a few entries at a time.
        for round in 0..100u32 {
            for i in 0..7u32 {
                page.push(0x3F8, (round * 7 + i) as u8);
            }
            while let Some(w) = page.ring().pop() {
                assert_eq!((w.port, w.len), (0x3F8, 1));
                out.push(w.data[0]);
            }
        }
        let want: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn a_drain_takes_only_the_writes_present_when_it_began() {
        let mut page = FakePage::new(4096);
        for b in 0..3 {
            page.push(0x3F8, b);
        }
        let ring = page.ring();
        assert_eq!(ring.len(), 3);
        // Each write handed out brings the next, as a guest's THR-empty interrupt handler
        // does (for a while: a drain that kept taking them would end, and fail below).
        let mut seen = Vec::new();
        let taken = ring.take_present(|w| {
            seen.push(w.data[0]);
            if seen.len() < 50 {
                page.push(0x3F8, w.data[0].wrapping_add(100));
            }
        });
        assert_eq!((taken, seen), (3, vec![0, 1, 2]));
        assert_eq!(
            ring.len(),
            3,
            "the writes that came in wait for the next drain"
        );
        let mut next = Vec::new();
        assert_eq!(ring.take_present(|w| next.push(w.data[0])), 3);
        assert_eq!(next, vec![100, 101, 102]);
        assert!(ring.is_empty());
    }

    #[test]
    fn a_full_ring_across_the_wrap_is_counted_whole() {
        let mut page = FakePage::new(4096);
        // Start near the end, so the writes wrap.
        let ring = page.ring();
        ring.index(0).store(160, Ordering::Relaxed);
        ring.index(4).store(160, Ordering::Relaxed);
        // KVM keeps one slot free: a full ring holds entries - 1 writes.
        for b in 0..169 {
            page.push(0x3F8, b as u8);
        }
        assert_eq!(ring.len(), 169);
        let mut out = Vec::new();
        assert_eq!(ring.take_present(|w| out.push(w.data[0])), 169);
        assert_eq!(out, (0..169).map(|b| b as u8).collect::<Vec<_>>());
    }

    #[test]
    fn indexes_outside_the_ring_read_as_empty() {
        let mut page = FakePage::new(4096);
        let ring = page.ring();
        ring.index(0).store(170, Ordering::Relaxed);
        ring.index(4).store(3, Ordering::Relaxed);
        assert_eq!(ring.pop(), None);
        assert_eq!(ring.len(), 0);
        ring.index(0).store(1, Ordering::Relaxed);
        ring.index(4).store(u32::MAX, Ordering::Relaxed);
        assert_eq!(ring.pop(), None);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn a_length_beyond_the_data_is_cut_to_it() {
        let mut page = FakePage::new(4096);
        page.push(0x3F8, 1);
        let ring = page.ring();
        // SAFETY: entry 0's `len` field, inside the page.
        unsafe { *ring.page.add(RING_HEADER + 8).cast::<u32>() = 4096 };
        assert_eq!(ring.pop().map(|w| w.len), Some(8));
    }

    /// The writes a bus device saw: offset and bytes.
    type Writes = Vec<(u64, Vec<u8>)>;

    /// Records every write the bus hands it.
    struct Recorder(Arc<Mutex<Writes>>);

    impl crate::bus::BusDevice for Recorder {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<crate::exit::ExitReason> {
            lock(&self.0).push((offset, data.to_vec()));
            None
        }
    }

    /// A VM with 64 KiB of RAM, `code` at 0x1000 and its one vCPU about to run it in real
    /// mode. It has no irqchip, so the guest's HLT comes back to user space.
    fn real_mode_vm(code: &[u8]) -> (Arc<VmFd>, VcpuFd) {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        // SAFETY: a fresh anonymous mapping, leaked with the VM (KVM needs it page-aligned).
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                64 << 10,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(host, libc::MAP_FAILED);
        // SAFETY: the 64 KiB mapping outlives the VM (never unmapped); the code fits in it.
        unsafe {
            vm.set_user_memory_region(kvm_bindings::kvm_userspace_memory_region {
                slot: 0,
                flags: 0,
                guest_phys_addr: 0,
                memory_size: 64 << 10,
                userspace_addr: host as u64,
            })
            .unwrap();
            std::ptr::copy_nonoverlapping(code.as_ptr(), host.cast::<u8>().add(0x1000), code.len());
        }
        let vcpu = vm.create_vcpu(0).unwrap();
        let mut sregs = vcpu.get_sregs().unwrap();
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.set_sregs(&sregs).unwrap();
        let mut regs = vcpu.get_regs().unwrap();
        regs.rip = 0x1000;
        regs.rflags = 2;
        vcpu.set_regs(&regs).unwrap();
        (vm, vcpu)
    }

    /// What the test does with the zone before the guest runs.
    #[derive(PartialEq)]
    enum Zone {
        None,
        Live,
        Parked,
        Stopped,
    }

    /// Runs `code` with COM1's data port as `zone`: the writes the bus saw.
    fn run_guest(code: &[u8], zone: Zone) -> Option<(Option<Arc<CoalescedIo>>, Bus, Writes)> {
        if !crate::testing::precondition(std::path::Path::new("/dev/kvm").exists(), "no /dev/kvm") {
            return None;
        }
        let (vm, mut vcpu) = real_mode_vm(code);
        let coalesced = if zone != Zone::None {
            let c = CoalescedIo::new(vm.clone(), &vcpu, 0x3F8, 1);
            if !crate::testing::precondition(c.is_some(), "KVM without KVM_CAP_COALESCED_PIO") {
                return None;
            }
            match zone {
                Zone::Parked => c.as_ref()?.park(Instant::now() + QUIET_BUS),
                Zone::Stopped => {
                    let c = c.as_ref()?;
                    c.stop();
                    assert!(c.finish_stop(Instant::now() + QUIET_BUS));
                }
                _ => {}
            }
            c
        } else {
            None
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut pio = Bus::new("test");
        pio.insert(0x3F8, 8, Arc::new(Mutex::new(Recorder(seen.clone()))))
            .unwrap();
        loop {
            match vcpu.run().unwrap() {
                kvm_ioctls::VcpuExit::IoOut(port, data) => {
                    let data = data.to_vec();
                    if let Some(c) = &coalesced {
                        c.drain(&pio);
                    }
                    pio.write(port.into(), &data);
                    if let Some(c) = &coalesced {
                        c.unpark_after(port);
                    }
                }
                kvm_ioctls::VcpuExit::Hlt => break,
                e => panic!("unexpected exit {e:?}"),
            }
        }
        let before = lock(&seen).clone();
        Some((coalesced, pio, before))
    }

    /// mov dx, 0x3F8; mov al, 'a'; out dx, al; mov al, 'b'; out dx, al; inc dx; mov al, 1;
    /// out dx, al (IER, not in the zone); dec dx; mov al, 'c'; out dx, al; hlt
    const GUEST: &[u8] = &[
        0xBA, 0xF8, 0x03, 0xB0, b'a', 0xEE, 0xB0, b'b', 0xEE, 0x42, 0xB0, 0x01, 0xEE, 0x4A, 0xB0,
        b'c', 0xEE, 0xF4,
    ];

    #[test]
    fn a_vm_buffers_the_zone_s_writes_until_the_next_exit() {
        let Some((Some(c), pio, seen)) = run_guest(GUEST, Zone::Live) else {
            return;
        };
        assert!(c.ring.entries >= 170);
        // The IER write exited; 'a' and 'b' were drained before it was handled, 'c' waits
        // in the ring (the HLT exit is not drained by this loop).
        let want: Writes = vec![(0, b"a".to_vec()), (0, b"b".to_vec()), (1, vec![1])];
        assert_eq!(seen, want);
        assert!(c.may_hold_output());
        assert_eq!(c.drain(&pio), 1);
        assert_eq!(c.drain(&pio), 0);
        assert!(c.may_hold_output(), "the zone is live and was used");
        // A stop only asks; the zone goes once the bus has been quiet for QUIET_BUS.
        let registered = *lock(&c.zone);
        c.stop();
        if registered.elapsed() < QUIET_BUS / 2 {
            assert!(c.stop_pending());
            assert!(c.may_hold_output());
            c.park(registered + QUIET_BUS);
            assert!(c.stop_pending(), "a stopping zone is not parked");
            assert!(!c.finish_stop(Instant::now()), "unregistered on a busy bus");
        }
        assert!(c.finish_stop(Instant::now() + QUIET_BUS));
        assert!(!c.stop_pending());
        c.stop();
        assert!(!c.may_hold_output(), "stopped with an empty ring");
        c.restart();
        assert_eq!(
            c.state.load(Ordering::Relaxed),
            LIVE,
            "a reset registers it again"
        );
    }

    #[test]
    fn a_stop_on_a_quiet_bus_unregisters_at_once() {
        let Some((Some(c), _, _)) = run_guest(&[0xF4], Zone::Live) else {
            return;
        };
        *lock(&c.zone) -= QUIET_BUS;
        c.stop();
        assert_eq!(c.state.load(Ordering::Relaxed), STOPPED);
        assert!(!c.stop_pending());
    }

    #[test]
    fn without_the_zone_every_write_exits() {
        let Some((None, _, seen)) = run_guest(GUEST, Zone::None) else {
            return;
        };
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], (0, b"c".to_vec()));
    }

    #[test]
    fn a_stopped_zone_buffers_nothing() {
        let Some((Some(c), pio, seen)) = run_guest(GUEST, Zone::Stopped) else {
            return;
        };
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], (0, b"c".to_vec()));
        assert_eq!(c.drain(&pio), 0);
        assert!(!c.may_hold_output());
        c.unpark_after(0x3F8);
        assert_eq!(
            c.state.load(Ordering::Relaxed),
            STOPPED,
            "a stopped zone stays stopped"
        );
    }

    #[test]
    fn a_parked_zone_is_live_again_after_the_next_write() {
        let Some((Some(c), pio, seen)) = run_guest(GUEST, Zone::Parked) else {
            return;
        };
        // 'a' exited and registered the zone again: 'b' and 'c' went to the ring.
        let want: Writes = vec![(0, b"a".to_vec()), (0, b"b".to_vec()), (1, vec![1])];
        assert_eq!(seen, want);
        assert_eq!(c.state.load(Ordering::Relaxed), LIVE);
        assert_eq!(c.drain(&pio), 1);
        assert_eq!((c.carried(), c.activity()), (2, 3));
        // Writes elsewhere leave a parked zone parked.
        c.park(Instant::now() + QUIET_BUS);
        c.unpark_after(0x3F9);
        assert_eq!(c.state.load(Ordering::Relaxed), PARKED);
        c.stop();
        assert_eq!(c.state.load(Ordering::Relaxed), STOPPED);
    }
}
