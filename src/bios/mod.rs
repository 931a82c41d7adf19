//! BIOS services, performed in Rust. The firmware's handlers for INT 10h, 13h, 15h, 16h and
//! 1Ah are two instructions each: `out SERVICE_PORT, al; iret` (see firmware/services.s). The
//! vCPU thread sees the port write, reads the registers, runs the service here, and writes the
//! registers back: one VM exit per call. Results in the carry and zero flags are written into
//! the FLAGS word that INT pushed (at SS:SP+4), which the handler's IRET restores.

use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus::Bus;
use crate::memory::{E820Entry, MemoryLayout, KIB};

/// The first service port: INT 10h; then 13h, 15h, 16h, 1Ah.
pub const SERVICE_PORT_BASE: u16 = 0xE0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Video,
    Disk,
    System,
    Keyboard,
    Time,
}

impl Service {
    pub fn from_port(port: u16) -> Option<Service> {
        Some(match port.checked_sub(SERVICE_PORT_BASE)? {
            0 => Service::Video,
            1 => Service::Disk,
            2 => Service::System,
            3 => Service::Keyboard,
            4 => Service::Time,
            _ => return None,
        })
    }
}

/// What the services need of the machine.
pub struct Bios {
    pub mem: GuestMemoryMmap,
    pub e820: Vec<E820Entry>,
    pub layout: MemoryLayout,
    /// Port I/O: COM1 for the console services, the CMOS for the clock.
    pub pio: std::sync::Arc<Bus>,
}

/// The real-mode segment bases a call needs.
#[derive(Clone, Copy, Debug, Default)]
pub struct Segments {
    pub es: u64,
    pub ss: u64,
}

const CF: u16 = 1 << 0;
const ZF: u16 = 1 << 6;
const SMAP: u64 = 0x534D_4150;
const COM1: u64 = 0x3F8;

fn ah(r: &kvm_regs) -> u8 {
    (r.rax >> 8) as u8
}
fn ax(r: &kvm_regs) -> u16 {
    r.rax as u16
}
fn set_ax(r: &mut kvm_regs, v: u16) {
    r.rax = (r.rax & !0xFFFF) | v as u64;
}
fn set_ah(r: &mut kvm_regs, v: u8) {
    r.rax = (r.rax & !0xFF00) | (v as u64) << 8;
}
fn set_al(r: &mut kvm_regs, v: u8) {
    r.rax = (r.rax & !0xFF) | v as u64;
}
fn set16(reg: &mut u64, v: u16) {
    *reg = (*reg & !0xFFFF) | v as u64;
}
fn bcd(v: u8) -> u8 {
    (v / 10) << 4 | (v % 10)
}

/// How a call ends: the flags to set and clear in the caller's FLAGS.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub set: u16,
    pub clear: u16,
    /// Re-issue the INT on return (a blocking call that cannot complete yet).
    pub retry: bool,
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

impl Bios {
    /// Runs a service on `regs`, then applies its flags to the stacked FLAGS word.
    pub fn call(&self, service: Service, regs: &mut kvm_regs, segs: Segments) {
        let outcome = match service {
            Service::Video => self.video(regs),
            Service::Disk => fail(regs, 0x01),
            Service::System => self.system(regs, segs),
            Service::Keyboard => self.keyboard(regs),
            Service::Time => self.time(regs),
        };
        self.apply(regs, segs, &outcome);
    }

    fn apply(&self, regs: &mut kvm_regs, segs: Segments, o: &Outcome) {
        let sp = regs.rsp & 0xFFFF;
        let ip_at = GuestAddress(segs.ss + sp);
        let flags_at = GuestAddress(segs.ss + ((sp + 4) & 0xFFFF));
        if let Ok(mut flags) = self.mem.read_obj::<u16>(flags_at) {
            flags = (flags | o.set) & !o.clear;
            let _ = self.mem.write_obj(flags, flags_at);
        }
        regs.rflags = (regs.rflags | o.set as u64) & !(o.clear as u64);
        if o.retry {
            // Return to the INT instruction (two bytes) so the caller asks again.
            if let Ok(ip) = self.mem.read_obj::<u16>(ip_at) {
                let _ = self.mem.write_obj(ip.wrapping_sub(2), ip_at);
            }
        }
    }

