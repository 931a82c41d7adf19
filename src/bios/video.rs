//! INT 10h: video. The screen is COM1: text goes out on the serial console, the cursor and
//! mode live in the BDA as on an 80x25 colour text display; VBE is not supported.

use kvm_bindings::kvm_regs;

use super::bda;
use super::*;

/// INT 10h AH=09h/0Ah repeat at most a screenful.
const MAX_REPEAT: u16 = 80 * 25;

impl Bios {
    fn cursor(&self, page: u8) -> (u8, u8) {
        let v = self.read_u16(bda::CURSOR_POS + 2 * u64::from(page & 7));
        ((v >> 8) as u8, v as u8)
    }

    fn set_cursor(&self, page: u8, row: u8, col: u8) {
        let v = u16::from(row) << 8 | u16::from(col);
        self.write_u16(bda::CURSOR_POS + 2 * u64::from(page & 7), v);
    }

    /// Teletype output of one byte: to COM1, the cursor of the active page follows.
    fn teletype(&self, c: u8) {
        self.console.write(&[c]);
        let page = self.read_u8(bda::ACTIVE_PAGE);
        let (mut row, mut col) = self.cursor(page);
        let last_row = bda::TEXT_ROWS - 1;
        match c {
            b'\r' => col = 0,
            b'\n' => row = row.saturating_add(1).min(last_row),
            0x08 => col = col.saturating_sub(1),
            0x07 => {}
            _ => {
                // The cursor may have been set anywhere (AH=02h): past the last column
                // means the next line.
                col = col.saturating_add(1);
                if u16::from(col) >= bda::TEXT_COLUMNS {
                    col = 0;
                    row = row.saturating_add(1).min(last_row);
                }
            }
        }
        self.set_cursor(page, row, col);
    }

    pub(super) fn video(&self, r: &mut kvm_regs, segs: &Segments) -> Outcome {
        match ah(r) {
            0x00 => {
                // Set mode: the text mode stays; the screen is cleared, the cursor homed.
                for page in 0..8 {
                    self.set_cursor(page, 0, 0);
                }
                set_al(r, 0x30);
            }
            0x01 => self.write_u16(bda::CURSOR_SHAPE, cx(r)),
            0x02 => self.set_cursor(bh(r), dh(r), dl(r)),
            0x03 => {
                let (row, col) = self.cursor(bh(r));
                set16(&mut r.rdx, u16::from(row) << 8 | u16::from(col));
                set16(&mut r.rcx, self.read_u16(bda::CURSOR_SHAPE));
                set_ax(r, 0);
            }
            0x05 => self.write_u8(bda::ACTIVE_PAGE, al(r) & 7),
            0x08 => set_ax(r, 0x0720),
            0x09 | 0x0A => {
                let n = cx(r).min(MAX_REPEAT);
                self.console.write(&vec![al(r); usize::from(n)]);
            }
            0x0E => self.teletype(al(r)),
            0x0F => {
                set_al(r, self.read_u8(bda::VIDEO_MODE));
                set_ah(r, bda::TEXT_COLUMNS as u8);
                set_hi(&mut r.rbx, self.read_u8(bda::ACTIVE_PAGE));
            }
            0x11 if al(r) == 0x30 => {
                // Font information: 16 scan lines a character, 25 rows; no font in the ROM.
                set16(&mut r.rcx, 16);
                set_lo(&mut r.rdx, bda::TEXT_ROWS - 1);
            }
            0x12 if bl(r) == 0x10 => {
                // EGA information: colour, 256 KiB, no feature bits or switches.
                set16(&mut r.rbx, 0x0003);
                set16(&mut r.rcx, 0);
            }
            0x13 => self.write_string(r, segs),
            0x1A if al(r) <= 1 => {
                // Display combination: VGA with a colour display (AL=00h reads, 01h sets).
                let get = al(r) == 0;
                set_al(r, 0x1A);
                if get {
                    set16(&mut r.rbx, 0x0008);
                }
            }
            0x4F => set_ax(r, 0x014F),
            _ => {}
        }
        Outcome::default()
    }

