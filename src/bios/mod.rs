//! BIOS services, performed in Rust. The firmware's handlers (firmware/services.s) are a few
//! instructions each: `out PORT, al` then `iret` (or a short loop for the calls that wait).
//! The vCPU thread sees the port write, checks that it comes from that very `out` of the
//! embedded firmware (`service_call`), reads the registers and segment bases, runs the
//! service here, and writes the registers back: one VM exit per call. Results in the carry
//! and zero flags go into the FLAGS word that INT pushed (at SS:SP+4), which the handler's
//! IRET restores; the handler's own CF carries the VMM's answer to the handler (`Outcome`).
//!
//! Services reach the machine through typed handles: the console (COM1), the CMOS clock, the
//! disk, and guest memory. One file per interrupt; `bda.rs` is the BIOS data area the VMM
//! writes before the firmware runs.

pub mod bda;
mod boot;
mod disk;
mod equipment;
pub mod ivt;
mod keyboard;
pub mod pit;
mod system;
pub use system::reports_memory;
mod time;
mod video;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::block::Disk;
use crate::bus::lock;
use crate::devices::rtc::Rtc;
use crate::devices::serial::Serial;
use crate::devices::timer::Timed;
use crate::memory::{E820Entry, MemoryLayout, HIGH_MEMORY_START, LOW_RAM_END};

/// Offsets in segment F000 of the firmware's handler `out`s and ROM tables (build.rs).
pub mod symbols {
    include!(concat!(env!("OUT_DIR"), "/firmware_symbols.rs"));
}

/// The service ports: 0xE0 + the service's number. The whole range 0xE0-0xEF is the
/// firmware's; a write there from anywhere but a handler is an unassigned port.
pub const SERVICE_PORT_BASE: u16 = 0xE0;
pub const SERVICE_PORT_LAST: u16 = 0xEF;

/// The linear address of the firmware segment F000.
const FIRMWARE_CS_BASE: u64 = 0xF_0000;
/// `out imm8, al` is two bytes long.
const OUT_LEN: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// INT 10h, port 0xE0.
    Video,
    /// INT 13h, 0xE1.
    Disk,
    /// INT 15h, 0xE2.
    System,
    /// INT 16h, 0xE3.
    Keyboard,
    /// INT 1Ah, 0xE4.
    Time,
    /// INT 11h, 0xE5.
    Equipment,
    /// INT 12h, 0xE6.
    MemorySize,
    /// INT 18h, 0xE7.
    NoBoot,
    /// INT 19h, 0xE8.
    Boot,
    /// The firmware's own console output: CX bytes at DS:SI (whole lines) in one exit, 0xEA.
    Print,
    /// The firmware halts this vCPU for good (`halt_forever`), interrupts off, 0xEB. The vCPU
    /// handles it (`Vcpu::bios_call`), not `Bios::call`.
    Halt,
}

/// Each service's port (0xE9 stays free: it is the Bochs/QEMU debug console's).
const SERVICES: [(u16, Service); 11] = [
    (0xE0, Service::Video),
    (0xE1, Service::Disk),
    (0xE2, Service::System),
    (0xE3, Service::Keyboard),
    (0xE4, Service::Time),
    (0xE5, Service::Equipment),
    (0xE6, Service::MemorySize),
    (0xE7, Service::NoBoot),
    (0xE8, Service::Boot),
    (0xEA, Service::Print),
    (0xEB, Service::Halt),
];

impl Service {
    pub fn from_port(port: u16) -> Option<Service> {
        SERVICES.iter().find(|(p, _)| *p == port).map(|(_, s)| *s)
    }

    /// The offset in F000 of the handler's `out` to this service's port.
    fn out_offset(self) -> u16 {
        match self {
            Service::Video => symbols::INT10_OUT,
            Service::Disk => symbols::INT13_OUT,
            Service::System => symbols::INT15_OUT,
            Service::Keyboard => symbols::INT16_OUT,
            Service::Time => symbols::INT1A_OUT,
            Service::Equipment => symbols::INT11_OUT,
            Service::MemorySize => symbols::INT12_OUT,
            Service::NoBoot => symbols::INT18_OUT,
            Service::Boot => symbols::INT19_OUT,
            Service::Print => symbols::PRINT_OUT,
            Service::Halt => symbols::HALT_OUT,
        }
    }
}

/// The vCPU state that decides whether a port write is a service call.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub cr0: u64,
    pub cs_base: u64,
    pub rip: u64,
}

