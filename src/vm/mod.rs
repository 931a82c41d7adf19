//! Builds the machine, in the order that keeps KVM fast: VM -> memory slots -> irqchip ->
//! devices and vCPUs (registering memory after the irqchip exists costs milliseconds; the
//! vCPUs need the irqchip, and another thread starts creating them beside the devices). The PIT
//! is a device like the others (`devices/pit/`): KVM's in-kernel PIT starts a kernel thread
//! that costs milliseconds to create and to tear down.

mod devices;
mod slots;
mod teardown;
mod vcpus;

pub use teardown::Teardown;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::bus::Bus;
use crate::coalesced_io::CoalescedIo;
use crate::config::VmConfig;
use crate::devices::fw_cfg::{FW_CFG_LEN, FW_CFG_PORT};
use crate::devices::pci::PCI_CONFIG_PORT;
use crate::devices::serial::{Serial, SerialOut, COM1_PORT};
use crate::devices::timer::Expire;
use crate::firmware::Rom;
use crate::memory::{self, MemoryLayout};
use crate::ram_gate::RamGate;
use crate::shadow::Shadow;
use crate::stats::Phases;

pub use devices::open_serial_out;
use devices::*;
use slots::*;
pub use slots::{DeferredRam, RomMapping};
pub use vcpus::Lend;
use vcpus::NewVcpus;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM enabled and are you in the kvm group?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API: {0}: {1}")]
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
    #[error("{path}: no reader opened this FIFO within --timeout ({timeout:?})")]
    SerialNoReader {
        path: String,
        timeout: std::time::Duration,
    },
}

/// Everything the running machine is made of. The VM, its memory and the ROM are held here
/// for as long as the vCPUs may run.
pub struct Machine {
    pub vm: Arc<VmFd>,
    pub guest_mem: GuestMemoryMmap,
    /// Whether all RAM is registered with KVM; waits until it is (`ram_gate.rs`).
    pub ram: Arc<RamGate>,
    /// The RAM left for the background thread, taken by the monitor when the guest starts;
    /// None when everything was registered before.
    pub deferred: Option<DeferredRam>,
    #[allow(dead_code)]
    pub rom: Arc<slots::RomMapping>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub serial: Arc<Mutex<Serial>>,
    /// The ring COM1's data port writes wait in (coalesced_io.rs); None where KVM has none.
    pub coalesced: Option<Arc<CoalescedIo>>,
    /// Devices driven by timers, polled by the monitor.
    pub timers: Vec<Arc<Mutex<dyn Expire>>>,
    pub vcpus: Vec<VcpuFd>,
    /// By vCPU id: the CPUID that vCPU's thread sets before its first run (vcpu/threads.rs);
    /// None where the build set it.
    pub pending_cpuid: Vec<Option<CpuId>>,
    /// The BIOS services for the firmware's handlers.
    pub bios: Arc<crate::bios::Bios>,
    /// The interrupt controllers as created, restored on a reboot.
    pub chips_at_reset: Option<ChipState>,
    /// The boot, loaded again on a reboot (the guest may have overwritten it); kept only
    /// with `--reboot`.
    pub boot_at_reset: Option<BootAtReset>,
    /// Stops the vCPUs around memory slot changes (PAM).
    pub pause: Arc<crate::pause::Pause>,
    /// Shortens the VM's teardown once the exit status is out; None if its eventfd could
    /// not be made.
    pub teardown: Option<Teardown>,
}

