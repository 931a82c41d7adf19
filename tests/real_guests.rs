//! Real guests Debian ships, fetched by the scripts in tests/fixtures (which `.ci/run` runs
//! first): the cloud kernel through its early boot (as far as an unmodified Linux gets on a
//! software KVM; see shared/guests/README.md), GRUB installed on a disk image, iPXE loaded as
//! a Linux kernel. Without a fixture a test skips loudly, and fails under CI=true.

mod common;
use common::*;

#[test]
fn debian_kernel_elf_prints_our_e820_acpi_and_cpus() {
    if !kvm_available() {
        return;
    }
    let Some(vmlinux) = fixture("debian-kernel", "vmlinux", "debian-kernel.sh") else {
        return;
    };
    let run = minipc(&[
        "--kernel",
        path_str(&vmlinux),
        "--cmdline",
        "console=ttyS0 earlyprintk=ttyS0",
        "--cpus",
        "4",
        "--timeout",
        "55",
    ]);
    let out = &run.stdout;
    let ctx = || format!("stdout:\n{out}\nstderr:\n{}", run.stderr);
    assert!(out.contains("Linux version 6."), "no banner: {}", ctx());
    // The E820 map exactly as minipc gave it.
    let map: Vec<String> = out
        .lines()
        .filter_map(|l| {
            l.split_once("BIOS-e820: ")
                .map(|(_, m)| m.trim().to_string())
        })
        .collect();
    let want: Vec<String> = expected_e820(256 << 20)
        .iter()
        .map(|(b, l, t)| {
            format!(
                "[mem {b:#018x}-{:#018x}] {}",
                b + l - 1,
                if *t == 1 { "usable" } else { "reserved" }
            )
        })
        .collect();
    assert_eq!(map, want, "{}", ctx());
    // minipc's ACPI tables, found through the RSDP at 0xE0000.
    assert!(out.contains("ACPI: RSDP 0x00000000000E0000"), "{}", ctx());
    for t in ["ACPI: FACP", "ACPI: DSDT", "ACPI: APIC"] {
        assert!(out.contains(t), "no {t}: {}", ctx());
    }
    assert!(out.contains("smpboot: Allowing 4 CPUs"), "{}", ctx());
    // It ends on an instruction this KVM cannot emulate, or at the timeout: never a hang or
    // a VMM failure.
    assert!(
        run.stderr.contains("emulation failure") || run.stderr.contains("timeout expired"),
        "{}",
        ctx()
    );
}

#[test]
fn debian_kernel_16_bit_setup_probes_edd_on_our_bios() {
    if !kvm_available() {
        return;
    }
    let Some(vmlinuz) = fixture("debian-kernel", "vmlinuz", "debian-kernel.sh") else {
        return;
    };
    let run = minipc(&[
        "--kernel",
        path_str(&vmlinuz),
        "--boot-protocol",
        "16",
        "--cmdline",
        "console=ttyS0",
        "--timeout",
        "10",
    ]);
    assert!(
        run.stdout
            .contains("Probing EDD (edd=off to disable)... ok"),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn grub_boots_from_a_disk_image_on_our_bios() {
    if !kvm_available() {
        return;
    }
    let Some(disk) = fixture("grub", "disk.img", "grub-disk.sh") else {
        return;
    };
    let run = minipc(&["--disk", path_str(&disk), "--timeout", "60", "--stats"]);
    let out = &run.stdout;
    let ctx = || format!("stdout:\n{out}\nstderr:\n{}", run.stderr);
    // boot.img (the MBR) and core.img load through INT 13h; GRUB then runs its configuration.
    assert!(out.contains("Welcome to GRUB!"), "{}", ctx());
    assert!(
        out.contains("minipc-grub-marker: GRUB runs on the minipc BIOS"),
        "{}",
        ctx()
    );
    // GRUB's lsmmap: the E820 map from INT 15h, as minipc gave it.
    let map: Vec<(u64, u64)> = out
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("base_addr = 0x")?;
            let (base, rest) = l.split_once(", length = 0x")?;
            let len = rest.split(',').next()?;
            Some((
                u64::from_str_radix(base, 16).ok()?,
                u64::from_str_radix(len, 16).ok()?,
            ))
        })
        .collect();
    let want: Vec<(u64, u64)> = expected_e820(256 << 20)
        .iter()
        .map(|(b, l, _)| (*b, *l))
        .collect();
    assert_eq!(map, want, "{}", ctx());
    // `halt` powers off through ACPI.
    assert_eq!(
        (run.code, run.reason().as_deref()),
        (0, Some("poweroff")),
        "{}",
        ctx()
    );
}

#[test]
fn ipxe_lkrn_runs_through_the_16_bit_boot_protocol() {
    if !kvm_available() {
        return;
    }
    let Some(lkrn) = fixture("ipxe", "ipxe.lkrn", "ipxe.sh") else {
        return;
    };
    // iPXE unpacks itself (about a minute of emulated instructions here), then prints
    // through INT 10h.
    let run = minipc(&[
        "--kernel",
        path_str(&lkrn),
        "--boot-protocol",
        "16",
        "--timeout",
        "150",
    ]);
    assert!(
        run.stdout.contains("iPXE initialising devices"),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
}