/// The service a write to `port` asks for, if it is one: the embedded firmware runs, the
/// vCPU is in real mode in segment F000, and RIP is the handler's `out` for that port. KVM
/// reports the `out` itself when it handles the port write on its fast path (hardware
/// virtualization), and the next instruction when it emulated the `out` (as the software
/// KVM of the development host does, measured); both are accepted, nothing else. The byte
/// after each `out` is never itself an `out` (a unit test checks the ROM), so neither
/// address can be a guest's own port write.
pub fn service_call(port: u16, embedded: bool, c: &Caller) -> Option<Service> {
    if !embedded || c.cr0 & 1 != 0 || c.cs_base != FIRMWARE_CS_BASE {
        return None;
    }
    let s = Service::from_port(port)?;
    let out = u64::from(s.out_offset());
    (c.rip == out || c.rip == out + OUT_LEN).then_some(s)
}

/// COM1 as the BIOS console and keyboard.
pub trait Console: Send + Sync {
    fn write(&self, bytes: &[u8]);
    /// The next input byte, left where it is.
    fn peek(&self) -> Option<u8>;
    fn take(&self) -> Option<u8>;
}

impl Console for Mutex<Serial> {
    fn write(&self, bytes: &[u8]) {
        lock(self).write_output(bytes)
    }
    fn peek(&self) -> Option<u8> {
        lock(self).peek_input()
    }
    fn take(&self) -> Option<u8> {
        lock(self).take_input()
    }
}

/// The CMOS clock's registers, read and written without disturbing the guest's index.
pub trait CmosClock: Send + Sync {
    fn register(&self, index: u8) -> u8;
    fn set_register(&self, index: u8, value: u8);
}

impl CmosClock for Mutex<Timed<Rtc>> {
    fn register(&self, index: u8) -> u8 {
        lock(self).with_device(|r| r.register(index))
    }
    fn set_register(&self, index: u8, value: u8) {
        lock(self).with_device(|r| r.set_register(index, value))
    }
}

/// The real-mode segment bases of the caller. No service takes a pointer in CS, FS or GS
/// yet; they are there for the ones that will.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segments {
    #[allow(dead_code)]
    pub cs: u64,
    pub ds: u64,
    pub es: u64,
    pub ss: u64,
    #[allow(dead_code)]
    pub fs: u64,
    #[allow(dead_code)]
    pub gs: u64,
}

const CF: u16 = 1 << 0;
const ZF: u16 = 1 << 6;

/// How a call ends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Flags to set and clear in the caller's FLAGS (the word INT pushed).
    pub set: u16,
    pub clear: u16,
    /// The handler's own CF after its `out`: INT 16h: no key yet, wait and ask again;
    /// INT 19h: the disk cannot boot.
    pub handler_cf: bool,
    /// A new ES for the caller (a real-mode segment value).
    pub es: Option<u16>,
}

fn ok() -> Outcome {
    Outcome {
        clear: CF,
        ..Default::default()
    }
}

fn fail(r: &mut kvm_regs, code: u8) -> Outcome {
    set_ah(r, code);
    Outcome {
        set: CF,
        ..Default::default()
    }
}

/// Register fields, real-mode style.
fn al(r: &kvm_regs) -> u8 {
    r.rax as u8
}
fn ah(r: &kvm_regs) -> u8 {
    (r.rax >> 8) as u8
}
fn ax(r: &kvm_regs) -> u16 {
    r.rax as u16
}
fn bl(r: &kvm_regs) -> u8 {
    r.rbx as u8
}
fn bh(r: &kvm_regs) -> u8 {
    (r.rbx >> 8) as u8
}
fn bx(r: &kvm_regs) -> u16 {
    r.rbx as u16
}
fn cl(r: &kvm_regs) -> u8 {
    r.rcx as u8
}
fn ch(r: &kvm_regs) -> u8 {
    (r.rcx >> 8) as u8
}
fn cx(r: &kvm_regs) -> u16 {
    r.rcx as u16
}
fn dl(r: &kvm_regs) -> u8 {
    r.rdx as u8
}
fn dh(r: &kvm_regs) -> u8 {
    (r.rdx >> 8) as u8
}
fn dx(r: &kvm_regs) -> u16 {
    r.rdx as u16
}
fn set16(reg: &mut u64, v: u16) {
    *reg = (*reg & !0xFFFF) | u64::from(v);
}
fn set_lo(reg: &mut u64, v: u8) {
    *reg = (*reg & !0xFF) | u64::from(v);
}
fn set_hi(reg: &mut u64, v: u8) {
    *reg = (*reg & !0xFF00) | u64::from(v) << 8;
}
fn set_ax(r: &mut kvm_regs, v: u16) {
    set16(&mut r.rax, v)
}
fn set_ah(r: &mut kvm_regs, v: u8) {
    set_hi(&mut r.rax, v)
}
fn set_al(r: &mut kvm_regs, v: u8) {
    set_lo(&mut r.rax, v)
}
/// The linear address of `offset` in the segment at `base`, as the CPU forms it outside
/// long mode: 32 bits, wrapping at 4 GiB.
fn linear(base: u64, offset: u64) -> u64 {
    base.wrapping_add(offset) & 0xFFFF_FFFF
}
fn bcd(v: u8) -> u8 {
    (v / 10) << 4 | (v % 10)
}
fn from_bcd(b: u8) -> u8 {
    (b >> 4) * 10 + (b & 0xF)
}

