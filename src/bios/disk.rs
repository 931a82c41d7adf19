//! INT 13h: the disk (`--disk`) as drive 00h (a diskette image of a standard size) or 80h
//! (anything else), CHS and EDD 3.0 calls. Errors: CF=1 with the status in AH, which AH=01h
//! returns later (kept per drive class, and in the BDA). Without a disk, or for any other
//! drive number, every call fails with 01h.

use kvm_bindings::kvm_regs;

use super::bda;
use super::*;
use crate::block::{Geometry, Media, SECTOR_SIZE};

/// Status codes.
const BAD_COMMAND: u8 = 0x01;
const NOT_FOUND: u8 = 0x04;
const DMA_BOUNDARY: u8 = 0x09;

/// Sectors moved per host transfer (64 KiB).
const CHUNK_SECTORS: u64 = 128;

/// The drive's class: 0 diskettes, 1 hard disks (status slot and BDA byte).
fn class(drive: u8) -> usize {
    usize::from(drive >> 7)
}

impl Bios {
    /// The disk, when `drive` names it.
    fn drive(&self, drive: u8) -> Option<&Disk> {
        let d = self.disk.as_deref()?;
        let number = match d.media() {
            Media::Floppy { .. } => 0x00,
            Media::HardDisk => 0x80,
        };
        (drive == number).then_some(d)
    }

    fn record_status(&self, drive: u8, status: u8) {
        lock(&self.disk_status)[class(drive)] = status;
        let at = if drive & 0x80 != 0 {
            bda::DISK_STATUS
        } else {
            bda::FLOPPY_STATUS
        };
        self.write_u8(at, status);
    }

    pub(super) fn disk(&self, r: &mut kvm_regs, segs: &Segments) -> Outcome {
        let drive = dl(r);
        if ah(r) == 0x01 {
            // The last status, which this call then clears.
            let last = std::mem::take(&mut lock(&self.disk_status)[class(drive)]);
            self.record_status(drive, 0);
            set_ah(r, last);
            return if last == 0 { ok() } else { fail(r, last) };
        }
        let result = match self.drive(drive) {
            Some(d) => self.disk_op(d, r, segs),
            None => Err(BAD_COMMAND),
        };
        match result {
            Ok(es) => {
                self.record_status(drive, 0);
                Outcome { es, ..ok() }
            }
            Err(code) => {
                self.record_status(drive, code);
                fail(r, code)
            }
        }
    }

    /// One call on the disk; on success the call has set AH (and its other results), and
    /// returns the caller's new ES if it has one.
    fn disk_op(&self, d: &Disk, r: &mut kvm_regs, segs: &Segments) -> Result<Option<u16>, u8> {
        match ah(r) {
            // Reset, seek, alternate reset, test ready, recalibrate: nothing to do.
            0x00 | 0x0C | 0x0D | 0x10 | 0x11 => set_ah(r, 0),
            0x02..=0x04 => self.chs(d, r, segs)?,
            0x08 => return Ok(self.parameters(d, r)),
            0x15 => {
                match d.media() {
                    // A diskette drive without change-line support.
                    Media::Floppy { .. } => set_ah(r, 0x01),
                    Media::HardDisk => {
                        let n = d.sectors().min(u64::from(u32::MAX)) as u32;
                        set16(&mut r.rcx, (n >> 16) as u16);
                        set16(&mut r.rdx, n as u16);
                        set_ah(r, 0x03);
                    }
                }
            }
            0x41 => {
                if bx(r) != 0x55AA {
                    return Err(BAD_COMMAND);
                }
                // EDD 3.0: extended access (42h-44h, 47h, 48h) and the EDD functions.
                set16(&mut r.rbx, 0xAA55);
                set_ah(r, 0x30);
                set16(&mut r.rcx, 0x0005);
            }
            0x42 | 0x43 | 0x44 | 0x47 => self.extended(d, r, segs)?,
            0x48 => self.edd_parameters(d, r, segs)?,
            _ => return Err(BAD_COMMAND),
        }
        Ok(None)
    }

