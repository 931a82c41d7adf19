//! INT 19h: load the boot sector of the disk at 0:7C00 (the handler jumps to it with DL =
//! the drive); INT 18h: no bootable device.

use kvm_bindings::kvm_regs;

use super::*;
use crate::block::{Media, SECTOR_SIZE};

/// Where a boot sector runs.
pub const BOOT_SECTOR_ADDR: u64 = 0x7C00;
const SIGNATURE: [u8; 2] = [0x55, 0xAA];

impl Bios {
    /// INT 19h: on success DL is the boot drive; otherwise the console says why and the
    /// handler's CF sends it to INT 18h.
    pub(super) fn boot(&self, r: &mut kvm_regs) -> Outcome {
        match self.load_boot_sector() {
            Ok(drive) => {
                set_lo(&mut r.rdx, drive);
                Outcome::default()
            }
            Err(why) => {
                self.console
                    .write(format!("minipc: cannot boot from the disk: {why}\r\n").as_bytes());
                Outcome {
                    handler_cf: true,
                    ..Default::default()
                }
            }
        }
    }

    /// Reads LBA 0 to 0:7C00 and checks its signature; returns the boot drive.
    fn load_boot_sector(&self) -> Result<u8, String> {
        let d = self.disk.as_deref().ok_or("no disk (--disk)")?;
        let mut sector = [0u8; SECTOR_SIZE as usize];
        d.read(0, &mut sector)
            .map_err(|e| format!("{}: {e}", d.path().display()))?;
        if sector[510..] != SIGNATURE {
            return Err(format!(
                "{}: no boot signature (55AA) at the end of its first sector",
                d.path().display()
            ));
        }
        self.mem
            .write_slice(&sector, GuestAddress(BOOT_SECTOR_ADDR))
            .map_err(|e| e.to_string())?;
        Ok(match d.media() {
            Media::Floppy { .. } => 0x00,
            Media::HardDisk => 0x80,
        })
    }

    /// INT 18h: the handler halts after this.
    pub(super) fn no_boot(&self) -> Outcome {
        self.console.write(b"No bootable device\r\n");
        Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::block::tests::image;
    use crate::memory::MIB;

    fn disk(name: &str, sectors: u64, signed: bool) -> (Arc<Disk>, std::path::PathBuf) {
        let p = image(name, sectors);
        if signed {
            let mut b = std::fs::read(&p).unwrap();
            b[510] = 0x55;
            b[511] = 0xAA;
            std::fs::write(&p, b).unwrap();
        }
        (Arc::new(Disk::open(&p, false).unwrap()), p)
    }

    #[test]
    fn boots_a_signed_sector_with_its_drive_in_dl() {
        for (sectors, drive) in [(100u64, 0x80u64), (2880, 0x00)] {
            let (d, p) = disk(&format!("boot-{sectors}"), sectors, true);
            let t = bios_with(64 * MIB, Some(d));
            let mut r = regs(0);
            r.rdx = 0xFF;
            let (_, o) = call_with(&t.bios, Service::Boot, &mut r);
            assert!(!o.handler_cf);
            assert_eq!(r.rdx, drive);
            assert_eq!(t.bios.read_u16(0x7DFE), 0xAA55);
            assert_eq!(t.bios.read_u8(0x7C00), 0);
            assert_eq!(t.console.output(), "");
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn no_disk_or_no_signature_says_why_and_goes_to_int_18h() {
        let t = bios(64 * MIB);
        let (_, o) = call_with(&t.bios, Service::Boot, &mut regs(0));
        assert!(o.handler_cf);
        assert!(
            t.console.output().contains("no disk"),
            "{}",
            t.console.output()
        );
        let (d, p) = disk("boot-unsigned", 8, false);
        let t = bios_with(64 * MIB, Some(d));
        let (_, o) = call_with(&t.bios, Service::Boot, &mut regs(0));
        assert!(o.handler_cf);
        let out = t.console.output();
        assert!(out.contains("no boot signature") && out.contains(&p.display().to_string()));
        assert_ne!(t.bios.read_u16(0x7DFE), 0xAA55);
        call(&t.bios, Service::NoBoot, &mut regs(0));
        assert!(t.console.output().ends_with("No bootable device\r\n"));
        let _ = std::fs::remove_file(p);
    }
}