/// What the services need of the machine.
pub struct Bios {
    mem: GuestMemoryMmap,
    e820: Vec<E820Entry>,
    layout: MemoryLayout,
    console: Arc<dyn Console>,
    clock: Arc<dyn CmosClock>,
    disk: Option<Arc<Disk>>,
    /// The embedded firmware runs (not `--firmware`): the service ports exist.
    embedded: bool,
    /// Keys stuffed by INT 16h AH=05h, read before COM1's.
    keys: Mutex<VecDeque<u16>>,
    /// The status of the last INT 13h call: diskettes, hard disks.
    disk_status: Mutex<[u8; 2]>,
}

/// Everything a `Bios` is made of.
pub struct BiosSetup {
    pub mem: GuestMemoryMmap,
    pub e820: Vec<E820Entry>,
    pub layout: MemoryLayout,
    pub console: Arc<dyn Console>,
    pub clock: Arc<dyn CmosClock>,
    pub disk: Option<Arc<Disk>>,
    pub embedded: bool,
}

impl Bios {
    pub fn new(s: BiosSetup) -> Bios {
        Bios {
            mem: s.mem,
            e820: s.e820,
            layout: s.layout,
            console: s.console,
            clock: s.clock,
            disk: s.disk,
            embedded: s.embedded,
            keys: Mutex::new(VecDeque::new()),
            disk_status: Mutex::new([0; 2]),
        }
    }

    /// The service ports exist (the embedded firmware runs).
    pub fn embedded(&self) -> bool {
        self.embedded
    }

    /// Back to the state at power-on for a reboot (`--reboot`), as POST leaves it: the BDA
    /// rewritten with the tick count from the CMOS clock, no stuffed keys, no disk status.
    /// (The boot's reload writes the interrupt vectors again: boot/mod.rs, `load`.)
    /// RAM is otherwise kept. Nothing to do for a user's firmware.
    pub fn reset(&self) {
        if !self.embedded {
            return;
        }
        lock(&self.keys).clear();
        *lock(&self.disk_status) = [0; 2];
        let b = self.clock.register(0x0B);
        let [h, m, s] = [0x04, 0x02, 0x00].map(|reg| u64::from(from_bcd(self.clock_bcd(b, reg))));
        let ticks = bda::ticks_at(h * 3600 + m * 60 + s, 0);
        if let Err(e) = bda::write(&self.mem, &self.layout, self.disk.as_deref(), ticks) {
            crate::log::error(format_args!("reboot: cannot write the BDA: {e}"));
        }
    }

    /// Makes the guest's disk writes durable (`,rw`); called on every exit path.
    pub fn flush_disk(&self) {
        if let Some(d) = &self.disk {
            if let Err(e) = d.flush() {
                eprintln!(
                    "minipc: {}: cannot flush the disk image: {e}",
                    d.path().display()
                );
            }
        }
    }

    /// Runs a service on `regs`, applies its flags to the stacked FLAGS word and the
    /// handler's CF to RFLAGS; the caller applies `Outcome::es`.
    pub fn call(&self, service: Service, regs: &mut kvm_regs, segs: &Segments) -> Outcome {
        let outcome = match service {
            Service::Video => self.video(regs, segs),
            Service::Disk => self.disk(regs, segs),
            Service::System => self.system(regs, segs),
            Service::Keyboard => self.keyboard(regs),
            Service::Time => self.time(regs),
            Service::Equipment => self.equipment(regs),
            Service::MemorySize => self.memory_size(regs),
            Service::NoBoot => self.no_boot(),
            Service::Boot => self.boot(regs),
            Service::Print => self.print(regs, segs),
            // The vCPU's to handle: nothing to do on the registers.
            Service::Halt => Outcome::default(),
        };
        self.apply(regs, segs, &outcome);
        outcome
    }

    fn apply(&self, regs: &mut kvm_regs, segs: &Segments, o: &Outcome) {
        if o.set | o.clear != 0 {
            let sp = regs.rsp & 0xFFFF;
            let flags_at = GuestAddress(linear(segs.ss, (sp + 4) & 0xFFFF));
            if let Ok(flags) = self.mem.read_obj::<u16>(flags_at) {
                let _ = self.mem.write_obj((flags | o.set) & !o.clear, flags_at);
            }
        }
        regs.rflags = (regs.rflags & !u64::from(CF)) | u64::from(o.handler_cf);
    }

