//! Builds the machine, in the order that keeps KVM fast: VM -> memory slots -> irqchip ->
//! devices -> vCPUs (registering memory after the irqchip exists costs milliseconds). The PIT
//! is a device like the others (`devices/pit.rs`): KVM's in-kernel PIT starts a kernel thread
//! that costs milliseconds to create and to tear down.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_userspace_memory_region, CpuId, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_MEM_READONLY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use libc::{MAP_ANONYMOUS, MAP_NORESERVE, MAP_PRIVATE, PROT_READ, PROT_WRITE};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::config::{SerialMode, VmConfig};
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN, SCI_IRQ};
use crate::devices::debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use crate::devices::fw_cfg::{key, FwCfg, FW_CFG_LEN, FW_CFG_PORT};
use crate::devices::i440fx::{I440fx, PamChange, I440FX_DEVICE, I440FX_FUNCTION};
use crate::devices::i8042::{
    I8042, I8042_COMMAND_OFFSET, I8042_COMMAND_PORT, I8042_LEN, I8042_PORT, KEYBOARD_IRQ,
};
use crate::devices::pci::{PciBus, PCI_CONFIG_LEN, PCI_CONFIG_PORT};
use crate::devices::piix::{
    Piix3Isa, Piix4Acpi, PIIX3_ISA_FUNCTION, PIIX4_ACPI_FUNCTION, PIIX_DEVICE,
};
use crate::devices::pit::{Pit, PIT_IRQ, PIT_LEN, PIT_PORT, PORT_B, PORT_B_LEN, PORT_B_OFFSET};
use crate::devices::post_code::{PostCode, POST_CODE_LEN, POST_CODE_PORT};
use crate::devices::rtc::{Rtc, RTC_IRQ, RTC_LEN, RTC_PORT};
use crate::devices::serial::{Serial, SerialOut, Sink, COM1_IRQ, COM1_LEN, COM1_PORT};
use crate::devices::timer::{Expire, Timed};
use crate::firmware::{BootDescriptor, Rom, BOOT_DESCRIPTOR_FILE};
use crate::memory::{self, MemoryLayout};
use crate::shadow::{Shadow, ShadowMmio, SHADOW_LEN, SHADOW_START};
use crate::stats::Phases;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled and are you in the kvm group?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API: {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    #[error("/dev/kvm does not answer as KVM (API version {0}, expected 12)")]
    NotKvm(i32),
    #[error("KVM lacks {0}, which minipc needs")]
    MissingCap(&'static str),
    #[error("cannot map {what}: {err}")]
    Mmap {
        what: &'static str,
        err: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest memory: {0}")]
    GuestMemory(String),
    #[error("device setup: {0}")]
    Device(String),
    #[error("{0}")]
    Boot(String),
    #[error("{path}: cannot open serial output: {err}")]
    SerialFile { path: String, err: std::io::Error },
}

/// Everything the running machine is made of. The VM, its memory and the ROM are held here
/// for as long as the vCPUs may run.
pub struct Machine {
    pub vm: Arc<VmFd>,
    #[allow(dead_code)]
    pub guest_mem: GuestMemoryMmap,
    #[allow(dead_code)]
    pub rom: [Arc<MmapRegion>; 2],
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Arc<Mutex<Serial>>,
    /// Devices driven by timers, polled by the monitor.
    pub timers: Vec<Arc<Mutex<dyn Expire>>>,
    pub vcpus: Vec<VcpuFd>,
    /// The BIOS services for the firmware's handlers.
    pub bios: Arc<crate::bios::Bios>,
    /// The interrupt controllers as created, restored on a reboot.
    pub chips_at_reset: Option<ChipState>,
    /// The boot, loaded again on a reboot (the guest may have overwritten it); kept only
    /// with `--reboot`.
    pub boot_at_reset: Option<BootAtReset>,
    /// Stops the vCPUs around memory slot changes (PAM).
    pub pause: Arc<crate::pause::Pause>,
}

/// What a reboot needs to load the boot payload again.
pub struct BootAtReset {
    plan: Arc<crate::boot::BootPlan>,
    e820: Vec<memory::E820Entry>,
    layout: MemoryLayout,
    rsdp: Option<Vec<u8>>,
}

/// The in-kernel PICs and IOAPIC.
pub struct ChipState {
    irqchips: Vec<kvm_bindings::kvm_irqchip>,
}

impl Machine {
    /// The platform back at its reset state for a reboot (the vCPUs reset themselves):
    /// interrupt controllers, the PAM registers (and with them the shadow areas) and every
    /// port device (the PIT among them). RAM keeps its contents, as on a PC.
    pub fn reset_platform(&self) -> Result<(), VmError> {
        if let Some(c) = &self.chips_at_reset {
            for chip in &c.irqchips {
                self.vm
                    .set_irqchip(chip)
                    .map_err(kvm_err("restore irqchip"))?;
            }
        }
        // PAM0-PAM6 (0x59-0x5F) of 00:00.0 to zero, through configuration cycles.
        for (dword, bytes) in [(0x58u32, 1..4usize), (0x5C, 0..4)] {
            self.pio
                .write(PCI_CONFIG_PORT, &(0x8000_0000u32 | dword).to_le_bytes());
            for b in bytes {
                self.pio.write(PCI_CONFIG_PORT + 4 + b as u64, &[0]);
            }
        }
        // Every device on the port bus back to its power-on state (the PCI address latch
        // the PAM writes above used included).
        self.pio.reset();
        // The bridge reported every PAM change to the shadow areas, which are back at `Rom`.
        if let Some(b) = &self.boot_at_reset {
            let env = crate::boot::BootEnv {
                layout: &b.layout,
                e820: &b.e820,
                rsdp: b.rsdp.as_deref(),
            };
            b.plan
                .load(&self.guest_mem, &env)
                .map_err(|e| VmError::Boot(e.to_string()))?;
        }
        // The BIOS's own state (stuffed keys, disk status, the BDA's clock) as POST leaves it.
        self.bios.reset();
        Ok(())
    }
}

fn capture_chips(vm: &VmFd) -> Result<ChipState, VmError> {
    let mut irqchips = Vec::new();
    for id in [
        kvm_bindings::KVM_IRQCHIP_PIC_MASTER,
        kvm_bindings::KVM_IRQCHIP_PIC_SLAVE,
        kvm_bindings::KVM_IRQCHIP_IOAPIC,
    ] {
        let mut c = kvm_bindings::kvm_irqchip {
            chip_id: id,
            ..Default::default()
        };
        vm.get_irqchip(&mut c).map_err(kvm_err("read irqchip"))?;
        irqchips.push(c);
    }
    Ok(ChipState { irqchips })
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |e| VmError::Kvm(what, e)
}

fn anon_mapping(size: usize, what: &'static str) -> Result<MmapRegion, VmError> {
    MmapRegionBuilder::new(size)
        .with_mmap_prot(PROT_READ | PROT_WRITE)
        .with_mmap_flags(MAP_ANONYMOUS | MAP_PRIVATE | MAP_NORESERVE)
        .build()
        .map_err(|err| VmError::Mmap { what, err })
}

/// Opens the serial output before anything else is built, so a bad path is a config error.
pub fn open_serial_out(mode: &SerialMode) -> Result<SerialOut, VmError> {
    Ok(SerialOut::new(match mode {
        SerialMode::Stdio => Sink::Stdout,
        SerialMode::None => Sink::Null,
        SerialMode::File(p) => Sink::File(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(p)
                .map_err(|err| VmError::SerialFile {
                    path: p.display().to_string(),
                    err,
                })?,
        ),
    }))
}

/// Writes the platform tables into the free bottom 64 KiB of the firmware window (0xE0000):
/// ACPI, or with `--no-acpi` the MP table. The window is free when the firmware image leaves
/// it empty: always for the embedded firmware and for images of 64 KiB or less; a larger
/// image (SeaBIOS) brings its own tables. Returns the MP floating pointer, which goes in the
/// EBDA, where an OS looks for it.
fn write_tables(
    cfg: &VmConfig,
    layout: &MemoryLayout,
    window: &mut [u8],
) -> Result<Option<[u8; 16]>, VmError> {
    let area = crate::acpi::TABLES_SIZE.min(window.len());
    if window[..area].iter().any(|b| *b != 0) {
        crate::log::info(format_args!(
            "the firmware image fills 0xE0000: no ACPI or MP tables from the VMM"
        ));
        return Ok(None);
    }
    let (bytes, mp_pointer) = if cfg.acpi {
        let t = crate::acpi::build(&crate::acpi::AcpiConfig {
            cpus: cfg.cpus,
            layout: *layout,
        })
        .map_err(|e| VmError::Device(format!("ACPI tables: {e}")))?;
        (t, None)
    } else {
        let base = crate::acpi::TABLES_BASE;
        let t = crate::mptable::build(cfg.cpus, base)
            .map_err(|e| VmError::Device(format!("MP table: {e}")))?;
        let fp = crate::mptable::floating_pointer(base + 16)
            .map_err(|e| VmError::Device(format!("MP table: {e}")))?;
        (t, Some(fp))
    };
    if bytes.len() > area {
        return Err(VmError::Device(
            "platform tables do not fit below the firmware".into(),
        ));
    }
    window[..bytes.len()].copy_from_slice(&bytes);
    Ok(mp_pointer)
}

/// A read-only mapping holding `bytes`.
fn rom_mapping(bytes: &[u8]) -> Result<Arc<MmapRegion>, VmError> {
    let map = anon_mapping(bytes.len(), "firmware ROM")?;
    // SAFETY: the mapping is bytes.len() bytes long, writable from the host, and nothing else
    // refers to it yet.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.as_ptr(), bytes.len()) };
    Ok(Arc::new(map))
}

/// Builds the machine, stage by stage; each stage returns what the next needs.
pub fn build(
    cfg: &VmConfig,
    rom: &Rom,
    boot: Arc<crate::boot::BootPlan>,
    serial_out: SerialOut,
    phases: &mut Phases,
) -> Result<Machine, VmError> {
    let layout =
        MemoryLayout::new(cfg.mem_size).map_err(|e| VmError::GuestMemory(e.to_string()))?;

    let t = Instant::now();
    let (vm, cpuid) = open_kvm()?;
    phases.kvm = t.elapsed();

    let t = Instant::now();
    let guest_mem = map_ram(&layout)?;
    let RegisteredMemory {
        rom: rom_maps,
        first_shadow_slot,
        rsdp,
    } = register_memory(&vm, &guest_mem, rom, cfg, &layout)?;
    let vm = Arc::new(vm);
    let pause = Arc::new(crate::pause::Pause::new(cfg.cpus as usize));
    let shadow = Shadow::new(
        vm.clone(),
        rom_maps[1].clone(),
        first_shadow_slot,
        pause.clone(),
    )
    .map_err(|e| VmError::GuestMemory(e.to_string()))?;
    let shadow = Arc::new(Mutex::new(shadow));
    phases.memory = t.elapsed();

    let t = Instant::now();
    create_interrupt_controllers(&vm)?;
    let mut devices = platform_devices(&vm, cfg, &layout, shadow.clone(), serial_out)?;
    let e820 = layout.e820(rom.size());
    let env = crate::boot::BootEnv {
        layout: &layout,
        e820: &e820,
        rsdp: rsdp.as_deref(),
    };
    let descriptor = boot
        .load(&guest_mem, &env)
        .map_err(|e| VmError::Boot(e.to_string()))?;
    let mut fw_cfg = firmware_config(cfg, &layout, &guest_mem, &e820, descriptor, &boot)?;
    fw_cfg.set_shadow(shadow);
    devices
        .pio
        .insert(FW_CFG_PORT, FW_CFG_LEN, Arc::new(Mutex::new(fw_cfg)))
        .map_err(|e| VmError::Device(e.to_string()))?;
    let pio = Arc::new(devices.pio);
    let bios = Arc::new(crate::bios::Bios::new(crate::bios::BiosSetup {
        mem: guest_mem.clone(),
        e820: e820.clone(),
        layout,
        console: devices.serial.clone(),
        clock: devices.rtc,
        disk: boot.disk(),
        embedded: cfg.firmware.is_none(),
    }));
    phases.devices = t.elapsed();

    let (chips_at_reset, boot_at_reset) = if cfg.reboot {
        let boot = BootAtReset {
            plan: boot,
            e820,
            layout,
            rsdp,
        };
        (Some(capture_chips(&vm)?), Some(boot))
    } else {
        (None, None)
    };

    let t = Instant::now();
    let vcpus = create_vcpus(&vm, &cpuid, cfg.cpus)?;
    if cfg.count_instructions {
        // Every instruction of vCPU 0 exits (KVM_EXIT_DEBUG); the vCPU thread counts them.
        let dbg = kvm_bindings::kvm_guest_debug {
            control: kvm_bindings::KVM_GUESTDBG_ENABLE | kvm_bindings::KVM_GUESTDBG_SINGLESTEP,
            ..Default::default()
        };
        vcpus[0]
            .set_guest_debug(&dbg)
            .map_err(kvm_err("single-step vCPU 0"))?;
    }
    phases.vcpus = t.elapsed();

    Ok(Machine {
        vm,
        guest_mem,
        rom: rom_maps,
        pio,
        mmio: Arc::new(devices.mmio),
        serial: devices.serial,
        timers: devices.timers,
        vcpus,
        bios,
        chips_at_reset,
        boot_at_reset,
        pause,
    })
}

/// KVM and the VM: the capabilities minipc needs, the TSS and identity map, the CPUID the
/// host supports.
fn open_kvm() -> Result<(VmFd, CpuId), VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let api = kvm.get_api_version();
    if api != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::NotKvm(api));
    }
    if !kvm.check_extension(Cap::Irqchip) {
        return Err(VmError::MissingCap("an in-kernel irqchip"));
    }
    if !kvm.check_extension(Cap::ReadonlyMem) {
        return Err(VmError::MissingCap("read-only memory slots"));
    }
    if !kvm.check_extension(Cap::ImmediateExit) {
        return Err(VmError::MissingCap("immediate_exit"));
    }
    let vm = kvm.create_vm().map_err(kvm_err("create VM"))?;
    vm.set_tss_address(memory::KVM_TSS_START as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.set_identity_map_address(memory::KVM_IDENTITY_MAP_START)
        .map_err(kvm_err("set identity map address"))?;
    let cpuid =
        crate::cpuid_cache::supported_cpuid(&kvm).map_err(kvm_err("get supported CPUID"))?;
    Ok((vm, cpuid))
}

