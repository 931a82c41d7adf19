//! The i8042 keyboard controller (data port 0x60, status/command port 0x64) with a keyboard
//! that answers commands but never types, and no auxiliary (mouse) device.
//!
//! The device is on the bus twice, one byte each (port 0x61 between them is the PIT's
//! system control port B, `pit/`):
//! - 0x60 (offset 0): data. Reads pop the output buffer (the last byte again when it is
//!   empty); writes go to the keyboard, or are the parameter of the last controller command.
//! - 0x64 (offset 4): reads the status register, writes are controller commands.
//!
//! IRQ 1 is an edge on the eventfd each time a keyboard byte reaches the head of the output
//! buffer while the command byte enables the keyboard interrupt (or when the interrupt is
//! enabled with such a byte waiting). Bytes for the auxiliary port would raise IRQ 12, which
//! is not wired.
//!
//! The auxiliary port answers the controller's own tests (0xA9 passes, 0xD3 loops back) but
//! has nothing behind it: a byte for the mouse (0xD4) is answered 0xFE. Linux told by ACPI
//! (a PNP0303 device without PNP0F13) that there is no mouse does not probe for one; probing
//! anyway, it waits in vain for IRQ 12 after a loopback and drops the port after 250 ms.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::exit::ExitReason;
use crate::log;

/// Where the device goes on the port-I/O bus: the data port at offset 0, and the command
/// port, inserted at `I8042_COMMAND_OFFSET` (`Bus::insert_at_offset`); one byte each.
pub const I8042_PORT: u64 = 0x60;
pub const I8042_COMMAND_PORT: u64 = 0x64;
pub const I8042_COMMAND_OFFSET: u64 = COMMAND_OFFSET;
pub const I8042_LEN: u64 = 1;
/// The keyboard's ISA IRQ.
pub const KEYBOARD_IRQ: u32 = 1;

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

/// Status register bits.
const STS_OBF: u8 = 1 << 0;
const STS_SYSTEM: u8 = 1 << 2;
const STS_COMMAND: u8 = 1 << 3;
const STS_UNLOCKED: u8 = 1 << 4;
const STS_AUX_OBF: u8 = 1 << 5;

/// Command byte bits.
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYSTEM: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_TRANSLATE: u8 = 1 << 6;
/// The command byte at power-on: translation on, mouse off, keyboard interrupt on.
const CTR_DEFAULT: u8 = CTR_TRANSLATE | CTR_AUX_DISABLE | CTR_KBD_INT;

/// Output port bits.
const OUT_RESET: u8 = 1 << 0;
const OUT_A20: u8 = 1 << 1;
const OUT_OBF: u8 = 1 << 4;
const OUT_AUX_OBF: u8 = 1 << 5;
/// Not in reset, A20 on, keyboard clock and data lines high.
const OUT_DEFAULT: u8 = 0xCF;

/// Controller commands.
const CMD_READ_RAM: u8 = 0x20;
const CMD_WRITE_RAM: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xA7;
const CMD_AUX_ENABLE: u8 = 0xA8;
const CMD_AUX_TEST: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_KBD_TEST: u8 = 0xAB;
const CMD_KBD_DISABLE: u8 = 0xAD;
const CMD_KBD_ENABLE: u8 = 0xAE;
const CMD_READ_INPUT: u8 = 0xC0;
const CMD_READ_OUTPUT: u8 = 0xD0;
const CMD_WRITE_OUTPUT: u8 = 0xD1;
const CMD_WRITE_KBD_OBUF: u8 = 0xD2;
const CMD_WRITE_AUX_OBUF: u8 = 0xD3;
const CMD_WRITE_AUX: u8 = 0xD4;
const CMD_A20_OFF: u8 = 0xDD;
const CMD_A20_ON: u8 = 0xDF;
const CMD_PULSE_FIRST: u8 = 0xF0;

/// Controller answers.
const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// Input port: keyboard not inhibited.
const INPUT_PORT: u8 = 0x80;

/// Keyboard commands and answers.
const KBD_SET_LEDS: u8 = 0xED;
const KBD_ECHO: u8 = 0xEE;
const KBD_SCAN_SET: u8 = 0xF0;
const KBD_IDENTIFY: u8 = 0xF2;
const KBD_TYPEMATIC: u8 = 0xF3;
const KBD_RESET: u8 = 0xFF;
const KBD_ACK: u8 = 0xFA;
const KBD_BAT_OK: u8 = 0xAA;
const KBD_ID: [u8; 2] = [0xAB, 0x83];
/// What the mouse port answers: resend, the usual "no device" reply.
const AUX_NO_DEVICE: u8 = 0xFE;

