//! COM1: a 16550 UART from `vm-superio` at 0x3F8, IRQ 4 delivered through an irqfd, with
//! a bounded output buffer that the monitor writes out without ever blocking (`SerialOut`).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{lock, BusDevice};
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

/// How many bytes of output the VMM holds for a reader that does not keep up.
pub const OUT_CAPACITY: usize = 64 * 1024;
/// The 16550's transmit FIFO: when THRE reads set, a driver may write this many bytes.
const TX_FIFO: usize = 16;
/// A complete line, or this much of one, is written out at once.
const LINE_MAX: usize = 4096;
/// How long a partial line gathers bytes before the monitor writes it out: short enough for
/// an echo to look immediate, long enough that a guest printing byte by byte does not wake
/// the monitor for each byte.
pub const PARTIAL_DELAY: Duration = Duration::from_millis(1);
/// LSR bits: transmitter holding register empty, transmitter empty.
const LSR_OFFSET: u64 = 5;
const LSR_THRE: u8 = 1 << 5;
const LSR_TEMT: u8 = 1 << 6;
const IER_OFFSET: u8 = 1;
const IER_THRE: u8 = 1 << 1;
const LCR_OFFSET: u8 = 3;
const LCR_DLAB: u8 = 1 << 7;
const MCR_OFFSET: u8 = 4;
const MCR_LOOP: u8 = 1 << 4;

/// The descriptor the output is written to, never blocking the thread that writes.
///
/// A regular file or block device is written as it is (a write there does not wait for a
/// reader). Anything else (a pipe, a FIFO, a terminal, a socket) may have a reader that
/// stops reading, so it is written with O_NONBLOCK. Stdout's open file description is shared
/// with the caller (a shell's terminal, the rest of a pipeline), so the flag is set on a
/// private description, reopened through /proc/self/fd/1; when that is impossible (no /proc,
/// a socket) on the shared one, and put back at exit (`Serial::finish_output`; the
/// supervisor puts it back when the VM process dies without reporting). A terminal without
/// /proc gets the flag only around each write (`nonblock_per_write`), so the user's session
/// keeps its blocking terminal between them; a write that had no flag would wait as long as
/// the terminal takes nothing (stopped with Ctrl-S, or a reader that stopped reading).
struct OutFd {
    fd: RawFd,
    /// A reopened private description, closed with it.
    _owned: Option<std::fs::File>,
    /// The status flags of a shared description that got O_NONBLOCK, to put back.
    restore: Option<libc::c_int>,
    /// A shared description's status flags, to which each write adds O_NONBLOCK for its
    /// own duration (a terminal without /proc).
    nonblock_per_write: Option<libc::c_int>,
}

fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    // SAFETY: stat is plain data; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid stat buffer; fstat only inspects the descriptor.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_mode & libc::S_IFMT)
}

