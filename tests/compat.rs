//! QEMU's own firmware on our machine: SeaBIOS (Debian's `seabios` package) must find the
//! chipset it expects (fw_cfg, i440fx/PIIX, PAM shadowing, CMOS) and reach its boot menu on
//! the serial console.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

#[test]
fn seabios_boots_to_its_boot_attempts_on_com1() {
    if !kvm_available() {
        return;
    }
    if !precondition(
        std::path::Path::new(SEABIOS).exists(),
        &format!("{SEABIOS} is missing (apt-get install seabios; .ci/run installs it)"),
    ) {
        return;
    }
    let mut child = Command::new(MINIPC)
        .args(["--firmware", SEABIOS, "--timeout", "120", "--cpus", "2"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(out).split(b'\n') {
        let line = String::from_utf8_lossy(&line.unwrap()).into_owned();
        let done = line.contains("No bootable device");
        seen.push(line);
        if done {
            break;
        }
    }
    // SAFETY: signalling our own child.
    unsafe { kill(child.id() as i32, 15) };
    let status = child.wait().unwrap();
    let text = seen.join("\n");
    assert!(text.contains("SeaBIOS (version"), "{text}");
    assert!(text.contains("No bootable device"), "{text}");
    assert_eq!(status.code(), Some(143), "{text}");
}

#[test]
fn qboot_boots_a_bzimage_from_fw_cfg() {
    if !kvm_available() {
        return;
    }
    let Some(qboot) = fixture("qboot", "qboot.rom", "qboot.sh") else {
        return;
    };
    let k = kernel("bzimage", "bzimage", Link::Flat64, &[]);
    let rd = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("qboot-initrd");
    std::fs::write(&rd, b"initrd for qboot, through fw_cfg").unwrap();
    // qboot copies itself into shadow RAM (PAM), DMAs the kernel items from fw_cfg, and
    // enters the kernel's real-mode setup code.
    let run = minipc(&[
        "--firmware",
        path_str(&qboot),
        "--kernel",
        path_str(&k),
        "--initrd",
        path_str(&rd),
        "--cmdline",
        "console=ttyS0 via=qboot",
        "--timeout",
        "30",
    ]);
    assert_eq!(run.code, (0x10 << 1) | 1, "{}{}", run.stdout, run.stderr);
    let r = report(&run.stdout);
    assert_eq!(value(&r, "mode"), "00000016");
    assert_eq!(value(&r, "cmdline"), "console=ttyS0 via=qboot");
    assert_eq!(hex(&r, "initrd_size"), 32);
    assert_eq!(hex(&r, "code32_start"), 0x10_0000);
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}