    /// The firmware's console output: CX bytes at DS:SI to COM1 in one go (a line costs
    /// one VM exit instead of one per byte). No flags change: the caller is not an INT.
    fn print(&self, r: &kvm_regs, segs: &Segments) -> Outcome {
        let (addr, len) = (segs.ds + (r.rsi & 0xFFFF), u64::from(cx(r)));
        if self.ram_buffer(addr, len) {
            let mut buf = vec![0u8; len as usize];
            if self.mem.read_slice(&mut buf, GuestAddress(addr)).is_ok() {
                self.console.write(&buf);
            }
        }
        Outcome::default()
    }

    fn read_u8(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap_or(0xFF)
    }
    fn read_u16(&self, addr: u64) -> u16 {
        self.mem.read_obj(GuestAddress(addr)).unwrap_or(0xFFFF)
    }
    fn read_u32(&self, addr: u64) -> u32 {
        self.mem.read_obj(GuestAddress(addr)).unwrap_or(u32::MAX)
    }
    fn write_u8(&self, addr: u64, v: u8) {
        let _ = self.mem.write_obj(v, GuestAddress(addr));
    }
    fn write_u16(&self, addr: u64, v: u16) {
        let _ = self.mem.write_obj(v, GuestAddress(addr));
    }
    fn write_u32(&self, addr: u64, v: u32) {
        let _ = self.mem.write_obj(v, GuestAddress(addr));
    }

