//! INT 11h (equipment word) and INT 12h (conventional memory in KiB), from the BDA.

use kvm_bindings::kvm_regs;

use super::bda;
use super::*;

impl Bios {
    pub(super) fn equipment(&self, r: &mut kvm_regs) -> Outcome {
        set_ax(r, self.read_u16(bda::EQUIPMENT));
        Outcome::default()
    }

    pub(super) fn memory_size(&self, r: &mut kvm_regs) -> Outcome {
        set_ax(r, self.read_u16(bda::BASE_MEMORY));
        Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use crate::memory::MIB;

    #[test]
    fn equipment_and_memory_from_the_bda() {
        let t = bios(64 * MIB);
        let mut r = regs(0xFFFF_FFFF);
        call(&t.bios, Service::Equipment, &mut r);
        assert_eq!(r.rax, 0xFFFF_0222);
        let mut r = regs(0);
        call(&t.bios, Service::MemorySize, &mut r);
        assert_eq!(r.rax, 639);
        // A guest that changed the BDA sees its own values, as on a PC.
        t.bios.write_u16(bda::BASE_MEMORY, 600);
        call(&t.bios, Service::MemorySize, &mut r);
        assert_eq!(r.rax, 600);
    }
}