    /// AH=02h read, 03h write, 04h verify: AL sectors at cylinder CH (+ CL bits 6-7),
    /// sector CL bits 0-5, head DH; the buffer at ES:BX.
    fn chs(&self, d: &Disk, r: &mut kvm_regs, segs: &Segments) -> Result<(), u8> {
        let count = u64::from(al(r));
        let g = d.chs_geometry();
        let cylinder = u32::from(ch(r)) | u32::from(cl(r) & 0xC0) << 2;
        let sector = u32::from(cl(r) & 0x3F);
        let head = u32::from(dh(r));
        set_al(r, 0);
        if count == 0 || count > 128 || sector == 0 || sector > g.sectors || head >= g.heads {
            return Err(BAD_COMMAND);
        }
        if cylinder >= g.cylinders {
            return Err(NOT_FOUND);
        }
        let lba = u64::from((cylinder * g.heads + head) * g.sectors + sector - 1);
        d.check_range(lba, count).map_err(|_| NOT_FOUND)?;
        if ah(r) != 0x04 {
            let addr = linear(segs.es, u64::from(bx(r)));
            let len = count * SECTOR_SIZE;
            if (addr & 0xFFFF) + len > 0x1_0000 {
                return Err(DMA_BOUNDARY);
            }
            self.transfer(d, ah(r) == 0x03, lba, count, addr)
                .map_err(|(_, code)| code)?;
        }
        set_al(r, count as u8);
        set_ah(r, 0);
        Ok(())
    }

    /// Moves `count` sectors between the disk at `lba` and guest RAM at `addr`; on failure,
    /// the sectors moved and the status.
    fn transfer(
        &self,
        d: &Disk,
        write: bool,
        lba: u64,
        count: u64,
        addr: u64,
    ) -> Result<(), (u64, u8)> {
        let len = count.checked_mul(SECTOR_SIZE).ok_or((0, NOT_FOUND))?;
        if !self.ram_buffer(addr, len) {
            return Err((0, NOT_FOUND));
        }
        d.check_range(lba, count).map_err(|_| (0, NOT_FOUND))?;
        let mut done = 0;
        let mut buf = vec![0u8; (count.min(CHUNK_SECTORS) * SECTOR_SIZE) as usize];
        while done < count {
            let n = (count - done).min(CHUNK_SECTORS);
            let chunk = &mut buf[..(n * SECTOR_SIZE) as usize];
            let at = GuestAddress(addr + done * SECTOR_SIZE);
            let r = if write {
                self.mem
                    .read_slice(chunk, at)
                    .map_err(|_| ())
                    .and_then(|_| d.write(lba + done, chunk).map_err(|_| ()))
            } else {
                d.read(lba + done, chunk)
                    .map_err(|_| ())
                    .and_then(|_| self.mem.write_slice(chunk, at).map_err(|_| ()))
            };
            if r.is_err() {
                crate::log::debug(format_args!(
                    "INT 13h: {} of sectors {}+{n} failed",
                    if write { "write" } else { "read" },
                    lba + done
                ));
                return Err((done, NOT_FOUND));
            }
            done += n;
        }
        Ok(())
    }

    /// AH=08h: the geometry CHS calls see, and the drive count of the class; for a diskette
    /// its type in BL and ES:DI at the diskette parameter table (the new ES is returned).
    fn parameters(&self, d: &Disk, r: &mut kvm_regs) -> Option<u16> {
        let g: Geometry = d.chs_geometry();
        let max_cyl = g.cylinders - 1;
        set16(
            &mut r.rcx,
            ((max_cyl & 0xFF) as u16) << 8 | ((max_cyl >> 2) & 0xC0) as u16 | g.sectors as u16,
        );
        set_hi(&mut r.rdx, (g.heads - 1) as u8);
        set_lo(&mut r.rdx, 1);
        set_ax(r, 0);
        if let Media::Floppy { drive_type } = d.media() {
            set16(&mut r.rbx, u16::from(drive_type));
            set16(&mut r.rdi, symbols::FLOPPY_DPT);
            return Some(0xF000);
        }
        None
    }