    /// Whether `len` bytes at `addr` are RAM a service may read or write: never the VGA
    /// hole, the option ROMs or the BIOS (0xA0000-0xFFFFF), never past guest memory.
    fn ram_buffer(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        if len == 0 {
            return true;
        }
        if addr < HIGH_MEMORY_START && end > LOW_RAM_END {
            return false;
        }
        usize::try_from(len).is_ok_and(|l| self.mem.check_range(GuestAddress(addr), l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{KIB, MIB};

    /// COM1 stand-in: records output, offers input.
    #[derive(Default)]
    pub struct FakeConsole {
        pub out: Mutex<Vec<u8>>,
        pub input: Mutex<VecDeque<u8>>,
    }
    impl Console for FakeConsole {
        fn write(&self, bytes: &[u8]) {
            self.out.lock().unwrap().extend_from_slice(bytes);
        }
        fn peek(&self) -> Option<u8> {
            self.input.lock().unwrap().front().copied()
        }
        fn take(&self) -> Option<u8> {
            self.input.lock().unwrap().pop_front()
        }
    }
    impl FakeConsole {
        pub fn output(&self) -> String {
            String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
        }
        pub fn type_in(&self, s: &[u8]) {
            self.input.lock().unwrap().extend(s);
        }
    }

    /// A CMOS clock stand-in: plain registers, BCD 24-hour mode unless a test changes B.
    pub struct FakeClock(pub Mutex<[u8; 128]>);
    impl CmosClock for FakeClock {
        fn register(&self, index: u8) -> u8 {
            self.0.lock().unwrap()[usize::from(index & 0x7F)]
        }
        fn set_register(&self, index: u8, value: u8) {
            self.0.lock().unwrap()[usize::from(index & 0x7F)] = value;
        }
    }

    pub struct TestBios {
        pub bios: Bios,
        pub console: Arc<FakeConsole>,
        pub clock: Arc<FakeClock>,
    }

    /// A BIOS on `mem_size` of guest RAM (the first MiB and 1 MiB above it mapped), with an
    /// optional disk and its BDA written.
    pub fn bios_with(mem_size: u64, disk: Option<Arc<Disk>>) -> TestBios {
        let layout = MemoryLayout::new(mem_size).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), LOW_RAM_END as usize),
            (GuestAddress(HIGH_MEMORY_START), MIB as usize),
        ])
        .unwrap();
        let console = Arc::new(FakeConsole::default());
        let mut regs = [0u8; 128];
        // 2024-02-29 13:45:30, BCD, 24-hour.
        for (i, v) in [
            (0x00, 0x30),
            (0x02, 0x45),
            (0x04, 0x13),
            (0x07, 0x29),
            (0x08, 0x02),
            (0x09, 0x24),
            (0x0B, 0x02),
            (0x32, 0x20),
        ] {
            regs[i] = v;
        }
        let clock = Arc::new(FakeClock(Mutex::new(regs)));
        bda::write(&mem, &layout, disk.as_deref(), 0x1234).unwrap();
        let bios = Bios::new(BiosSetup {
            mem,
            e820: layout.e820(128 * KIB),
            layout,
            console: console.clone(),
            clock: clock.clone(),
            disk,
            embedded: true,
        });
        TestBios {
            bios,
            console,
            clock,
        }
    }

    pub fn bios(mem_size: u64) -> TestBios {
        bios_with(mem_size, None)
    }

    /// The segment bases every test call uses: ES = DS = 0x1000, SS = 0.
    pub const SEGS: Segments = Segments {
        cs: 0xF_0000,
        ds: 0x1_0000,
        es: 0x1_0000,
        ss: 0,
        fs: 0,
        gs: 0,
    };

    /// Calls a service with registers as an INT left them: SS:SP at 0:0x7000 with IP, CS,
    /// FLAGS (IF and a clear CF/ZF) pushed. Returns the stacked FLAGS afterwards.
    pub fn call_with(b: &Bios, service: Service, regs: &mut kvm_regs) -> (u16, Outcome) {
        regs.rsp = 0x7000;
        b.mem.write_obj(0x1234u16, GuestAddress(0x7000)).unwrap();
        b.mem.write_obj(0xF000u16, GuestAddress(0x7002)).unwrap();
        b.mem.write_obj(0x0202u16, GuestAddress(0x7004)).unwrap();
        let o = b.call(service, regs, &SEGS);
        (b.mem.read_obj::<u16>(GuestAddress(0x7004)).unwrap(), o)
    }

    pub fn call(b: &Bios, service: Service, regs: &mut kvm_regs) -> u16 {
        call_with(b, service, regs).0
    }

    pub fn regs(rax: u64) -> kvm_regs {
        kvm_regs {
            rax,
            ..Default::default()
        }
    }

    #[test]
    fn ports_map_to_services_and_back() {
        for (p, s) in SERVICES {
            assert_eq!(Service::from_port(p), Some(s));
        }
        assert_eq!(Service::from_port(0xE9), None);
        assert_eq!(Service::from_port(0xDF), None);
        assert_eq!(Service::from_port(0xEF), None);
        assert_eq!(bcd(59), 0x59);
        assert_eq!(from_bcd(0x59), 59);
    }

    #[test]
    fn only_the_handlers_out_of_the_embedded_firmware_is_a_service_call() {
        let out = u64::from(symbols::INT13_OUT);
        let at = |cr0, cs_base, rip| Caller { cr0, cs_base, rip };
        let real = 0x6000_0010;
        assert_eq!(
            service_call(0xE1, true, &at(real, 0xF_0000, out)),
            Some(Service::Disk)
        );
        assert_eq!(
            service_call(0xE1, true, &at(real, 0xF_0000, out + 2)),
            Some(Service::Disk)
        );
        // Another port's handler, a nearby RIP, another segment, protected mode, a user's
        // firmware, a port of the range with no service.
        assert_eq!(service_call(0xE0, true, &at(real, 0xF_0000, out)), None);
        assert_eq!(service_call(0xE1, true, &at(real, 0xF_0000, out + 1)), None);
        assert_eq!(service_call(0xE1, true, &at(real, 0xF_0000, out - 2)), None);
        assert_eq!(service_call(0xE1, true, &at(real, 0, out)), None);
        assert_eq!(
            service_call(0xE1, true, &at(real, 0xF_0000, out + 0x10000)),
            None
        );
        assert_eq!(service_call(0xE1, true, &at(real | 1, 0xF_0000, out)), None);
        assert_eq!(service_call(0xE1, false, &at(real, 0xF_0000, out)), None);
        assert_eq!(service_call(0xEF, true, &at(real, 0xF_0000, out)), None);
    }

    #[test]
    fn each_symbol_is_an_out_to_its_port_followed_by_no_out() {
        let fw = crate::firmware::EMBEDDED;
        for (p, s) in SERVICES {
            let at = usize::from(s.out_offset());
            assert_eq!(&fw[at..at + 2], &[0xE6, p as u8], "{s:?}");
            // OUT imm8 (E6/E7), OUT DX (EE/EF), and the operand-size prefix of a wider OUT.
            assert!(
                ![0xE6, 0xE7, 0xEE, 0xEF, 0x66].contains(&fw[at + 2]),
                "{s:?}: an out follows the handler's out"
            );
        }
        let dpt = usize::from(symbols::FLOPPY_DPT);
        assert_eq!(fw[dpt + 4], 18, "the DPT's sectors per track");
        let sc = usize::from(symbols::SYSTEM_CONFIG);
        assert_eq!(&fw[sc..sc + 3], &[8, 0, 0xFC]);
    }

    #[test]
    fn flags_go_to_the_stack_and_the_handler_cf_to_rflags() {
        let t = bios(64 * MIB);
        let mut r = regs(0xE980);
        r.rflags = 0x3;
        let (flags, o) = call_with(&t.bios, Service::System, &mut r);
        assert_eq!(flags & CF, CF);
        assert!(!o.handler_cf);
        assert_eq!(r.rflags & 1, 0);
        // INT 16h AH=00h with no key: the stacked FLAGS untouched, the handler waits.
        let mut r = regs(0);
        let (flags, o) = call_with(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(flags, 0x0202);
        assert!(o.handler_cf);
        assert_eq!(r.rflags & 1, 1);
        assert_eq!(r.rax, 0, "registers untouched while waiting");
    }

    /// Found by fuzzing (`bios_services`): a segment base near the top of the 64 bits
    /// KVM reports overflowed forming an address (a panic in debug builds). The services
    /// form linear addresses as the CPU does outside long mode: 32 bits, wrapping.
    #[test]
    fn segment_bases_wrap_at_4_gib_like_the_cpu() {
        let t = bios(64 * MIB);
        t.bios.write_u8(0x10, b'A');
        for es in [0xFFFF_FFFF_FFFF_FFF0, 0xFFFF_FFF0] {
            // INT 10h AH=13h: one character at ES:BP = base + 0x20.
            let mut r = regs(0x1301);
            r.rcx = 1;
            r.rbp = 0x20;
            let segs = Segments { es, ..SEGS };
            t.bios.call(Service::Video, &mut r, &segs);
        }
        assert_eq!(t.console.output(), "AA");
        assert_eq!(linear(u64::MAX, 0xFFFF), 0xFFFE);
        assert_eq!(linear(0x1_0000, 0x20), 0x1_0020);
    }

    #[test]
    fn the_fuzz_harness_sees_every_write() {
        let t = bios(64 * MIB);
        use super::fuzz::{changes, only_wrote, snapshot};
        let before = snapshot(&t.bios);
        t.bios.write_u16(0x9_FFFE, 0xFFFF);
        t.bios.write_u8(0x10_0000, 1);
        let c = changes(&before, &snapshot(&t.bios));
        assert_eq!(c, [(0x9_FFFE, 0xA_0000), (0x10_0000, 0x10_0001)]);
        only_wrote(&c, &[(0x9_FFFE, 0xA_0000), (0x10_0000, 0x10_0001)], "ok");
        let caught = std::panic::catch_unwind(|| only_wrote(&c, &[(0x9_FFFE, 0xA_0000)], "x"));
        assert!(caught.is_err());
    }

    #[test]
    fn a_reset_rewrites_the_bda_and_forgets_keys_and_status() {
        let t = bios(64 * MIB);
        let b = &t.bios;
        b.write_u16(bda::EQUIPMENT, 0);
        b.write_u16(bda::CURSOR_POS, 0x0505);
        call(b, Service::Keyboard, &mut regs(0x0500 | 0x41));
        let mut r = regs(0x0200);
        r.rdx = 0x80;
        call(b, Service::Disk, &mut r);
        b.reset();
        assert_eq!(b.read_u16(bda::EQUIPMENT), 0x0222);
        assert_eq!(b.read_u16(bda::CURSOR_POS), 0);
        // The fake clock says 13:45:30.
        assert_eq!(
            b.read_u32(bda::TICKS),
            bda::ticks_at(13 * 3600 + 45 * 60 + 30, 0)
        );
        let mut r = regs(0x0100);
        assert_ne!(
            call(b, Service::Keyboard, &mut r) & ZF,
            0,
            "a stuffed key survived"
        );
        let mut r = regs(0x0100);
        r.rdx = 0x80;
        assert_eq!(
            call(b, Service::Disk, &mut r) & CF,
            0,
            "the disk status survived"
        );
    }

    #[test]
    fn buffers_must_be_ram_outside_the_rom_area() {
        let t = bios(64 * MIB);
        let b = &t.bios;
        assert!(b.ram_buffer(0x7C00, 512));
        assert!(b.ram_buffer(0x9_FE00, 512));
        assert!(!b.ram_buffer(0x9_FF00, 512));
        assert!(!b.ram_buffer(0xF_0000, 1));
        assert!(b.ram_buffer(0x10_0000, 512));
        assert!(!b.ram_buffer(0x20_0000 - 256, 512));
        assert!(!b.ram_buffer(u64::MAX - 10, 512));
        assert!(b.ram_buffer(0xB_8000, 0));
    }
}

