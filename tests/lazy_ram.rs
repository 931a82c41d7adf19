//! RAM registered with KVM while the guest runs (src/ram_gate.rs): guests that reach RAM
//! above 16 MiB, or ask how much RAM there is, before it is all registered. Debug builds
//! delay the registration (`--x-ram-delay-ms`), so that every guest here gets there first;
//! each case runs again without the delay. `--stats` `ram_waits` counts the waits.

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debug-exit 0x10: every check passed.
const PASSED: i32 = 0x10 << 1 | 1;
/// What the guests' RAM registration waits for before it starts.
const DELAY_MS: &str = "200";
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A `--stats` field, as its JSON text.
fn stat<'a>(r: &'a Run, key: &str) -> &'a str {
    let s = r
        .stats()
        .unwrap_or_else(|| panic!("no --stats line: {}", r.stderr));
    let at = s
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {s}"))
        + key.len()
        + 3;
    let end = s[at..].find([',', '}']).map_or(s.len(), |e| at + e);
    &s[at..end]
}

fn ram_waits(r: &Run) -> u64 {
    stat(r, "ram_waits").parse().expect("ram_waits")
}

/// `args` with `--mem 8G --stats`, once with the delayed registration and once without.
fn both_ways(args: &[&str]) -> [Run; 2] {
    let run = |delay: Option<&str>| {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--mem", "8G", "--stats", "--timeout", "20"]);
        if let Some(d) = delay {
            a.extend(["--x-ram-delay-ms", d]);
        }
        minipc(&a)
    };
    [run(Some(DELAY_MS)), run(None)]
}

/// Checks that the delayed run waited for the RAM: a wait counted, the RAM registered
/// (after the delay) before the exit decision.
fn assert_waited(r: &Run, what: &str) {
    assert!(
        ram_waits(r) > 0,
        "{what}: no wait for the RAM: {}",
        r.stderr
    );
    let ready: u64 = stat(r, "ram_ready_us")
        .parse()
        .unwrap_or_else(|_| panic!("{what}: RAM not registered by the exit: {}", r.stderr));
    let total: u64 = stat(r, "total_us").parse().expect("total_us");
    assert!(ready >= 200_000 && ready <= total, "{what}: {}", r.stderr);
}

/// tests/guests/lazy_ram.s: data accesses at 64 MiB and just below the PCI hole, code
/// copied to 80 MiB, a fetch from 96 MiB, long-mode paging onto 4 GiB + 2 MiB; each part
/// alone (its first access is the one that finds the RAM missing), then all together.
#[test]
fn a_guest_reaching_ram_above_16m_at_once_sees_no_hole() {
    if !kvm_available() {
        return;
    }
    for (parts, what) in [
        (1, "data at 64 MiB and 3 GiB - 4"),
        (2, "code copied to 80 MiB"),
        (4, "long mode, 4 GiB + 2 MiB"),
        (8, "a fetch from 96 MiB"),
        (15, "all parts"),
    ] {
        let g = guest("lazy_ram", &[("PARTS", parts)]);
        let [late, early] = both_ways(&["--firmware", path_str(&g), "--log-level", "debug"]);
        assert_eq!(late.code, PASSED, "{what}, delayed: {}", late.stderr);
        assert_waited(&late, what);
        assert_eq!(early.code, PASSED, "{what}: {}", early.stderr);
        if parts == 8 {
            // The fetch from RAM KVM does not know: an emulation failure, run again.
            assert!(
                late.stderr
                    .contains("KVM internal error (suberror 1) while RAM is being registered"),
                "{}",
                late.stderr
            );
        }
    }
}

/// A boot loader's way: INT 13h extended read (a 64-bit flat buffer address) of code to
/// 64 MiB, then a jump there, asking nothing first (tests/guests/lazy_boot.s, MODE 8). The
/// firmware writes the sector through the VMM's own mapping; the fetch finds no slot.
#[test]
fn code_loaded_high_by_int_13h_runs_at_once() {
    if !kvm_available() {
        return;
    }
    let img = disk("fetch", &boot_sector("lazy_boot", &[("MODE", 8)]));
    let [late, early] = both_ways(&["--disk", path_str(&img), "--log-level", "debug"]);
    // The code at 64 MiB leaves with 0x11.
    for r in [&late, &early] {
        assert_eq!(r.code, 0x11 << 1 | 1, "{}", r.stderr);
    }
    assert_waited(&late, "INT 13h to 64 MiB, then a jump");
    assert!(
        late.stderr
            .contains("KVM internal error (suberror 1) while RAM is being registered"),
        "{}",
        late.stderr
    );
}