    /// AH=42h read, 43h write, 44h verify, 47h seek, with the disk address packet at DS:SI:
    /// size (16, or 24 with a 64-bit flat buffer address used when the segment:offset is
    /// FFFF:FFFF), block count (updated with the blocks moved), buffer, LBA.
    fn extended(&self, d: &Disk, r: &mut kvm_regs, segs: &Segments) -> Result<(), u8> {
        let packet = linear(segs.ds, r.rsi & 0xFFFF);
        let size = self.read_u8(packet);
        if size < 0x10 {
            return Err(BAD_COMMAND);
        }
        let count = u64::from(self.read_u16(packet + 2));
        let far = self.read_u32(packet + 4);
        let lba = self
            .mem
            .read_obj::<u64>(GuestAddress(packet + 8))
            .unwrap_or(u64::MAX);
        let addr = if far == u32::MAX && size >= 0x18 {
            self.mem
                .read_obj::<u64>(GuestAddress(packet + 16))
                .unwrap_or(u64::MAX)
        } else {
            u64::from(far >> 16) * 16 + u64::from(far & 0xFFFF)
        };
        match ah(r) {
            0x47 => {
                if lba >= d.sectors() {
                    return Err(NOT_FOUND);
                }
            }
            0x44 => {
                if d.check_range(lba, count).is_err() {
                    self.write_u16(packet + 2, 0);
                    return Err(NOT_FOUND);
                }
            }
            f => {
                if let Err((done, code)) = self.transfer(d, f == 0x43, lba, count, addr) {
                    self.write_u16(packet + 2, done as u16);
                    return Err(code);
                }
            }
        }
        set_ah(r, 0);
        Ok(())
    }