    fn putc(&self, c: u8) {
        self.pio.write(COM1, &[c]);
    }

    /// INT 10h: the console is COM1.
    fn video(&self, r: &mut kvm_regs) -> Outcome {
        match ah(r) {
            0x0E => self.putc(r.rax as u8),
            0x0F => {
                // 80x25 text, page 0.
                set_ax(r, 0x5003);
                r.rbx &= !0xFF00;
            }
            0x03 => {
                set16(&mut r.rcx, 0x0607);
                set16(&mut r.rdx, 0);
            }
            _ => {}
        }
        ok()
    }

    /// INT 15h: the memory map and friends.
    fn system(&self, r: &mut kvm_regs, segs: Segments) -> Outcome {
        match ax(r) {
            0xE820 => return self.e820(r, segs),
            0xE801 => {
                let ext = self.layout.extended_ram();
                let fifteen_mib = 15 * 1024 * KIB;
                let below_16m = (ext.min(fifteen_mib) / KIB) as u16;
                let above_16m = (ext.saturating_sub(fifteen_mib) / (64 * KIB)).min(0xFFFF) as u16;
                set_ax(r, below_16m);
                set16(&mut r.rcx, below_16m);
                set16(&mut r.rbx, above_16m);
                set16(&mut r.rdx, above_16m);
                return ok();
            }
            0x2400 | 0x2401 => {
                set_ah(r, 0);
                return ok();
            }
            0x2402 => {
                // A20 is always enabled.
                set_ax(r, 0x0001);
                return ok();
            }
            0x2403 => {
                set_ah(r, 0);
                set16(&mut r.rbx, 0x0003);
                return ok();
            }
            _ => {}
        }
        match ah(r) {
            0x88 => {
                let kib = (self.layout.extended_ram() / KIB).min(0xFFFF) as u16;
                set_ax(r, kib);
                ok()
            }
            0x86 => ok(),
            _ => fail(r, 0x86),
        }
    }

    fn e820(&self, r: &mut kvm_regs, segs: Segments) -> Outcome {
        let index = r.rbx as u32 as usize;
        let Some(entry) = self.e820.get(index) else {
            return fail(r, 0x86);
        };
        if r.rdx as u32 as u64 != SMAP || (r.rcx as u32) < 20 {
            return fail(r, 0x86);
        }
        let at = GuestAddress(segs.es + (r.rdi & 0xFFFF));
        if self.mem.write_slice(&entry.to_bytes(), at).is_err() {
            return fail(r, 0x86);
        }
        r.rax = SMAP;
        r.rcx = 20;
        r.rbx = if index + 1 < self.e820.len() {
            index as u64 + 1
        } else {
            0
        };
        ok()
    }

    /// INT 16h: keys come from COM1.
    fn keyboard(&self, r: &mut kvm_regs) -> Outcome {
        let mut lsr = [0u8];
        self.pio.read(COM1 + 5, &mut lsr);
        let ready = lsr[0] & 1 != 0;
        match ah(r) {
            0x00 | 0x10 => {
                if !ready {
                    return Outcome {
                        retry: true,
                        ..Default::default()
                    };
                }
                let mut c = [0u8];
                self.pio.read(COM1, &mut c);
                set_ax(r, c[0] as u16);
                ok()
            }
            0x01 | 0x11 => {
                if !ready {
                    return Outcome {
                        set: ZF,
                        ..Default::default()
                    };
                }
                // Peeking would need the UART to keep the byte: report it as read.
                let mut c = [0u8];
                self.pio.read(COM1, &mut c);
                set_ax(r, c[0] as u16);
                Outcome {
                    clear: ZF,
                    ..Default::default()
                }
            }
            0x02 | 0x12 => {
                set_al(r, 0);
                ok()
            }
            _ => ok(),
        }
    }

