//! The firmware's service ports seen from guests: a service only from the embedded
//! firmware's own handler, an unassigned port from anywhere else; INT 16h waiting for a key.

mod common;
use common::*;

use std::io::{BufRead, BufReader, Write};

#[test]
fn service_ports_are_unassigned_for_a_users_firmware() {
    if !kvm_available() {
        return;
    }
    let g = guest("service_storm", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20"]);
    assert_eq!(
        r.code,
        0x10 << 1 | 1,
        "check (code - 1) / 2 - 0x20 failed: {}",
        r.stderr
    );
}

#[test]
fn int_16h_waits_in_the_firmware_for_a_key() {
    if !kvm_available() {
        return;
    }
    let mut img = boot_sector("keywait", &[]);
    img.resize(64 * 512, 0);
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-keywait.img");
    std::fs::write(&p, img).unwrap();
    let mut child = std::process::Command::new(MINIPC)
        .args(["--disk", path_str(&p), "--timeout", "30", "--stats"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "key?\r\n");
    // The guest now sits in INT 16h; the key arrives a while later.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"k").unwrap();
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.code(),
        Some((i32::from(b'k') << 1 | 1) & 0xFF),
        "{err}"
    );
    drop(stdin);
}

#[test]
fn a_guest_waiting_for_a_key_costs_next_to_no_cpu() {
    if !kvm_available() {
        return;
    }
    let mut img = boot_sector("keywait", &[]);
    img.resize(64 * 512, 0);
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-keywait-idle.img");
    std::fs::write(&p, img).unwrap();
    // No key ever comes: the guest waits in INT 16h AH=00h for 2 s (the firmware halts between
    // its questions; the VMM sleeps while the guest halts).
    let r = minipc(&["--disk", path_str(&p), "--timeout", "2", "--stats"]);
    assert_eq!(r.code, 124, "{}", r.stderr);
    let stats = r.stats().unwrap_or_else(|| panic!("{}", r.stderr));
    let cpu_us = r.stat("cpu_us").unwrap_or_else(|| panic!("{stats}"));
    // A spinning host core would be 2,000,000 us; measured about 11,000 us here.
    assert!(
        cpu_us < 200_000,
        "{cpu_us} us of CPU in 2 s of waiting: {stats}"
    );
}
