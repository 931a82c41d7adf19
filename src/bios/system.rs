//! INT 15h: the memory map and sizes, A20, the system configuration table, waits, and the
//! calls a PC without APM or SpeedStep answers "not supported" (CF=1, AH=86h).

use std::time::Duration;

use kvm_bindings::kvm_regs;

use super::*;
use crate::memory::KIB;

const SMAP: u64 = 0x534D_4150;
const UNSUPPORTED: u8 = 0x86;
/// AH=86h sleeps at most this long; longer waits return early.
const MAX_WAIT: Duration = Duration::from_secs(1);

impl Bios {
    pub(super) fn system(&self, r: &mut kvm_regs, segs: &Segments) -> Outcome {
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
                // A20 through the keyboard controller and port 92h.
                set_ah(r, 0);
                set16(&mut r.rbx, 0x0003);
                return ok();
            }
            0xE980 => return fail(r, UNSUPPORTED),
            _ => {}
        }
        match ah(r) {
            0x88 => {
                let kib = (self.layout.extended_ram() / KIB).min(0xFFFF) as u16;
                set_ax(r, kib);
                ok()
            }
            0x86 => {
                let us = u64::from(cx(r)) << 16 | u64::from(dx(r));
                wait(Duration::from_micros(us).min(MAX_WAIT));
                set_ah(r, 0);
                ok()
            }
            0xC0 => {
                set_ah(r, 0);
                set16(&mut r.rbx, symbols::SYSTEM_CONFIG);
                Outcome {
                    es: Some(0xF000),
                    ..ok()
                }
            }
            // Keyboard intercept: CF=1, the key is processed as it is.
            0x4F => Outcome {
                set: CF,
                ..Default::default()
            },
            // Device busy / interrupt complete: nothing waits for them.
            0x90 | 0x91 => {
                set_ah(r, 0);
                ok()
            }
            // APM (53h) and everything else.
            _ => fail(r, UNSUPPORTED),
        }
    }

    fn e820(&self, r: &mut kvm_regs, segs: &Segments) -> Outcome {
        let index = r.rbx as u32 as usize;
        let Some(entry) = self.e820.get(index) else {
            return fail(r, UNSUPPORTED);
        };
        if r.rdx as u32 as u64 != SMAP || (r.rcx as u32) < 20 {
            return fail(r, UNSUPPORTED);
        }
        let at = linear(segs.es, r.rdi & 0xFFFF);
        if !self.ram_buffer(at, 20)
            || self
                .mem
                .write_slice(&entry.to_bytes(), GuestAddress(at))
                .is_err()
        {
            return fail(r, UNSUPPORTED);
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
}

/// Whether a call reports how much memory there is: INT 15h E820h, E801h and 88h, which
/// wait until all RAM is registered with KVM (ram_gate.rs). INT 12h reports conventional
/// memory, which is registered before the guest starts; the other INT 15h calls this BIOS
/// answers (C0h, 24xxh, 86h, 4Fh, 90h/91h) report no memory, and the ones it does not
/// support (E881h, C7h, ...) return CF=1 with nothing.
pub fn reports_memory(service: Service, r: &kvm_regs) -> bool {
    service == Service::System && (matches!(ax(r), 0xE820 | 0xE801) || ah(r) == 0x88)
}

/// Sleeps for `d` of host time (the vCPU thread waits; the guest sees the time pass).
fn wait(d: Duration) {
    if d.is_zero() {
        return;
    }
    let ts = libc::timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a relative sleep on the monotonic clock with a valid timespec and no remainder
    // pointer; an interruption (a kick) only shortens the wait.
    unsafe { libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::memory::MIB;

    #[test]
    fn e820_walks_the_whole_map_then_stops() {
        let t = bios(256 * MIB);
        let b = &t.bios;
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
            let flags = call(b, Service::System, &mut r);
            assert_eq!(flags & CF, 0);
            assert_eq!(r.rax, SMAP);
            assert_eq!(r.rcx, 20);
            let mut e = [0u8; 20];
            b.mem.read_slice(&mut e, GuestAddress(0x10100)).unwrap();
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
    fn e820_refuses_a_bad_signature_index_or_buffer() {
        let t = bios(256 * MIB);
        let mut r = kvm_regs {
            rax: 0xE820,
            rcx: 20,
            rdx: 0x1234,
            ..Default::default()
        };
        assert_ne!(call(&t.bios, Service::System, &mut r) & CF, 0);
        let mut r = kvm_regs {
            rax: 0xE820,
            rbx: 99,
            rcx: 20,
            rdx: SMAP,
            ..Default::default()
        };
        assert_ne!(call(&t.bios, Service::System, &mut r) & CF, 0);
        assert_eq!(ah(&r), 0x86);
        let mut r = kvm_regs {
            rax: 0xE820,
            rcx: 20,
            rdx: SMAP,
            rdi: 0xFFF0,
            ..Default::default()
        };
        let segs = Segments {
            es: 0xF_0000,
            ..SEGS
        };
        r.rsp = 0x7000;
        t.bios.call(Service::System, &mut r, &segs);
        assert_eq!(ah(&r), 0x86);
    }

    #[test]
    fn memory_size_calls() {
        let t = bios(256 * MIB);
        let mut r = regs(0xE801);
        call(&t.bios, Service::System, &mut r);
        assert_eq!(r.rax as u16, 15 * 1024);
        assert_eq!(r.rbx as u16, ((256 - 16) * 1024 / 64) as u16);
        let mut r = regs(0x8800);
        call(&t.bios, Service::System, &mut r);
        assert_eq!(r.rax as u16, 0xFFFF);
        let t = bios(32 * MIB);
        let mut r = regs(0x8800);
        call(&t.bios, Service::System, &mut r);
        assert_eq!(r.rax as u16, 31 * 1024);
    }

    #[test]
    fn only_the_memory_services_report_memory() {
        for f in [0xE820, 0xE801, 0x8800, 0x88FF] {
            assert!(reports_memory(Service::System, &regs(f)), "{f:#x}");
        }
        for f in [
            0xE881, 0xE980, 0xC000, 0xC700, 0x2401, 0x8600, 0x4F1C, 0x9000, 0xE800,
        ] {
            assert!(!reports_memory(Service::System, &regs(f)), "{f:#x}");
        }
        for s in [
            Service::MemorySize,
            Service::Disk,
            Service::Time,
            Service::Video,
        ] {
            assert!(!reports_memory(s, &regs(0xE820)), "{s:?}");
        }
    }

    #[test]
    fn configuration_a20_and_unsupported_calls() {
        let t = bios(64 * MIB);
        let mut r = regs(0xC000);
        let (flags, o) = call_with(&t.bios, Service::System, &mut r);
        assert_eq!((flags & CF, ah(&r), bx(&r)), (0, 0, symbols::SYSTEM_CONFIG));
        assert_eq!(o.es, Some(0xF000));
        let mut r = regs(0x2402);
        assert_eq!(call(&t.bios, Service::System, &mut r) & CF, 0);
        assert_eq!(ax(&r), 1);
        let mut r = regs(0x2403);
        call(&t.bios, Service::System, &mut r);
        assert_eq!(bx(&r), 3);
        for f in [0xE980, 0x5300, 0x5301, 0x5308, 0x8300] {
            let mut r = regs(f);
            assert_ne!(call(&t.bios, Service::System, &mut r) & CF, 0, "{f:#x}");
            assert_eq!(ah(&r), 0x86, "{f:#x}");
        }
        let mut r = regs(0x4F1C);
        assert_ne!(call(&t.bios, Service::System, &mut r) & CF, 0);
        assert_eq!(ax(&r), 0x4F1C);
        for f in [0x9000, 0x9102] {
            let mut r = regs(f);
            assert_eq!(call(&t.bios, Service::System, &mut r) & CF, 0);
            assert_eq!(ah(&r), 0);
        }
    }

    #[test]
    fn wait_sleeps_capped_at_a_second() {
        let t = bios(64 * MIB);
        let mut r = regs(0x8600);
        r.rdx = 20_000;
        let start = std::time::Instant::now();
        assert_eq!(call(&t.bios, Service::System, &mut r) & CF, 0);
        assert!(start.elapsed() >= Duration::from_millis(20));
        let mut r = regs(0x8600);
        r.rcx = 0x00FF;
        let start = std::time::Instant::now();
        call(&t.bios, Service::System, &mut r);
        let took = start.elapsed();
        assert!(took >= MAX_WAIT && took < MAX_WAIT * 3, "{took:?}");
    }
}
