//! COM1: a 16550 UART from `vm-superio` at 0x3F8, IRQ 4 delivered through an irqfd.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::ExitReason;
use crate::log;

pub const COM1_PORT: u64 = 0x3F8;
pub const COM1_LEN: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt line by signalling an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where the guest's serial output goes.
pub enum SerialOut {
    Stdout,
    File(std::fs::File),
    Sink,
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            SerialOut::Stdout => io::stdout().write(buf),
            SerialOut::File(f) => f.write(buf),
            SerialOut::Sink => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            SerialOut::Stdout => io::stdout().flush(),
            SerialOut::File(f) => f.flush(),
            SerialOut::Sink => Ok(()),
        }
    }
}

pub struct Serial {
    uart: Uart<IrqTrigger, NoEvents, SerialOut>,
}

impl Serial {
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Serial {
            uart: Uart::new(IrqTrigger(irq), out),
        }
    }

    /// Queues host input for the guest; returns how many bytes the FIFO took.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The UART has byte registers; wider accesses read the first one and pad.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = self.uart.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if let Some(b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, *b) {
                log::debug(format_args!("serial: write failed: {e:?}"));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmitter_is_empty_and_bytes_go_out() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(evt, SerialOut::Sink);
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        // THRE and TEMT.
        assert_eq!(lsr[0] & 0x60, 0x60);
        s.write(0, b"A");
        // Receive path: enqueue, then the data-ready bit and the byte.
        assert_eq!(s.enqueue_input(b"x"), 1);
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1);
        let mut rbr = [0u8];
        s.read(0, &mut rbr);
        assert_eq!(rbr[0], b'x');
    }
}