/// The harness the BIOS fuzz targets share: random registers and segment bases, a snapshot
/// of guest RAM to find every byte a call wrote, and the checks every service passes.
#[cfg(test)]
pub(super) mod fuzz {
    use super::tests::*;
    use super::*;
    use crate::fuzz::{run, Rng};
    use crate::memory::MIB;

    /// A segment base: the usual kind, anywhere in the first MiB, at the edges of RAM and
    /// of the holes, in the ROM, or (rarely) far above RAM.
    pub fn segment_base(rng: &mut Rng) -> u64 {
        match rng.below(8) {
            0 | 1 => 0x1_0000,
            2 => rng.below(0x1_0000) << 4,
            3 => (LOW_RAM_END - rng.below(0x2_0000)) & !0xF,
            4 => *rng.pick(&[0xA_0000, 0xC_0000, 0xE_0000, 0xF_0000, 0xF_FFF0]),
            5 => HIGH_MEMORY_START + rng.below(2 * MIB) - MIB / 2,
            6 => rng.below(1 << 32),
            _ => rng.interesting(),
        }
    }

    /// A register value: an edge value, or random, with random upper bits.
    pub fn reg(rng: &mut Rng) -> u64 {
        if rng.one_in(2) {
            rng.interesting()
        } else {
            rng.next()
        }
    }

