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
pub enum Sink {
    Stdout,
    File(std::fs::File),
    Null,
}

/// The UART's output: bytes are collected and written a line at a time (or when the buffer
/// fills), so a guest printing a line costs one write, not one per byte. The monitor pushes
/// out a partial line (a prompt) on its next tick, and everything at exit.
pub struct SerialOut {
    sink: Sink,
    buf: Vec<u8>,
}

const LINE_MAX: usize = 4096;

impl SerialOut {
    pub fn new(sink: Sink) -> Self {
        SerialOut {
            sink,
            buf: Vec::with_capacity(256),
        }
    }

    /// Writes out whatever is buffered.
    pub fn drain(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let r = match &mut self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&self.buf).and_then(|_| out.flush())
            }
            Sink::File(f) => f.write_all(&self.buf),
            Sink::Null => Ok(()),
        };
        self.buf.clear();
        r
    }

    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }
}

impl Write for SerialOut {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    /// Called by the UART after every byte: only a complete line or a full buffer goes out.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.last() == Some(&b'\n') || self.buf.len() >= LINE_MAX {
            self.drain()
        } else {
            Ok(())
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

    /// Writes out buffered output, a partial line included.
    pub fn flush(&mut self) {
        if let Err(e) = self.uart.writer_mut().drain() {
            log::debug(format_args!("serial: output failed: {e}"));
        }
    }

    /// Whether output is waiting for `flush`.
    pub fn output_pending(&self) -> bool {
        self.uart.writer().pending()
    }

    /// The next input byte, left in the FIFO (the BIOS keyboard's peek).
    pub fn peek_input(&self) -> Option<u8> {
        self.uart.state().in_buffer.first().copied()
    }

    /// Takes the next input byte from the FIFO, whatever the guest left in LCR.DLAB.
    pub fn take_input(&mut self) -> Option<u8> {
        self.peek_input()?;
        let lcr = self.uart.read(3);
        let _ = self.uart.write(3, lcr & 0x7F);
        let byte = self.uart.read(0);
        let _ = self.uart.write(3, lcr);
        Some(byte)
    }

    /// Output from the VMM itself (the BIOS console), after what the guest wrote.
    pub fn write_output(&mut self, bytes: &[u8]) {
        let out = self.uart.writer_mut();
        if out.write_all(bytes).and_then(|_| out.flush()).is_err() {
            log::debug(format_args!("serial: BIOS output failed"));
        }
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

    /// The UART's MR line: interrupts off, 8 data bits' worth of line control cleared, modem
    /// control cleared (the divisor is reprogrammed by whatever boots next).
    fn reset(&mut self) {
        for (reg, v) in [(3u8, 0u8), (1, 0), (4, 0)] {
            let _ = self.uart.write(reg, v);
        }
        let _ = self.uart.read(2); // reading IIR acknowledges a pending THR-empty interrupt
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
        let mut s = Serial::new(evt, SerialOut::new(Sink::Null));
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

    #[test]
    fn input_can_be_peeked_then_taken_whatever_dlab() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(evt, SerialOut::new(Sink::Null));
        assert_eq!((s.peek_input(), s.take_input()), (None, None));
        s.enqueue_input(b"xy");
        assert_eq!(s.peek_input(), Some(b'x'));
        assert_eq!(s.peek_input(), Some(b'x'));
        s.write(3, &[0x83]);
        assert_eq!(s.take_input(), Some(b'x'));
        let mut lcr = [0u8];
        s.read(3, &mut lcr);
        assert_eq!(lcr[0], 0x83);
        assert_eq!(s.take_input(), Some(b'y'));
        assert_eq!(s.take_input(), None);
    }

    #[test]
    fn output_goes_out_a_line_at_a_time() {
        let path = std::env::temp_dir().join(format!("minipc-serial-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(evt, SerialOut::new(Sink::File(f)));
        for b in b"ab" {
            s.write(0, &[*b]);
        }
        assert!(s.output_pending());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        s.write(0, b"\n");
        assert!(!s.output_pending());
        assert_eq!(std::fs::read(&path).unwrap(), b"ab\n");
        s.write(0, b">");
        s.flush();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab\n>");
        let _ = std::fs::remove_file(path);
    }
}
