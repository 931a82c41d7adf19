//! Every device on the port bus takes arbitrary guest accesses (any offset, any width, any
//! value, in any order) without panicking: a misbehaving guest must never crash the VMM.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::bus::{Bus, BusDevice};
use crate::devices::{
    acpi_pm, debug_exit, fw_cfg, i440fx, i8042, pci, piix, pit, port92, rtc, serial,
};
use crate::memory::{MemoryLayout, MIB};

use crate::fuzz::Rng;

fn machine_bus() -> Bus {
    let layout = MemoryLayout::new(64 * MIB).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mut bus = Bus::new("robustness");
    let dev = |d: Box<dyn BusDevice>| -> Arc<Mutex<dyn BusDevice>> { Arc::new(Mutex::new(d)) };
    let evt = || vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).ok();
    bus.insert(
        serial::COM1_PORT,
        serial::COM1_LEN,
        dev(Box::new(serial::Serial::new(
            evt().unwrap(),
            serial::SerialOut::new(serial::Sink::Null),
        ))),
    )
    .unwrap();
    bus.insert(
        rtc::RTC_PORT,
        rtc::RTC_LEN,
        dev(Box::new(rtc::Rtc::new(&layout, 2, false, evt()))),
    )
    .unwrap();
    let kbc = dev(Box::new(i8042::I8042::new(evt())));
    bus.insert(i8042::I8042_PORT, i8042::I8042_LEN, kbc.clone())
        .unwrap();
    bus.insert_at_offset(
        i8042::I8042_COMMAND_PORT,
        i8042::I8042_LEN,
        i8042::I8042_COMMAND_OFFSET,
        kbc,
    )
    .unwrap();
    let timer = dev(Box::new(pit::Pit::new(evt())));
    bus.insert(pit::PIT_PORT, pit::PIT_LEN, timer.clone())
        .unwrap();
    bus.insert_at_offset(pit::PORT_B, pit::PORT_B_LEN, pit::PORT_B_OFFSET, timer)
        .unwrap();
    bus.insert(
        acpi_pm::PM_BASE as u64,
        acpi_pm::PM_LEN,
        dev(Box::new(acpi_pm::AcpiPm::new(evt()))),
    )
    .unwrap();
    let mut fw = fw_cfg::FwCfg::new(mem);
    fw.add_file("etc/e820", vec![1; 100]).unwrap();
    bus.insert(fw_cfg::FW_CFG_PORT, fw_cfg::FW_CFG_LEN, dev(Box::new(fw)))
        .unwrap();
    let mut pci = pci::PciBus::new();
    pci.add(
        0,
        0,
        Arc::new(Mutex::new(i440fx::I440fx::new(Box::new(|_| {})))),
    )
    .unwrap();
    pci.add(1, 0, Arc::new(Mutex::new(piix::Piix3Isa::new())))
        .unwrap();
    pci.add(1, 3, Arc::new(Mutex::new(piix::Piix4Acpi::new())))
        .unwrap();
    bus.insert(
        pci::PCI_CONFIG_PORT,
        pci::PCI_CONFIG_LEN,
        dev(Box::new(pci)),
    )
    .unwrap();
    bus.insert(
        debug_exit::DEBUG_EXIT_PORT,
        debug_exit::DEBUG_EXIT_LEN,
        dev(Box::new(debug_exit::DebugExit)),
    )
    .unwrap();
    bus.insert(
        port92::PORT92_PORT,
        port92::PORT92_LEN,
        dev(Box::new(port92::Port92::new())),
    )
    .unwrap();
    bus
}

impl BusDevice for Box<dyn BusDevice> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        (**self).read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<crate::exit::ExitReason> {
        (**self).write(offset, data)
    }
    fn asks_for_memory_map(&self, offset: u64, access: crate::bus::Access<'_>) -> bool {
        (**self).asks_for_memory_map(offset, access)
    }
}

