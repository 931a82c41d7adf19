//! A Linux bzImage for a user's firmware (`--firmware` with `--kernel`), handed over as QEMU
//! does: through fw_cfg's kernel, setup, initrd and command line items, which a firmware such
//! as qboot loads and enters by the 16-bit protocol. The items share the image's bytes; the
//! VMM writes nothing into guest memory for them.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use super::linux::{
    is_bzimage, kernel_cmdline, place_initrd, Format, Linux, CAN_USE_HEAP, LOADER_UNDEFINED,
};
use super::{area, check_image_range, file_err, BootError};
use crate::config::BootProtocol;
use crate::memory::{MemoryLayout, HIGH_MEMORY_START};

/// The items, ready to be added to fw_cfg.
#[derive(Debug)]
pub struct FwCfgLinux {
    image: std::sync::Arc<Vec<u8>>,
    /// The real-mode part with its header filled in for the addresses below.
    pub(super) setup: Vec<u8>,
    initrd: Option<(std::sync::Arc<Vec<u8>>, u64)>,
    pub(super) cmdline: Vec<u8>,
}

impl FwCfgLinux {
    pub fn new(
        path: &str,
        image: Vec<u8>,
        cfg: &crate::config::VmConfig,
        layout: &MemoryLayout,
    ) -> Result<FwCfgLinux, BootError> {
        if !is_bzimage(&image) {
            return Err(file_err(
                path,
                "with --firmware, --kernel must be a Linux bzImage (the firmware loads it through fw_cfg)",
            ));
        }
        if cfg.boot_protocol != BootProtocol::Auto || !cfg.modules.is_empty() {
            return Err(BootError::Config(
                "with --firmware the firmware chooses how to enter the kernel: --boot-protocol and --module do not apply".into(),
            ));
        }
        let (format, _, cmdline_size) =
            Linux::bzimage(path, &image, BootProtocol::Linux16, layout)?;
        let Format::BzImage {
            header, setup_len, ..
        } = format
        else {
            return Err(file_err(path, "not a bzImage"));
        };
        // QEMU's layout: the protected-mode kernel at 1 MiB whatever its preferences.
        let pm_len = (image.len() - setup_len) as u64;
        let need = (header.init_size as u64).max(pm_len);
        check_image_range(
            path,
            "the kernel",
            HIGH_MEMORY_START,
            HIGH_MEMORY_START + need,
            layout,
        )?;
        let cmdline = kernel_cmdline(cfg, cmdline_size)?;
        let initrd = match &cfg.initrd {
            Some(p) => {
                let ip = p.display().to_string();
                let bytes = super::read_input(p, "initrd", layout.ram_size)?;
                let addr = place_initrd(
                    bytes.len() as u64,
                    HIGH_MEMORY_START + need,
                    header.initrd_addr_max as u64,
                    layout,
                )
                .ok_or_else(|| file_err(&ip, "initrd does not fit above the kernel"))?;
                Some((std::sync::Arc::new(bytes), addr))
            }
            None => None,
        };
        let mut hdr = header;
        hdr.type_of_loader = LOADER_UNDEFINED;
        hdr.cmd_line_ptr = area::CMDLINE as u32;
        hdr.loadflags |= CAN_USE_HEAP;
        hdr.heap_end_ptr = (area::CMDLINE - area::SETUP - 0x200) as u16;
        hdr.code32_start = HIGH_MEMORY_START as u32;
        if let Some((b, addr)) = &initrd {
            hdr.ramdisk_image = *addr as u32;
            hdr.ramdisk_size = b.len() as u32;
        }
        let mut setup = image[..setup_len].to_vec();
        let n = std::mem::size_of::<setup_header>().min(setup.len() - 0x1F1);
        setup[0x1F1..0x1F1 + n].copy_from_slice(&hdr.as_slice()[..n]);
        Ok(FwCfgLinux {
            image: std::sync::Arc::new(image),
            setup,
            initrd,
            cmdline,
        })
    }

    /// QEMU's items: addresses and sizes as u32 LE, the data shared with the image.
    pub fn add_items(&self, fw: &mut crate::devices::fw_cfg::FwCfg) {
        use crate::devices::fw_cfg::key;
        let u32le = |v: u64| (v as u32).to_le_bytes().to_vec();
        let setup_len = self.setup.len();
        fw.add_item(key::SETUP_ADDR, u32le(area::SETUP));
        fw.add_item(key::SETUP_SIZE, u32le(setup_len as u64));
        fw.add_item(key::SETUP_DATA, self.setup.clone());
        fw.add_item(key::KERNEL_ADDR, u32le(HIGH_MEMORY_START));
        fw.add_item(
            key::KERNEL_SIZE,
            u32le((self.image.len() - setup_len) as u64),
        );
        fw.add_shared_item(
            key::KERNEL_DATA,
            self.image.clone(),
            setup_len..self.image.len(),
        );
        fw.add_item(key::CMDLINE_ADDR, u32le(area::CMDLINE));
        fw.add_item(key::CMDLINE_SIZE, u32le(self.cmdline.len() as u64));
        fw.add_item(key::CMDLINE_DATA, self.cmdline.clone());
        if let Some((b, addr)) = &self.initrd {
            fw.add_item(key::INITRD_ADDR, u32le(*addr));
            fw.add_item(key::INITRD_SIZE, u32le(b.len() as u64));
            fw.add_shared_item(key::INITRD_DATA, b.clone(), 0..b.len());
        }
    }
}
