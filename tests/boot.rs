//! Boots tiny guests and the embedded demo through the real binary.

mod common;
use common::*;

#[test]
fn demo_boots_prints_its_map_and_halts() {
    if !kvm_available() {
        return;
    }
    let r = minipc(&["--stats"]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(
        r.stdout
            .contains(&format!("minipc firmware {}", env!("CARGO_PKG_VERSION"))),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("vCPUs: 1"), "{}", r.stdout);
    // The map an OS gets from INT 15h E820 for the default 256 MiB: conventional memory,
    // the EBDA, the option-ROM and BIOS area, RAM above 1 MiB, the ROM below 4 GiB.
    let map: Vec<&str> = r
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("E820 map"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(
        map,
        [
            "0000000000000000-000000000009fbff usable",
            "000000000009fc00-000000000009ffff reserved",
            "00000000000c0000-00000000000fffff reserved",
            "0000000000100000-000000000fffffff usable",
            "00000000fffe0000-00000000ffffffff reserved",
        ],
        "{}",
        r.stdout
    );
    assert_eq!(r.reason().as_deref(), Some("halted"), "{}", r.stderr);
    // The demo reads the CMOS clock: UTC, to the second.
    let rtc = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("RTC: "))
        .unwrap_or_else(|| panic!("no RTC line: {}", r.stdout));
    let host = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let n: Vec<i64> = rtc
        .split(|c: char| !c.is_ascii_digit())
        .map(|f| f.parse().unwrap())
        .collect();
    let days = {
        let (y, m, d) = (n[0], n[1], n[2]);
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
        era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468
    };
    let guest = days * 86400 + n[3] * 3600 + n[4] * 60 + n[5];
    assert!((host - guest).abs() <= 2, "demo RTC {rtc} vs host {host}");
}

#[test]
fn hello_guest_prints_and_halts() {
    if !kvm_available() {
        return;
    }
    let g = guest("hello", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "hello from a tiny guest\r\n");
    assert_eq!(r.reason().as_deref(), Some("halted"));
}

#[test]
fn debug_exit_codes_at_every_width() {
    if !kvm_available() {
        return;
    }
    for (code, width, expect) in [
        (0u64, 1u64, 1),
        (1, 1, 3),
        (0x20, 1, 0x41),
        (0x7F, 1, 0xFF),
        (0x15, 2, 0x2B),
        (0x30, 4, 0x61),
    ] {
        let g = guest("exit", &[("CODE", code), ("WIDTH", width)]);
        let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
        assert_eq!(r.code, expect, "code {code:#x} width {width}: {}", r.stderr);
        assert_eq!(r.reason().as_deref(), Some("debug-exit"));
    }
}

#[test]
fn halt_with_interrupts_on_is_idle_not_dead() {
    if !kvm_available() {
        return;
    }
    let g = guest("halt_if_on", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "0.5"]);
    assert_eq!(r.code, 124, "stderr: {}", r.stderr);
    assert_eq!(r.reason().as_deref(), Some("timeout"));
}

#[test]
fn timeout_stops_a_spinning_guest() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "0.3"]);
    assert_eq!(r.code, 124, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("timeout"), "{}", r.stderr);
}

#[test]
fn triple_fault_exits_4_with_a_register_dump() {
    if !kvm_available() {
        return;
    }
    let g = guest("triple_fault", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 4, "stderr: {}", r.stderr);
    assert!(r.stderr.contains("rip="), "no register dump: {}", r.stderr);
    assert!(r.stderr.contains("cr0="), "no register dump: {}", r.stderr);
    let reason = r.reason();
    assert!(
        matches!(
            reason.as_deref(),
            Some("triple-fault") | Some("internal-error")
        ),
        "{reason:?}"
    );
}