/// A disk image holding `code` (whole sectors), padded to 16 sectors.
fn disk(name: &str, code: &[u8]) -> PathBuf {
    let mut b = code.to_vec();
    b.resize(b.len().max(16 * 512), 0);
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lazy-ram-{name}.img"));
    std::fs::write(&p, b).expect("write image");
    p
}

/// The E820 map of an 8 GiB guest: 3 GiB below the PCI hole, 5 GiB from 4 GiB, and the ROM
/// of `rom` bytes below 4 GiB reserved.
fn e820_8g(rom: u64) -> Vec<String> {
    [
        (0, 0x9_FC00, 1),
        (0x9_FC00, 0x400, 2),
        (0xC_0000, 0x4_0000, 2),
        (MIB, 3 * GIB - MIB, 1),
        (4 * GIB - rom, rom, 2),
        (4 * GIB, 5 * GIB, 1),
    ]
    .iter()
    .map(|(b, l, t)| format!("e820 {b:016x} {l:016x} {t:02x}"))
    .collect()
}

fn lines(stdout: &str, prefix: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// The CMOS memory-size registers, read first thing (tests/guests/cmos.s), give the
/// 8 GiB map, after waiting for the RAM.
#[test]
fn cmos_memory_sizes_wait_for_the_ram() {
    if !kvm_available() {
        return;
    }
    let g = guest("cmos", &[]);
    let [late, early] = both_ways(&["--firmware", path_str(&g)]);
    for r in [&late, &early] {
        assert_eq!(r.code, 0, "{}", r.stderr);
        // 0x15/0x16 640 KiB, 0x17/0x18 and 0x30/0x31 63 MiB of extended memory, 0x34/0x35
        // (3 GiB - 16 MiB) / 64 KiB, 0x5B-0x5D 5 GiB / 64 KiB, 0x5F one CPU.
        assert_eq!(
            lines(&r.stdout, "nvram"),
            ["nvram 80 02 00 fc 00 fc 00 bf 00 40 01 00 "],
            "{}",
            r.stderr
        );
    }
    assert_waited(&late, "CMOS");
}

/// fw_cfg's RAM size through the data port and etc/e820 through DMA, each asked first
/// thing (tests/guests/fwcfg_mem.s), after waiting for the RAM.
#[test]
fn fw_cfg_ram_size_and_e820_wait_for_the_ram() {
    if !kvm_available() {
        return;
    }
    for (mode, what) in [(1, "RAM size"), (2, "etc/e820"), (3, "both")] {
        let g = guest("fwcfg_mem", &[("MODE", mode)]);
        let [late, early] = both_ways(&["--firmware", path_str(&g)]);
        for r in [&late, &early] {
            assert_eq!(r.code, PASSED, "{what}: {}", r.stderr);
            if mode & 1 != 0 {
                assert_eq!(
                    lines(&r.stdout, "ram_size"),
                    [format!("ram_size {:016x}", 8 * GIB)]
                );
            }
            if mode & 2 != 0 {
                assert_eq!(lines(&r.stdout, "e820"), e820_8g(4096), "{what}");
            }
        }
        assert_waited(&late, what);
    }
}

/// INT 15h E820h, E801h and 88h, each called first thing by a boot sector
/// (tests/guests/lazy_boot.s), answer for 8 GiB after waiting for the RAM.
#[test]
fn int_15h_memory_services_wait_for_the_ram() {
    if !kvm_available() {
        return;
    }
    for (mode, prefix, want) in [
        (1, "e820", e820_8g(128 * 1024)),
        // 15 MiB in KiB below 16 MiB; (3 GiB - 16 MiB) in 64 KiB units above.
        (2, "e801", vec!["e801 3c00 bf00 3c00 bf00".to_string()]),
        // Extended memory in KiB, at most 0xFFFF.
        (4, "88", vec!["88 ffff".to_string()]),
    ] {
        let img = disk(prefix, &boot_sector("lazy_boot", &[("MODE", mode)]));
        let [late, early] = both_ways(&["--disk", path_str(&img)]);
        for r in [&late, &early] {
            assert_eq!(r.code, PASSED, "{prefix}: {}", r.stderr);
            assert_eq!(lines(&r.stdout, prefix), want, "{}", r.stderr);
        }
        assert_waited(&late, prefix);
    }
}

/// The embedded demo prints the E820 map it got from INT 15h: all of it, after waiting.
#[test]
fn the_demo_lists_all_ram_after_waiting() {
    if !kvm_available() {
        return;
    }
    let [late, early] = both_ways(&[]);
    for r in [&late, &early] {
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(
            r.stdout
                .contains("0000000100000000-000000023fffffff usable"),
            "{}",
            r.stdout
        );
    }
    assert_waited(&late, "the demo");
}

/// `--reboot` with deferred RAM: a mark written at 64 MiB survives the reset, and a reset
/// before the RAM is registered leaves nothing missing for the next boot.
#[test]
fn reboot_keeps_the_late_ram() {
    if !kvm_available() {
        return;
    }
    for parts in [16, 32] {
        let g = guest("lazy_ram", &[("PARTS", parts)]);
        let [late, early] = both_ways(&["--firmware", path_str(&g), "--reboot"]);
        for r in [&late, &early] {
            assert_eq!(r.code, PASSED, "PARTS={parts}: {}", r.stderr);
        }
        assert_waited(&late, "reboot");
    }
}

/// Kernel boots (the VMM writes the memory map into guest memory) and guests with less
/// than 4 GiB above 16 MiB register all RAM before the start: nothing waits, no
/// ram_ready_us.
#[test]
fn kernel_boots_and_smaller_guests_register_everything_first() {
    if !kvm_available() {
        return;
    }
    let g = guest("lazy_ram", &[("PARTS", 1)]);
    let r = minipc(&[
        "--firmware",
        path_str(&g),
        "--mem",
        "4G",
        "--stats",
        "--x-ram-delay-ms",
        "5000",
    ]);
    assert_eq!(r.code, PASSED, "{}", r.stderr);
    assert_eq!(
        (stat(&r, "ram_ready_us"), ram_waits(&r)),
        ("null", 0),
        "{}",
        r.stderr
    );
    let k = kernel("mb", "kernel", Link::Elf32, &[("MB2", 0), ("AOUT", 0)]);
    let r = minipc(&[
        "--kernel",
        path_str(&k),
        "--mem",
        "8G",
        "--stats",
        "--serial",
        "none",
        "--x-ram-delay-ms",
        "5000",
        "--timeout",
        "20",
    ]);
    assert!(r.reason().is_some(), "{}", r.stderr);
    assert_eq!(
        (stat(&r, "ram_ready_us"), ram_waits(&r)),
        ("null", 0),
        "{}",
        r.stderr
    );
    assert!(r.wall < Duration::from_secs(4), "{:?}", r.wall);
}

/// A registration KVM refuses (`--x-ram-fail`: a misaligned host address for the last
/// slot) ends the VM with the host-error code and one line naming the region, whether a
/// vCPU waits for the RAM or not.
#[test]
fn a_failed_registration_is_a_host_error_naming_the_region() {
    if !kvm_available() {
        return;
    }
    let waiting = guest("lazy_ram", &[("PARTS", 1)]);
    let spinning = guest("spin", &[]);
    for g in [&waiting, &spinning] {
        let r = minipc(&[
            "--firmware",
            path_str(g),
            "--mem",
            "8G",
            "--x-ram-fail",
            "--x-ram-delay-ms",
            "100",
            "--timeout",
            "20",
        ]);
        assert_eq!(r.code, 6, "{}", r.stderr);
        let line = "minipc: host error: cannot register guest RAM 0x100000000-0x240000000 with KVM: Invalid argument (os error 22) (exit code 6)";
        assert_eq!(r.stderr.trim_end(), line);
    }
}

/// The VM ends while its RAM is still being registered (the registration waits 5 s
/// here): the exit status comes at once, and the VM process is gone soon after.
#[test]
fn an_exit_during_registration_is_not_delayed() {
    if !kvm_available() {
        return;
    }
    let g = guest("exit", &[("CODE", 0x10), ("WIDTH", 1)]);
    let mark = format!("lazy-ram-exit-{}", std::process::id());
    let start = Instant::now();
    let out = Command::new(MINIPC)
        .args([
            "--firmware",
            path_str(&g),
            "--mem",
            "64G",
            "--stats",
            "--x-ram-delay-ms",
            "5000",
        ])
        .env("MINIPC_TEST_MARK", &mark)
        .stdin(Stdio::null())
        .output()
        .expect("run minipc");
    let wall = start.elapsed();
    assert_eq!(out.status.code(), Some(PASSED));
    assert!(wall < Duration::from_secs(2), "exit status after {wall:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"ram_ready_us\":null,"), "{stderr}");
    // The VM process (the supervisor's child) exits without waiting for the registration.
    while marked(&mark) && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!marked(&mark), "the VM process is still there after 3 s");
}

/// Whether a process of the minipc binary with `MINIPC_TEST_MARK=mark` in its environment
/// exists.
fn marked(mark: &str) -> bool {
    let needle = format!("MINIPC_TEST_MARK={mark}");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .any(|e| {
            std::fs::read(e.path().join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
}
