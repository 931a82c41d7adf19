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

/// The firmware tells the VMM before it halts for good (port 0xEB, `halt_forever`): the VM
/// ends at once when nothing else can run: one vCPU, or (before the firmware handed off to a
/// guest) more. `--x-no-halt-check` turns the halt detector off, so only that notice can end
/// these runs; the controls show that nothing else would.
#[test]
fn the_firmware_says_when_it_halts_for_good() {
    if !kvm_available() {
        return;
    }
    let ends = |args: &[&str], timeout: &str| {
        let mut all = vec!["--x-no-halt-check", "--stats", "--timeout", timeout];
        all.extend_from_slice(args);
        minipc(&all)
    };
    let halted = |r: &Run, what: &str| {
        assert_eq!(r.code, 0, "{what}: {}", r.stderr);
        assert_eq!(
            r.reason().as_deref(),
            Some("halted"),
            "{what}: {}",
            r.stderr
        );
    };
    // The demo never hands off: its end is final with any number of vCPUs.
    for cpus in ["1", "4"] {
        let r = ends(&["--cpus", cpus], "20");
        halted(&r, cpus);
        assert!(r.stdout.ends_with("demo done, halting\r\n"), "{}", r.stdout);
        assert!(
            r.stdout.contains(&format!("vCPUs: {cpus}\r\n")),
            "{}",
            r.stdout
        );
    }
    // INT 18h after a disk without a boot signature: the firmware handed off to the disk
    // (whose boot sector could have woken the APs), so the notice ends only a lone vCPU.
    let mut img = vec![0u8; 64 * 512];
    img[0] = 0xF4;
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("disk-no-signature.img");
    std::fs::write(&p, img).unwrap();
    let r = ends(&["--disk", path_str(&p)], "20");
    halted(&r, "INT 18h");
    assert!(r.stdout.ends_with("No bootable device\r\n"), "{}", r.stdout);
    let r = ends(&["--disk", path_str(&p), "--cpus", "2"], "1");
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(r.stdout.ends_with("No bootable device\r\n"), "{}", r.stdout);
    let r = minipc(&[
        "--disk",
        path_str(&p),
        "--cpus",
        "2",
        "--stats",
        "--timeout",
        "20",
    ]);
    halted(&r, "INT 18h, two vCPUs, with the detector");

    // A guest's own `cli; hlt` is not the firmware's: without the detector it runs into the
    // timeout.
    let hello = guest("hello", &[]);
    let r = ends(&["--firmware", path_str(&hello)], "1");
    assert_eq!(r.code, 124, "{}", r.stderr);
    assert!(r.stdout.contains("hello from a tiny guest"), "{}", r.stdout);
}