    /// Registers for a call: random, with AX, BX, CX, DX, SI, DI chosen by the caller.
    pub fn regs(rng: &mut Rng) -> kvm_regs {
        kvm_regs {
            rax: reg(rng),
            rbx: reg(rng),
            rcx: reg(rng),
            rdx: reg(rng),
            rsi: reg(rng),
            rdi: reg(rng),
            rsp: reg(rng),
            rbp: reg(rng),
            r8: reg(rng),
            r15: reg(rng),
            rip: reg(rng),
            rflags: reg(rng),
            ..Default::default()
        }
    }

    pub fn segments(rng: &mut Rng) -> Segments {
        Segments {
            cs: 0xF_0000,
            ds: segment_base(rng),
            es: segment_base(rng),
            ss: segment_base(rng),
            fs: segment_base(rng),
            gs: segment_base(rng),
        }
    }

    /// Guest RAM as the test BIOS maps it: the first 640 KiB and 1 MiB from 1 MiB.
    pub fn snapshot(b: &Bios) -> Vec<(u64, Vec<u8>)> {
        [(0, LOW_RAM_END), (HIGH_MEMORY_START, MIB)]
            .iter()
            .map(|&(at, len)| {
                let host = b.mem.get_host_address(GuestAddress(at)).unwrap();
                // SAFETY: `host` starts a mapping of at least `len` bytes (one region of the
                // test BIOS's memory), which lives as long as `b`; this thread is the only
                // one using that memory while the slice is copied.
                let bytes = unsafe { std::slice::from_raw_parts(host, len as usize) };
                (at, bytes.to_vec())
            })
            .collect()
    }