#[test]
fn random_guest_accesses_never_panic() {
    let bus = machine_bus();
    // The ports of every device, and a little around them.
    let ports: [u64; 10] = [
        0x3F8, 0x70, 0x40, 0x60, 0x600, 0x510, 0xCF8, 0xF4, 0x80, 0x92,
    ];
    let mut rng = Rng::new(0x5EED_1234_ABCD_0001);
    let mut claimed = 0;
    for _ in 0..200_000 {
        let r = rng.next();
        let base = ports[(r % ports.len() as u64) as usize];
        let port = base + (r >> 8) % 0x48;
        let width = [1usize, 2, 4, 8][((r >> 20) % 4) as usize];
        let mut data = (rng.next()).to_le_bytes();
        // PCI configuration addresses need the enable bit to reach the functions.
        if port == 0xCF8 && width == 4 && r & 1 == 0 {
            data[3] |= 0x80;
            data[2] = 0;
        }
        if (r >> 30) & 1 == 0 {
            claimed += bus.read(port, &mut data[..width]) as u32;
        } else {
            let _ = bus.write(port, &data[..width]);
        }
    }
    // Many reads reached a device (the rest fell between them).
    assert!(claimed > 10_000, "only {claimed} reads reached a device");
}

/// The PCI configuration mechanism with the machine's functions and a function with BARs:
/// random configuration cycles at every width and offset, in any order. Read-only fields
/// keep their values, absent functions read all-ones, CONFIG_ADDRESS reads back what it
/// latched, and every PAM change reported matches the host bridge's registers.
mod fuzz {
    use std::collections::HashMap;

    use super::*;
    use crate::devices::i440fx::{PamChange, PamMode};
    use crate::devices::pci::{Bar, BarKind, ConfigSpace, Header, PciBus, PciFunction};
    use crate::fuzz::run;

    struct Machine {
        bus: PciBus,
        host: Arc<Mutex<i440fx::I440fx>>,
        isa: Arc<Mutex<piix::Piix3Isa>>,
        pm: Arc<Mutex<piix::Piix4Acpi>>,
        dev: Arc<Mutex<ConfigSpace>>,
        pam: Arc<Mutex<Vec<PamChange>>>,
    }

    fn machine() -> Machine {
        let pam = Arc::new(Mutex::new(Vec::new()));
        let seen = pam.clone();
        let host = Arc::new(Mutex::new(i440fx::I440fx::new(Box::new(move |c| {
            seen.lock().unwrap().push(c)
        }))));
        let isa = Arc::new(Mutex::new(piix::Piix3Isa::new()));
        let pm = Arc::new(Mutex::new(piix::Piix4Acpi::new()));
        let mut c = ConfigSpace::new(&Header {
            vendor_id: 0x1AF4,
            device_id: 0x1000,
            class: 0x02,
            interrupt_pin: 1,
            ..Header::default()
        });
        c.add_bar(Bar {
            kind: BarKind::Io,
            size: 32,
        })
        .unwrap();
        c.add_bar(Bar {
            kind: BarKind::Memory32 { prefetchable: true },
            size: 0x1000,
        })
        .unwrap();
        c.add_capability(0x09, &[1, 2, 3, 4]).unwrap();
        let dev = Arc::new(Mutex::new(c));
        let mut bus = PciBus::new();
        bus.add(0, 0, host.clone()).unwrap();
        bus.add(1, 0, isa.clone()).unwrap();
        bus.add(1, 3, pm.clone()).unwrap();
        bus.add(2, 0, dev.clone()).unwrap();
        Machine {
            bus,
            host,
            isa,
            pm,
            dev,
            pam,
        }
    }

    /// The read-only words of each function: (dword register, value) pairs.
    fn fixed(m: &Machine) -> Vec<u32> {
        let mut v = Vec::new();
        for f in [
            &(m.host.clone() as Arc<Mutex<dyn PciFunction>>),
            &(m.isa.clone() as Arc<Mutex<dyn PciFunction>>),
            &(m.pm.clone() as Arc<Mutex<dyn PciFunction>>),
            &(m.dev.clone() as Arc<Mutex<dyn PciFunction>>),
        ] {
            let mut f = f.lock().unwrap();
            // Vendor and device, class and revision, subsystem, capability pointer.
            for reg in [0, 2, 11, 13] {
                v.push(f.config_read(reg));
            }
            v.push(f.config_read(3) & 0x00FF_0000); // header type
        }
        v
    }

