//! Assembles the firmware under `firmware/` with the system's binutils into a flat 64 KiB
//! blob (`$OUT_DIR/firmware.bin`), which `src/firmware.rs` embeds.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SOURCES: &[&str] = &[
    "reset.s",
    "post.s",
    "fw_cfg.s",
    "console.s",
    "services.s",
    "demo.s",
    "handoff.s",
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

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let src = Path::new("firmware");
    println!("cargo:rerun-if-changed=firmware");
    println!("cargo:rerun-if-changed=build.rs");
    syscall_names(&out);

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