/// Guest RAM: lazily mapped anonymous memory, one mapping per RAM region.
fn map_ram(layout: &MemoryLayout) -> Result<GuestMemoryMmap, VmError> {
    let mut regions = Vec::new();
    for r in layout.ram_regions() {
        let m = anon_mapping(r.size as usize, "guest RAM")?;
        regions.push(
            GuestRegionMmap::new(m, r.start)
                .ok_or_else(|| VmError::GuestMemory(format!("region at {:#x}", r.start.0)))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| VmError::GuestMemory(e.to_string()))
}

/// What `register_memory` set up.
struct RegisteredMemory {
    /// The ROM mapped below 4 GiB, and the 128 KiB window at 0xE0000.
    rom: [Arc<MmapRegion>; 2],
    first_shadow_slot: u32,
    /// The ACPI RSDP written at 0xE0000, if any.
    rsdp: Option<Vec<u8>>,
}

/// Registers RAM and the ROM with KVM, before the irqchip exists (DESIGN: that order is
/// milliseconds faster). The ROM is the whole image just below 4 GiB, and the 128 KiB window
/// 0xE0000-0xFFFFF holding its last 128 KiB; an image that is smaller leaves the window's
/// bottom free for the VMM's tables. Returns the two ROM mappings, the first slot free
/// for the shadow areas (0xC0000-0xFFFFF, under PAM control), and the ACPI RSDP written at
/// 0xE0000 if there is one.
fn register_memory(
    vm: &VmFd,
    guest_mem: &GuestMemoryMmap,
    rom: &Rom,
    cfg: &VmConfig,
    layout: &MemoryLayout,
) -> Result<RegisteredMemory, VmError> {
    let mut slot = 0u32;
    for region in guest_mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| VmError::GuestMemory(e.to_string()))?;
        set_slot(
            vm,
            slot,
            region.start_addr().0,
            region.len(),
            host as u64,
            0,
        )?;
        slot += 1;
    }
    let (high, _, low_len) = MemoryLayout::firmware_windows(rom.size());
    let mut window = vec![0u8; memory::BIOS_WINDOW_SIZE as usize];
    let tail = &rom.bytes[rom.bytes.len() - low_len as usize..];
    let at = window.len() - tail.len();
    window[at..].copy_from_slice(tail);
    if let Some(fp) = write_tables(cfg, layout, &mut window)? {
        // 16 bytes into the EBDA: its first byte is the EBDA's size, set by the firmware.
        guest_mem
            .write_slice(&fp, vm_memory::GuestAddress(memory::EBDA_START + 16))
            .map_err(|e| VmError::GuestMemory(e.to_string()))?;
    }
    let high_map = rom_mapping(&rom.bytes)?;
    let low_map = rom_mapping(&window)?;
    set_slot(
        vm,
        slot,
        high.0,
        rom.size(),
        high_map.as_ptr() as u64,
        KVM_MEM_READONLY,
    )?;
    let rsdp = (cfg.acpi && window.starts_with(b"RSD PTR ")).then(|| window[..36].to_vec());
    Ok(RegisteredMemory {
        rom: [high_map, low_map],
        first_shadow_slot: slot + 1,
        rsdp,
    })
}