    /// AH=13h: CX characters at ES:BP; AL bit 1: characters and attributes alternate; AL
    /// bit 0: the cursor moves past the string (it starts at DH, DL of page BH).
    fn write_string(&self, r: &kvm_regs, segs: &Segments) {
        let mode = al(r);
        let step = if mode & 2 != 0 { 2 } else { 1 };
        let n = u64::from(cx(r)).min(u64::from(MAX_REPEAT));
        let page = bh(r);
        let saved = self.cursor(page);
        let active = self.read_u8(bda::ACTIVE_PAGE);
        self.write_u8(bda::ACTIVE_PAGE, page & 7);
        self.set_cursor(page, dh(r), dl(r));
        let bp = r.rbp & 0xFFFF;
        for i in 0..n {
            let at = linear(segs.es, (bp + i * step) & 0xFFFF);
            self.teletype(self.read_u8(at));
        }
        self.write_u8(bda::ACTIVE_PAGE, active);
        if mode & 1 == 0 {
            self.set_cursor(page, saved.0, saved.1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::memory::MIB;

    /// Found by fuzzing (`bios_services`): teletype output with the cursor set to row or
    /// column 255 (AH=02h takes any) overflowed moving it (a panic in debug builds).
    #[test]
    fn teletype_from_a_cursor_off_the_screen() {
        let t = bios(64 * MIB);
        for (c, cursor) in [(b'x', 0x0A_FF), (b'\n', 0xFF_00), (b'y', 0xFF_FF)] {
            let mut r = regs(0x0200);
            r.rdx = cursor;
            call(&t.bios, Service::Video, &mut r);
            call(&t.bios, Service::Video, &mut regs(0x0E00 | u64::from(c)));
            let mut r = regs(0x0300);
            call(&t.bios, Service::Video, &mut r);
            let want = if cursor == 0x0A_FF { 0x0B00 } else { 0x1800 };
            assert_eq!(r.rdx as u16, want, "{cursor:#x}");
        }
        assert_eq!(t.console.output(), "x\ny");
    }

    #[test]
    fn teletype_goes_to_com1_and_moves_the_cursor() {
        let t = bios(64 * MIB);
        for c in b"hi\r\nA" {
            call(&t.bios, Service::Video, &mut regs(0x0E00 | u64::from(*c)));
        }
        assert_eq!(t.console.output(), "hi\r\nA");
        let mut r = regs(0x0300);
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(
            (r.rdx as u16, r.rcx as u16, r.rax as u16),
            (0x0101, 0x0607, 0)
        );
        // Set the cursor, read it back; page 1 is separate.
        let mut r = regs(0x0200);
        r.rdx = 0x0A05;
        call(&t.bios, Service::Video, &mut r);
        let mut r = regs(0x0300);
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(r.rdx as u16, 0x0A05);
        let mut r = regs(0x0300);
        r.rbx = 0x0100;
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(r.rdx as u16, 0);
    }

    #[test]
    fn mode_and_display_queries() {
        let t = bios(64 * MIB);
        let mut r = regs(0x0F00);
        call(&t.bios, Service::Video, &mut r);
        assert_eq!((r.rax as u16, bh(&r)), (0x5003, 0));
        let mut r = regs(0x1A00);
        call(&t.bios, Service::Video, &mut r);
        assert_eq!((al(&r), bl(&r)), (0x1A, 0x08));
        let mut r = regs(0x1200);
        r.rbx = 0xFF10;
        r.rcx = 0x1234;
        call(&t.bios, Service::Video, &mut r);
        assert_eq!((bx(&r), cx(&r)), (0x0003, 0));
        let mut r = regs(0x0800);
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(ax(&r), 0x0720);
        for f in 0x4F00..=0x4F0A {
            let mut r = regs(f);
            call(&t.bios, Service::Video, &mut r);
            assert_ne!(ax(&r), 0x004F, "VBE {f:#x} claims support");
        }
        // Set mode, scroll, cursor shape: accepted, nothing printed.
        for f in [0x0003, 0x0601, 0x0700, 0x0100, 0x0501] {
            call(&t.bios, Service::Video, &mut regs(f));
        }
        assert_eq!(t.console.output(), "");
        assert_eq!(t.bios.read_u8(bda::ACTIVE_PAGE), 1);
    }

    #[test]
    fn repeated_characters_and_strings() {
        let t = bios(64 * MIB);
        let mut r = regs(0x0A2D);
        r.rcx = 3;
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(t.console.output(), "---");
        // "ok" at ES:BP = 1000:0010, with attributes (mode 3: the cursor moves).
        t.bios
            .mem
            .write_slice(b"o\x07k\x07", GuestAddress(0x10010))
            .unwrap();
        let mut r = regs(0x1303);
        r.rcx = 2;
        r.rbp = 0x10;
        r.rdx = 0x0204;
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(t.console.output(), "---ok");
        assert_eq!(t.bios.cursor(0), (2, 6));
        // Mode 0: the cursor stays.
        let mut r = regs(0x1300);
        r.rcx = 1;
        r.rbp = 0x10;
        call(&t.bios, Service::Video, &mut r);
        assert_eq!(t.console.output(), "---oko");
        assert_eq!(t.bios.cursor(0), (2, 6));
    }
}