    /// AH=48h: drive parameters into the buffer at DS:SI, as much of the EDD 3.0 result
    /// (0x1A, 0x1E or 0x42 bytes) as the size the caller put in its first word allows.
    fn edd_parameters(&self, d: &Disk, r: &mut kvm_regs, segs: &Segments) -> Result<(), u8> {
        let at = linear(segs.ds, r.rsi & 0xFFFF);
        let room = self.read_u16(at);
        let size: u16 = match room {
            0x42.. => 0x42,
            0x1E.. => 0x1E,
            0x1A.. => 0x1A,
            _ => return Err(BAD_COMMAND),
        };
        if !self.ram_buffer(at, u64::from(size)) {
            return Err(BAD_COMMAND);
        }
        let g = d.geometry();
        let floppy = matches!(d.media(), Media::Floppy { .. });
        let mut b = Vec::with_capacity(0x42);
        b.extend_from_slice(&size.to_le_bytes());
        // Flags: the geometry is valid (bit 1); a diskette has removable media (bits 2, 6).
        let flags: u16 = if floppy { 0x0046 } else { 0x0002 };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&g.cylinders.to_le_bytes());
        b.extend_from_slice(&g.heads.to_le_bytes());
        b.extend_from_slice(&g.sectors.to_le_bytes());
        b.extend_from_slice(&d.sectors().to_le_bytes());
        b.extend_from_slice(&(SECTOR_SIZE as u16).to_le_bytes());
        // No device parameter table extension.
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        // Device path: key, length, reserved; the legacy controller the drive number names
        // (ISA, ATA or the diskette controller), its base port, the master device.
        let path_start = b.len();
        b.extend_from_slice(&0xBEDDu16.to_le_bytes());
        b.extend_from_slice(&[0x24, 0, 0, 0]);
        b.extend_from_slice(b"ISA ");
        b.extend_from_slice(if floppy { b"FDC     " } else { b"ATA     " });
        let port: u16 = if floppy { 0x3F0 } else { 0x1F0 };
        b.extend_from_slice(&u64::from(port).to_le_bytes());
        b.extend_from_slice(&[0u8; 8]);
        b.push(0);
        let sum = b[path_start..].iter().fold(0u8, |s, x| s.wrapping_add(*x));
        b.push(sum.wrapping_neg());
        debug_assert_eq!(b.len(), 0x42);
        b.truncate(usize::from(size));
        self.mem
            .write_slice(&b, GuestAddress(at))
            .map_err(|_| BAD_COMMAND)?;
        set_ah(r, 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::block::tests::image;
    use crate::memory::MIB;

    fn with_disk(name: &str, sectors: u64) -> (TestBios, std::path::PathBuf) {
        let p = image(name, sectors);
        let d = Arc::new(Disk::open(&p, false).unwrap());
        (bios_with(64 * MIB, Some(d)), p)
    }

    fn disk_call(t: &TestBios, r: &mut kvm_regs) -> bool {
        call(&t.bios, Service::Disk, r) & CF != 0
    }

    fn chs_regs(func: u8, count: u8, cyl: u16, head: u8, sector: u8, drive: u8) -> kvm_regs {
        kvm_regs {
            rax: u64::from(func) << 8 | u64::from(count),
            rcx: u64::from(cyl & 0xFF) << 8 | u64::from((cyl >> 2) as u8 & 0xC0 | sector),
            rdx: u64::from(head) << 8 | u64::from(drive),
            rbx: 0x0200,
            ..Default::default()
        }
    }

    /// Guest memory at ES:0x200 (0x10200).
    fn buffer(t: &TestBios, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        t.bios
            .mem
            .read_slice(&mut v, GuestAddress(0x10200))
            .unwrap();
        v
    }

    #[test]
    fn without_a_disk_every_call_fails_cleanly() {
        let t = bios(64 * MIB);
        for f in [0x00u64, 0x02, 0x08, 0x15, 0x41, 0x42, 0x48] {
            for drive in [0x00u64, 0x80, 0x81] {
                let mut r = regs(f << 8 | 1);
                r.rdx = drive;
                r.rbx = 0x55AA;
                assert!(disk_call(&t, &mut r), "AH={f:#x} DL={drive:#x}");
                assert_eq!(ah(&r), BAD_COMMAND);
            }
        }
        // The status of the last call, then success.
        let mut r = regs(0x0100);
        r.rdx = 0x80;
        assert!(disk_call(&t, &mut r));
        assert_eq!(ah(&r), BAD_COMMAND);
        let mut r = regs(0x0100);
        r.rdx = 0x80;
        assert!(!disk_call(&t, &mut r));
        assert_eq!(ah(&r), 0);
    }

    #[test]
    fn chs_reads_writes_and_verifies() {
        let (t, p) = with_disk("chs", 16 * 63 * 2);
        // Cylinder 1, head 0, sector 1 = LBA 1008 (byte 0xF0); two sectors.
        let mut r = chs_regs(0x02, 2, 1, 0, 1, 0x80);
        assert!(!disk_call(&t, &mut r));
        assert_eq!(ax(&r), 0x0002);
        let b = buffer(&t, 1024);
        assert!(b[..512].iter().all(|x| *x == 0xF0) && b[512..].iter().all(|x| *x == 0xF1));
        // Write LBA 2 from the buffer, read it back.
        let mut r = chs_regs(0x03, 1, 0, 0, 3, 0x80);
        assert!(!disk_call(&t, &mut r));
        let mut r = chs_regs(0x02, 1, 0, 0, 3, 0x80);
        t.bios
            .mem
            .write_slice(&[0; 512], GuestAddress(0x10200))
            .unwrap();
        assert!(!disk_call(&t, &mut r));
        assert!(buffer(&t, 512).iter().all(|x| *x == 0xF0));
        // Verify checks the range only.
        let mut r = chs_regs(0x04, 63, 0, 15, 1, 0x80);
        assert!(!disk_call(&t, &mut r));
        assert_eq!(al(&r), 63);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn chs_errors() {
        let (t, p) = with_disk("chs-err", 16 * 63 * 2);
        let cases = [
            (chs_regs(0x02, 0, 0, 0, 1, 0x80), BAD_COMMAND),
            (chs_regs(0x02, 1, 0, 0, 0, 0x80), BAD_COMMAND),
            (chs_regs(0x02, 1, 0, 0, 64, 0x80), BAD_COMMAND),
            (chs_regs(0x02, 1, 0, 16, 1, 0x80), BAD_COMMAND),
            (chs_regs(0x02, 1, 2, 0, 1, 0x80), NOT_FOUND),
            (chs_regs(0x02, 2, 1, 15, 63, 0x80), NOT_FOUND),
            (chs_regs(0x02, 1, 0, 0, 1, 0x81), BAD_COMMAND),
            (chs_regs(0x02, 1, 0, 0, 1, 0x00), BAD_COMMAND),
        ];
        for (mut r, code) in cases {
            let before = r;
            assert!(disk_call(&t, &mut r), "{before:x?}");
            assert_eq!(ah(&r), code, "{before:x?}");
            if dl(&before) == 0x80 {
                assert_eq!(al(&r), 0, "no sectors moved");
            }
        }
        // Across a 64 KiB boundary: ES:BX = 1000:FF00, two sectors.
        let mut r = chs_regs(0x02, 2, 0, 0, 1, 0x80);
        r.rbx = 0xFF00;
        assert!(disk_call(&t, &mut r));
        assert_eq!(ah(&r), DMA_BOUNDARY);
        // AH=01h reports it, then clears it.
        let mut r = regs(0x0100);
        r.rdx = 0x80;
        assert!(disk_call(&t, &mut r));
        assert_eq!(ah(&r), DMA_BOUNDARY);
        assert_eq!(t.bios.read_u8(bda::DISK_STATUS), 0);
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn hard_disk_and_floppy_parameters() {
        let (t, p) = with_disk("params", 16 * 63 * 3 + 7);
        let mut r = regs(0x0800);
        r.rdx = 0x80;
        assert!(!disk_call(&t, &mut r));
        assert_eq!((ax(&r), cx(&r), dx(&r)), (0, 0x023F, 0x0F01));
        let mut r = regs(0x1500);
        r.rdx = 0x80;
        assert!(!disk_call(&t, &mut r));
        assert_eq!((ah(&r), cx(&r), dx(&r)), (3, 0, 16 * 63 * 3 + 7));
        let _ = std::fs::remove_file(p);

        let (t, p) = with_disk("params-floppy", 2880);
        let mut r = regs(0x0800);
        let (flags, o) = call_with(&t.bios, Service::Disk, &mut r);
        assert_eq!(flags & CF, 0);
        assert_eq!((ax(&r), cx(&r), dx(&r), bl(&r)), (0, 0x4F12, 0x0101, 4));
        assert_eq!((o.es, r.rdi as u16), (Some(0xF000), symbols::FLOPPY_DPT));
        let mut r = regs(0x1500);
        assert!(!disk_call(&t, &mut r));
        assert_eq!(ah(&r), 1);
        // A floppy is drive 00h only.
        let mut r = regs(0x0800);
        r.rdx = 0x80;
        assert!(disk_call(&t, &mut r));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn large_disks_cap_chs_at_1024_cylinders() {
        let p = std::env::temp_dir().join(format!("minipc-disk-{}-big", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(2000 * 16 * 63 * 512).unwrap();
        let t = bios_with(64 * MIB, Some(Arc::new(Disk::open(&p, false).unwrap())));
        let mut r = regs(0x0800);
        r.rdx = 0x80;
        assert!(!disk_call(&t, &mut r));
        assert_eq!(cx(&r), 0xFFFF);
        // EDD reaches the last sector.
        write_packet(&t, 16, 1, 0x0000_2000, 2000 * 16 * 63 - 1, 0);
        let mut r = ext_regs(0x42);
        assert!(!disk_call(&t, &mut r));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn edd_check() {
        let (t, p) = with_disk("edd-check", 64);
        let mut r = regs(0x4100);
        r.rdx = 0x80;
        r.rbx = 0x55AA;
        assert!(!disk_call(&t, &mut r));
        assert_eq!((ah(&r), bx(&r), cx(&r) & 5), (0x30, 0xAA55, 5));
        let mut r = regs(0x4100);
        r.rdx = 0x80;
        assert!(disk_call(&t, &mut r));
        // Linux probes 80h-8Fh.
        let mut r = regs(0x4100);
        r.rdx = 0x81;
        r.rbx = 0x55AA;
        assert!(disk_call(&t, &mut r));
        assert_eq!(bx(&r), 0x55AA);
        let _ = std::fs::remove_file(p);
    }

    /// A disk address packet at DS:SI = 1000:0100 (0x10100).
    fn write_packet(t: &TestBios, size: u8, count: u16, far: u32, lba: u64, flat: u64) {
        let mut p = vec![size, 0];
        p.extend_from_slice(&count.to_le_bytes());
        p.extend_from_slice(&far.to_le_bytes());
        p.extend_from_slice(&lba.to_le_bytes());
        p.extend_from_slice(&flat.to_le_bytes());
        t.bios.mem.write_slice(&p, GuestAddress(0x10100)).unwrap();
    }

    fn ext_regs(func: u8) -> kvm_regs {
        kvm_regs {
            rax: u64::from(func) << 8,
            rdx: 0x80,
            rsi: 0x100,
            ..Default::default()
        }
    }

    fn packet_count(t: &TestBios) -> u16 {
        t.bios.read_u16(0x10102)
    }

    #[test]
    fn extended_read_write_verify_seek() {
        let (t, p) = with_disk("ext", 64);
        // 16-byte packet: 3 sectors from LBA 5 to 2000:0000.
        write_packet(&t, 16, 3, 0x2000_0000, 5, 0);
        let mut r = ext_regs(0x42);
        assert!(!disk_call(&t, &mut r));
        assert_eq!(ah(&r), 0);
        let mut b = vec![0u8; 1536];
        t.bios
            .mem
            .read_slice(&mut b, GuestAddress(0x20000))
            .unwrap();
        assert!(b
            .chunks(512)
            .enumerate()
            .all(|(i, s)| s.iter().all(|x| *x == 5 + i as u8)));
        // 24-byte packet with FFFF:FFFF: the flat address above 1 MiB.
        write_packet(&t, 24, 1, u32::MAX, 9, 0x10_0200);
        let mut r = ext_regs(0x42);
        assert!(!disk_call(&t, &mut r));
        assert_eq!(t.bios.read_u8(0x10_0200), 9);
        // Write LBA 63 from there, read it back; the image is untouched (no ,rw).
        write_packet(&t, 24, 1, u32::MAX, 63, 0x10_0200);
        let mut r = ext_regs(0x43);
        assert!(!disk_call(&t, &mut r));
        write_packet(&t, 16, 1, 0x2000_0000, 63, 0);
        let mut r = ext_regs(0x42);
        assert!(!disk_call(&t, &mut r));
        assert_eq!(t.bios.read_u8(0x20000), 9);
        assert_eq!(std::fs::read(&p).unwrap()[63 * 512], 63);
        // Verify and seek within the disk.
        write_packet(&t, 16, 64, 0, 0, 0);
        assert!(!disk_call(&t, &mut ext_regs(0x44)));
        write_packet(&t, 16, 0, 0, 63, 0);
        assert!(!disk_call(&t, &mut ext_regs(0x47)));
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn extended_errors() {
        let (t, p) = with_disk("ext-err", 64);
        let cases: [(u8, u8, u16, u32, u64, u64, u8); 7] = [
            // Past the end: nothing moved.
            (0x42, 16, 2, 0x2000_0000, 63, 0, NOT_FOUND),
            (0x42, 16, 1, 0x2000_0000, u64::MAX, 0, NOT_FOUND),
            // Into the VGA hole and the ROM, past RAM.
            (0x42, 16, 1, 0xA000_0000, 0, 0, NOT_FOUND),
            (0x42, 16, 8, 0xF000_0000, 0, 0, NOT_FOUND),
            (0x42, 24, 1, u32::MAX, 0, 0x40_0000, NOT_FOUND),
            // A packet too short; seek past the end.
            (0x42, 8, 1, 0x2000_0000, 0, 0, BAD_COMMAND),
            (0x47, 16, 0, 0, 64, 0, NOT_FOUND),
        ];
        for (f, size, count, far, lba, flat, code) in cases {
            write_packet(&t, size, count, far, lba, flat);
            let mut r = ext_regs(f);
            assert!(disk_call(&t, &mut r), "AH={f:#x} {far:#x} {lba}");
            assert_eq!(ah(&r), code, "AH={f:#x} {far:#x} {lba}");
            if code == NOT_FOUND && f == 0x42 {
                assert_eq!(packet_count(&t), 0);
            }
        }
        let _ = std::fs::remove_file(p);
    }

    #[test]
    fn drive_parameters_fit_the_callers_buffer() {
        let (t, p) = with_disk("edd-params", 16 * 63 * 5);
        for (room, size) in [
            (0x1Au16, 0x1A),
            (0x1E, 0x1E),
            (0x30, 0x1E),
            (0x42, 0x42),
            (0x80, 0x42),
        ] {
            t.bios
                .mem
                .write_slice(&[0xCC; 0x50], GuestAddress(0x10100))
                .unwrap();
            t.bios.write_u16(0x10100, room);
            let mut r = ext_regs(0x48);
            assert!(!disk_call(&t, &mut r), "{room:#x}");
            let mut b = vec![0u8; 0x50];
            t.bios
                .mem
                .read_slice(&mut b, GuestAddress(0x10100))
                .unwrap();
            assert_eq!(u16::from_le_bytes([b[0], b[1]]), size);
            assert!(b[size as usize..].iter().all(|x| *x == 0xCC), "{room:#x}");
            let d = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            assert_eq!((d(4), d(8), d(12)), (5, 16, 63));
            assert_eq!(d(16), 16 * 63 * 5);
            assert_eq!(u16::from_le_bytes([b[24], b[25]]), 512);
            if size == 0x42 {
                assert_eq!(&b[0x1E..0x20], &[0xDD, 0xBE]);
                assert_eq!(&b[0x24..0x28], b"ISA ");
                let sum = b[0x1E..0x42].iter().fold(0u8, |s, x| s.wrapping_add(*x));
                assert_eq!(sum, 0, "device path checksum");
            }
        }
        t.bios.write_u16(0x10100, 0x19);
        let mut r = ext_regs(0x48);
        assert!(disk_call(&t, &mut r));
        assert_eq!(ah(&r), BAD_COMMAND);
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod fuzz {
    use super::super::fuzz::{
        changes, check_registers, flags_word, only_wrote, regs, segments, snapshot,
    };
    use super::super::tests::*;
    use super::*;
    use crate::block::tests::image;
    use crate::fuzz::{put_le, run, Rng};
    use crate::memory::MIB;

    const FUNCTIONS: [u8; 17] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x08, 0x0C, 0x0D, 0x10, 0x11, 0x15, 0x41, 0x42, 0x43, 0x44,
        0x47, 0x48,
    ];

    /// A disk address packet with fuzzed fields: size, count, segment:offset, LBA, flat
    /// address.
    fn packet(rng: &mut Rng, sectors: u64) -> Vec<u8> {
        let mut p = vec![0u8; 24];
        let any = rng.byte();
        p[0] = *rng.pick(&[0x10, 0x18, 0x10, 0x0F, 0x20, any]);
        let count = match rng.below(3) {
            0 => rng.below(9),
            1 => rng.below(200),
            _ => rng.interesting(),
        };
        put_le(&mut p, 2, 2, count);
        let far = match rng.below(4) {
            0 => 0xFFFF_FFFF,
            1 => rng.below(0xA000) << 16 | rng.below(0x1_0000),
            2 => 0x3000_0000 | rng.below(0x100) << 8,
            _ => rng.interesting(),
        };
        put_le(&mut p, 4, 4, far);
        let lba = match rng.below(3) {
            0 => rng.below(sectors + 2),
            1 => sectors.wrapping_sub(rng.below(4)),
            _ => rng.interesting(),
        };
        put_le(&mut p, 8, 8, lba);
        let flat = match rng.below(3) {
            0 => 0x10_0000 + rng.below(MIB),
            1 => (0x9_0000 + rng.below(0x8_0000)) & !0x1FF,
            _ => rng.interesting(),
        };
        put_le(&mut p, 16, 8, flat);
        p
    }

    /// The buffer a read puts sectors in, from the registers and packet before the call.
    fn read_buffer(b: &Bios, r: &kvm_regs, segs: &Segments) -> Option<(u64, u64)> {
        match ah(r) {
            0x02 => {
                let at = linear(segs.es, u64::from(bx(r)));
                Some((at, at + u64::from(al(r)) * SECTOR_SIZE))
            }
            0x42 => {
                let p = linear(segs.ds, r.rsi & 0xFFFF);
                let size = b.read_u8(p);
                let count = u64::from(b.read_u16(p + 2));
                let far = b.read_u32(p + 4);
                let at = if far == u32::MAX && size >= 0x18 {
                    b.mem.read_obj::<u64>(GuestAddress(p + 16)).ok()?
                } else {
                    u64::from(far >> 16) * 16 + u64::from(far & 0xFFFF)
                };
                Some((at, at.saturating_add(count * SECTOR_SIZE)))
            }
            _ => None,
        }
    }

    /// INT 13h with random registers, packets and segment bases on a hard disk, a diskette
    /// and no disk; every byte written must be the transfer buffer, the packet's count, the
    /// drive parameters' buffer, the BDA's status bytes or the stacked FLAGS.
    #[test]
    fn int13() {
        let images: Vec<(std::path::PathBuf, u64)> = [("fuzz-hd", 16 * 63 + 5), ("fuzz-fd", 720)]
            .iter()
            .map(|&(name, n)| (image(name, n), n))
            .collect();
        run("int13", 1_500, |rng| {
            let which = rng.index(images.len() + 1);
            let disk = images
                .get(which)
                .map(|(p, _)| Arc::new(Disk::open(p, false).unwrap()));
            let sectors = images.get(which).map_or(64, |(_, n)| *n);
            let t = bios_with(64 * MIB, disk);
            let before = snapshot(&t.bios);
            let mut allowed = vec![
                (bda::FLOPPY_STATUS, bda::FLOPPY_STATUS + 1),
                (bda::DISK_STATUS, bda::DISK_STATUS + 1),
            ];
            for _ in 0..=rng.below(6) {
                let mut r = regs(rng);
                if !rng.one_in(10) {
                    set_ah(&mut r, *rng.pick(&FUNCTIONS));
                }
                if !rng.one_in(4) {
                    // The disk's own drive number half of the time.
                    let own = if which == 1 { 0x00 } else { 0x80 };
                    set_lo(&mut r.rdx, *rng.pick(&[own, own, 0x00, 0x80, 0x81]));
                }
                if ah(&r) == 0x41 && rng.one_in(2) {
                    set16(&mut r.rbx, 0x55AA);
                }
                if matches!(ah(&r), 0x02..=0x04) && rng.one_in(2) {
                    // A transfer that may well succeed: a few sectors of the first
                    // cylinders into a buffer that does not cross 64 KiB.
                    set_al(&mut r, 1 + rng.below(8) as u8);
                    set16(&mut r.rcx, (rng.below(3) << 8 | (1 + rng.below(9))) as u16);
                    set_hi(&mut r.rdx, rng.below(2) as u8);
                    set16(&mut r.rbx, (rng.below(16) * 0x200) as u16);
                }
                let mut segs = segments(rng);
                if rng.one_in(2) {
                    segs.ds = 0x1_0000;
                    segs.es = 0x2_0000;
                }
                let p = linear(segs.ds, r.rsi & 0xFFFF);
                if rng.one_in(2) && t.bios.ram_buffer(p, 24) {
                    let bytes = packet(rng, sectors);
                    t.bios.mem.write_slice(&bytes, GuestAddress(p)).unwrap();
                    allowed.push((p, p + 24));
                }
                if ah(&r) == 0x48 && rng.one_in(2) {
                    let any = rng.next() as u16;
                    t.bios
                        .write_u16(p, *rng.pick(&[0x1A, 0x1E, 0x42, 0x80, any]));
                }
                let before_regs = r;
                // Before the call: a read may land on its own packet.
                let buffer = read_buffer(&t.bios, &before_regs, &segs);
                let o = t.bios.call(Service::Disk, &mut r, &segs);
                let outputs: &[&str] = &["rax", "rbx", "rcx", "rdx", "rdi"];
                check_registers(&before_regs, &r, outputs, false, &o);
                if ah(&before_regs) != 0x08 {
                    assert_eq!(before_regs.rdi, r.rdi, "DI changed");
                }
                assert!(o.es.is_none() || ah(&before_regs) == 0x08);
                if o.set & CF != 0 {
                    assert_ne!(ah(&r), 0, "a failure with status 0");
                }
                allowed.push(flags_word(&before_regs, &segs));
                allowed.push((p + 2, p + 4));
                if ah(&before_regs) == 0x48 {
                    allowed.push((p, p + 0x42));
                }
                if let Some((s, e)) = buffer {
                    allowed.push((s, e));
                    if o.set & CF == 0 && e > s {
                        assert!(t.bios.ram_buffer(s, e - s), "read into {s:#x}-{e:#x}");
                    }
                }
            }
            only_wrote(&changes(&before, &snapshot(&t.bios)), &allowed, "INT 13h");
        });
        for (p, _) in images {
            let _ = std::fs::remove_file(p);
        }
    }
}