/// What a reboot needs to load the boot payload again.
pub struct BootAtReset {
    plan: Arc<crate::boot::BootPlan>,
    e820: Vec<memory::E820Entry>,
    layout: MemoryLayout,
    rsdp: Option<Vec<u8>>,
    cpus: u16,
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
            if b.plan.embedded_firmware() {
                crate::bios::pit::program(&self.pio);
            }
            let env = crate::boot::BootEnv {
                layout: &b.layout,
                e820: &b.e820,
                rsdp: b.rsdp.as_deref(),
                cpus: b.cpus,
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

/// Builds the machine, stage by stage; each stage returns what the next needs. `phases`
/// records how long opening KVM and the memory, device and vCPU stages took (`--stats`);
/// `lend` gives another thread a share of creating the vCPUs (`vcpus.rs`).
pub fn build(
    cfg: &VmConfig,
    rom: &Rom,
    boot: Arc<crate::boot::BootPlan>,
    serial_out: SerialOut,
    phases: &mut Phases,
    lend: Lend,
) -> Result<Machine, VmError> {
    let layout =
        MemoryLayout::new(cfg.mem_size).map_err(|e| VmError::GuestMemory(e.to_string()))?;
    let (vm, cpuid) = timed(&mut phases.kvm, open_kvm)?;
    let mem = timed(&mut phases.memory, || {
        memory_stage(vm, cfg, rom, &layout, &boot)
    })?;
    let (dev, creation) = timed(&mut phases.devices, || {
        create_interrupt_controllers(&mem.vm)?;
        // Each vCPU needs the irqchip; another thread starts creating them beside the devices.
        // With `--reboot`, each vCPU's reset state is read before the guest runs (monitor/),
        // and the state KVM reports depends on the CPUID: so every vCPU has it before.
        let creation = vcpus::start(&mem.vm, cfg.cpus, !cfg.reboot, lend);
        Ok((
            device_stage(&mem, cfg, rom, layout, &boot, serial_out)?,
            creation,
        ))
    })?;
    // With `--reboot`, what a reboot restores; not one of the timed phases.
    let (chips_at_reset, boot_at_reset) = if cfg.reboot {
        Some(reset_state(&mem.vm, cfg, boot, dev.e820, layout, mem.rsdp)?)
    } else {
        None
    }
    .unzip();
    let (vcpus, pending_cpuid) = timed(&mut phases.vcpus, || {
        vcpu_stage(creation, &mem.vm, &cpuid, cfg)
    })?;
    let coalesced = coalesce_serial(&mem.vm, &vcpus, &dev.serial);

    Ok(Machine {
        teardown: Teardown::new(mem.vm.clone()).ok(),
        vm: mem.vm,
        guest_mem: mem.guest_mem,
        ram: mem.ram,
        deferred: mem.deferred,
        rom: mem.rom,
        pio: dev.pio,
        mmio: Arc::new(dev.mmio),
        serial: dev.serial,
        coalesced,
        timers: dev.timers,
        vcpus,
        pending_cpuid,
        bios: dev.bios,
        chips_at_reset,
        boot_at_reset,
        pause: mem.pause,
    })
}

/// Runs one stage of `build` and, if it succeeds, stores the time it took in `phase`.
fn timed<T>(
    phase: &mut Duration,
    stage: impl FnOnce() -> Result<T, VmError>,
) -> Result<T, VmError> {
    let t = Instant::now();
    let out = stage()?;
    *phase = t.elapsed();
    Ok(out)
}

/// What `memory_stage` hands on.
struct Memory {
    vm: Arc<VmFd>,
    guest_mem: GuestMemoryMmap,
    rom: Arc<RomMapping>,
    /// The ACPI RSDP written at 0xE0000, if any.
    rsdp: Option<Vec<u8>>,
    ram: Arc<RamGate>,
    deferred: Option<DeferredRam>,
    pause: Arc<crate::pause::Pause>,
    shadow: Arc<Mutex<Shadow>>,
}

/// Guest RAM and the ROM, mapped and registered with KVM (all but the RAM left for
/// `DeferredRam`), and the shadow areas 0xC0000-0xFFFFF under PAM control.
fn memory_stage(
    vm: VmFd,
    cfg: &VmConfig,
    rom: &Rom,
    layout: &MemoryLayout,
    boot: &crate::boot::BootPlan,
) -> Result<Memory, VmError> {
    let guest_mem = map_ram(layout)?;
    // Kernel boots (`BootPlan::defers_ram`) and guests of less than DEFER_MIN_RAM above
    // 16 MiB register all RAM now.
    let defer = boot.defers_ram() && layout.deferrable_ram() >= memory::DEFER_MIN_RAM;
    let RegisteredMemory {
        rom: rom_maps,
        first_shadow_slot,
        rsdp,
        late,
    } = register_memory(&vm, &guest_mem, rom, cfg, layout, defer)?;
    let vm = Arc::new(vm);
    let ram = Arc::new(RamGate::new(
        late.iter()
            .map(|s| (s.guest(), s.guest() + s.size()))
            .collect(),
    ));
    let deferred = (!late.is_empty()).then(|| DeferredRam::new(vm.clone(), late, ram.clone(), cfg));
    let pause = Arc::new(crate::pause::Pause::new(cfg.cpus as usize));
    let shadow = Shadow::new(
        vm.clone(),
        rom_maps.clone(),
        first_shadow_slot,
        pause.clone(),
    )
    .map_err(|e| VmError::GuestMemory(e.to_string()))?;
    Ok(Memory {
        vm,
        guest_mem,
        rom: rom_maps,
        rsdp,
        ram,
        deferred,
        pause,
        shadow: Arc::new(Mutex::new(shadow)),
    })
}

/// What `device_stage` hands on.
struct Platform {
    pio: Arc<Bus>,
    mmio: Bus,
    serial: Arc<Mutex<Serial>>,
    timers: Vec<Arc<Mutex<dyn Expire>>>,
    bios: Arc<crate::bios::Bios>,
    /// The E820 map the boot and the BIOS were given.
    e820: Vec<memory::E820Entry>,
}

/// The devices (the interrupt controllers exist), the boot payload and fw_cfg, and the BIOS
/// services. For the embedded firmware, the PIT is programmed through the port bus as that
/// firmware's POST leaves it (`bios::pit`).
fn device_stage(
    mem: &Memory,
    cfg: &VmConfig,
    rom: &Rom,
    layout: MemoryLayout,
    boot: &crate::boot::BootPlan,
    serial_out: SerialOut,
) -> Result<Platform, VmError> {
    let mut devices = platform_devices(&mem.vm, cfg, &layout, mem.shadow.clone(), serial_out)?;
    devices.pio.set_ram_gate(mem.ram.clone());
    let e820 = layout.e820(rom.size());
    load_boot(&mut devices.pio, mem, cfg, &layout, &e820, boot)?;
    if boot.embedded_firmware() {
        crate::bios::pit::program(&devices.pio);
    }
    let pio = Arc::new(devices.pio);
    let bios = Arc::new(crate::bios::Bios::new(crate::bios::BiosSetup {
        mem: mem.guest_mem.clone(),
        e820: e820.clone(),
        layout,
        console: devices.serial.clone(),
        clock: devices.rtc,
        disk: boot.disk(),
        embedded: cfg.firmware.is_none(),
    }));
    Ok(Platform {
        pio,
        mmio: devices.mmio,
        serial: devices.serial,
        timers: devices.timers,
        bios,
        e820,
    })
}

/// Loads the boot payload into guest memory, and puts fw_cfg, which describes it with the
/// machine, on the port bus.
fn load_boot(
    pio: &mut Bus,
    mem: &Memory,
    cfg: &VmConfig,
    layout: &MemoryLayout,
    e820: &[memory::E820Entry],
    boot: &crate::boot::BootPlan,
) -> Result<(), VmError> {
    let env = crate::boot::BootEnv {
        layout,
        e820,
        rsdp: mem.rsdp.as_deref(),
        cpus: cfg.cpus as u16,
    };
    let descriptor = boot
        .load(&mem.guest_mem, &env)
        .map_err(|e| VmError::Boot(e.to_string()))?;
    let mut fw_cfg = firmware_config(cfg, layout, &mem.guest_mem, e820, descriptor, boot)?;
    fw_cfg.set_shadow(mem.shadow.clone());
    pio.insert(FW_CFG_PORT, FW_CFG_LEN, Arc::new(Mutex::new(fw_cfg)))
        .map_err(dev_err)
}

/// What a reboot restores (`Machine::reset_platform`): the interrupt controllers as
/// created, and what loading the boot payload again needs.
fn reset_state(
    vm: &VmFd,
    cfg: &VmConfig,
    plan: Arc<crate::boot::BootPlan>,
    e820: Vec<memory::E820Entry>,
    layout: MemoryLayout,
    rsdp: Option<Vec<u8>>,
) -> Result<(ChipState, BootAtReset), VmError> {
    let boot = BootAtReset {
        plan,
        e820,
        layout,
        rsdp,
        cpus: cfg.cpus as u16,
    };
    Ok((capture_chips(vm)?, boot))
}

/// The vCPUs (`creation` finished), and the CPUID each one's thread sets; with
/// `--x-count-instructions`, vCPU 0 single-steps.
fn vcpu_stage(
    creation: vcpus::Creation,
    vm: &VmFd,
    cpuid: &CpuId,
    cfg: &VmConfig,
) -> Result<NewVcpus, VmError> {
    let (vcpus, pending) = creation.finish(vm, cpuid)?;
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
    Ok((vcpus, pending))
}

/// COM1's data port as a coalesced zone, read through vCPU 0's mapping of the ring; the UART
/// gives it up when the guest enables the THR-empty interrupt or loopback.
fn coalesce_serial(
    vm: &Arc<VmFd>,
    vcpus: &[VcpuFd],
    serial: &Arc<Mutex<Serial>>,
) -> Option<Arc<CoalescedIo>> {
    let c = CoalescedIo::new(vm.clone(), vcpus.first()?, COM1_PORT as u16, 1)?;
    let stop = c.clone();
    crate::bus::lock(serial).on_thr_events(Box::new(move || stop.stop()));
    Some(c)
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
    no_halt_polling(&vm);
    vm.set_tss_address(memory::KVM_TSS_START as usize)
        .map_err(kvm_err("set TSS address"))?;
    vm.set_identity_map_address(memory::KVM_IDENTITY_MAP_START)
        .map_err(kvm_err("set identity map address"))?;
    let cpuid =
        crate::cpuid_cache::supported_cpuid(&kvm).map_err(kvm_err("get supported CPUID"))?;
    Ok((vm, cpuid))
}

/// A halted vCPU sleeps at once instead of polling for a wake-up first (KVM's default here:
/// up to 200 µs of a host CPU per halt). The guests this VMM runs are many and short-lived,
/// so the host's CPUs are worth more than the wake-up latency; and the monitor notices a
/// guest that halted for good only once its vCPUs block (halt.rs), which polling delays.
/// Kernels without the capability poll as before.
fn no_halt_polling(vm: &VmFd) {
    let cap = kvm_bindings::kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_HALT_POLL,
        ..Default::default()
    };
    if let Err(e) = vm.enable_cap(&cap) {
        crate::log::debug(format_args!(
            "KVM_CAP_HALT_POLL: {e}; halted vCPUs poll first"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SerialMode;

    #[test]
    fn kvm_errors_name_the_call_and_the_errno() {
        let e = kvm_err("create vCPU")(kvm_ioctls::Error::new(libc::EMFILE)).to_string();
        assert!(e.starts_with("KVM API: create vCPU: "), "{e}");
        let text = std::io::Error::from_raw_os_error(libc::EMFILE).to_string();
        assert!(e.ends_with(&text), "{e}");
    }

    #[test]
    fn serial_file_errors_name_the_path() {
        let e = open_serial_out(&SerialMode::File("/nonexistent/dir/x".into()), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("/nonexistent/dir/x:"), "{e}");
    }
}
