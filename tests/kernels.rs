//! Boots synthetic kernels of every format through the real binary and the embedded
//! firmware: each kernel reports on COM1 what its boot protocol promised it ("name=value"
//! lines), and the test checks that against what it gave minipc.

mod common;
use common::*;

use std::path::PathBuf;

const MEM: u64 = 256 << 20;

/// Writes `bytes` to a file named `name`: under a name of its own first, then renamed into
/// place, so that tests running at the same time never read a half-written file.
fn tmp_file(name: &str, bytes: &[u8]) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("{name}.tmp{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    let p = dir.join(name);
    std::fs::rename(&tmp, &p).unwrap();
    p
}

/// A pseudo-random initrd whose first word the kernel reports.
fn initrd() -> (PathBuf, Vec<u8>) {
    let mut x = 0x2545_F491u32;
    let bytes: Vec<u8> = (0..100_003)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    (tmp_file("initrd.img", &bytes), bytes)
}

fn first_word(b: &[u8]) -> u64 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64
}

fn e820_of(r: &[(String, String)], prefix: &str) -> Vec<(u64, u64, u64)> {
    let b = hexes(r, &format!("{prefix}_base"));
    let l = hexes(r, &format!("{prefix}_len"));
    let t = hexes(r, &format!("{prefix}_type"));
    b.into_iter()
        .zip(l)
        .zip(t)
        .map(|((b, l), t)| (b, l, t))
        .collect()
}

fn bzimage() -> PathBuf {
    kernel("bzimage", "bzimage", Link::Flat64, &[])
}

/// The 32- and 64-bit entries: ESI = zero page, flat CS 0x10 / DS 0x18, interrupts off,
/// the zero page filled in.
fn check_linux_entry(r: &[(String, String)], cmdline: &str, rd: &[u8]) {
    assert_eq!(hex(r, "esi"), 0xF000);
    assert_eq!(
        (hex(r, "cs"), hex(r, "ds"), hex(r, "ss")),
        (0x10, 0x18, 0x18)
    );
    assert_eq!(hex(r, "eflags") & 0x200, 0, "interrupts must be off");
    assert_eq!(hex(r, "loader"), 0xFF);
    assert_eq!(value(r, "cmdline"), cmdline);
    let at = hex(r, "initrd");
    assert_eq!(at % 4096, 0, "initrd at {at:#x} is not page aligned");
    assert!(at + rd.len() as u64 <= MEM && at >= 0x10_0000);
    assert_eq!(hex(r, "initrd_size"), rd.len() as u64);
    assert_eq!(hex(r, "initrd_data"), first_word(rd));
    assert_eq!(hex(r, "e820_entries"), 5);
    assert_eq!(e820_of(r, "e820"), expected_e820(MEM));
}

/// Boots the synthetic bzImage with an initrd, `--cmdline cmdline` and `extra` arguments;
/// returns its report after checking it left with debug-exit `code`.
fn boot_bzimage(extra: &[&str], cmdline: &str, code: i32) -> (Vec<(String, String)>, Vec<u8>) {
    let (rd, bytes) = initrd();
    let k = bzimage();
    let mut args = vec!["--kernel", path_str(&k), "--initrd", path_str(&rd)];
    args.extend_from_slice(&["--cmdline", cmdline, "--timeout", "20"]);
    args.extend_from_slice(extra);
    let run = minipc(&args);
    assert_eq!(
        run.code,
        (code << 1) | 1,
        "{extra:?}: {}{}",
        run.stdout,
        run.stderr
    );
    (report(&run.stdout), bytes)
}

#[test]
fn bzimage_64_bit_entry_is_the_default() {
    if !kvm_available() {
        return;
    }
    let (r, bytes) = boot_bzimage(&[], "console=ttyS0 root=/dev/ram0", 0x30);
    assert_eq!(value(&r, "mode"), "00000064");
    check_linux_entry(&r, "console=ttyS0 root=/dev/ram0", &bytes);
    // Long mode: paging and EFER.LMA on.
    assert_ne!(hex(&r, "cr0") & 0x8000_0001, 0);
    assert_eq!(hex(&r, "efer") & 0x500, 0x500);
}

