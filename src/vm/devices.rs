//! The machine's devices: the interrupt controllers and their routing, the port and MMIO
//! devices, the PCI bus, fw_cfg, and the serial output they write to.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP,
};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::Bus;
use crate::config::{SerialMode, VmConfig};
use crate::devices::acpi_pm::{AcpiPm, PM_BASE, PM_LEN, SCI_IRQ};
use crate::devices::debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use crate::devices::fw_cfg::{key, FwCfg};
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
use crate::firmware::{BootDescriptor, BOOT_DESCRIPTOR_FILE};
use crate::memory::{self, MemoryLayout};
use crate::shadow::{Shadow, ShadowMmio, SHADOW_LEN, SHADOW_START};

use super::{kvm_err, VmError};

/// Opens the serial output before anything else is built, so a bad path is a config error;
/// a FIFO waits for its reader at most `timeout` (`open_serial_file`).
pub fn open_serial_out(mode: &SerialMode, timeout: Option<Duration>) -> Result<SerialOut, VmError> {
    Ok(SerialOut::new(match mode {
        SerialMode::Stdio => Sink::Stdout,
        SerialMode::None => Sink::Null,
        SerialMode::File(p) => Sink::File(open_serial_file(p, timeout)?),
    }))
}

/// How often a FIFO without a reader is tried again.
const FIFO_RETRY: Duration = Duration::from_millis(10);
/// After this long without a reader, the user is told what minipc waits for.
const FIFO_NOTICE: Duration = Duration::from_secs(1);

/// `--serial file:PATH`, opened for writing (created and truncated if it is a file), without
/// waiting: a FIFO nobody reads yet would otherwise hold `open` until a reader comes, before
/// the VM and its `--timeout` even start. Such a FIFO is tried again every 10 ms: within
/// `timeout` when there is one (then `SerialNoReader`), with a notice on stderr after a
/// second. The descriptor keeps O_NONBLOCK, as the output sets it on anything that is not a
/// file (devices/serial.rs).
fn open_serial_file(p: &Path, timeout: Option<Duration>) -> Result<std::fs::File, VmError> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let opened = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(p);
        match opened {
            Ok(f) => return Ok(f),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                let waited = start.elapsed();
                if let Some(t) = timeout.filter(|t| waited >= *t) {
                    return Err(VmError::SerialNoReader {
                        path: p.display().to_string(),
                        timeout: t,
                    });
                }
                if !told && waited >= FIFO_NOTICE {
                    eprintln!(
                        "minipc: {}: a FIFO nobody reads yet; waiting for its reader",
                        p.display()
                    );
                    told = true;
                }
                std::thread::sleep(FIFO_RETRY);
            }
            Err(err) => {
                return Err(VmError::SerialFile {
                    path: p.display().to_string(),
                    err,
                })
            }
        }
    }
}

