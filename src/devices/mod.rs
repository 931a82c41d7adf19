//! Platform devices, one per file, each behind the `BusDevice` trait.

pub mod acpi_pm;
pub mod debug_exit;
pub mod fw_cfg;
pub mod i440fx;
pub mod i8042;
pub mod pci;
pub mod piix;
pub mod pit;
pub mod port92;
pub mod post_code;
pub mod rtc;
pub mod serial;
pub mod timer;

#[cfg(test)]
mod robustness;