#[test]
fn bzimage_32_bit_entry() {
    if !kvm_available() {
        return;
    }
    let (r, bytes) = boot_bzimage(&["--boot-protocol", "32"], "quiet", 0x20);
    assert_eq!(value(&r, "mode"), "00000032");
    check_linux_entry(&r, "quiet", &bytes);
    // Protected mode, paging off.
    assert_eq!(hex(&r, "cr0") & 0x8000_0001, 1);
}

#[test]
fn bzimage_real_mode_setup_runs_on_the_bios_services() {
    if !kvm_available() {
        return;
    }
    let cmdline = "console=ttyS0 earlyprintk=ttyS0";
    let (r, bytes) = boot_bzimage(&["--boot-protocol", "16"], cmdline, 0x10);
    assert_eq!(value(&r, "mode"), "00000016");
    // CS = the setup segment + 0x20; DS = SS = the setup segment, as the protocol says.
    let ds = hex(&r, "ds");
    assert_eq!(hex(&r, "cs"), ds + 0x20);
    assert_eq!(hex(&r, "ss"), ds);
    assert_eq!(hex(&r, "eflags") & 0x200, 0);
    assert_eq!(hex(&r, "loader"), 0xFF);
    assert_ne!(hex(&r, "loadflags") & 0x80, 0, "CAN_USE_HEAP");
    let heap = hex(&r, "heap_end_ptr");
    assert!(heap > 0x800 && heap + 0x200 <= 0x10000 && hex(&r, "sp") > heap);
    assert_eq!(hex(&r, "code32_start"), 0x10_0000);
    assert_eq!(hex(&r, "initrd_size"), bytes.len() as u64);
    assert_eq!(hex(&r, "initrd") % 4096, 0);
    assert_eq!(value(&r, "cmdline"), cmdline);
    // The setup code's own BIOS calls: INT 10h teletype and the INT 15h E820 walk.
    assert_eq!(value(&r, "int10"), "V");
    assert_eq!(e820_of(&r, "e820"), expected_e820(MEM));
    assert_eq!(hex(&r, "fixed_disks"), 0);

    // With --disk too, the kernel boots and the disk is there for INT 13h.
    let disk = tmp_file("kernel-and-disk.img", &vec![0u8; 1 << 20]);
    let with_disk = ["--boot-protocol", "16", "--disk", path_str(&disk)];
    let (r, _) = boot_bzimage(&with_disk, cmdline, 0x10);
    assert_eq!(hex(&r, "fixed_disks"), 1);
}

