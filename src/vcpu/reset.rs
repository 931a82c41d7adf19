//! A vCPU's state as KVM created it, captured before the guest runs and restored on a
//! reboot (`--reboot`).

use kvm_ioctls::VcpuFd;

/// A vCPU's state as created: the architectural reset state, restored on a reboot.
pub struct ResetState {
    regs: kvm_bindings::kvm_regs,
    sregs: kvm_bindings::kvm_sregs,
    fpu: kvm_bindings::kvm_fpu,
    lapic: kvm_bindings::kvm_lapic_state,
    mp_state: kvm_bindings::kvm_mp_state,
    events: kvm_bindings::kvm_vcpu_events,
    /// The MSRs a guest sets that the register state does not hold (EFER is in `sregs`).
    msrs: kvm_bindings::Msrs,
}

/// MSRs restored on a reboot: the SYSENTER and SYSCALL entry points, the segment bases of
/// long mode, PAT, MISC_ENABLE and the MTRR default type, in the order KVM reads them (it
/// stops at the first one it does not know).
const RESET_MSRS: &[u32] = &[
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0xC000_0081, // STAR
    0xC000_0082, // LSTAR
    0xC000_0083, // CSTAR
    0xC000_0084, // SFMASK
    0xC000_0100, // FS_BASE
    0xC000_0101, // GS_BASE
    0xC000_0102, // KERNEL_GS_BASE
    0x277,       // PAT
    0x1A0,       // MISC_ENABLE
    0x2FF,       // MTRR default type
];

/// The MSRs of `RESET_MSRS` that `fd` has, with their values.
fn read_msrs(fd: &VcpuFd) -> Result<kvm_bindings::Msrs, kvm_ioctls::Error> {
    let entries: Vec<kvm_bindings::kvm_msr_entry> = RESET_MSRS
        .iter()
        .map(|&index| kvm_bindings::kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = kvm_bindings::Msrs::from_entries(&entries)
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    let n = fd.get_msrs(&mut msrs)?;
    kvm_bindings::Msrs::from_entries(&msrs.as_slice()[..n])
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))
}

impl ResetState {
    pub fn capture(fd: &VcpuFd) -> Result<Self, kvm_ioctls::Error> {
        Ok(ResetState {
            regs: fd.get_regs()?,
            sregs: fd.get_sregs()?,
            fpu: fd.get_fpu()?,
            lapic: fd.get_lapic()?,
            mp_state: fd.get_mp_state()?,
            events: fd.get_vcpu_events()?,
            msrs: read_msrs(fd)?,
        })
    }

    pub(super) fn restore(&self, fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
        fd.set_vcpu_events(&self.events)?;
        fd.set_sregs(&self.sregs)?;
        fd.set_regs(&self.regs)?;
        fd.set_fpu(&self.fpu)?;
        fd.set_lapic(&self.lapic)?;
        fd.set_msrs(&self.msrs)?;

        fd.set_mp_state(self.mp_state)
    }
}
