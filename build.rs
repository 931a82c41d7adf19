//! Assembles the firmware under `firmware/` with the system's binutils into a flat 64 KiB
//! blob (`$OUT_DIR/firmware.bin`), which `src/firmware.rs` embeds, and the offsets of the
//! firmware symbols the BIOS services need (`$OUT_DIR/firmware_symbols.rs`, for src/bios/).
//! Compiles the seccomp filters of src/seccomp/lists.rs (`$OUT_DIR/seccomp_filters.rs`), so
//! that the VMM does not compile them at every start, and encodes the DSDT's `_PRT` package of
//! src/pci_routing.rs (`$OUT_DIR/pci_prt.aml`), which the VMM would otherwise encode at every
//! start.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

// The seccomp lists and their layout, as the VMM has them (src/seccomp/); the build uses
// only their compilation.
#[allow(dead_code)]
#[path = "src/seccomp/lists.rs"]
mod lists;
#[allow(dead_code)]
#[path = "src/seccomp/tree.rs"]
mod tree;

// The PCI interrupt routing, as the VMM has it (src/pci_routing.rs).
#[allow(dead_code)]
#[path = "src/pci_routing.rs"]
mod pci_routing;

/// Writes `pci_prt.aml`: the `_PRT` package's AML (acpi.rs puts it in the DSDT).
fn pci_prt(out: &Path) {
    use acpi_tables::Aml;
    println!("cargo:rerun-if-changed=src/pci_routing.rs");
    let mut aml = Vec::new();
    pci_routing::routing_table().to_aml_bytes(&mut aml);
    fs::write(out.join("pci_prt.aml"), aml).expect("write pci_prt.aml");
}

/// Writes `seccomp_filters.rs`: every thread kind's filter, with and without `--reboot`, and
/// the spawn guard, as (code, jt, jf, k) instructions.
fn seccomp_filters(out: &Path) {
    println!("cargo:rerun-if-changed=src/seccomp/lists.rs");
    println!("cargo:rerun-if-changed=src/seccomp/tree.rs");
    let insns = |p: &[seccompiler::sock_filter]| -> String {
        p.iter()
            .map(|i| format!("({}, {}, {}, {}),", i.code, i.jt, i.jf, i.k))
            .collect()
    };
    let libc = lists::Libc::from_target_env(&env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default());
    let mut text = String::from(
        "/// The filters compiled by build.rs: (thread kind, --reboot, instructions).\n\
         static PREBUILT: &[Prebuilt] = &[\n",
    );
    for kind in lists::KINDS {
        for reboot in [false, true] {
            let p = lists::compile_list(kind, reboot, libc)
                .unwrap_or_else(|e| panic!("the {kind:?} seccomp filter: {e}"));
            text.push_str(&format!(
                "    (ThreadKind::{kind:?}, {reboot}, &[{}]),\n",
                insns(&p)
            ));
        }
    }
    let guard = lists::spawn_guard(libc).unwrap_or_else(|e| panic!("the spawn guard: {e}"));
    text.push_str(&format!(
        "];\n/// The spawn guard compiled by build.rs.\n\
         static PREBUILT_SPAWN_GUARD: &[Insn] = &[{}];\n\
         /// The C library the filters were compiled for.\n\
         const BUILT_FOR: Libc = Libc::{libc:?};\n",
        insns(&guard)
    ));
    fs::write(out.join("seccomp_filters.rs"), text).expect("write seccomp_filters.rs");
}

const SOURCES: &[&str] = &[
    "reset.s",
    "post.s",
    "console.s",
    "services.s",
    "demo.s",
    "handoff_real.s",
    "handoff_protected.s",
];
const BLOB_SIZE: u64 = 64 * 1024;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install binutils)"));
    assert!(status.success(), "{cmd:?} failed with {status}");
}

