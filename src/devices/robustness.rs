//! Every device on the port bus takes arbitrary guest accesses (any offset, any width, any
//! value, in any order) without panicking: a misbehaving guest must never crash the VMM.

use std::sync::{Arc, Mutex};

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::bus::{Bus, BusDevice};
use crate::devices::{
    acpi_pm, debug_exit, fw_cfg, i440fx, i8042, pci, piix, pit, port92, rtc, serial,
};
use crate::memory::{MemoryLayout, MIB};

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

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
}

#[test]
fn random_guest_accesses_never_panic() {
    let bus = machine_bus();
    // The ports of every device, and a little around them.
    let ports: [u64; 10] = [
        0x3F8, 0x70, 0x40, 0x60, 0x600, 0x510, 0xCF8, 0xF4, 0x80, 0x92,
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
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
