//! Platform devices, one per file, each behind the `BusDevice` trait.

pub mod debug_exit;
pub mod fw_cfg;
pub mod rtc;
pub mod rtc_timer;
pub mod serial;