fn status_flags(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: F_GETFL takes no argument.
    let f = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if f < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

fn set_status_flags(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL with an integer argument.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl OutFd {
    fn plain(fd: RawFd) -> OutFd {
        OutFd {
            fd,
            _owned: None,
            restore: None,
            nonblock_per_write: None,
        }
    }

    /// Stdout, prepared as the type comment says.
    fn stdout() -> io::Result<OutFd> {
        let fd = 1;
        let kind = file_type(fd)?;
        if kind == libc::S_IFREG || kind == libc::S_IFBLK {
            return Ok(OutFd::plain(fd));
        }
        let private = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open("/proc/self/fd/1");
        if let Ok(f) = private {
            let mut out = OutFd::plain(f.as_raw_fd());
            out._owned = Some(f);
            return Ok(out);
        }
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } == 1 {
            // The terminal belongs to the user's session: non-blocking only while we write.
            let flags = status_flags(fd)?;
            return Ok(OutFd {
                nonblock_per_write: (flags & libc::O_NONBLOCK == 0).then_some(flags),
                ..OutFd::plain(fd)
            });
        }
        let flags = status_flags(fd)?;
        if flags & libc::O_NONBLOCK == 0 {
            set_status_flags(fd, flags | libc::O_NONBLOCK)?;
            return Ok(OutFd {
                restore: Some(flags),
                ..OutFd::plain(fd)
            });
        }
        Ok(OutFd::plain(fd))
    }

    /// A file the VMM opened itself (`--serial file:PATH`): its description is private.
    fn file(f: &std::fs::File) -> io::Result<OutFd> {
        let fd = f.as_raw_fd();
        let kind = file_type(fd)?;
        if kind != libc::S_IFREG && kind != libc::S_IFBLK {
            set_status_flags(fd, status_flags(fd)? | libc::O_NONBLOCK)?;
        }
        Ok(OutFd::plain(fd))
    }

    /// One write of what the descriptor takes now; Ok(0) when the reader takes nothing. A pipe
    /// takes at most PIPE_BUF bytes atomically (all or nothing), more in part, so a large
    /// write fills whatever room it has.
    fn write_some(&self, data: &[u8]) -> io::Result<usize> {
        if let Some(flags) = self.nonblock_per_write {
            set_status_flags(self.fd, flags | libc::O_NONBLOCK)?;
        }
        // SAFETY: writing at most data.len() bytes from a live slice.
        let r = unsafe { libc::write(self.fd, data.as_ptr() as *const libc::c_void, data.len()) };
        let e = io::Error::last_os_error();
        if let Some(flags) = self.nonblock_per_write {
            set_status_flags(self.fd, flags)?;
        }
        if r >= 0 {
            return Ok(r as usize);
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
            _ => Err(e),
        }
    }

    /// Puts back the flags of a shared description.
    fn restore(&mut self) {
        if let Some(flags) = self.restore.take() {
            let _ = set_status_flags(self.fd, flags);
        }
    }
}

/// The UART's output: a bounded buffer between the guest and the output descriptor.
///
/// The vCPU thread only appends to the buffer (no I/O under the serial lock); the monitor
/// thread writes it out from its poll loop when the descriptor is writable, without ever
/// blocking, so a reader that stops reading cannot stop `--timeout`, signals or `--stats`.
/// The first byte into an empty buffer wakes the monitor, which writes a partial line (a
/// prompt, an echo) out `PARTIAL_DELAY` later; a complete line (or `LINE_MAX` bytes) wakes it
/// to write at once. When the buffer cannot take a whole transmit FIFO's worth, the
/// UART reads as busy (`Serial::read`, LSR) and a guest that polls it, or waits for the THRE
/// interrupt, waits, as on a real serial line; nothing a waiting guest sends is lost. Bytes
/// written while it reads busy are lost, as on a 16550 whose holding register is overrun.
pub struct SerialOut {
    /// What the output descriptor belongs to (it stays open as long as this lives).
    _sink: Sink,
    /// None for `--serial none`, or once the descriptor failed (the reader went away).
    out: Option<OutFd>,
    buf: VecDeque<u8>,
    /// Wakes the monitor when output waits.
    notify: Option<Arc<EventFd>>,
    /// What the monitor was told since the buffer was last empty.
    told: Told,
    /// The descriptor did not take the whole buffer at the last write: wait for POLLOUT.
    blocked: bool,
    /// The VM is ending: the guest's further bytes are not kept.
    closed: bool,
    /// Bytes lost to a reader that did not keep up (written while the UART read busy), or
    /// to an output that failed.
    lost: u64,
    /// Why the output failed, other than its reader going away (a full disk, an I/O error):
    /// reported at exit, with what it cost.
    failure: Option<io::Error>,
}

impl SerialOut {
    pub fn new(sink: Sink) -> Self {
        let out = match &sink {
            Sink::Stdout => OutFd::stdout(),
            Sink::File(f) => OutFd::file(f),
            Sink::Null => Err(io::Error::from(io::ErrorKind::Unsupported)),
        };
        let out = match (out, &sink) {
            (Ok(o), _) => Some(o),
            (Err(_), Sink::Null) => None,
            (Err(e), _) => {
                log::debug(format_args!("serial: no output: {e}"));
                None
            }
        };
        SerialOut {
            _sink: sink,
            out,
            buf: VecDeque::new(),
            notify: None,
            told: Told::Nothing,
            blocked: false,
            closed: false,
            lost: 0,
            failure: None,
        }
    }

    /// Whether output waits for the descriptor.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether the buffer cannot take a transmit FIFO's worth: the UART reads busy.
    pub fn is_full(&self) -> bool {
        self.out.is_some() && self.buf.len() + TX_FIFO > OUT_CAPACITY
    }

    /// The descriptor to poll for POLLOUT while output is pending.
    pub fn fd(&self) -> Option<RawFd> {
        self.out.as_ref().map(|o| o.fd)
    }

    /// Writes out what the descriptor takes now, never waiting. Returns the bytes written.
    pub fn write_out(&mut self) -> usize {
        let mut total = 0;
        while !self.buf.is_empty() {
            let Some(out) = &self.out else {
                // The reader went away: nobody is left to lose the output to.
                self.buf.clear();
                break;
            };
            let (front, _) = self.buf.as_slices();
            match out.write_some(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.drain(..n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    log::debug(format_args!("serial: output failed: {e}; output dropped"));
                    self.out = None;
                }
                Err(e) => {
                    // Not a reader that went away: what the guest sends from here on is
                    // lost, and counted.
                    self.lost += self.buf.len() as u64;
                    self.buf.clear();
                    self.failure = Some(e);
                    self.out = None;
                }
            }
        }
        self.blocked = !self.buf.is_empty();
        if self.buf.is_empty() {
            self.told = Told::Nothing;
        }
        total
    }

    /// Whether a complete line (or `LINE_MAX` bytes) waits: to be written out at once.
    pub fn line_ready(&self) -> bool {
        self.told == Told::Line
    }

    /// Whether the descriptor did not take everything at the last write.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// The VM is ending: later bytes from the guest are dropped.
    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Puts back the flags of a shared output description and closes what the VMM opened
    /// (a reopened stdout, the `--serial` file), so that a reader sees the end of the output
    /// without waiting for the VM's teardown.
    pub fn shut(&mut self) {
        if let Some(mut o) = self.out.take() {
            o.restore();
        }
        self._sink = Sink::Null;
    }

    /// Bytes a live reader never got: written while the UART read busy, or still buffered,
    /// or sent after the output failed.
    pub fn lost(&self) -> u64 {
        self.lost + self.buf.len() as u64
    }

    /// Why the output failed, if it did for another reason than its reader going away.
    pub fn failure(&self) -> Option<&io::Error> {
        self.failure.as_ref()
    }
}

impl Write for SerialOut {
    /// Called by the UART with each byte the guest sends.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(data.len());
        }
        if self.out.is_none() {
            if self.failure.is_some() {
                self.lost += data.len() as u64;
            }
            return Ok(data.len());
        }
        let room = OUT_CAPACITY - self.buf.len().min(OUT_CAPACITY);
        let take = data.len().min(room);
        self.buf.extend(&data[..take]);
        self.lost += (data.len() - take) as u64;
        Ok(data.len())
    }

    /// Called by the UART after every byte: the first byte since the buffer was empty, and
    /// then a complete line, wake the monitor (once each until it empties the buffer).
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let now = if self.buf.back() == Some(&b'\n') || self.buf.len() >= LINE_MAX {
            Told::Line
        } else {
            Told::Waiting
        };
        if now > self.told {
            if let Some(n) = &self.notify {
                self.told = now;
                let _ = n.write(1);
            }
        }
        Ok(())
    }
}

