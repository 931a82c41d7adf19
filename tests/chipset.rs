//! The PC chipset as a guest sees it: the CMOS clock and NVRAM, the PIT, interrupts, PCI,
//! resets.

mod common;
use common::*;

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn bytes(line: &str) -> Vec<u8> {
    line.split_whitespace()
        .skip(1)
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

fn unix_of(v: &[u8], decode: fn(u8) -> i64) -> i64 {
    let year = decode(v[0]) * 100 + decode(v[1]);
    let days = days_from_civil(year, decode(v[2]), decode(v[3]));
    days * 86400 + decode(v[4]) * 3600 + decode(v[5]) * 60 + decode(v[6])
}

fn run_cmos(mem: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>, i64) {
    let g = guest("cmos", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--mem", mem, "--timeout", "20"]);
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = |p: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(p))
            .unwrap_or_else(|| panic!("no {p} line in {:?}", r.stdout))
            .to_string()
    };
    (
        bytes(&line("bcd")),
        bytes(&line("bin")),
        bytes(&line("nvram")),
        host,
    )
}

#[test]
fn cmos_clock_matches_the_host_in_bcd_and_binary() {
    if !kvm_available() {
        return;
    }
    let (bcd, bin, _, host) = run_cmos("256M");
    let from_bcd = |b: u8| ((b >> 4) * 10 + (b & 0xF)) as i64;
    let t_bcd = unix_of(&bcd, from_bcd);
    let t_bin = unix_of(&bin, |b| b as i64);
    assert!((host - t_bcd).abs() <= 2, "BCD time {t_bcd} vs host {host}");
    assert!(
        (host - t_bin).abs() <= 2,
        "binary time {t_bin} vs host {host}"
    );
    // BCD digits are never above 9.
    assert!(bcd.iter().all(|b| b & 0xF <= 9 && b >> 4 <= 9), "{bcd:x?}");
}

#[test]
fn nvram_memory_sizes_follow_the_memory_map() {
    if !kvm_available() {
        return;
    }
    const K: u64 = 1024;
    const M: u64 = 1024 * K;
    const G: u64 = 1024 * M;
    for (arg, total) in [
        ("2M", 2 * M),
        ("256M", 256 * M),
        ("3G", 3 * G),
        ("6G", 6 * G),
    ] {
        let (_, _, n, _) = run_cmos(arg);
        let word = |i: usize| n[i] as u64 | (n[i + 1] as u64) << 8;
        let below_4g = if total >= 0xE000_0000 { 3 * G } else { total };
        let above_4g = total - below_4g;
        assert_eq!(word(0), 640, "{arg}: base memory");
        let ext_kib = ((below_4g - M) / K).min(63 * 1024);
        assert_eq!(word(2), ext_kib, "{arg}: 0x17/0x18");
        assert_eq!(word(4), ext_kib, "{arg}: 0x30/0x31");
        let above_16m = below_4g.saturating_sub(16 * M) / (64 * K);
        assert_eq!(word(6), above_16m.min(0xFFFF), "{arg}: 0x34/0x35");
        let high = n[8] as u64 | (n[9] as u64) << 8 | (n[10] as u64) << 16;
        assert_eq!(high, above_4g / (64 * K), "{arg}: 0x5B-0x5D");
        assert_eq!(n[11], 0, "{arg}: CPU count - 1");
    }
}

#[test]
fn init_sipi_sipi_brings_up_every_ap_and_the_vm_still_halts() {
    if !kvm_available() {
        return;
    }
    let g = guest("smp", &[]);
    for cpus in [1u32, 4, 64] {
        let n = cpus.to_string();
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--cpus",
            &n,
            "--stats",
            "--timeout",
            "30",
        ]);
        assert_eq!(r.code, 0, "--cpus {cpus}: {}", r.stderr);
        assert_eq!(r.reason().as_deref(), Some("halted"), "--cpus {cpus}");
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with("aps "))
            .unwrap_or_else(|| panic!("--cpus {cpus}: {:?}", r.stdout));
        let f: Vec<&str> = line.split_whitespace().collect();
        let aps = u32::from_str_radix(f[1], 16).unwrap();
        let ids = u32::from_str_radix(f[3], 16).unwrap();
        assert_eq!(aps, cpus - 1, "--cpus {cpus}: APs that came up");
        // Every AP reports a distinct APIC ID from CPUID: 1 .. cpus-1 (the bitmap holds 32).
        let expect = if cpus >= 32 {
            u32::MAX
        } else {
            (1u32 << cpus) - 1
        } & !1;
        assert_eq!(ids, expect, "--cpus {cpus}: APIC IDs");
    }
}

