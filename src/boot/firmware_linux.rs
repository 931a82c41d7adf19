//! A Linux bzImage for a user's firmware (`--firmware` with `--kernel`), handed over as QEMU
//! does: through fw_cfg's kernel, setup, initrd and command line items, which a firmware such
//! as qboot loads and enters by the 16-bit protocol. A regular file is read only as far as
//! the checks need (the setup code) and served from the file when the firmware reads it;
//! nothing is copied into guest memory for a guest that never asks.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;

use super::linux::{
    is_bzimage, kernel_cmdline, place_initrd, Format, Linux, CAN_USE_HEAP, LOADER_UNDEFINED,
};
use super::{area, check_image_range, file_err, BootError};
use crate::config::BootProtocol;
use crate::devices::fw_cfg::FwCfg;
use crate::memory::{MemoryLayout, HIGH_MEMORY_START};

/// Where an item's bytes are: in memory (shared with the plan), or in a file, read when the
/// guest reads them.
#[derive(Debug, Clone)]
enum Data {
    Shared(Arc<Vec<u8>>, Range<usize>),
    File(Arc<std::fs::File>, u64, usize),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::Shared(_, r) => r.len(),
            Data::File(_, _, len) => *len,
        }
    }

    fn add_to(&self, fw: &mut FwCfg, key: u16) {
        match self {
            Data::Shared(b, r) => fw.add_shared_item(key, b.clone(), r.clone()),
            Data::File(f, offset, len) => fw.add_file_item(key, f.clone(), *offset, *len),
        }
    }
}

/// The items, ready to be added to fw_cfg.
#[derive(Debug)]
pub struct FwCfgLinux {
    /// The protected-mode kernel.
    kernel: Data,
    /// The real-mode part with its header filled in for the addresses below.
    pub(super) setup: Vec<u8>,
    initrd: Option<(Data, u64)>,
    pub(super) cmdline: Vec<u8>,
}

/// The setup code is at most 255 + 1 sectors.
const MAX_SETUP: usize = 256 * 512;

/// Opens `path`: a regular file is read lazily (its size from its metadata, which is right
/// for one); anything else is read whole now, and what was read is what counts.
fn open_lazily(path: &Path, what: &str, max: u64) -> Result<(Data, Option<Vec<u8>>), BootError> {
    let p = path.display().to_string();
    let f =
        std::fs::File::open(path).map_err(|e| file_err(&p, format!("cannot read {what}: {e}")))?;
    let meta = f
        .metadata()
        .map_err(|e| file_err(&p, format!("cannot read {what}: {e}")))?;
    if !meta.is_file() {
        let bytes = super::read_input(path, what, max)?;
        let len = bytes.len();
        return Ok((Data::Shared(Arc::new(bytes), 0..len), None));
    }
    if meta.len() > max {
        return Err(file_err(
            &p,
            format!("{what} is larger than the guest's RAM ({max} bytes)"),
        ));
    }
    if meta.len() == 0 {
        return Err(file_err(&p, format!("{what} is empty")));
    }
    // The first bytes (a bzImage's setup code), read now; the rest on demand.
    let mut head = vec![0u8; (meta.len() as usize).min(MAX_SETUP)];
    let mut got = 0;
    while got < head.len() {
        match f.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(file_err(&p, format!("cannot read {what}: {e}"))),
        }
    }
    head.truncate(got);
    Ok((Data::File(Arc::new(f), 0, meta.len() as usize), Some(head)))
}

impl FwCfgLinux {
    /// From the files: a regular kernel or initrd file is read only as far as the checks
    /// need (the kernel's setup code) and served from the file when the firmware reads it.
    pub fn from_path(
        path: &Path,
        cfg: &crate::config::VmConfig,
        layout: &MemoryLayout,
    ) -> Result<FwCfgLinux, BootError> {
        let p = path.display().to_string();
        match open_lazily(path, "kernel", layout.ram_size)? {
            (Data::File(f, _, len), Some(head)) => {
                Self::plan(&p, &head, Data::File(f, 0, len), cfg, layout)
            }
            (Data::Shared(b, _), _) => Self::new(&p, Arc::unwrap_or_clone(b), cfg, layout),
            (Data::File(..), None) => Err(file_err(&p, "cannot read kernel")),
        }
    }