/// What the monitor was told about the output buffer since it was last empty.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Told {
    Nothing,
    /// Output waits: a partial line, written out `PARTIAL_DELAY` later.
    Waiting,
    /// A complete line waits: written out at once.
    Line,
}

pub struct Serial {
    uart: Uart<IrqTrigger, NoEvents, SerialOut>,
    /// Called when the guest enables the THR-empty interrupt or loopback: from then on a
    /// byte written to THR may raise an interrupt or become input, so it must reach the UART
    /// when it is written (coalesced_io.rs). Once until the UART is reset.
    on_thr_events: Option<Box<dyn Fn() + Send>>,
    thr_events_armed: bool,
}

/// How the serial output ended (`Serial::finish_output`).
pub struct OutputEnd {
    /// Bytes the guest sent that were never written.
    pub lost: u64,
    /// Why the output failed, if it did for another reason than its reader going away.
    pub failure: Option<String>,
}

impl Serial {
    pub fn new(irq: EventFd, out: SerialOut) -> Self {
        Serial {
            uart: Uart::new(IrqTrigger(irq), out),
            on_thr_events: None,
            thr_events_armed: false,
        }
    }

    /// `f` runs when the guest first enables the THR-empty interrupt or loopback, and again
    /// the first time after each reset of the UART.
    pub fn on_thr_events(&mut self, f: Box<dyn Fn() + Send>) {
        self.on_thr_events = Some(f);
        self.thr_events_armed = true;
    }

