//! COM1's data port through KVM's ring of buffered port writes (src/coalesced_io.rs): a
//! polling guest's bytes skip the exit to user space and still arrive complete and in
//! order; the UART leaves the ring when a THR write becomes an event (the THR-empty
//! interrupt, loopback); and a guest that prints and then never exits is still shown.

mod common;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `--stats`' count of the writes that came through the ring.
fn ring_writes(r: &Run) -> u64 {
    let stats = r
        .stats()
        .unwrap_or_else(|| panic!("no --stats line: {}", r.stderr));
    stat_value(stats, "coalesced_writes")
        .unwrap_or_else(|| panic!("no coalesced_writes (KVM without coalesced port I/O?): {stats}"))
}

#[test]
fn polled_output_comes_through_the_ring_complete_and_in_order() {
    if !kvm_available() {
        return;
    }
    // About 10 KiB: the ring (170 writes) fills and wraps many times over.
    const LINES: u64 = 250;
    let g = guest("lines", &[("LINES", LINES)]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "60", "--stats"]);
    assert_eq!(r.code, (0x21 << 1) | 1, "{}", r.stderr);
    let mut want: String = (0..LINES)
        .map(|n| format!("line {n:04x} abcdefghijklmnopqrstuvwxyz0123456789\r\n"))
        .collect();
    want += "done busy 00000000\r\n";
    assert_eq!(r.stdout, want);
    // The guest polls LSR before every byte, so each THR write waits in the ring for that
    // exit, and none exits itself.
    assert_eq!(ring_writes(&r), want.len() as u64, "{}", r.stderr);
}

#[test]
fn the_thr_empty_interrupt_takes_the_uart_out_of_the_ring() {
    if !kvm_available() {
        return;
    }
    let g = guest("thr_events", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20", "--stats"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stdout, "poll\r\nirq\r\n");
    // "poll\r\n" went through the ring; each byte sent from the interrupt handler exited.
    assert_eq!(ring_writes(&r), 6, "{}", r.stderr);
}

#[test]
fn loopback_takes_the_uart_out_of_the_ring() {
    if !kvm_available() {
        return;
    }
    let g = guest("thr_events", &[("LOOPBACK", 1)]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20", "--stats"]);
    assert_eq!(r.code, 1, "the looped byte did not come back: {}", r.stderr);
    assert_eq!(r.stdout, "poll\r\nloop x\r\n");
    assert_eq!(ring_writes(&r), 6, "{}", r.stderr);
}

/// The guest's last THR write waits in the ring, and no exit follows; the monitor must
/// show it at once, not when the guest's quiet parks the zone (2 s) or the timeout ends the
/// VM.
fn shown_while_it_runs(defs: &[(&str, u64)]) {
    let g = guest("print_quiet", defs);
    let start = Instant::now();
    let mut child = Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--timeout", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minipc");
    let mut out = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut b = [0u8; 64];
        while !got.ends_with(b"up\r\n") {
            match out.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        (got, start.elapsed())
    });
    let (got, after) = reader.join().expect("reader");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, b"up\r\n");
    assert!(
        after < Duration::from_secs(1),
        "the line came {after:?} after the start ({defs:?})"
    );
}

#[test]
fn a_guest_that_prints_then_spins_is_shown_while_it_runs() {
    if !kvm_available() {
        return;
    }
    shown_while_it_runs(&[]);
}

#[test]
fn a_guest_that_prints_then_idles_is_shown_while_it_runs() {
    if !kvm_available() {
        return;
    }
    shown_while_it_runs(&[("IDLE", 1)]);
}