/// Bytes the output buffer holds at most; more are dropped.
const QUEUE_MAX: usize = 16;
/// Bytes of controller RAM; byte 0 is the command byte.
const RAM_LEN: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Keyboard,
    Aux,
}

/// The keyboard controller. Insert at `I8042_PORT` with length `I8042_LEN`.
pub struct I8042 {
    /// Controller RAM; `ram[0]` is the command byte.
    ram: [u8; RAM_LEN],
    output_port: u8,
    queue: VecDeque<(u8, Source)>,
    /// The byte a data-port read returns when the queue is empty.
    last: u8,
    /// IRQ 1 was already raised for the byte at the head of the queue.
    head_signalled: bool,
    /// The system flag, set by the self-test or through the command byte.
    system_flag: bool,
    /// The last write went to the command port.
    last_was_command: bool,
    /// A controller command waiting for its byte on the data port.
    pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter.
    pending_kbd: Option<u8>,
    scan_set: u8,
    irq: Option<EventFd>,
}

impl I8042 {
    /// `irq` is IRQ 1's irqfd.
    pub fn new(irq: Option<EventFd>) -> Self {
        let mut ram = [0u8; RAM_LEN];
        ram[0] = CTR_DEFAULT;
        I8042 {
            ram,
            output_port: OUT_DEFAULT,
            queue: VecDeque::with_capacity(QUEUE_MAX),
            last: 0,
            head_signalled: false,
            system_flag: false,
            last_was_command: false,
            pending_command: None,
            pending_kbd: None,
            scan_set: 2,
            irq,
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    /// Whether the guest left the A20 gate enabled (recorded only: KVM never masks A20).
    pub fn a20_enabled(&self) -> bool {
        self.output_port & OUT_A20 != 0
    }

    fn command_byte(&self) -> u8 {
        self.ram[0]
    }

    fn set_command_byte(&mut self, v: u8) {
        self.ram[0] = v;
        self.system_flag = v & CTR_SYSTEM != 0;
        self.update_irq();
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        match self.queue.front() {
            Some((_, Source::Keyboard)) => s |= STS_OBF,
            Some((_, Source::Aux)) => s |= STS_OBF | STS_AUX_OBF,
            None => {}
        }
        if self.system_flag {
            s |= STS_SYSTEM;
        }
        if self.last_was_command {
            s |= STS_COMMAND;
        }
        s
    }

    fn push(&mut self, byte: u8, source: Source) {
        if self.queue.len() >= QUEUE_MAX {
            log::debug(format_args!(
                "i8042: output buffer full, {byte:#04x} dropped"
            ));
            return;
        }
        self.queue.push_back((byte, source));
        self.update_irq();
    }

    fn pop(&mut self) -> u8 {
        if let Some((b, _)) = self.queue.pop_front() {
            self.last = b;
            self.head_signalled = false;
            self.update_irq();
        }
        self.last
    }

    /// Raises IRQ 1 for a keyboard byte newly at the head of the queue.
    fn update_irq(&mut self) {
        let kbd_head = matches!(self.queue.front(), Some((_, Source::Keyboard)));
        if !kbd_head || self.head_signalled || self.command_byte() & CTR_KBD_INT == 0 {
            return;
        }
        self.head_signalled = true;
        if let Some(irq) = &self.irq {
            if let Err(e) = irq.write(1) {
                log::debug(format_args!("i8042: cannot raise IRQ 1: {e}"));
            }
        }
    }

    fn write_output_port(&mut self, v: u8) -> Option<ExitReason> {
        // The buffer-full bits reflect the queue; the rest is latched.
        self.output_port = v & !(OUT_OBF | OUT_AUX_OBF);
        (v & OUT_RESET == 0).then_some(ExitReason::Reset)
    }

    fn read_output_port(&self) -> u8 {
        let mut v = self.output_port;
        match self.queue.front() {
            Some((_, Source::Keyboard)) => v |= OUT_OBF,
            Some((_, Source::Aux)) => v |= OUT_AUX_OBF,
            None => {}
        }
        v
    }

    fn controller_command(&mut self, cmd: u8) -> Option<ExitReason> {
        self.pending_command = None;
        match cmd {
            CMD_READ_RAM..=0x3F => {
                let v = self.ram[usize::from(cmd - CMD_READ_RAM)];
                self.push(v, Source::Keyboard);
            }
            CMD_WRITE_RAM..=0x7F => self.pending_command = Some(cmd),
            CMD_AUX_DISABLE => self.ram[0] |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ram[0] &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(PORT_TEST_OK, Source::Keyboard),
            CMD_SELF_TEST => {
                self.system_flag = true;
                self.push(SELF_TEST_OK, Source::Keyboard);
            }
            CMD_KBD_DISABLE => self.ram[0] |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ram[0] &= !CTR_KBD_DISABLE,
            CMD_READ_INPUT => self.push(INPUT_PORT, Source::Keyboard),
            CMD_READ_OUTPUT => {
                let v = self.read_output_port();
                self.push(v, Source::Keyboard);
            }
            CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OBUF | CMD_WRITE_AUX_OBUF | CMD_WRITE_AUX => {
                self.pending_command = Some(cmd)
            }
            CMD_A20_OFF => self.output_port &= !OUT_A20,
            CMD_A20_ON => self.output_port |= OUT_A20,
            // Pulse output lines: a clear bit in 0-3 pulses that line; line 0 is reset.
            CMD_PULSE_FIRST..=0xFF => {
                if cmd & OUT_RESET == 0 {
                    return Some(ExitReason::Reset);
                }
            }
            _ => log::debug(format_args!("i8042: command {cmd:#04x} ignored")),
        }
        None
    }

    fn data_write(&mut self, v: u8) -> Option<ExitReason> {
        match self.pending_command.take() {
            Some(cmd @ CMD_WRITE_RAM..=0x7F) => {
                let index = usize::from(cmd - CMD_WRITE_RAM);
                if index == 0 {
                    self.set_command_byte(v);
                } else {
                    self.ram[index] = v;
                }
                None
            }
            Some(CMD_WRITE_OUTPUT) => self.write_output_port(v),
            Some(CMD_WRITE_KBD_OBUF) => {
                self.push(v, Source::Keyboard);
                None
            }
            Some(CMD_WRITE_AUX_OBUF) => {
                self.push(v, Source::Aux);
                None
            }
            Some(CMD_WRITE_AUX) => {
                self.push(AUX_NO_DEVICE, Source::Aux);
                None
            }
            _ => {
                self.keyboard_write(v);
                None
            }
        }
    }

    /// A byte for the keyboard: a command, or the parameter of the previous one.
    fn keyboard_write(&mut self, v: u8) {
        if let Some(cmd) = self.pending_kbd.take() {
            self.push(KBD_ACK, Source::Keyboard);
            if cmd == KBD_SCAN_SET {
                if v == 0 {
                    // Report the set; the controller translates set 2's number too.
                    let set = match (self.scan_set, self.command_byte() & CTR_TRANSLATE) {
                        (2, t) if t != 0 => 0x41,
                        (s, _) => s,
                    };
                    self.push(set, Source::Keyboard);
                } else if (1..=3).contains(&v) {
                    self.scan_set = v;
                }
            }
            return;
        }
        match v {
            KBD_ECHO => self.push(KBD_ECHO, Source::Keyboard),
            KBD_RESET => {
                self.scan_set = 2;
                self.push(KBD_ACK, Source::Keyboard);
                self.push(KBD_BAT_OK, Source::Keyboard);
            }
            KBD_IDENTIFY => {
                self.push(KBD_ACK, Source::Keyboard);
                for b in KBD_ID {
                    self.push(b, Source::Keyboard);
                }
            }
            KBD_SET_LEDS | KBD_SCAN_SET | KBD_TYPEMATIC => {
                self.pending_kbd = Some(v);
                self.push(KBD_ACK, Source::Keyboard);
            }
            _ => self.push(KBD_ACK, Source::Keyboard),
        }
    }
}

impl BusDevice for I8042 {
    /// The ports are bytes: a wider read returns the addressed port's byte padded with 0xFF.
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0xFF);
        let v = match offset {
            DATA_OFFSET => self.pop(),
            COMMAND_OFFSET => self.status(),
            _ => 0xFF,
        };
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    /// A wider write is taken as a write of its first byte.
    fn reset(&mut self) {
        let irq = self.irq.take();
        *self = I8042::new(irq);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        let v = *data.first()?;
        match offset {
            DATA_OFFSET => {
                self.last_was_command = false;
                self.data_write(v)
            }
            COMMAND_OFFSET => {
                self.last_was_command = true;
                self.controller_command(v)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kbc() -> (I8042, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(Some(irq.try_clone().unwrap())), irq)
    }

    fn pulses(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    fn status(k: &mut I8042) -> u8 {
        let mut b = [0u8];
        k.read(COMMAND_OFFSET, &mut b);
        b[0]
    }

    fn command(k: &mut I8042, c: u8) -> Option<ExitReason> {
        k.write(COMMAND_OFFSET, &[c])
    }

    fn data(k: &mut I8042, v: u8) -> Option<ExitReason> {
        k.write(DATA_OFFSET, &[v])
    }

    /// Reads every queued byte, checking the status's buffer-full bit on the way.
    fn drain(k: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while status(k) & STS_OBF != 0 {
            let mut b = [0u8];
            k.read(DATA_OFFSET, &mut b);
            out.push(b[0]);
        }
        out
    }

    #[test]
    fn self_test_and_port_tests() {
        let (mut k, _) = kbc();
        assert_eq!(status(&mut k), STS_UNLOCKED);
        assert_eq!(command(&mut k, CMD_SELF_TEST), None);
        let s = status(&mut k);
        assert_eq!(
            s & (STS_OBF | STS_SYSTEM | STS_COMMAND),
            STS_OBF | STS_SYSTEM | STS_COMMAND
        );
        assert_eq!(drain(&mut k), vec![0x55]);
        assert_eq!(status(&mut k) & STS_OBF, 0);
        assert_ne!(status(&mut k) & STS_SYSTEM, 0);
        command(&mut k, CMD_KBD_TEST);
        command(&mut k, CMD_AUX_TEST);
        assert_eq!(drain(&mut k), vec![0, 0]);
        // An empty buffer reads the last byte again.
        let mut b = [0u8];
        k.read(DATA_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn command_byte_read_and_write() {
        let (mut k, _) = kbc();
        command(&mut k, CMD_READ_RAM);
        assert_eq!(drain(&mut k), vec![CTR_DEFAULT]);
        command(&mut k, CMD_WRITE_RAM);
        assert_eq!(data(&mut k, 0x47), None);
        assert_eq!(status(&mut k) & STS_COMMAND, 0);
        command(&mut k, CMD_READ_RAM);
        assert_eq!(drain(&mut k), vec![0x47]);
        assert_ne!(status(&mut k) & STS_SYSTEM, 0);
        command(&mut k, CMD_AUX_DISABLE);
        command(&mut k, CMD_KBD_DISABLE);
        command(&mut k, CMD_READ_RAM);
        assert_eq!(drain(&mut k), vec![0x77]);
        command(&mut k, CMD_AUX_ENABLE);
        command(&mut k, CMD_KBD_ENABLE);
        command(&mut k, CMD_READ_RAM);
        assert_eq!(drain(&mut k), vec![0x47]);
        // Other RAM bytes.
        command(&mut k, 0x65);
        data(&mut k, 0x99);
        command(&mut k, 0x25);
        assert_eq!(drain(&mut k), vec![0x99]);
    }

    #[test]
    fn reset_paths() {
        let (mut k, _) = kbc();
        assert_eq!(command(&mut k, 0xFE), Some(ExitReason::Reset));
        assert_eq!(command(&mut k, 0xF0), Some(ExitReason::Reset));
        assert_eq!(command(&mut k, 0xFF), None);
        assert_eq!(command(&mut k, 0xF1), None);
        command(&mut k, CMD_WRITE_OUTPUT);
        assert_eq!(data(&mut k, 0xDD), None);
        assert!(!k.a20_enabled());
        command(&mut k, CMD_WRITE_OUTPUT);
        assert_eq!(data(&mut k, 0xDF), None);
        assert!(k.a20_enabled());
        command(&mut k, CMD_READ_OUTPUT);
        assert_eq!(drain(&mut k), vec![0xCF]);
        command(&mut k, CMD_WRITE_OUTPUT);
        assert_eq!(data(&mut k, 0xDE), Some(ExitReason::Reset));
        command(&mut k, CMD_A20_OFF);
        assert!(!k.a20_enabled());
        command(&mut k, CMD_A20_ON);
        assert!(k.a20_enabled());
    }

    #[test]
    fn keyboard_commands() {
        let (mut k, _) = kbc();
        data(&mut k, KBD_RESET);
        assert_eq!(drain(&mut k), vec![0xFA, 0xAA]);
        data(&mut k, KBD_IDENTIFY);
        assert_eq!(drain(&mut k), vec![0xFA, 0xAB, 0x83]);
        data(&mut k, KBD_ECHO);
        assert_eq!(drain(&mut k), vec![0xEE]);
        data(&mut k, KBD_SET_LEDS);
        data(&mut k, 0x07);
        assert_eq!(drain(&mut k), vec![0xFA, 0xFA]);
        data(&mut k, KBD_SCAN_SET);
        data(&mut k, 0);
        assert_eq!(drain(&mut k), vec![0xFA, 0xFA, 0x41]);
        data(&mut k, 0xF4);
        data(&mut k, 0x12);
        assert_eq!(drain(&mut k), vec![0xFA, 0xFA]);
    }

    #[test]
    fn aux_port_has_no_device() {
        let (mut k, irq) = kbc();
        command(&mut k, CMD_WRITE_AUX);
        data(&mut k, 0xF2);
        assert_ne!(status(&mut k) & STS_AUX_OBF, 0);
        assert_eq!(drain(&mut k), vec![0xFE]);
        command(&mut k, CMD_WRITE_AUX_OBUF);
        data(&mut k, 0x5A);
        assert_ne!(status(&mut k) & STS_AUX_OBF, 0);
        assert_eq!(drain(&mut k), vec![0x5A]);
        assert_eq!(pulses(&irq), 0, "aux bytes do not raise IRQ 1");
        command(&mut k, CMD_WRITE_KBD_OBUF);
        data(&mut k, 0x1C);
        assert_eq!(status(&mut k) & STS_AUX_OBF, 0);
        assert_eq!(drain(&mut k), vec![0x1C]);
    }

    #[test]
    fn irq_1_follows_the_command_byte() {
        let (mut k, irq) = kbc();
        data(&mut k, KBD_RESET);
        assert_eq!(pulses(&irq), 1, "one edge for the head byte");
        let mut b = [0u8];
        k.read(DATA_OFFSET, &mut b);
        assert_eq!(pulses(&irq), 1, "another for the next byte");
        k.read(DATA_OFFSET, &mut b);
        assert_eq!(pulses(&irq), 0);
        // Interrupt off: bytes queue silently until it is turned on.
        command(&mut k, CMD_WRITE_RAM);
        data(&mut k, CTR_SYSTEM);
        data(&mut k, KBD_ECHO);
        assert_eq!(pulses(&irq), 0);
        command(&mut k, CMD_WRITE_RAM);
        // The command byte's write is not a keyboard byte: the echo is still there.
        assert_eq!(status(&mut k) & STS_OBF, STS_OBF);
        data(&mut k, CTR_SYSTEM | CTR_KBD_INT);
        assert_eq!(pulses(&irq), 1);
        assert_eq!(drain(&mut k), vec![0xEE]);
    }

    #[test]
    fn output_buffer_is_bounded() {
        let (mut k, _) = kbc();
        for _ in 0..20 {
            data(&mut k, KBD_IDENTIFY);
        }
        assert_eq!(drain(&mut k).len(), QUEUE_MAX);
    }

    #[test]
    fn offsets_between_the_ports_are_inert() {
        let (mut k, _) = kbc();
        for offset in [1u64, 2, 3] {
            let mut b = [0u8; 2];
            k.read(offset, &mut b);
            assert_eq!(b, [0xFF, 0xFF]);
            assert_eq!(k.write(offset, &[0]), None);
        }
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut k, _) = kbc();
        assert_eq!(k.write(COMMAND_OFFSET, &[]), None);
        let mut w = [0u8; 4];
        k.read(COMMAND_OFFSET, &mut w);
        assert_eq!(w[1..], [0xFF; 3]);
        assert_eq!(k.write(COMMAND_OFFSET, &[CMD_SELF_TEST, 0xFE]), None);
        k.read(DATA_OFFSET, &mut w);
        assert_eq!(w, [0x55, 0xFF, 0xFF, 0xFF]);
        assert_eq!(k.write(99, &[0xFE]), None);
        k.read(u64::MAX, &mut w);
        assert_eq!(w, [0xFF; 4]);
        // Every command byte value is accepted.
        for c in 0..=0xEFu8 {
            assert_eq!(command(&mut k, c), None, "{c:#x}");
            let _ = data(&mut k, 0x01);
        }
    }
}