/// Writes `syscall_names.rs`: (number, name) pairs from the system's x86_64 syscall header,
/// so a seccomp report can name the syscall. Without the header the table is empty.
fn syscall_names(out: &Path) {
    let header = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h";
    println!("cargo:rerun-if-changed={header}");
    let mut table = String::from("pub static SYSCALL_NAMES: &[(i64, &str)] = &[\n");
    if let Ok(text) = fs::read_to_string(header) {
        for line in text.lines() {
            let mut it = line.split_whitespace();
            if let (Some("#define"), Some(name), Some(nr)) = (it.next(), it.next(), it.next()) {
                if let (Some(name), Ok(nr)) = (name.strip_prefix("__NR_"), nr.parse::<i64>()) {
                    table.push_str(&format!("    ({nr}, \"{name}\"),\n"));
                }
            }
        }
    }
    table.push_str("];\n");
    fs::write(out.join("syscall_names.rs"), table).expect("write syscall_names.rs");
}

/// Firmware symbols the VMM needs, as offsets in segment F000: each service handler's `out`
/// (a port write is a service call only from there), the ROM tables services return, what
/// the interrupt vector table points at (src/bios/ivt.rs), and where the firmware halts for
/// good (`--x-count-instructions`, src/vcpu/mod.rs).
const SYMBOLS: &[&str] = &[
    "default_isr",
    "irq_master_isr",
    "irq_slave_isr",
    "service_vectors",
    "int10_out",
    "int11_out",
    "int12_out",
    "int13_out",
    "int15_out",
    "int16_out",
    "int18_out",
    "int19_out",
    "int1a_out",
    "print_out",
    "floppy_dpt",
    "system_config",
    "halt_out",
    "halt_hlt",
];

/// Writes `firmware_symbols.rs`: one `u16` constant per name in SYMBOLS, read from the
/// firmware's symbol table with `nm`.
fn firmware_symbols(elf: &Path, out: &Path) {
    let nm = Command::new("nm")
        .arg(elf)
        .output()
        .unwrap_or_else(|e| panic!("cannot run nm: {e} (install binutils)"));
    assert!(nm.status.success(), "nm {} failed", elf.display());
    let text = String::from_utf8_lossy(&nm.stdout);
    let mut rs =
        String::from("// Offsets in segment F000 of firmware symbols (build.rs, from nm).\n");
    for name in SYMBOLS {
        let addr = text
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let (addr, _kind, sym) = (it.next()?, it.next()?, it.next()?);
                (sym == *name).then(|| u32::from_str_radix(addr, 16).ok())?
            })
            .unwrap_or_else(|| panic!("firmware symbol {name} is missing"));
        assert!(
            addr <= 0xFFFF,
            "firmware symbol {name} at {addr:#x} is outside the segment"
        );
        rs.push_str(&format!(
            "pub const {}: u16 = {addr:#06x};\n",
            name.to_uppercase()
        ));
    }
    fs::write(out.join("firmware_symbols.rs"), rs).expect("write firmware_symbols.rs");
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let src = Path::new("firmware");
    println!("cargo:rerun-if-changed=firmware");
    println!("cargo:rerun-if-changed=build.rs");
    syscall_names(&out);
    seccomp_filters(&out);
    pci_prt(&out);

    let version = env::var("CARGO_PKG_VERSION").expect("CARGO_PKG_VERSION");
    fs::write(out.join("version.inc"), format!(".ascii \"{version}\"\n"))
        .expect("write version.inc");

    let mut objects = Vec::new();
    for s in SOURCES {
        let obj = out.join(format!("{s}.o"));
        run(Command::new("as")
            .arg("--32")
            .arg("-I")
            .arg(src)
            .arg("-I")
            .arg(&out)
            .arg("-o")
            .arg(&obj)
            .arg(src.join(s)));
        objects.push(obj);
    }
    let elf = out.join("firmware.elf");
    run(Command::new("ld")
        .args(["-m", "elf_i386", "-nostdlib", "-T"])
        .arg(src.join("firmware.ld"))
        .arg("-o")
        .arg(&elf)
        .args(&objects));
    firmware_symbols(&elf, &out);
    let bin = out.join("firmware.bin");
    run(Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&elf)
        .arg(&bin));
    let size = fs::metadata(&bin).expect("firmware.bin").len();
    assert_eq!(
        size, BLOB_SIZE,
        "firmware blob is {size} bytes, expected {BLOB_SIZE}"
    );
}