    /// The guest-physical ranges where `after` differs from `before`.
    pub fn changes(before: &[(u64, Vec<u8>)], after: &[(u64, Vec<u8>)]) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for ((at, a), (_, b)) in before.iter().zip(after) {
            for (c, (x, y)) in a.chunks(4096).zip(b.chunks(4096)).enumerate() {
                if x == y {
                    continue;
                }
                for i in (0..x.len()).filter(|i| x[*i] != y[*i]) {
                    let addr = at + (c * 4096 + i) as u64;
                    match out.last_mut() {
                        Some((_, end)) if *end == addr => *end += 1,
                        _ => out.push((addr, addr + 1)),
                    }
                }
            }
        }
        out
    }

    /// Asserts that every changed byte lies in one of `allowed` (`[start, end)` ranges).
    pub fn only_wrote(changed: &[(u64, u64)], allowed: &[(u64, u64)], what: &str) {
        for &(s, e) in changed {
            assert!(
                (s..e).all(|a| allowed.iter().any(|&(x, y)| (x..y).contains(&a))),
                "{what}: wrote {s:#x}-{e:#x}, allowed {allowed:x?}"
            );
        }
    }

    /// The stacked FLAGS word a call may update.
    pub fn flags_word(r: &kvm_regs, s: &Segments) -> (u64, u64) {
        let at = linear(s.ss, ((r.rsp & 0xFFFF) + 4) & 0xFFFF);
        (at, at + 2)
    }

    /// Checks what every service promises: registers other than `outputs` (and RFLAGS
    /// other than CF) keep their value, outputs keep their upper 32 bits unless `wide` (the
    /// call returns 32-bit registers), and the outcome touches only CF and ZF.
    pub fn check_registers(
        before: &kvm_regs,
        after: &kvm_regs,
        outputs: &[&str],
        wide: bool,
        o: &Outcome,
    ) {
        let named = |r: &kvm_regs| {
            [
                ("rax", r.rax),
                ("rbx", r.rbx),
                ("rcx", r.rcx),
                ("rdx", r.rdx),
                ("rsi", r.rsi),
                ("rdi", r.rdi),
                ("rsp", r.rsp),
                ("rbp", r.rbp),
                ("r8", r.r8),
                ("r15", r.r15),
                ("rip", r.rip),
            ]
        };
        for ((name, b), (_, a)) in named(before).iter().zip(named(after)) {
            if outputs.contains(name) {
                assert!(wide || b >> 32 == a >> 32, "{name}'s upper half changed");
            } else {
                assert_eq!(*b, a, "{name} changed ({outputs:?} are the outputs)");
            }
        }
        assert_eq!(
            before.rflags & !1,
            after.rflags & !1,
            "RFLAGS beyond CF changed"
        );
        assert_eq!((o.set | o.clear) & !(CF | ZF), 0, "{o:?}");
    }

    /// A key or byte typed at the console, or nothing.
    fn type_some(rng: &mut Rng, t: &TestBios) {
        if rng.one_in(2) {
            let n = rng.index(4);
            t.console.type_in(&rng.bytes(n));
        }
    }

    /// Every service but the disk's (`disk.rs` has its own target) with random registers,
    /// segment bases, clock registers and console input.
    #[test]
    fn bios_services() {
        let services = [
            Service::Video,
            Service::System,
            Service::Keyboard,
            Service::Time,
            Service::Equipment,
            Service::MemorySize,
            Service::NoBoot,
            Service::Boot,
        ];
        run("bios_services", 1_000, |rng| {
            let t = bios(*rng.pick(&[2 * MIB, 64 * MIB, 4096 * MIB]));
            type_some(rng, &t);
            for _ in 0..rng.below(4) {
                let index = rng.below(0x40) as u8;
                t.clock.set_register(index, rng.byte());
            }
            // Every byte the calls may write, checked once after them all.
            let before = snapshot(&t.bios);
            let mut allowed = vec![(bda::BDA, bda::BDA + 0x100)];
            for _ in 0..=rng.below(8) {
                let service = *rng.pick(&services);
                let mut r = regs(rng);
                // Mostly the functions each service has.
                let functions: &[u8] = match service {
                    Service::Video => &[
                        0, 1, 2, 3, 5, 8, 9, 0xA, 0xE, 0xF, 0x11, 0x12, 0x13, 0x1A, 0x4F,
                    ],
                    Service::System => &[0x24, 0x4F, 0x88, 0x90, 0x91, 0xC0, 0xE8, 0xE9, 0x53],
                    Service::Keyboard => &[0, 1, 2, 3, 5, 0x10, 0x11, 0x12],
                    Service::Time => &[0, 1, 2, 3, 4, 5],
                    _ => &[0],
                };
                if !rng.one_in(8) {
                    set_ah(&mut r, *rng.pick(functions));
                }
                match ah(&r) {
                    0xE8 if service == Service::System => {
                        set_al(&mut r, *rng.pick(&[0x20, 0x01, 0x80]));
                        if rng.one_in(2) {
                            r.rdx = SMAP_LE;
                            r.rcx = rng.below(40);
                            r.rbx = rng.below(12);
                        }
                    }
                    0x24 if service == Service::System => set_al(&mut r, rng.below(5) as u8),
                    0x86 if service == Service::System => {
                        // A wait: keep it short.
                        set16(&mut r.rcx, 0);
                        set16(&mut r.rdx, rng.below(50) as u16);
                    }
                    _ => {}
                }
                if rng.one_in(3) {
                    type_some(rng, &t);
                }
                let segs = segments(rng);
                let before_regs = r;
                let o = t.bios.call(service, &mut r, &segs);
                let outputs: &[&str] = match service {
                    Service::Video | Service::System => &["rax", "rbx", "rcx", "rdx"],
                    Service::Keyboard | Service::Equipment | Service::MemorySize => &["rax"],
                    Service::Time => &["rax", "rcx", "rdx"],
                    Service::Boot => &["rdx"],
                    _ => &[],
                };
                let e820 = service == Service::System && ax(&before_regs) == 0xE820;
                check_registers(&before_regs, &r, outputs, e820, &o);
                let es_di = linear(segs.es, before_regs.rdi & 0xFFFF);
                allowed.push(flags_word(&before_regs, &segs));
                if e820 {
                    allowed.push((es_di, es_di + 20));
                    if o.set & CF == 0 {
                        assert!(t.bios.ram_buffer(es_di, 20), "E820 entry at {es_di:#x}");
                    }
                }
                if service == Service::Boot {
                    allowed.push((0x7C00, 0x7E00));
                }
            }
            let changed = changes(&before, &snapshot(&t.bios));
            only_wrote(&changed, &allowed, "BIOS services");
        });
    }

    const SMAP_LE: u64 = 0x534D_4150;
}