/// The in-kernel PICs and IOAPIC (irqfds need the irqchip), with the ISA interrupts routed
/// as the MADT and the MP table describe them.
fn create_interrupt_controllers(vm: &VmFd) -> Result<(), VmError> {
    vm.create_irq_chip().map_err(kvm_err("create irqchip"))?;
    let routing = KvmIrqRouting::from_entries(&isa_routing())
        .map_err(|e| VmError::Device(format!("GSI routing: {e:?}")))?;
    vm.set_gsi_routing(&routing)
        .map_err(kvm_err("set GSI routing"))
}

/// GSI routes for the irqfds: ISA IRQ n (GSI n) to pin n%8 of its 8259 and to I/O APIC pin n,
/// except IRQ 0, which goes to I/O APIC pin 2 (the MADT's override, the MP table's entry):
/// KVM's default table sends GSI 0 to pin 0, where an OS that follows the tables never looks.
/// IRQ 2 (the cascade) has no route; GSIs 16-23 reach the I/O APIC only.
fn isa_routing() -> Vec<kvm_irq_routing_entry> {
    let route = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip = kvm_bindings::kvm_irq_routing_irqchip { irqchip, pin };
        e
    };
    let mut routes = Vec::new();
    for gsi in (0..16).filter(|&g| g != 2) {
        let pic = if gsi < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        routes.push(route(gsi, pic, gsi % 8));
        routes.push(route(
            gsi,
            KVM_IRQCHIP_IOAPIC,
            if gsi == 0 { 2 } else { gsi },
        ));
    }
    for gsi in 16..24 {
        routes.push(route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    routes
}

/// The platform devices on their buses (fw_cfg comes later, once the boot is loaded).
struct Devices {
    pio: Bus,
    mmio: Bus,
    serial: Arc<Mutex<Serial>>,
    rtc: Arc<Mutex<Timed<Rtc>>>,
    timers: Vec<Arc<Mutex<dyn Expire>>>,
}

fn platform_devices(
    vm: &VmFd,
    cfg: &VmConfig,
    layout: &MemoryLayout,
    shadow: Arc<Mutex<Shadow>>,
    serial_out: SerialOut,
) -> Result<Devices, VmError> {
    let mut pio = Bus::new("port I/O");
    let mut mmio = Bus::new("MMIO");
    mmio.insert(
        SHADOW_START,
        SHADOW_LEN,
        Arc::new(Mutex::new(ShadowMmio(shadow.clone()))),
    )
    .map_err(|e| VmError::Device(e.to_string()))?;
    let dev_err = |e: crate::bus::BusError| VmError::Device(e.to_string());

    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(e.to_string()))?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(kvm_err("register serial irqfd"))?;
    let serial = Arc::new(Mutex::new(Serial::new(irq, serial_out)));
    pio.insert(COM1_PORT, COM1_LEN, serial.clone())
        .map_err(dev_err)?;
    pio.insert(
        DEBUG_EXIT_PORT,
        DEBUG_EXIT_LEN,
        Arc::new(Mutex::new(DebugExit)),
    )
    .map_err(dev_err)?;
    pio.insert(
        POST_CODE_PORT,
        POST_CODE_LEN,
        Arc::new(Mutex::new(PostCode::default())),
    )
    .map_err(dev_err)?;
    pio.insert(
        crate::devices::port92::PORT92_PORT,
        crate::devices::port92::PORT92_LEN,
        Arc::new(Mutex::new(crate::devices::port92::Port92::new())),
    )
    .map_err(dev_err)?;

    let irqfd = |gsi: u32, what: &'static str| -> Result<EventFd, VmError> {
        let e = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(e.to_string()))?;
        vm.register_irqfd(&e, gsi).map_err(kvm_err(what))?;
        Ok(e)
    };
    let mut timers: Vec<Arc<Mutex<dyn Expire>>> = Vec::new();
    let timer_err = |e: std::io::Error| VmError::Device(format!("timer: {e}"));

    let rtc = Rtc::new(
        layout,
        cfg.cpus,
        cfg.rtc_localtime,
        Some(irqfd(RTC_IRQ, "register RTC irqfd")?),
    );
    let rtc = Arc::new(Mutex::new(Timed::new(rtc).map_err(timer_err)?));
    pio.insert(RTC_PORT, RTC_LEN, rtc.clone())
        .map_err(dev_err)?;
    timers.push(rtc.clone());

    let i8042 = I8042::new(Some(irqfd(KEYBOARD_IRQ, "register keyboard irqfd")?));
    let i8042 = Arc::new(Mutex::new(i8042));
    pio.insert(I8042_PORT, I8042_LEN, i8042.clone())
        .map_err(dev_err)?;
    pio.insert_at_offset(I8042_COMMAND_PORT, I8042_LEN, I8042_COMMAND_OFFSET, i8042)
        .map_err(dev_err)?;

    let pit = Pit::new(Some(irqfd(PIT_IRQ, "register PIT irqfd")?));
    let pit = Arc::new(Mutex::new(Timed::new(pit).map_err(timer_err)?));
    pio.insert(PIT_PORT, PIT_LEN, pit.clone())
        .map_err(dev_err)?;
    pio.insert_at_offset(PORT_B, PORT_B_LEN, PORT_B_OFFSET, pit.clone())
        .map_err(dev_err)?;
    timers.push(pit);

    let pm = AcpiPm::new(Some(irqfd(SCI_IRQ, "register SCI irqfd")?));
    let pm = Arc::new(Mutex::new(Timed::new(pm).map_err(timer_err)?));
    pio.insert(PM_BASE as u64, PM_LEN, pm.clone())
        .map_err(dev_err)?;
    timers.push(pm);

    let pci = pci_bus(shadow)?;
    pio.insert(PCI_CONFIG_PORT, PCI_CONFIG_LEN, Arc::new(Mutex::new(pci)))
        .map_err(dev_err)?;
    Ok(Devices {
        pio,
        mmio,
        serial,
        rtc,
        timers,
    })
}