    /// After the guest wrote at `offset`: whether a THR write can now raise an interrupt
    /// (IER.ETBEI) or loop back as input (MCR.LOOP). Only writes to IER (or the divisor
    /// latch there) and MCR can change that.
    fn thr_write_has_events(&self, offset: u8) -> bool {
        if offset != IER_OFFSET && offset != MCR_OFFSET {
            return false;
        }
        let state = self.uart.state();
        state.interrupt_enable & IER_THRE != 0 || state.modem_control & MCR_LOOP != 0
    }

    /// Queues host input for the guest; returns how many bytes the FIFO took.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(input).unwrap_or(0)
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The monitor's wake-up eventfd, written when a line of output is complete.
    pub fn set_output_notifier(&mut self, wake: Arc<EventFd>) {
        self.uart.writer_mut().notify = Some(wake);
    }

    /// Whether output waits for the descriptor.
    pub fn output_pending(&self) -> bool {
        self.uart.writer().pending()
    }

    /// The output descriptor to poll for POLLOUT while output is pending.
    pub fn output_fd(&self) -> Option<RawFd> {
        self.uart.writer().fd()
    }

    /// Whether a complete line waits, to be written out at once.
    pub fn output_line_ready(&self) -> bool {
        self.uart.writer().line_ready()
    }

    /// Whether the output descriptor was full at the last write: poll it for POLLOUT.
    pub fn output_blocked(&self) -> bool {
        self.uart.writer().blocked()
    }

    /// Writes out what the output descriptor takes now, without waiting. When that makes
    /// room in a full buffer, the guest's THRE interrupt (if enabled) fires again.
    pub fn write_out(&mut self) {
        let was_full = self.uart.writer().is_full();
        self.uart.writer_mut().write_out();
        if was_full && !self.uart.writer().is_full() {
            self.transmitter_ready();
        }
    }

    /// Raises the THRE interrupt again if the guest enabled it: rewriting IER makes the
    /// UART model re-evaluate its pending conditions (skipped while DLAB maps offset 1 to
    /// the divisor latch).
    fn transmitter_ready(&mut self) {
        if self.uart.read(LCR_OFFSET) & LCR_DLAB != 0 {
            return;
        }
        let ier = self.uart.read(IER_OFFSET);
        if let Err(e) = self.uart.write(IER_OFFSET, ier) {
            log::debug(format_args!("serial: THRE interrupt: {e:?}"));
        }
    }

