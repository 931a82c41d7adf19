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
mod keyboard;
mod system;
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
    /// The firmware's own console output: a whole line (DS:SI, CX bytes) in one exit, 0xEA.
    Print,
}

/// Each service's port (0xE9 stays free: it is the Bochs/QEMU debug console's).
const SERVICES: [(u16, Service); 10] = [
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
        };
        self.apply(regs, segs, &outcome);
        outcome
    }

    fn apply(&self, regs: &mut kvm_regs, segs: &Segments, o: &Outcome) {
        if o.set | o.clear != 0 {
            let sp = regs.rsp & 0xFFFF;
            let flags_at = GuestAddress(segs.ss + ((sp + 4) & 0xFFFF));
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
