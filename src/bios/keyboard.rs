//! INT 16h: the keyboard is COM1's input, after the keys stuffed with AH=05h. A key is AX =
//! scan code << 8 | ASCII, the scan code of the US layout key that types the byte. AH=00h
//! waits in the firmware: with no key the handler halts until an interrupt and asks again.

use kvm_bindings::kvm_regs;

use super::bda;
use super::*;

/// Keys AH=05h can hold (the BDA's buffer holds 15).
const STUFFED_MAX: usize = 15;

/// Printable keys of the US layout, unshifted and shifted, from scan code 02h.
const ROWS: [(u8, &[u8], &[u8]); 4] = [
    (0x02, b"1234567890-=", b"!@#$%^&*()_+"),
    (0x10, b"qwertyuiop[]", b"QWERTYUIOP{}"),
    (0x1E, b"asdfghjkl;'`", b"ASDFGHJKL:\"~"),
    (0x2B, b"\\zxcvbnm,./", b"|ZXCVBNM<>?"),
];

/// The key (scan code << 8 | ASCII) that types byte `c` from the serial console.
pub fn key_for(c: u8) -> u16 {
    let scan = match c {
        0x1B => 0x01,
        0x08 | 0x7F => return 0x0E08,
        b'\t' => 0x0F,
        b'\r' | b'\n' => 0x1C,
        b' ' => 0x39,
        // Ctrl-A to Ctrl-Z: the letter's key.
        0x01..=0x1A => key_for(c + b'a' - 1) >> 8,
        _ => ROWS
            .iter()
            .find_map(|(first, lower, upper)| {
                let i = lower.iter().position(|k| *k == c);
                let i = i.or_else(|| upper.iter().position(|k| *k == c))?;
                Some(u16::from(first + i as u8))
            })
            .unwrap_or(0),
    };
    scan << 8 | u16::from(c)
}

impl Bios {
    /// The next key, taken or left in place.
    fn next_key(&self, take: bool) -> Option<u16> {
        let mut stuffed = lock(&self.keys);
        if take {
            if let Some(k) = stuffed.pop_front() {
                return Some(k);
            }
            return self.console.take().map(key_for);
        }
        if let Some(k) = stuffed.front() {
            return Some(*k);
        }
        self.console.peek().map(key_for)
    }

    pub(super) fn keyboard(&self, r: &mut kvm_regs) -> Outcome {
        match ah(r) {
            0x00 | 0x10 => match self.next_key(true) {
                Some(k) => set_ax(r, k),
                None => {
                    return Outcome {
                        handler_cf: true,
                        ..Default::default()
                    }
                }
            },
            0x01 | 0x11 => {
                return match self.next_key(false) {
                    Some(k) => {
                        set_ax(r, k);
                        Outcome {
                            clear: ZF,
                            ..Default::default()
                        }
                    }
                    None => Outcome {
                        set: ZF,
                        ..Default::default()
                    },
                }
            }
            0x02 => set_al(r, self.read_u8(bda::SHIFT_FLAGS)),
            0x12 => set_ax(r, u16::from(self.read_u8(bda::SHIFT_FLAGS))),
            // Typematic rate: accepted.
            0x03 => {}
            0x05 => {
                let mut stuffed = lock(&self.keys);
                if stuffed.len() < STUFFED_MAX {
                    stuffed.push_back(cx(r));
                    set_al(r, 0);
                } else {
                    set_al(r, 1);
                }
            }
            _ => {}
        }
        Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::memory::MIB;

    #[test]
    fn keys_have_their_scan_codes() {
        assert_eq!(key_for(b'a'), 0x1E61);
        assert_eq!(key_for(b'A'), 0x1E41);
        assert_eq!(key_for(b'1'), 0x0231);
        assert_eq!(key_for(b'?'), 0x353F);
        assert_eq!(key_for(b'\r'), 0x1C0D);
        assert_eq!(key_for(0x7F), 0x0E08);
        assert_eq!(key_for(0x1B), 0x011B);
        assert_eq!(key_for(0x03), 0x2E03);
        assert_eq!(key_for(b' '), 0x3920);
        assert_eq!(key_for(0xE9), 0x00E9);
    }

    #[test]
    fn check_peeks_read_takes_and_waits() {
        let t = bios(64 * MIB);
        // No key: AH=01h sets ZF; AH=00h tells the handler to wait, flags untouched.
        let mut r = regs(0x0100);
        assert_ne!(call(&t.bios, Service::Keyboard, &mut r) & ZF, 0);
        let mut r = regs(0x0000);
        let (flags, o) = call_with(&t.bios, Service::Keyboard, &mut r);
        assert!(o.handler_cf);
        assert_eq!(flags, 0x0202);
        t.console.type_in(b"kx");
        // AH=01h twice: the same key, still there.
        for _ in 0..2 {
            let mut r = regs(0x1100);
            assert_eq!(call(&t.bios, Service::Keyboard, &mut r) & ZF, 0);
            assert_eq!(ax(&r), 0x256B);
        }
        let mut r = regs(0x0000);
        let (_, o) = call_with(&t.bios, Service::Keyboard, &mut r);
        assert!(!o.handler_cf);
        assert_eq!(ax(&r), 0x256B);
        let mut r = regs(0x1000);
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(ax(&r), 0x2D78);
        let mut r = regs(0x0100);
        assert_ne!(call(&t.bios, Service::Keyboard, &mut r) & ZF, 0);
    }

    #[test]
    fn stuffed_keys_come_first_and_the_queue_is_bounded() {
        let t = bios(64 * MIB);
        t.console.type_in(b"s");
        let mut r = regs(0x0500);
        r.rcx = 0x3B00;
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(al(&r), 0);
        let mut r = regs(0x0100);
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(ax(&r), 0x3B00);
        let mut r = regs(0x0000);
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(ax(&r), 0x3B00);
        let mut r = regs(0x0000);
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(ax(&r), 0x1F73);
        for i in 0..STUFFED_MAX + 1 {
            let mut r = regs(0x0500);
            r.rcx = i as u64;
            call(&t.bios, Service::Keyboard, &mut r);
            assert_eq!(al(&r), u8::from(i == STUFFED_MAX));
        }
    }

    #[test]
    fn shift_flags_and_typematic() {
        let t = bios(64 * MIB);
        t.bios.write_u8(bda::SHIFT_FLAGS, 0x20);
        let mut r = regs(0x02FF);
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(ax(&r), 0x0220);
        let mut r = regs(0x12FF);
        call(&t.bios, Service::Keyboard, &mut r);
        assert_eq!(ax(&r), 0x0020);
        let mut r = regs(0x0305);
        assert_eq!(call(&t.bios, Service::Keyboard, &mut r), 0x0202);
    }
}