#[test]
fn wild_port_mmio_and_rom_accesses_keep_the_guest_running() {
    if !kvm_available() {
        return;
    }
    let g = guest("wild", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--timeout", "20"]);
    assert_eq!(
        r.code, 0x21,
        "a check failed (code (0x20+n)*2+1 names it): {}",
        r.stderr
    );
    assert_eq!(r.stdout, "wild accesses survived\r\n");
}

#[test]
fn serial_input_reaches_the_guest() {
    if !kvm_available() {
        return;
    }
    let g = guest("echo", &[]);
    let r = minipc_with_input(&["--firmware", path_str(&g), "--timeout", "20"], Some(b"A"));
    assert_eq!(r.stdout, "ready\r\n");
    assert_eq!(r.code, (0x41 << 1 | 1) & 0xFF, "stderr: {}", r.stderr);
}

#[test]
fn serial_to_a_file_and_to_nowhere() {
    if !kvm_available() {
        return;
    }
    let g = guest("hello", &[]);
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serial-hello.log");
    let arg = format!("file:{}", log.display());
    let r = minipc(&["--firmware", path_str(&g), "--serial", &arg]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "hello from a tiny guest\r\n"
    );
    let r = minipc(&["--firmware", path_str(&g), "--serial", "none"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "");
}

#[test]
fn four_vcpus_the_bsp_still_runs_the_demo() {
    if !kvm_available() {
        return;
    }
    let r = minipc(&["--cpus", "4", "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains("vCPUs: 4"), "{}", r.stdout);
    assert_eq!(r.reason().as_deref(), Some("halted"));
}

#[test]
fn memory_sizes_shape_the_e820_map() {
    if !kvm_available() {
        return;
    }
    // (--mem, lines the map must have, text it must not have)
    let cases: [(&str, &[&str], Option<&str>); 3] = [
        ("2M", &["0000000000100000-00000000001fffff usable"], None),
        // 4 GiB: 3 GiB below the PCI hole, 1 GiB above 4 GiB.
        (
            "4G",
            &[
                "0000000000100000-00000000bfffffff usable",
                "0000000100000000-000000013fffffff usable",
            ],
            None,
        ),
        // 3 GiB stays below 4 GiB.
        (
            "3G",
            &["0000000000100000-00000000bfffffff usable"],
            Some("0000000100000000"),
        ),
    ];
    for (mem, lines, absent) in cases {
        let r = minipc(&["--mem", mem]);
        assert_eq!(r.code, 0, "--mem {mem}: {}", r.stderr);
        for l in lines {
            assert!(r.stdout.contains(l), "--mem {mem}: no {l}: {}", r.stdout);
        }
        if let Some(a) = absent {
            assert!(!r.stdout.contains(a), "--mem {mem}: {}", r.stdout);
        }
    }
}

#[test]
fn sigterm_stops_the_guest_cleanly() {
    if !kvm_available() {
        return;
    }
    let g = guest("spin", &[]);
    let child = std::process::Command::new(MINIPC)
        .args(["--firmware", path_str(&g), "--timeout", "30", "--stats"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SAFETY: sending a signal to our own child.
    unsafe { libc_kill(child.id() as i32, 15) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + 15));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"exit_reason\":\"signal\""), "{err}");
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[test]
fn an_undeliverable_exception_is_a_crash_with_a_diagnostic() {
    if !kvm_available() {
        return;
    }
    let g = guest("bad_idt", &[]);
    let r = minipc(&["--firmware", path_str(&g), "--stats", "--timeout", "20"]);
    assert_eq!(r.code, 4, "stderr: {}", r.stderr);
    let reason = r.reason();
    assert!(
        matches!(
            reason.as_deref(),
            Some("internal-error") | Some("triple-fault")
        ),
        "{reason:?}: {}",
        r.stderr
    );
    assert!(r.stderr.contains("rip="), "no register dump: {}", r.stderr);
}

#[test]
fn supported_cpuid_is_queried_once_per_host_boot() {
    if !kvm_available() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("runtime-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let g = guest("hello", &[]);
    let run = || {
        let out = std::process::Command::new(MINIPC)
            .args(["--firmware", path_str(&g), "--log-level", "debug"])
            .env("XDG_RUNTIME_DIR", &dir)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(run().contains("cpuid: queried KVM"));
    assert!(run().contains("cpuid: from the cache"));
    // A cache that does not hold together (or was written for another boot) is not used.
    let cache = dir.join("minipc/cpuid");
    let mut b = std::fs::read(&cache).unwrap();
    b.truncate(b.len() - 3);
    std::fs::write(&cache, b).unwrap();
    assert!(run().contains("cpuid: queried KVM"));
    assert!(run().contains("cpuid: from the cache"));
    let _ = std::fs::remove_dir_all(&dir);
}
