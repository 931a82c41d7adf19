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

/// `thr_events.s` switches the UART to THR events (the THR-empty interrupt, or loopback with
/// `LOOPBACK`) after a polled line, `wait_ms` later: its output must be right whenever it
/// does. Returns how many writes took the ring.
fn switch_after(loopback: bool, wait_ms: u64) -> u64 {
    switch_with(loopback, wait_ms, false)
}

/// As `switch_after`; with `long`, ten more lines sent by interrupts.
fn switch_with(loopback: bool, wait_ms: u64, long: bool) -> u64 {
    let mut defs = vec![("WAIT_MS", wait_ms)];
    if loopback {
        defs.push(("LOOPBACK", 1));
    }
    if long {
        defs.push(("LONG", 1));
    }
    let g = guest("thr_events", &defs);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20", "--stats"]);
    assert_eq!(r.code, 1, "the looped byte did not come back: {}", r.stderr);
    let want = if loopback {
        "poll\r\nloop x\r\n".to_string()
    } else if long {
        "poll\r\n".to_string() + &"an interrupt-driven line of text\r\n".repeat(10) + "irq\r\n"
    } else {
        "poll\r\nirq\r\n".to_string()
    };
    assert_eq!(r.stdout, want, "after {wait_ms} ms");
    ring_writes(&r)
}

#[test]
fn the_thr_empty_interrupt_takes_the_uart_out_of_the_ring() {
    if !kvm_available() {
        return;
    }
    // Right away: the zone goes once unregistering it is cheap (30 ms after its
    // registration), and the bytes the interrupt handler sends before still arrive, each
    // with its interrupt (at most "irq\r\n" through the ring).
    let early = switch_after(false, 0);
    assert!((6..=11).contains(&early), "{early} ring writes");
    // Later: "poll\r\n" went through the ring, every byte sent from the interrupt handler
    // exited.
    assert_eq!(switch_after(false, 60), 6);
    // Right away, and many bytes: after 16 through the ring the monitor gives it up at
    // once, not 30 ms later (which would let about 150 through at one per 200 us).
    let long = switch_with(false, 0, true);
    assert!((6..=6 + 16 + 8).contains(&long), "{long} ring writes");
}

#[test]
fn loopback_takes_the_uart_out_of_the_ring() {
    if !kvm_available() {
        return;
    }
    let early = switch_after(true, 0);
    assert!((6..=15).contains(&early), "{early} ring writes");
    assert_eq!(switch_after(true, 60), 6);
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

#[test]
fn rep_outsb_bursts_come_through_complete_and_in_order() {
    if !kvm_available() {
        return;
    }
    // 128 KiB without a poll: KVM fills the ring (170 bytes), exits with the rest of the
    // string, and the VMM takes the ring first, then the exit's bytes.
    const REPEAT: u64 = 32;
    let g = guest("rep_outsb", &[("REPEAT", REPEAT)]);
    let rom = std::fs::read(&g).expect("the guest image");
    let run = Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--timeout", "60", "--stats"])
        .stdin(Stdio::null())
        .output()
        .expect("run minipc");
    let (out, err) = (run.stdout, String::from_utf8_lossy(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{err}");
    assert_eq!(out.len(), rom.len() * REPEAT as usize, "{err}");
    assert!(
        out.chunks(rom.len()).all(|c| c == rom.as_slice()),
        "the bytes differ from the ROM's, or are out of order"
    );
    let stats = stats_line(&err).unwrap_or_else(|| panic!("no --stats line: {err}"));
    let ring = stat_value(stats, "coalesced_writes").expect("coalesced_writes");
    assert!(
        ring > out.len() as u64 / 2,
        "{ring} of {} bytes through the ring",
        out.len()
    );
}
