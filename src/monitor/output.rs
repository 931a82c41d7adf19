//! When the monitor writes the guest's serial output out: a complete line at once, a partial
//! line `PARTIAL_DELAY` after the monitor learnt of it, and what a full descriptor did not
//! take when it becomes writable.

use std::time::Instant;

use crate::devices::serial::{Serial, PARTIAL_DELAY};

/// What the next poll needs for the serial output.
pub struct Plan {
    /// Poll the output descriptor for POLLOUT.
    pub poll_out: bool,
    /// Wake by then: a partial line is due.
    pub write_at: Option<Instant>,
}

/// The output's schedule across poll iterations.
#[derive(Default)]
pub struct OutputSchedule {
    /// When the partial line waiting in the buffer is written out.
    partial_due: Option<Instant>,
}

impl OutputSchedule {
    /// What the next poll needs: POLLOUT while a full descriptor holds back the rest, else a
    /// wake when a partial line is due.
    pub fn plan(&self, serial: &Serial) -> Plan {
        let poll_out = serial.output_pending() && serial.output_blocked();
        Plan {
            poll_out,
            write_at: (serial.output_pending() && !poll_out)
                .then_some(self.partial_due)
                .flatten(),
        }
    }

    /// After the poll: writes the output out if it is due (`writable`: the poll reported the
    /// descriptor writable, or failed: POLLERR, POLLHUP, which the write tells apart), and
    /// sets when a partial line left in the buffer is due.
    pub fn serve(&mut self, serial: &mut Serial, writable: bool) {
        if !serial.output_pending() {
            self.partial_due = None;
            return;
        }
        let now = Instant::now();
        let due = if serial.output_blocked() {
            writable
        } else {
            self.line_due(serial, now)
        };
        if due {
            serial.write_out();
        }
        self.partial_due = if !serial.output_pending() || serial.output_blocked() {
            // Nothing left, or the poll for POLLOUT takes over.
            None
        } else {
            Some(self.partial_due.unwrap_or(now + PARTIAL_DELAY))
        };
    }

    /// Whether the pending output should go out now: a complete line, or a partial line whose
    /// delay has passed.
    fn line_due(&self, serial: &Serial, now: Instant) -> bool {
        serial.output_line_ready() || self.partial_due.is_some_and(|d| now >= d)
    }
}