/// The APs are set up one after the other while the guest runs. A guest that halts at once
/// (and never wakes them) ends then, not once the last AP is set up: the thread that sets
/// them up answers the halt check for the APs it still holds. Here each AP after the first
/// waits 500 ms before its set-up: 3 s for the six of them.
#[test]
fn a_guest_that_halts_ends_before_its_aps_are_all_set_up() {
    if !kvm_available() {
        return;
    }
    let g = guest("hello", &[]);
    let t = std::time::Instant::now();
    let r = minipc(&[
        "--firmware",
        path_str(&g),
        "--cpus",
        "8",
        "--x-ap-delay-ms",
        "500",
        "--stats",
        "--timeout",
        "30",
    ]);
    let took = t.elapsed();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.reason().as_deref(), Some("halted"));
    assert!(took < std::time::Duration::from_millis(2500), "{took:?}");
}

/// An AP that the guest woke before its set-up is alive though its thread has not started:
/// the answer for it comes from its state in KVM (the pending SIPI), so the VM goes on when
/// the BSP halts, and the AP, once set up, ends the guest through debug-exit.
#[test]
fn an_ap_woken_before_its_set_up_keeps_the_guest_alive() {
    if !kvm_available() {
        return;
    }
    let g = guest("smp", &[("EXIT_CODE", 0x21)]);
    for cpus in ["2", "4"] {
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--cpus",
            cpus,
            "--x-ap-delay-ms",
            "300",
            "--timeout",
            "30",
        ]);
        assert_eq!(r.code, (0x21 << 1) | 1, "--cpus {cpus}: {}", r.stderr);
    }
}

#[test]
fn pci_bus_0_holds_exactly_the_pc_chipset() {
    if !kvm_available() {
        return;
    }
    let g = guest("pci", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("pci end"), "{}", r.stdout);
    let found: Vec<(String, String, String, String)> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("pci ") && !l.contains("end"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].into(), f[2].into(), f[3][..6].into(), f[4].into())
        })
        .collect();
    let want = [
        // device.function, device:vendor, class/subclass/prog-if, header type
        ("00.0", "12378086", "060000", "00"),
        ("01.0", "70008086", "060100", "80"),
        ("01.3", "71138086", "068000", "00"),
    ];
    let want: Vec<(String, String, String, String)> = want
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect();
    assert_eq!(found, want, "{}", r.stdout);
}

#[test]
fn acpi_pm1a_s5_powers_off() {
    if !kvm_available() {
        return;
    }
    let g = guest("poweroff", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.reason().as_deref(), Some("poweroff"), "{}", r.stderr);
}

#[test]
fn keyboard_controller_and_cf9_resets_end_the_vm() {
    if !kvm_available() {
        return;
    }
    for name in ["kbd_reset", "cf9_reset"] {
        let g = guest(name, &[]);
        let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert_eq!(r.reason().as_deref(), Some("reset"), "{name}: {}", r.stderr);
        assert!(r.stderr.contains("reset"), "{name}: {}", r.stderr);
    }
}