    #[test]
    fn pci_config_cycles() {
        run("pci_config_cycles", 20_000, |rng| {
            let mut m = machine();
            let fixed_before = fixed(&m);
            let mut latched = 0u32;
            for _ in 0..=rng.below(64) {
                let r = rng.next();
                match r % 8 {
                    0 | 1 => {
                        // CONFIG_ADDRESS: mostly enabled, bus 0, a present device.
                        let mut a = rng.next() as u32;
                        if !rng.one_in(4) {
                            // Registers with meaning: command, BARs, capabilities, interrupt
                            // line, PMBA, PAM, PIRQ, SMRAM, PMREGMISC.
                            let regs = [
                                0x04, 0x10, 0x14, 0x34, 0x3C, 0x40, 0x58, 0x5C, 0x60, 0x70, 0x80,
                            ];
                            let reg = if rng.one_in(4) {
                                a & 0xFC
                            } else {
                                *rng.pick(&regs)
                            };
                            a = 1 << 31 | (*rng.pick(&[0u32, 8, 11, 16]) << 8) | reg;
                        }
                        m.bus.write(0, &a.to_le_bytes());
                        latched = a & 0x80FF_FFFC;
                        let mut back = [0u8; 4];
                        m.bus.read(0, &mut back);
                        assert_eq!(u32::from_le_bytes(back), latched);
                    }
                    2..=4 => {
                        let offset = 4 + rng.below(5);
                        let width = *rng.pick(&[1usize, 2, 4, 3, 8]);
                        let data = rng.bytes(width);
                        let _ = m.bus.write(offset, &data);
                    }
                    5 | 6 => {
                        let offset = rng.below(8);
                        let width = *rng.pick(&[1usize, 2, 4, 3, 8]);
                        let mut data = vec![0u8; width];
                        m.bus.read(offset, &mut data);
                        let device = (latched >> 11) & 0x1F;
                        let function = (latched >> 8) & 7;
                        let present =
                            matches!((device, function), (0, 0) | (1, 0) | (1, 3) | (2, 0));
                        let decoded = latched & 1 << 31 != 0 && (latched >> 16) & 0xFF == 0;
                        if offset >= 4 && (!present || !decoded) {
                            assert!(data.iter().all(|b| *b == 0xFF), "{latched:#x}: {data:x?}");
                        }
                    }
                    _ => {
                        // The reset control byte, without asking for a reset.
                        let _ = m.bus.write(1, &[rng.byte() & !4]);
                    }
                }
            }
            assert_eq!(fixed(&m), fixed_before, "a read-only field changed");
            // PAM: the last change reported for each segment is its mode now; SMRAM
            // stays closed; the PM block stays where it is and enabled.
            let mut modes: HashMap<u64, PamMode> = HashMap::new();
            for c in m.pam.lock().unwrap().iter() {
                modes.insert(c.start, c.mode);
            }
            let host = m.host.lock().unwrap();
            for s in host.pam_segments() {
                assert_eq!(
                    *modes.get(&s.start).unwrap_or(&PamMode::Rom),
                    s.mode,
                    "{s:x?}"
                );
            }
            assert_eq!(host.config().read_u8(0x72), 0x02);
            let pm = m.pm.lock().unwrap();
            assert_eq!(pm.config().read_u32(0x40) & 1, 1);
            assert_eq!(pm.config().read_u8(0x80), 1);
            assert_eq!(pm.pm_base(), acpi_pm::PM_BASE);
            // BAR type bits are read-only.
            let dev = m.dev.lock().unwrap();
            assert_eq!(dev.read_u32(0x10) & 3, 1);
            assert_eq!(dev.read_u32(0x14) & 0xF, 8);
        });
    }
}