#[test]
fn elf_vmlinux_64_bit_entry_and_pvh() {
    if !kvm_available() {
        return;
    }
    let (rd, bytes) = initrd();
    let k = kernel("vmlinux", "vmlinux", Link::Elf64, &[("PVH", 1)]);
    let args = |extra: &[&'static str]| -> Run {
        let mut a = vec!["--kernel", path_str(&k), "--initrd", path_str(&rd)];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--timeout", "20"]);
        minipc(&a)
    };
    let run = args(&["--cmdline", "console=ttyS0"]);
    assert_eq!(
        run.code,
        (0x64 << 1 | 1) & 0xFF,
        "{}{}",
        run.stdout,
        run.stderr
    );
    let r = report(&run.stdout);
    assert_eq!(value(&r, "mode"), "00000064");
    check_linux_entry(&r, "console=ttyS0", &bytes);

    let run = args(&["--boot-protocol", "pvh", "--cmdline", "pvh console=hvc0"]);
    assert_eq!(run.code, (0x50 << 1) | 1, "{}{}", run.stdout, run.stderr);
    let r = report(&run.stdout);
    assert_eq!(hex(&r, "ebx"), 0xF000);
    assert_eq!(hex(&r, "cs"), 0x10);
    assert_eq!(
        hex(&r, "cr0") & 0x8000_0001,
        1,
        "PVH: protected mode, paging off"
    );
    assert_eq!(hex(&r, "pvh_magic"), 0x336E_C578);
    assert_eq!(value(&r, "cmdline"), "pvh console=hvc0");
    assert_eq!(hex(&r, "rsdp"), 0xE0000);
    assert_eq!(hex(&r, "nr_modules"), 1);
    assert_eq!(hex(&r, "mod_size"), bytes.len() as u64);
    assert_eq!(hex(&r, "memmap_entries"), 5);
    assert_eq!(e820_of(&r, "e820"), expected_e820(MEM));

    // Without the note, PVH is refused before anything starts.
    let plain = kernel("vmlinux", "vmlinux", Link::Elf64, &[("PVH", 0)]);
    let run = minipc(&["--kernel", path_str(&plain), "--boot-protocol", "pvh"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no PVH note"), "{}", run.stderr);
}

/// Module files and what a kernel must report of them: (path, bytes, string).
fn modules() -> Vec<(PathBuf, Vec<u8>, String)> {
    let m1 = b"first module's bytes".to_vec();
    let m2 = vec![0xA5u8; 5000];
    let p1 = tmp_file("module1.bin", &m1);
    let p2 = tmp_file("module2.bin", &m2);
    let s2 = path_str(&p2).to_string();
    vec![(p1, m1, "initrd.tar name".into()), (p2, m2, s2)]
}

fn boot_multiboot(k: &std::path::Path) -> (Run, Vec<(PathBuf, Vec<u8>, String)>) {
    let mods = modules();
    let m1 = format!("{},{}", path_str(&mods[0].0), mods[0].2);
    let run = minipc(&[
        "--kernel",
        path_str(k),
        "--cmdline",
        "arg1 arg2",
        "--module",
        &m1,
        "--module",
        path_str(&mods[1].0),
        "--timeout",
        "20",
    ]);
    (run, mods)
}

fn check_modules(r: &[(String, String)], mods: &[(PathBuf, Vec<u8>, String)]) {
    let starts = hexes(r, "mod_start");
    let ends = hexes(r, "mod_end");
    let data = hexes(r, "mod_data");
    let strings: Vec<String> = r
        .iter()
        .filter(|(k, _)| k == "mod_string")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(starts.len(), mods.len());
    for (i, (_, bytes, string)) in mods.iter().enumerate() {
        assert_eq!(starts[i] % 4096, 0, "module {i} is not page aligned");
        assert!(starts[i] >= 0x10_0000);
        assert_eq!(ends[i] - starts[i], bytes.len() as u64);
        assert_eq!(data[i], first_word(bytes));
        assert_eq!(&strings[i], string);
    }
    assert!(starts[1] >= ends[0], "modules overlap");
}

#[test]
fn multiboot1_elf32_elf64_and_aout_kludge() {
    if !kvm_available() {
        return;
    }
    for (link, aout) in [(Link::Elf32, 0), (Link::Elf64, 0), (Link::Flat32, 1)] {
        let k = kernel("mb", "kernel", link, &[("MB2", 0), ("AOUT", aout)]);
        let (run, mods) = boot_multiboot(&k);
        assert_eq!(
            run.code,
            (0x42 << 1) | 1,
            "{link:?}: {}{}",
            run.stdout,
            run.stderr
        );
        let r = report(&run.stdout);
        assert_eq!(hex(&r, "magic"), 0x2BAD_B002, "{link:?}");
        assert_eq!(hex(&r, "info"), 0xF000);
        assert_eq!((hex(&r, "cs"), hex(&r, "ds")), (0x10, 0x18));
        assert_eq!(hex(&r, "eflags") & 0x200, 0);
        assert_eq!(
            hex(&r, "cr0") & 0x8000_0001,
            1,
            "protected mode, paging off"
        );
        // mem, boot_device, cmdline, mods, mmap, loader name.
        assert_eq!(hex(&r, "flags"), 0x24F);
        assert_eq!(hex(&r, "mem_lower"), 639);
        assert_eq!(hex(&r, "mem_upper"), (MEM >> 10) - 1024);
        assert_eq!(hex(&r, "boot_device"), 0x80FF_FFFF);
        assert_eq!(value(&r, "cmdline"), format!("{} arg1 arg2", path_str(&k)));
        assert_eq!(value(&r, "loader"), "minipc");
        assert_eq!(hex(&r, "mods_count"), 2);
        check_modules(&r, &mods);
        assert_eq!(e820_of(&r, "mmap"), expected_e820(MEM));
    }
}

#[test]
fn multiboot2_elf_and_address_tags() {
    if !kvm_available() {
        return;
    }
    for (link, aout) in [(Link::Elf32, 0), (Link::Flat32, 1)] {
        let k = kernel("mb", "kernel", link, &[("MB2", 1), ("AOUT", aout)]);
        let (run, mods) = boot_multiboot(&k);
        assert_eq!(
            run.code,
            (0x42 << 1) | 1,
            "{link:?}: {}{}",
            run.stdout,
            run.stderr
        );
        let r = report(&run.stdout);
        assert_eq!(hex(&r, "magic"), 0x36D7_6289);
        assert_eq!(hex(&r, "cr0") & 0x8000_0001, 1);
        assert_eq!(hexes(&r, "tag"), [1, 2, 3, 3, 4, 5, 6, 14, 15, 0]);
        assert_eq!(value(&r, "cmdline"), "arg1 arg2");
        assert_eq!(value(&r, "loader"), "minipc");
        assert_eq!(hex(&r, "mem_lower"), 639);
        assert_eq!(hex(&r, "mem_upper"), (MEM >> 10) - 1024);
        check_modules(&r, &mods);
        assert_eq!(e820_of(&r, "mmap"), expected_e820(MEM));
        assert_eq!(hex(&r, "rsdp"), u32::from_le_bytes(*b"RSD ") as u64);
    }
}

fn assert_refused(args: &[&str], needle: &str) {
    let r = minipc(args);
    assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
    assert!(
        r.stderr.contains(needle),
        "{args:?}: wanted {needle:?} in {}",
        r.stderr
    );
    assert_eq!(r.stdout, "", "{args:?}");
}

#[test]
fn bad_kernels_are_refused_with_one_line() {
    let bz = std::fs::read(bzimage()).unwrap();
    let truncated = tmp_file("truncated-bzImage", &bz[..0x300]);
    assert_refused(&["--kernel", path_str(&truncated)], "truncated");
    // syssize (in 16-byte units) tells how long the protected-mode kernel is.
    let mut sized = bz.clone();
    let pm = (bz.len() - 0xA00) as u32;
    sized[0x1F4..0x1F8].copy_from_slice(&pm.div_ceil(16).to_le_bytes());
    let short = tmp_file("short-bzImage", &sized[..0xA80]);
    assert_refused(&["--kernel", path_str(&short)], "truncated");
    let setup_only = tmp_file("setup-only-bzImage", &bz[..0xA00]);
    assert_refused(&["--kernel", path_str(&setup_only)], "truncated");
    let mut old = bz.clone();
    old[0x206] = 0x01;
    old[0x207] = 0x02;
    let old = tmp_file("old-bzImage", &old);
    assert_refused(&["--kernel", path_str(&old)], "too old");
    let junk = tmp_file("junk-kernel", &[0x5Au8; 20000]);
    assert_refused(&["--kernel", path_str(&junk)], "not a kernel");
    assert_refused(
        &["--kernel", "/nonexistent/vmlinuz"],
        "/nonexistent/vmlinuz",
    );
    assert_refused(&["--kernel", "/"], "cannot read kernel");
    assert_refused(
        &["--kernel", "/dev/zero", "--mem", "4M"],
        "larger than the guest's RAM",
    );
    let empty = tmp_file("empty-kernel", &[]);
    assert_refused(&["--kernel", path_str(&empty)], "empty");
    // Sizes that do not fit.
    let big = tmp_file("big-initrd", &vec![0u8; 3 << 20]);
    assert_refused(
        &[
            "--kernel",
            path_str(&bzimage()),
            "--initrd",
            path_str(&big),
            "--mem",
            "4M",
        ],
        "does not fit",
    );
    let long = "x".repeat(3000);
    assert_refused(
        &["--kernel", path_str(&bzimage()), "--cmdline", &long],
        "--cmdline",
    );
    // Options for another kind of kernel.
    let mb = kernel("mb", "kernel", Link::Elf32, &[("MB2", 0), ("AOUT", 0)]);
    assert_refused(
        &["--kernel", path_str(&mb), "--initrd", path_str(&big)],
        "--module",
    );
    assert_refused(
        &["--kernel", path_str(&bzimage()), "--module", path_str(&big)],
        "multiboot",
    );
    assert_refused(
        &["--kernel", path_str(&bzimage()), "--boot-protocol", "pvh"],
        "PVH",
    );
    // A multiboot kernel with a broken checksum is no multiboot kernel, and not Linux.
    let mut aout = std::fs::read(kernel(
        "mb",
        "kernel",
        Link::Flat32,
        &[("MB2", 0), ("AOUT", 1)],
    ))
    .unwrap();
    aout[8 + 8] ^= 0xFF;
    let aout = tmp_file("bad-checksum-mb", &aout);
    assert_refused(&["--kernel", path_str(&aout)], "not a kernel");
    // A user's firmware gets a Linux bzImage through fw_cfg, nothing else.
    let rom = guest("hello", &[]);
    assert_refused(
        &["--firmware", path_str(&rom), "--kernel", path_str(&mb)],
        "must be a Linux bzImage",
    );
    // A module that does not fit in RAM.
    assert_refused(
        &[
            "--kernel",
            path_str(&mb),
            "--module",
            path_str(&big),
            "--mem",
            "4M",
        ],
        "does not fit",
    );
}

#[test]
fn reboot_loads_the_kernel_and_modules_again() {
    if !kvm_available() {
        return;
    }
    let k = kernel("reload", "kernel", Link::Flat32, &[]);
    let m = tmp_file("reload-module", b"module bytes");
    let args = |reboot: bool| {
        let mut a = vec![
            "--kernel",
            path_str(&k),
            "--module",
            path_str(&m),
            "--timeout",
            "20",
            "--stats",
        ];
        if reboot {
            a.push("--reboot");
        }
        minipc(&a)
    };
    let r = args(true);
    assert_eq!(r.code, (0x21 << 1) | 1, "{}", r.stderr);
    // Without --reboot the reset ends the VM.
    let r = args(false);
    assert_eq!(
        (r.code, r.reason().as_deref()),
        (0, Some("reset")),
        "{}",
        r.stderr
    );
}

/// Single-stepped, KVM does not halt the vCPU at HLT, so the demo's final `cli; hlt` loop
/// would be stepped until the timeout: the firmware's own halt ends the count.
#[test]
fn the_demo_counted_ends_at_its_halt() {
    if !kvm_available() {
        return;
    }
    let r = minipc(&["--x-count-instructions", "--stats", "--timeout", "30"]);
    assert_eq!(
        (r.code, r.reason().as_deref()),
        (0, Some("halted")),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("demo done"), "{}", r.stdout);
    let n = r
        .stat("firmware_instructions")
        .unwrap_or_else(|| panic!("no instruction count: {}", r.stderr));
    assert!((100..5000).contains(&n), "{n} instructions");
}

#[test]
fn the_firmware_hands_off_within_2000_instructions() {
    if !kvm_available() {
        return;
    }
    let bz = bzimage();
    let mb = kernel("mb", "kernel", Link::Elf32, &[("MB2", 1), ("AOUT", 0)]);
    for (k, p) in [(&bz, "64"), (&bz, "32"), (&bz, "16"), (&mb, "")] {
        let mut args = vec!["--kernel", path_str(k), "--x-count-instructions", "--stats"];
        if !p.is_empty() {
            args.extend_from_slice(&["--boot-protocol", p]);
        }
        let r = minipc(&args);
        let stats = r
            .stats()
            .unwrap_or_else(|| panic!("no stats: {}", r.stderr));
        let n = r
            .stat("firmware_instructions")
            .unwrap_or_else(|| panic!("no instruction count: {stats}"));
        assert!(
            (20..2000).contains(&n),
            "{p}: {n} instructions before the hand-off"
        );
        assert!(stats.contains("\"handoff_us\":") && !stats.contains("\"handoff_us\":null"));
    }
}