    /// From a kernel image already read.
    pub fn new(
        path: &str,
        image: Vec<u8>,
        cfg: &crate::config::VmConfig,
        layout: &MemoryLayout,
    ) -> Result<FwCfgLinux, BootError> {
        let len = image.len();
        let image = Arc::new(image);
        Self::plan(
            path,
            &image.clone(),
            Data::Shared(image, 0..len),
            cfg,
            layout,
        )
    }

    /// `head` is the start of the kernel (its setup code at least), `whole` all of it.
    fn plan(
        path: &str,
        head: &[u8],
        whole: Data,
        cfg: &crate::config::VmConfig,
        layout: &MemoryLayout,
    ) -> Result<FwCfgLinux, BootError> {
        if !is_bzimage(head) {
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
        let len = whole.len();
        let (format, _, cmdline_size) =
            Linux::bzimage(path, head, len, BootProtocol::Linux16, layout)?;
        let Format::BzImage {
            header, setup_len, ..
        } = format
        else {
            return Err(file_err(path, "not a bzImage"));
        };
        // QEMU's layout: the protected-mode kernel at 1 MiB whatever its preferences.
        let pm_len = (len - setup_len) as u64;
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
                let (data, _) = open_lazily(p, "initrd", layout.ram_size)?;
                let addr = place_initrd(
                    data.len() as u64,
                    HIGH_MEMORY_START + need,
                    header.initrd_addr_max as u64,
                    layout,
                )
                .ok_or_else(|| file_err(&ip, "initrd does not fit above the kernel"))?;
                Some((data, addr))
            }
            None => None,
        };
        let mut hdr = header;
        hdr.type_of_loader = LOADER_UNDEFINED;
        hdr.cmd_line_ptr = area::CMDLINE as u32;
        hdr.loadflags |= CAN_USE_HEAP;
        hdr.heap_end_ptr = (area::CMDLINE - area::SETUP - 0x200) as u16;
        hdr.code32_start = HIGH_MEMORY_START as u32;
        if let Some((d, addr)) = &initrd {
            hdr.ramdisk_image = *addr as u32;
            hdr.ramdisk_size = d.len() as u32;
        }
        let mut setup = head[..setup_len].to_vec();
        let n = std::mem::size_of::<setup_header>().min(setup.len() - 0x1F1);
        setup[0x1F1..0x1F1 + n].copy_from_slice(&hdr.as_slice()[..n]);
        let kernel = match whole {
            Data::Shared(b, _) => Data::Shared(b, setup_len..len),
            Data::File(f, _, _) => Data::File(f, setup_len as u64, len - setup_len),
        };
        Ok(FwCfgLinux {
            kernel,
            setup,
            initrd,
            cmdline,
        })
    }

    /// QEMU's items: addresses and sizes as u32 LE, the data from memory or the files.
    pub fn add_items(&self, fw: &mut FwCfg) {
        use crate::devices::fw_cfg::key;
        let u32le = |v: u64| (v as u32).to_le_bytes().to_vec();
        fw.add_item(key::SETUP_ADDR, u32le(area::SETUP));
        fw.add_item(key::SETUP_SIZE, u32le(self.setup.len() as u64));
        fw.add_item(key::SETUP_DATA, self.setup.clone());
        fw.add_item(key::KERNEL_ADDR, u32le(HIGH_MEMORY_START));
        fw.add_item(key::KERNEL_SIZE, u32le(self.kernel.len() as u64));
        self.kernel.add_to(fw, key::KERNEL_DATA);
        fw.add_item(key::CMDLINE_ADDR, u32le(area::CMDLINE));
        fw.add_item(key::CMDLINE_SIZE, u32le(self.cmdline.len() as u64));
        fw.add_item(key::CMDLINE_DATA, self.cmdline.clone());
        if let Some((d, addr)) = &self.initrd {
            fw.add_item(key::INITRD_ADDR, u32le(*addr));
            fw.add_item(key::INITRD_SIZE, u32le(d.len() as u64));
            d.add_to(fw, key::INITRD_DATA);
        }
    }
}
