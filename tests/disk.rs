//! The disk: boot-sector boot through the embedded firmware's INT 19h, the INT 13h services a
//! boot loader uses (the guest checks them, tests/guests/bootsector.s), what reaches the
//! image file, and bad images.

mod common;
use common::*;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::OnceLock;

const SECTOR: usize = 512;
/// The guest's first data sector, the sector it writes, the image's size in sectors.
const DATA_LBA: usize = 8;
const WRITE_LBA: usize = 20;
const SECTORS: usize = 32;
/// Debug-exit 0x10: every check passed.
const PASSED: i32 = 0x10 << 1 | 1;

/// The boot-sector guest, built once per variant (tests run in parallel).
fn sector_code(spin: bool) -> &'static [u8] {
    static PLAIN: OnceLock<Vec<u8>> = OnceLock::new();
    static SPIN: OnceLock<Vec<u8>> = OnceLock::new();
    if spin {
        SPIN.get_or_init(|| boot_sector("bootsector", &[("SPIN", 1)]))
    } else {
        PLAIN.get_or_init(|| boot_sector("bootsector", &[]))
    }
}

/// An image of `total` sectors: the guest's code, then sector n filled with the byte n up to
/// LBA 31, then zeros.
fn image(name: &str, total: usize, spin: bool) -> PathBuf {
    let code = sector_code(spin);
    assert!(
        code.len() <= DATA_LBA * SECTOR,
        "the guest overlaps its data"
    );
    let mut b = vec![0u8; total * SECTOR];
    b[..code.len()].copy_from_slice(code);
    for n in DATA_LBA..SECTORS {
        b[n * SECTOR..(n + 1) * SECTOR].fill(n as u8);
    }
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("disk-{name}.img"));
    std::fs::write(&p, b).expect("write image");
    p
}

fn sector(image: &[u8], lba: usize) -> &[u8] {
    &image[lba * SECTOR..(lba + 1) * SECTOR]
}

#[test]
fn a_boot_sector_uses_the_bios_services_and_its_writes_stay_in_memory() {
    if !kvm_available() {
        return;
    }
    let img = image("hd", SECTORS, false);
    let before = std::fs::read(&img).unwrap();
    let r = minipc(&["--disk", path_str(&img), "--timeout", "20", "--stats"]);
    assert_eq!(r.code, PASSED, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("boot sector: DL=80\r\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("INT 10h AH=13h"), "{}", r.stdout);
    assert!(r.stdout.contains("wrote LBA 20"), "{}", r.stdout);
    assert!(r.stdout.ends_with("all checks passed\r\n"), "{}", r.stdout);
    assert_eq!(std::fs::read(&img).unwrap(), before, "the image changed");
}

#[test]
fn a_floppy_image_boots_as_drive_0() {
    if !kvm_available() {
        return;
    }
    let img = image("floppy", 2880, false);
    let r = minipc(&["--disk", path_str(&img), "--timeout", "20"]);
    assert_eq!(r.code, PASSED, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(
        r.stdout.starts_with("boot sector: DL=00\r\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn with_rw_the_written_sector_reaches_the_file() {
    if !kvm_available() {
        return;
    }
    let img = image("rw", SECTORS, false);
    let arg = format!("{},rw", img.display());
    let r = minipc(&["--disk", &arg, "--timeout", "20"]);
    assert_eq!(r.code, PASSED, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    let after = std::fs::read(&img).unwrap();
    assert!(sector(&after, WRITE_LBA).iter().all(|b| *b == 0xA5));
    assert!(sector(&after, WRITE_LBA + 1)
        .iter()
        .all(|b| *b == WRITE_LBA as u8 + 1));
}

#[test]
fn rw_writes_survive_a_timeout() {
    if !kvm_available() {
        return;
    }
    let img = image("rw-timeout", SECTORS, true);
    let arg = format!("{},rw", img.display());
    let r = minipc(&["--disk", &arg, "--timeout", "3"]);
    assert_eq!(r.code, 124, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert!(r.stdout.contains("wrote LBA 20"), "{}", r.stdout);
    let after = std::fs::read(&img).unwrap();
    assert!(sector(&after, WRITE_LBA).iter().all(|b| *b == 0xA5));
}

#[test]
fn rw_writes_survive_sigterm() {
    if !kvm_available() {
        return;
    }
    let img = image("rw-sigterm", SECTORS, true);
    let arg = format!("{},rw", img.display());
    let mut child = std::process::Command::new(MINIPC)
        .args(["--disk", &arg, "--timeout", "30"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if line.contains("wrote LBA 20") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("wrote LBA 20"), "{seen}");
    // SAFETY: sending a signal to our own child.
    unsafe { kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    let after = std::fs::read(&img).unwrap();
    assert!(sector(&after, WRITE_LBA).iter().all(|b| *b == 0xA5));
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// With `--reboot`, the VMM writes the embedded firmware's interrupt vector table again at
/// a reset (src/bios/ivt.rs), as POST would: the guest broke INT 10h's vector and reset.
#[test]
fn a_reboot_writes_the_vectors_and_the_boot_descriptor_and_programs_the_pit_again() {
    if !kvm_available() {
        return;
    }
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-ivt-reboot.img");
    std::fs::write(&p, boot_sector("ivt_reboot", &[])).unwrap();
    let r = minipc(&["--disk", path_str(&p), "--reboot", "--timeout", "20"]);
    assert_eq!(
        r.code,
        0x31 * 2 + 1,
        "stdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.ends_with("second boot: INT 10h works\r\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn a_disk_without_a_boot_signature_says_so_and_halts() {
    if !kvm_available() {
        return;
    }
    let img = image("unsigned", SECTORS, false);
    let mut b = std::fs::read(&img).unwrap();
    b[510] = 0;
    b[511] = 0;
    std::fs::write(&img, b).unwrap();
    let r = minipc(&["--disk", path_str(&img), "--timeout", "20", "--stats"]);
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    assert_eq!(r.reason().as_deref(), Some("halted"), "{}", r.stderr);
    assert!(
        r.stdout.contains("no boot signature (55AA)") && r.stdout.contains(path_str(&img)),
        "{}",
        r.stdout
    );
    assert!(r.stdout.ends_with("No bootable device\r\n"), "{}", r.stdout);
}

#[test]
fn bad_disk_images_exit_2_naming_the_file() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let odd = dir.join("disk-odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let empty = dir.join("disk-empty.img");
    std::fs::write(&empty, []).unwrap();
    let missing = dir.join("disk-missing.img");
    let _ = std::fs::remove_file(&missing);
    let subdir = dir.join("disk-a-directory");
    std::fs::create_dir_all(&subdir).unwrap();
    for (p, why) in [
        (&odd, "multiple of 512 bytes"),
        (&empty, "at least one 512-byte sector"),
        (&missing, "cannot open"),
        (&subdir, "not a regular file or a block device"),
    ] {
        for rw in ["", ",rw"] {
            let arg = format!("{}{rw}", p.display());
            let r = minipc(&["--disk", &arg]);
            assert_eq!(r.code, 2, "{arg}: {}", r.stderr);
            let lines: Vec<&str> = r.stderr.lines().collect();
            assert_eq!(lines.len(), 1, "{arg}: {}", r.stderr);
            assert!(lines[0].contains(path_str(p)), "{arg}: {}", r.stderr);
            assert!(lines[0].contains(why), "{arg}: {}", r.stderr);
            assert_eq!(r.stdout, "");
        }
    }
}