/// The in-kernel PICs and IOAPIC (irqfds need the irqchip), with the ISA interrupts routed
/// as the MADT and the MP table describe them.
pub(super) fn create_interrupt_controllers(vm: &VmFd) -> Result<(), VmError> {
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
pub(super) fn isa_routing() -> Vec<kvm_irq_routing_entry> {
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
pub(super) struct Devices {
    pub(super) pio: Bus,
    pub(super) mmio: Bus,
    pub(super) serial: Arc<Mutex<Serial>>,
    pub(super) rtc: SharedRtc,
    pub(super) timers: Timers,
}

/// The RTC, shared by the port bus, its timer and the BIOS services (the CMOS clock).
type SharedRtc = Arc<Mutex<Timed<Rtc>>>;
/// The devices a timer drives.
type Timers = Vec<Arc<Mutex<dyn Expire>>>;

pub(super) fn platform_devices(
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
    .map_err(dev_err)?;
    let irq = irqfd(vm, COM1_IRQ, "register serial irqfd")?;
    let serial = Arc::new(Mutex::new(Serial::new(irq, serial_out)));
    pio.insert(COM1_PORT, COM1_LEN, serial.clone())
        .map_err(dev_err)?;
    fixed_ports(&mut pio)?;
    let (rtc, timers) = interrupting_devices(vm, cfg, layout, &mut pio)?;
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

/// A device that could not be placed on a bus.
pub(super) fn dev_err(e: crate::bus::BusError) -> VmError {
    VmError::Device(e.to_string())
}

/// An eventfd that raises `gsi` through the in-kernel irqchip.
fn irqfd(vm: &VmFd, gsi: u32, what: &'static str) -> Result<EventFd, VmError> {
    let e = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(e.to_string()))?;
    vm.register_irqfd(&e, gsi).map_err(kvm_err(what))?;
    Ok(e)
}

/// The ports with no interrupt and no timer: debug-exit, the POST code, port 0x92.
fn fixed_ports(pio: &mut Bus) -> Result<(), VmError> {
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
    .map_err(dev_err)
}

/// The RTC, the i8042, the PIT and the ACPI PM block, each with its irqfd (in this order),
/// on the port bus; returns the RTC and the devices driven by a timer.
fn interrupting_devices(
    vm: &VmFd,
    cfg: &VmConfig,
    layout: &MemoryLayout,
    pio: &mut Bus,
) -> Result<(SharedRtc, Timers), VmError> {
    let mut timers: Timers = Vec::new();
    let timer_err = |e: std::io::Error| VmError::Device(format!("timer: {e}"));

    let rtc = Rtc::new(
        layout,
        cfg.cpus,
        cfg.rtc_localtime,
        Some(irqfd(vm, RTC_IRQ, "register RTC irqfd")?),
    );
    let rtc = Arc::new(Mutex::new(Timed::new(rtc).map_err(timer_err)?));
    pio.insert(RTC_PORT, RTC_LEN, rtc.clone())
        .map_err(dev_err)?;
    timers.push(rtc.clone());

    let i8042 = I8042::new(Some(irqfd(vm, KEYBOARD_IRQ, "register keyboard irqfd")?));
    let i8042 = Arc::new(Mutex::new(i8042));
    pio.insert(I8042_PORT, I8042_LEN, i8042.clone())
        .map_err(dev_err)?;
    pio.insert_at_offset(I8042_COMMAND_PORT, I8042_LEN, I8042_COMMAND_OFFSET, i8042)
        .map_err(dev_err)?;

    let pit = Pit::new(Some(irqfd(vm, PIT_IRQ, "register PIT irqfd")?));
    let pit = Arc::new(Mutex::new(Timed::new(pit).map_err(timer_err)?));
    pio.insert(PIT_PORT, PIT_LEN, pit.clone())
        .map_err(dev_err)?;
    pio.insert_at_offset(PORT_B, PORT_B_LEN, PORT_B_OFFSET, pit.clone())
        .map_err(dev_err)?;
    timers.push(pit);

    let pm = AcpiPm::new(Some(irqfd(vm, SCI_IRQ, "register SCI irqfd")?));
    let pm = Arc::new(Mutex::new(Timed::new(pm).map_err(timer_err)?));
    pio.insert(PM_BASE as u64, PM_LEN, pm.clone())
        .map_err(dev_err)?;
    timers.push(pm);
    Ok((rtc, timers))
}

/// PCI bus 0: the i440fx host bridge, the PIIX3 ISA bridge and its ACPI function.
pub(super) fn pci_bus(shadow: Arc<Mutex<Shadow>>) -> Result<PciBus, VmError> {
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
pub(super) fn firmware_config(
    cfg: &VmConfig,
    layout: &MemoryLayout,
    guest_mem: &GuestMemoryMmap,
    e820: &[memory::E820Entry],
    descriptor: BootDescriptor,
    boot: &crate::boot::BootPlan,
) -> Result<FwCfg, VmError> {
    let mut fw_cfg = FwCfg::new(guest_mem.clone());
    fw_cfg.add_item(key::RAM_SIZE, layout.ram_size.to_le_bytes().to_vec());
    fw_cfg.add_item(key::NOGRAPHIC, 1u16.to_le_bytes().to_vec());
    fw_cfg.add_item(key::NB_CPUS, (cfg.cpus as u16).to_le_bytes().to_vec());
    fw_cfg.add_item(key::MAX_CPUS, (cfg.cpus as u16).to_le_bytes().to_vec());
    let fw_err = |e: crate::devices::fw_cfg::FwCfgError| VmError::Device(e.to_string());
    // One E820 map for fw_cfg, INT 15h and the boot structures alike.
    let e820: Vec<u8> = e820.iter().flat_map(|e| e.to_bytes()).collect();
    fw_cfg
        .add_file(crate::devices::fw_cfg::E820_FILE, e820)
        .map_err(fw_err)?;
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