/// PCI bus 0: the i440fx host bridge, the PIIX3 ISA bridge and its ACPI function.
fn pci_bus(shadow: Arc<Mutex<Shadow>>) -> Result<PciBus, VmError> {
    let mut pci = PciBus::new();
    let pci_err = |e| VmError::Device(format!("PCI: {e}"));
    let bridge = I440fx::new(Box::new(move |c: PamChange| {
        crate::log::debug(format_args!(
            "i440fx: PAM {:#x}+{:#x} -> {:?}",
            c.start, c.size, c.mode
        ));
        crate::bus::lock(&shadow).apply(c)
    }));
    pci.add(I440FX_DEVICE, I440FX_FUNCTION, Arc::new(Mutex::new(bridge)))
        .map_err(pci_err)?;
    pci.add(
        PIIX_DEVICE,
        PIIX3_ISA_FUNCTION,
        Arc::new(Mutex::new(Piix3Isa::new())),
    )
    .map_err(pci_err)?;
    pci.add(
        PIIX_DEVICE,
        PIIX4_ACPI_FUNCTION,
        Arc::new(Mutex::new(Piix4Acpi::new())),
    )
    .map_err(pci_err)?;
    Ok(pci)
}

/// fw_cfg: QEMU's keys and files, the boot descriptor, and the boot's own items.
fn firmware_config(
    cfg: &VmConfig,
    layout: &MemoryLayout,
    guest_mem: &GuestMemoryMmap,
    e820: &[memory::E820Entry],
    mut descriptor: BootDescriptor,
    boot: &crate::boot::BootPlan,
) -> Result<FwCfg, VmError> {
    let mut fw_cfg = FwCfg::new(guest_mem.clone());
    fw_cfg.add_item(key::RAM_SIZE, layout.ram_size.to_le_bytes().to_vec());
    fw_cfg.add_item(key::NOGRAPHIC, 1u16.to_le_bytes().to_vec());
    fw_cfg.add_item(key::NB_CPUS, (cfg.cpus as u16).to_le_bytes().to_vec());
    fw_cfg.add_item(key::MAX_CPUS, (cfg.cpus as u16).to_le_bytes().to_vec());
    descriptor.base_memory_kib = layout.base_memory_kib();
    descriptor.ebda_segment = (memory::EBDA_START >> 4) as u16;
    descriptor.cpus = cfg.cpus as u16;
    let fw_err = |e: crate::devices::fw_cfg::FwCfgError| VmError::Device(e.to_string());
    // One E820 map for fw_cfg, INT 15h and the boot structures alike.
    let e820: Vec<u8> = e820.iter().flat_map(|e| e.to_bytes()).collect();
    fw_cfg.add_file("etc/e820", e820).map_err(fw_err)?;
    fw_cfg
        .add_file(BOOT_DESCRIPTOR_FILE, descriptor.to_bytes())
        .map_err(fw_err)?;
    fw_cfg
        .add_file("etc/sercon-port", (COM1_PORT as u16).to_le_bytes().to_vec())
        .map_err(fw_err)?;
    fw_cfg.add_file("bootorder", Vec::new()).map_err(fw_err)?;
    boot.add_fw_cfg_items(&mut fw_cfg).map_err(fw_err)?;
    Ok(fw_cfg)
}