    fn cmos(&self, reg: u8) -> u8 {
        self.pio.write(0x70, &[reg]);
        let mut v = [0u8];
        self.pio.read(0x71, &mut v);
        v[0]
    }

    /// A clock register, in BCD whatever mode the guest set the RTC to.
    fn cmos_bcd(&self, reg: u8) -> u8 {
        let v = self.cmos(reg);
        if self.cmos(0x0B) & 0x04 != 0 {
            bcd(v)
        } else {
            v
        }
    }

    /// INT 1Ah: the clock, from the CMOS RTC.
    fn time(&self, r: &mut kvm_regs) -> Outcome {
        match ah(r) {
            0x00 => {
                let from_bcd = |b: u8| ((b >> 4) * 10 + (b & 0xF)) as u64;
                let secs = from_bcd(self.cmos_bcd(0x04) & 0x7F) * 3600
                    + from_bcd(self.cmos_bcd(0x02)) * 60
                    + from_bcd(self.cmos_bcd(0x00));
                // 1573040 ticks a day (about 18.2 a second).
                let ticks = secs * 1_573_040 / 86_400;
                set16(&mut r.rcx, (ticks >> 16) as u16);
                set16(&mut r.rdx, ticks as u16);
                set_al(r, 0);
                ok()
            }
            0x02 => {
                let (h, m, s) = (
                    self.cmos_bcd(0x04),
                    self.cmos_bcd(0x02),
                    self.cmos_bcd(0x00),
                );
                set16(&mut r.rcx, (h as u16) << 8 | m as u16);
                set16(&mut r.rdx, (s as u16) << 8);
                ok()
            }
            0x04 => {
                let (c, y, m, d) = (
                    self.cmos_bcd(0x32),
                    self.cmos_bcd(0x09),
                    self.cmos_bcd(0x08),
                    self.cmos_bcd(0x07),
                );
                set16(&mut r.rcx, (c as u16) << 8 | y as u16);
                set16(&mut r.rdx, (m as u16) << 8 | d as u16);
                ok()
            }
            _ => fail(r, 0x86),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::exit::ExitReason;
    use crate::memory::MIB;
    use std::sync::{Arc, Mutex};

    /// A COM1 stand-in: records output, offers one input byte.
    struct FakeUart {
        out: Vec<u8>,
        input: Option<u8>,
    }
    impl BusDevice for FakeUart {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data[0] = match offset {
                0 => self.input.take().unwrap_or(0),
                5 => 0x60 | self.input.is_some() as u8,
                _ => 0,
            };
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
            if offset == 0 {
                self.out.push(data[0]);
            }
            None
        }
    }

    fn bios(mem_size: u64) -> (Bios, Arc<Mutex<FakeUart>>) {
        let layout = MemoryLayout::new(mem_size).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let uart = Arc::new(Mutex::new(FakeUart {
            out: vec![],
            input: None,
        }));
        let mut pio = Bus::new("test");
        pio.insert(COM1, 8, uart.clone()).unwrap();
        (
            Bios {
                mem,
                e820: layout.e820(128 * KIB),
                layout,
                pio: Arc::new(pio),
            },
            uart,
        )
    }

    /// Registers as an INT left them: SS:SP at 0:0x7000 with IP, CS, FLAGS pushed.
    fn call(b: &Bios, service: Service, regs: &mut kvm_regs) -> u16 {
        regs.rsp = 0x7000;
        b.mem.write_obj(0x1234u16, GuestAddress(0x7000)).unwrap();
        b.mem.write_obj(0xF000u16, GuestAddress(0x7002)).unwrap();
        b.mem.write_obj(0x0202u16, GuestAddress(0x7004)).unwrap();
        b.call(service, regs, Segments { es: 0x1000, ss: 0 });
        b.mem.read_obj::<u16>(GuestAddress(0x7004)).unwrap()
    }

    #[test]
    fn e820_walks_the_whole_map_then_stops() {
        let (b, _) = bios(256 * MIB);
        let mut got = Vec::new();
        let mut next = 0u64;
        loop {
            let mut r = kvm_regs {
                rax: 0xE820,
                rbx: next,
                rcx: 24,
                rdx: SMAP,
                rdi: 0x100,
                ..Default::default()
            };
            let flags = call(&b, Service::System, &mut r);
            assert_eq!(flags & CF, 0);
            assert_eq!(r.rax, SMAP);
            assert_eq!(r.rcx, 20);
            let mut e = [0u8; 20];
            b.mem.read_slice(&mut e, GuestAddress(0x1100)).unwrap();
            got.push(e);
            next = r.rbx;
            if next == 0 {
                break;
            }
        }
        let want: Vec<[u8; 20]> = b.e820.iter().map(|e| e.to_bytes()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn e820_refuses_a_bad_signature_or_index() {
        let (b, _) = bios(256 * MIB);
        let mut r = kvm_regs {
            rax: 0xE820,
            rcx: 20,
            rdx: 0x1234,
            ..Default::default()
        };
        assert_ne!(call(&b, Service::System, &mut r) & CF, 0);
        let mut r = kvm_regs {
            rax: 0xE820,
            rbx: 99,
            rcx: 20,
            rdx: SMAP,
            ..Default::default()
        };
        assert_ne!(call(&b, Service::System, &mut r) & CF, 0);
        assert_eq!(ah(&r), 0x86);
    }

    #[test]
    fn memory_size_calls() {
        let (b, _) = bios(256 * MIB);
        let mut r = kvm_regs {
            rax: 0xE801,
            ..Default::default()
        };
        call(&b, Service::System, &mut r);
        assert_eq!(r.rax as u16, 15 * 1024);
        assert_eq!(r.rbx as u16, ((256 - 16) * 1024 / 64) as u16);
        let mut r = kvm_regs {
            rax: 0x8800,
            ..Default::default()
        };
        call(&b, Service::System, &mut r);
        assert_eq!(r.rax as u16, 0xFFFF);
        let (b, _) = bios(32 * MIB);
        let mut r = kvm_regs {
            rax: 0x8800,
            ..Default::default()
        };
        call(&b, Service::System, &mut r);
        assert_eq!(r.rax as u16, 31 * 1024);
        let mut r = kvm_regs {
            rax: 0xC000,
            ..Default::default()
        };
        assert_ne!(call(&b, Service::System, &mut r) & CF, 0);
    }

    #[test]
    fn teletype_and_keyboard_use_com1() {
        let (b, uart) = bios(64 * MIB);
        let mut r = kvm_regs {
            rax: 0x0E41,
            ..Default::default()
        };
        call(&b, Service::Video, &mut r);
        assert_eq!(uart.lock().unwrap().out, b"A");
        // No key: AH=01h sets ZF; AH=00h returns to the INT to wait.
        let mut r = kvm_regs {
            rax: 0x0100,
            ..Default::default()
        };
        assert_ne!(call(&b, Service::Keyboard, &mut r) & ZF, 0);
        let mut r = kvm_regs::default();
        call(&b, Service::Keyboard, &mut r);
        assert_eq!(b.mem.read_obj::<u16>(GuestAddress(0x7000)).unwrap(), 0x1232);
        uart.lock().unwrap().input = Some(b'k');
        let mut r = kvm_regs::default();
        call(&b, Service::Keyboard, &mut r);
        assert_eq!(r.rax as u8, b'k');
        assert_eq!(b.mem.read_obj::<u16>(GuestAddress(0x7000)).unwrap(), 0x1234);
    }

    #[test]
    fn disk_calls_fail_without_a_disk_and_ports_map_to_services() {
        let (b, _) = bios(64 * MIB);
        let mut r = kvm_regs {
            rax: 0x0200,
            ..Default::default()
        };
        assert_ne!(call(&b, Service::Disk, &mut r) & CF, 0);
        assert_eq!(Service::from_port(0xE0), Some(Service::Video));
        assert_eq!(Service::from_port(0xE4), Some(Service::Time));
        assert_eq!(Service::from_port(0xE5), None);
        assert_eq!(Service::from_port(0xDF), None);
        assert_eq!(bcd(59), 0x59);
    }
}