/// System Control Port A (0x92): bit 1 reads A20 enabled, writing bit 0 resets the machine
/// like the i8042 and 0xCF9 do: the VM ends with `reset`, or restarts with `--reboot`.
#[test]
fn port_92_fast_reset_ends_or_restarts_the_guest() {
    if !kvm_available() {
        return;
    }
    let g = guest("port92_reset", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.reason().as_deref(), Some("reset"), "{}", r.stderr);
    assert_eq!(r.stdout, "boot\r\n");
    for cpus in ["1", "2"] {
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--reboot",
            "--cpus",
            cpus,
            "--stats",
            "--timeout",
            "20",
        ]);
        assert_eq!(r.stdout, "boot\r\nboot\r\nboot\r\n", "{}", r.stderr);
        assert_eq!(r.code, (3 << 1) | 1, "--cpus {cpus}: {}", r.stderr);
        assert_eq!(r.reason().as_deref(), Some("debug-exit"));
    }
}

#[test]
fn an_os_finds_the_acpi_rsdp_or_the_mp_table_where_it_looks() {
    if !kvm_available() {
        return;
    }
    let g = guest("tables", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--cpus", "2", "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines, ["rsdp e000:0000 sum 00", "end"], "{}", r.stdout);
    let r = minipc(&["--firmware", path_str(&g), "--no-acpi", "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines, ["mp 9fc0:0010 sum 00", "end"], "{}", r.stdout);
}

#[test]
fn pam_changes_never_leave_a_hole_for_a_vcpu_running_from_the_segment() {
    if !kvm_available() {
        return;
    }
    // An AP spins in the ROM at 0xF0000-0xFFFFF while the BSP switches that segment's PAM
    // mode 1,000 times: without the other vCPUs stopped around each slot change, the AP
    // fetches from the hole and KVM fails to emulate (exit 4).
    let g = guest("pam_smp", &[]);
    for cpus in ["2", "2", "4"] {
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--cpus",
            cpus,
            "--timeout",
            "60",
        ]);
        assert_eq!(r.code, (0x21 << 1) | 1, "--cpus {cpus}: {}", r.stderr);
    }
}

#[test]
fn pam_registers_switch_the_shadow_areas_between_rom_and_ram() {
    if !kvm_available() {
        return;
    }
    let g = guest("pam", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("pam "))
        .unwrap_or_else(|| panic!("{:?}", r.stdout));
    let v: Vec<&str> = line.split_whitespace().skip(1).collect();
    let rsdp = "20445352"; // "RSD " as a little-endian dword: the ROM's first bytes
    assert_eq!(
        v,
        [
            rsdp,       // ROM
            rsdp,       // a write to ROM is dropped
            rsdp,       // write-only RAM: reads still come from the ROM
            rsdp,       // RAM holds the copy made through the write-only mode
            "22222222", // RAM is writable
            "22222222", // read-only RAM drops writes
            rsdp,       // back to the ROM
            "44444444", // the option-ROM area as RAM
            "ffffffff", // and with nothing mapped
        ],
        "{line}"
    );
}

#[test]
fn reboot_restarts_the_guest_at_the_reset_vector_with_ram_kept() {
    if !kvm_available() {
        return;
    }
    let g = guest("reboot", &[]);
    // Without --reboot a reset ends the VM.
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.reason().as_deref(), Some("reset"));
    assert_eq!(r.stdout, "first boot\r\n");
    // With it, the guest boots again and counts two boots.
    for cpus in ["1", "4"] {
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--reboot",
            "--cpus",
            cpus,
            "--stats",
            "--timeout",
            "20",
        ]);
        assert_eq!(r.stdout, "first boot\r\nsecond boot\r\n", "{}", r.stderr);
        assert_eq!(r.code, (2 << 1) | 1, "--cpus {cpus}: {}", r.stderr);
        // The first boot turned the UART's interrupts on, and waited until COM1's ring was
        // given up (tests/serial_ring.rs): only the reset gives it back, for the second
        // boot's 13 bytes (the first boot's line may have gone through it before).
        let ring = r.stats().and_then(|s| stat_value(s, "coalesced_writes"));
        assert!(ring >= Some(13), "--cpus {cpus}: {}", r.stderr);
    }
}

