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
