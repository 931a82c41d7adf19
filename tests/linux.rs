//! Debian's real cloud kernel through its early boot (as far as an unmodified Linux gets on
//! a software KVM; see shared/guests/README.md): fetched by tests/fixtures/debian-kernel.sh,
//! which `.ci/run` runs first. Without the fixture these tests skip loudly, and fail under
//! CI=true.

mod common;
use common::*;

use std::path::PathBuf;

fn fixture(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("MINIPC_FIXTURES")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("minipc")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/minipc")))?;
    let p = root.join("debian-kernel").join(name);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing and CI=true: run tests/fixtures/debian-kernel.sh",
            p.display()
        );
    }
    eprintln!(
        "\n*** SKIPPED: {} is missing; run tests/fixtures/debian-kernel.sh ***\n",
        p.display()
    );
    None
}

#[test]
fn debian_kernel_elf_prints_our_e820_acpi_and_cpus() {
    if !kvm_available() {
        return;
    }
    let Some(vmlinux) = fixture("vmlinux") else {
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
    let Some(vmlinuz) = fixture("vmlinuz") else {
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