    /// At exit: stops taking the guest's output, writes out what is buffered while the
    /// reader makes progress (giving up after `stall` without any), puts the descriptor's
    /// flags back and closes it. Returns the bytes that were not written, and why the
    /// output failed if it did (other than by its reader going away).
    pub fn finish_output(serial: &Mutex<Serial>, stall: Duration) -> OutputEnd {
        let mut last_progress = Instant::now();
        loop {
            let fd = {
                let mut s = lock(serial);
                let out = s.uart.writer_mut();
                out.close();
                if out.write_out() > 0 {
                    last_progress = Instant::now();
                }
                if !out.pending() {
                    break;
                }
                match out.fd() {
                    Some(fd) => fd,
                    None => break,
                }
            };
            let left = stall.saturating_sub(last_progress.elapsed());
            if left.is_zero() {
                break;
            }
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            };
            let ts = libc::timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as libc::c_long,
            };
            // SAFETY: one valid pollfd and a valid timespec.
            unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
        }
        let mut s = lock(serial);
        let out = s.uart.writer_mut();
        let end = OutputEnd {
            lost: out.lost(),
            failure: out.failure().map(|e| e.to_string()),
        };
        out.shut();
        end
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
            // The model's transmitter is always empty; it is busy while the output buffer
            // cannot take a FIFO's worth.
            if offset == LSR_OFFSET && self.uart.writer().is_full() {
                *b &= !(LSR_THRE | LSR_TEMT);
            }
        }
    }

    /// The UART's MR line: interrupts off, 8 data bits' worth of line control cleared, modem
    /// control cleared (the divisor is reprogrammed by whatever boots next).
    fn reset(&mut self) {
        for (reg, v) in [(3u8, 0u8), (1, 0), (4, 0)] {
            let _ = self.uart.write(reg, v);
        }
        let _ = self.uart.read(2); // reading IIR acknowledges a pending THR-empty interrupt
        self.thr_events_armed = self.on_thr_events.is_some();
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<ExitReason> {
        if let Some(b) = data.first() {
            if let Err(e) = self.uart.write(offset as u8, *b) {
                log::debug(format_args!("serial: write failed: {e:?}"));
            }
            if self.thr_events_armed && self.thr_write_has_events(offset as u8) {
                self.thr_events_armed = false;
                if let Some(f) = &self.on_thr_events {
                    f();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Serial whose THR-events hook counts its calls.
    fn counted() -> (Serial, Arc<std::sync::atomic::AtomicU32>) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(evt, SerialOut::new(Sink::Null));
        let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let c = calls.clone();
        s.on_thr_events(Box::new(move || {
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }));
        (s, calls)
    }

    #[test]
    fn the_thr_events_hook_runs_once_at_thre_interrupts_or_loopback() {
        use std::sync::atomic::Ordering::Relaxed;
        let (mut s, calls) = counted();
        // Receive and line-status interrupts, modem control without loopback, bytes, and
        // 0x02 into the divisor latch's high byte: none makes a THR write an event.
        s.write(1, &[0x05]);
        s.write(4, &[0x0B]);
        s.write(0, b"x");
        s.write(3, &[0x83]);
        s.write(1, &[0x02]);
        s.write(0, &[0x02]);
        s.write(3, &[0x03]);
        assert_eq!(calls.load(Relaxed), 0);
        s.write(1, &[0x07]);
        assert_eq!(calls.load(Relaxed), 1);
        s.write(1, &[0x00]);
        s.write(1, &[0x02]);
        assert_eq!(calls.load(Relaxed), 1, "the hook runs once");

        // A reset of the UART (a guest reboot) arms it again.
        s.reset();
        s.write(1, &[0x02]);
        assert_eq!(calls.load(Relaxed), 2, "after a reset");

        let (mut s, calls) = counted();
        s.write(4, &[0x10]);
        assert_eq!(calls.load(Relaxed), 1, "loopback");
    }

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
    fn output_goes_out_when_the_monitor_writes_it() {
        let path = std::env::temp_dir().join(format!("minipc-serial-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut s = Serial::new(evt, SerialOut::new(Sink::File(f)));
        s.set_output_notifier(wake.clone());
        for b in b"ab" {
            s.write(0, &[*b]);
        }
        // No I/O from the vCPU's side; one wake-up for the first byte of a partial line.
        assert!(s.output_pending());
        assert!(!s.output_line_ready());
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        assert_eq!(wake.read().unwrap(), 1, "not woken for the first byte");
        assert!(wake.read().is_err(), "woken for each byte");
        // One more when the line is complete, and not again until the monitor wrote.
        s.write(0, b"\n");
        assert_eq!(wake.read().unwrap(), 1);
        assert!(s.output_line_ready());
        s.write(0, b"c");
        s.write(0, b"\n");
        assert!(wake.read().is_err(), "woken twice before the monitor wrote");
        s.write_out();
        assert!(!s.output_pending());
        assert!(!s.output_blocked());
        assert_eq!(std::fs::read(&path).unwrap(), b"ab\nc\n");
        // An empty buffer again: the next byte wakes the monitor again.
        s.write(0, b">");
        assert_eq!(wake.read().unwrap(), 1);
        s.write_out();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab\nc\n>");
        let _ = std::fs::remove_file(path);
    }

    /// A pipe whose reader is `File`; the writer is the UART's sink. It holds one page.
    fn pipe() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd;
        let mut p = [0; 2];
        // SAFETY: pipe2 fills the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fcntl on our own pipe with an integer argument.
        assert!(unsafe { libc::fcntl(p[1], libc::F_SETPIPE_SZ, 4096) } >= 4096);
        // SAFETY: fresh descriptors, each owned once.
        unsafe {
            (
                std::fs::File::from_raw_fd(p[0]),
                std::fs::File::from_raw_fd(p[1]),
            )
        }
    }

    fn lsr(s: &mut Serial) -> u8 {
        let mut b = [0u8];
        s.read(LSR_OFFSET, &mut b);
        b[0]
    }

    /// A reader that stops reading: the buffer fills to its bound, the UART then reads busy
    /// (a guest polling LSR waits), and room made by the reader lets the guest go on.
    #[test]
    fn a_stalled_reader_makes_the_transmitter_busy_and_bounds_the_buffer() {
        use std::io::Read;
        let (mut reader, writer) = pipe();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq_probe = irq.try_clone().unwrap();
        let mut s = Serial::new(irq, SerialOut::new(Sink::File(writer)));
        // THRE interrupts on.
        s.write(1, &[0x02]);
        let mut sent = 0usize;
        while lsr(&mut s) & (LSR_THRE | LSR_TEMT) == (LSR_THRE | LSR_TEMT) {
            s.write(0, &[b'0' + (sent % 10) as u8]);
            sent += 1;
            if sent.is_multiple_of(1000) {
                s.write_out();
            }
            assert!(sent < 1 << 20, "the transmitter never became busy");
        }
        // The pipe took a page; the buffer holds the rest, within its bound.
        assert!(sent >= OUT_CAPACITY - TX_FIFO, "{sent}");
        assert!(sent <= OUT_CAPACITY + 4096, "{sent}");
        assert_eq!(lsr(&mut s) & (LSR_THRE | LSR_TEMT), 0);
        // The monitor now waits for the descriptor to be writable.
        assert!(s.output_blocked());
        // Nothing lost yet: what the pipe does not hold is buffered.
        let buffered = s.uart.writer().lost();
        assert!(buffered as usize > OUT_CAPACITY - TX_FIFO, "{buffered}");
        // A byte written while busy is lost, as on a real UART.
        s.write(0, b"x");
        assert_eq!(s.uart.writer().lost(), buffered + 1);
        // The guest's interrupt handler reads IIR (acknowledging THRE), sees LSR busy and
        // sends nothing.
        let mut iir = [0u8];
        s.read(2, &mut iir);
        let _ = irq_probe.read();
        // The reader takes what the pipe holds; the monitor writes out; the transmitter is
        // free again, and the guest hears of it through its THRE interrupt.
        let mut page = vec![0u8; sent - buffered as usize];
        reader.read_exact(&mut page).unwrap();
        assert!(page
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'0' + (i % 10) as u8));
        s.write_out();
        assert!(s.output_blocked(), "the pipe took a page: more waits");
        assert_eq!(lsr(&mut s) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert!(
            irq_probe.read().is_ok(),
            "no THRE interrupt when room came back"
        );
    }

    #[test]
    fn at_exit_a_stalled_reader_costs_the_stall_time_and_a_live_one_gets_everything() {
        use std::io::Read;
        let (reader, writer) = pipe();
        let serial = Mutex::new(Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialOut::new(Sink::File(writer)),
        ));
        for i in 0..10_000usize {
            serial.lock().unwrap().write(0, &[b'a' + (i % 26) as u8]);
        }
        let t = Instant::now();
        let lost = Serial::finish_output(&serial, Duration::from_millis(200)).lost;
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(lost, 10_000 - 4096);
        // Closed: the guest's later bytes are dropped.
        serial.lock().unwrap().write(0, b"z");
        assert!(serial.lock().unwrap().output_pending());
        drop(reader);

        let (mut reader, writer) = pipe();
        let serial = Mutex::new(Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialOut::new(Sink::File(writer)),
        ));
        for i in 0..20_000usize {
            serial.lock().unwrap().write(0, &[b'a' + (i % 26) as u8]);
        }
        let slow = std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut buf = [0u8; 1000];
            loop {
                std::thread::sleep(Duration::from_millis(5));
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
            all
        });
        let lost = Serial::finish_output(&serial, Duration::from_millis(500)).lost;
        assert_eq!(lost, 0);
        drop(serial);
        let all = slow.join().unwrap();
        assert_eq!(all.len(), 20_000);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, b)| *b == b'a' + (i % 26) as u8));
    }

    #[test]
    fn a_reader_that_goes_away_drops_the_output_without_blocking_the_guest() {
        let (reader, writer) = pipe();
        drop(reader);
        let mut s = Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            SerialOut::new(Sink::File(writer)),
        );
        s.write(0, b"x");
        s.write_out();
        assert!(!s.output_pending());
        for _ in 0..2 * OUT_CAPACITY {
            s.write(0, b"y");
        }
        assert_eq!(lsr(&mut s) & LSR_THRE, LSR_THRE);
        assert_eq!(s.uart.writer().lost(), 0);
    }
}