/// The PIT as Linux calibrates the TSC with it and as a BIOS ticks with it
/// (`tests/guests/pit.s`, timed against the ACPI PM timer and the CMOS clock): channel 2 in
/// mode 0 polled through port 0x61 (pit_calibrate_tsc), its MSB read in a loop
/// (quick_pit_calibrate), latch and read-back, BCD, IRQ 0 in modes 2 and 3.
#[test]
fn pit_counts_as_linux_and_the_bios_read_it() {
    if !kvm_available() {
        return;
    }
    let g = guest("pit", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "30"]);
    // How fast the guest polled, for the record: Linux wants 1000 polls in 10 ms, and more
    // than 5 reads of each MSB value, and each poll is a VM exit to the VMM here.
    eprintln!("{}", r.stdout);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.ends_with("pit ok\r\n"), "{}", r.stdout);
}

/// An OS that follows the MADT's IRQ0->GSI2 override takes the PIT's interrupt on I/O APIC
/// pin 2 (KVM's default routing would put it on pin 0).
#[test]
fn irq_0_reaches_the_io_apic_on_pin_2() {
    if !kvm_available() {
        return;
    }
    let g = guest("irq0_ioapic", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "30"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("pin2 "), "{}", r.stdout);
}

/// A guest that resets as soon as it starts, 100 times in a row: every reboot must complete,
/// whatever the vCPU count (a request to an AP must never be lost to the next one).
#[test]
fn a_hundred_back_to_back_reboots_complete_on_1_2_and_4_vcpus() {
    if !kvm_available() {
        return;
    }
    let g = guest("reset_loop", &[("RESETS", 100)]);
    for cpus in ["1", "2", "4"] {
        let r = minipc(&[
            "--firmware",
            path_str(&g),
            "--reboot",
            "--cpus",
            cpus,
            "--stats",
            "--timeout",
            "120",
        ]);
        assert_eq!(r.stdout, "boots 0065\r\n", "--cpus {cpus}: {}", r.stderr);
        assert_eq!(r.code, (0x21 << 1) | 1, "--cpus {cpus}: {}", r.stderr);
        assert_eq!(r.reason().as_deref(), Some("debug-exit"), "--cpus {cpus}");
    }
}

#[test]
fn pit_com1_rtc_and_sci_interrupts_reach_the_guest() {
    if !kvm_available() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let g = guest("irqs", &[]);
    let mut child = std::process::Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--timeout", "30"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first.trim_end(), "ready");
    // A byte for the receive interrupt, once the guest has enabled it.
    stdin.write_all(b"x").unwrap();
    let line = lines.next().unwrap().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{line}");
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[0], "irqs", "{line}");
    let count = |name: &str| {
        let i = f.iter().position(|x| *x == name).unwrap();
        u32::from_str_radix(f[i + 1], 16).unwrap()
    };
    assert!(count("pit") >= 3, "PIT (IRQ 0): {line}");
    assert_eq!(count("com"), 1, "COM1 (IRQ 4): {line}");
    assert!(count("rtc") >= 3, "RTC (IRQ 8): {line}");
    assert!(count("sci") >= 1, "ACPI SCI (IRQ 9): {line}");
}

/// Halt answers are read one vCPU after another. Here the AP answers "halted with interrupts
/// off" first; then the BSP's LAPIC timer wakes it, its handler wakes the AP with an NMI, and
/// the BSP halts with interrupts off before its own (late) kick. Both answers say dead while
/// the AP runs: the detector sees from KVM's `exits` counters that a vCPU ran during the
/// check and asks again, so the guest lives on and ends itself through debug-exit.
#[test]
fn a_vcpu_that_runs_between_two_halt_answers_keeps_the_guest_alive() {
    if !kvm_available() {
        return;
    }
    let g = guest("halt_race", &[]);
    let r = minipc(&[
        "--firmware",
        path_str(&g),
        "--cpus",
        "2",
        "--x-kick-gap-ms",
        "300",
        "--stats",
        "--timeout",
        "30",
    ]);
    assert_eq!(r.code, (0x42 << 1) | 1, "{}", r.stderr);
    // Without the gap, the same guest ends the same way.
    let r = minipc(&["--firmware", path_str(&g), "--cpus", "2", "--timeout", "30"]);
    assert_eq!(r.code, (0x42 << 1) | 1, "{}", r.stderr);
}
