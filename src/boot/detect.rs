//! `--kernel` format detection, in the order QEMU's `-kernel` (and GRUB) use: a multiboot 2
//! header, a multiboot 1 header, a Linux bzImage ("HdrS" at 0x202), then an ELF Linux
//! kernel. Anything else is refused with the reason.

use std::path::Path;

use super::{elf, file_err, linux, multiboot, multiboot2, read_input, BootError, Payload};
use crate::config::{BootProtocol, VmConfig};
use crate::memory::MemoryLayout;

pub(super) fn plan(
    path: &Path,
    cfg: &VmConfig,
    layout: &MemoryLayout,
) -> Result<Payload, BootError> {
    let file = read_input(path, "kernel", layout.ram_size)?;
    plan_bytes(&path.display().to_string(), file, cfg, layout)
}

/// Decides what the kernel `file` (read from `p`) is and checks it for its loader.
pub(super) fn plan_bytes(
    p: &str,
    file: Vec<u8>,
    cfg: &VmConfig,
    layout: &MemoryLayout,
) -> Result<Payload, BootError> {
    let linux_only = |what: &str| -> Result<(), BootError> {
        if cfg.boot_protocol != BootProtocol::Auto {
            return Err(file_err(
                p,
                format!("--boot-protocol is for Linux kernels; this is a {what} kernel"),
            ));
        }
        if cfg.initrd.is_some() {
            return Err(file_err(
                p,
                format!(
                    "--initrd is for Linux kernels; give a {what} kernel its files with --module"
                ),
            ));
        }
        Ok(())
    };
    if let Some(at) = multiboot2::find_header(&file) {
        linux_only("multiboot2")?;
        return Ok(Payload::Multiboot2(Box::new(multiboot2::Multiboot2::new(
            p, file, at, cfg, layout,
        )?)));
    }
    if let Some(at) = multiboot::find_header(&file) {
        linux_only("multiboot")?;
        return Ok(Payload::Multiboot(Box::new(multiboot::Multiboot::new(
            p, file, at, cfg, layout,
        )?)));
    }
    if !cfg.modules.is_empty() {
        return Err(file_err(
            p,
            "--module is for multiboot kernels; this kernel has no multiboot header",
        ));
    }
    if linux::is_bzimage(&file) || elf::is_elf(&file) {
        return Ok(Payload::Linux(Box::new(linux::Linux::new(
            p, file, cfg, layout,
        )?)));
    }
    Err(file_err(
        p,
        "not a kernel minipc can boot (no multiboot header, not a bzImage, not ELF)",
    ))
}