/// The vCPUs at the architectural reset state; the in-kernel LAPIC holds the APs until
/// SIPI.
fn create_vcpus(vm: &VmFd, cpuid: &CpuId, cpus: u32) -> Result<Vec<VcpuFd>, VmError> {
    let mut vcpus = Vec::with_capacity(cpus as usize);
    for id in 0..cpus {
        let vcpu = vm.create_vcpu(id as u64).map_err(kvm_err("create vCPU"))?;
        let mut c = cpuid.clone();
        set_topology(&mut c, id, cpus);
        vcpu.set_cpuid2(&c).map_err(kvm_err("set CPUID"))?;
        vcpus.push(vcpu);
    }
    Ok(vcpus)
}

fn set_slot(
    vm: &VmFd,
    slot: u32,
    guest: u64,
    size: u64,
    host: u64,
    flags: u32,
) -> Result<(), VmError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: guest,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: `host` points to a mapping of at least `size` bytes that lives as long as the VM
    // (the Machine owns it), and slots never overlap (memory.rs keeps the map disjoint).
    unsafe { vm.set_user_memory_region(region) }.map_err(kvm_err("set memory region"))
}

/// Fills in the topology the guest sees in CPUID, consistent with the MADT: one package of
/// `cpus` cores, one thread each, APIC ID = vCPU index.
fn set_topology(cpuid: &mut CpuId, apic_id: u32, cpus: u32) {
    // Bits of the APIC ID that number the cores.
    let core_bits = 32 - (cpus.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_FFFF) | (apic_id << 24) | (cpus.min(255) << 16);
                if cpus > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            4 => {
                // Cores per package - 1, for every cache level.
                e.eax = (e.eax & 0x03FF_FFFF) | ((cpus - 1).min(63) << 26);
            }
            0xB | 0x1F => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: every vCPU.
                        e.eax = core_bits;
                        e.ebx = cpus;
                        e.ecx = 1 | 2 << 8;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_sets_apic_ids() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xFFFF_0801,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xB,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xB,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                eax: 0xFC00_4121,
                ..Default::default()
            },
        ])
        .unwrap();
        set_topology(&mut c, 3, 6);
        let s = c.as_slice();
        assert_eq!(s[0].ebx, 0x0306_0801);
        assert_ne!(s[0].edx & (1 << 28), 0);
        assert_eq!((s[1].edx, s[1].ebx, s[1].ecx), (3, 1, 0x100));
        // Six cores need three bits of the APIC ID.
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx), (3, 6, 0x201));
        assert_eq!(s[3].eax >> 26, 5);
        assert_eq!(s[3].eax & 0x03FF_FFFF, 0x0000_4121);
    }

    #[test]
    fn serial_file_errors_name_the_path() {
        let e = open_serial_out(&SerialMode::File("/nonexistent/dir/x".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("/nonexistent/dir/x:"), "{e}");
    }
}
