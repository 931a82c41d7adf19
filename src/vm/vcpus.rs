//! The vCPUs, created in KVM before the guest's first instruction, by two threads when
//! there are several.
//!
//! Every vCPU has to exist before vCPU 0 runs: an INIT or SIPI sent to an APIC ID that KVM
//! does not know is dropped by the in-kernel LAPIC, without an exit. Creating one costs KVM
//! 75-120 µs here (its MSR reads and CPUID sync trap to the outer hypervisor), so with
//! `--cpus 64` creating them is most of the launch. The creations do not depend on one
//! another, so a second thread makes them too, on the host's other CPU: the bare-metal ROM
//! with `--cpus 64` launched in 0.75x the time (9.75 to 7.32 ms), with `--cpus 16` in 0.85x
//! (30 alternating runs).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::{Cap, SyncReg, VcpuFd, VmFd};

use super::{kvm_err, VmError};
use crate::seccomp::KVM_CREATE_VCPU;

/// The vCPUs, and by vCPU id the CPUID left for its thread to set.
pub(super) type NewVcpus = (Vec<VcpuFd>, Vec<Option<CpuId>>);

/// The fewest vCPUs for which a second thread creates some of them.
const TWO_THREADS_MIN: u32 = 2;

/// The registers KVM keeps in kvm_run for user space.
const SYNC_REGS: u32 = kvm_bindings::KVM_SYNC_X86_REGS | kvm_bindings::KVM_SYNC_X86_SREGS;

/// The vCPUs at the architectural reset state; the in-kernel LAPIC holds the APs until
/// SIPI. With `aps_later`, only vCPU 0 gets its CPUID here: each AP's is returned for its own
/// thread to set before that AP first runs (vcpu/threads.rs). Setting a CPUID costs KVM about
/// 0.2 ms per vCPU here, more than creating the vCPU, and nothing needs it before the vCPU
/// runs: an INIT or SIPI the guest sends meanwhile waits in the AP's LAPIC, which must exist
/// (and does) before vCPU 0 runs.
///
/// From `TWO_THREADS_MIN` vCPUs on, `lend` gives a job to another thread (vCPU 0's, idle
/// until the vCPUs exist), which starts creating vCPUs at once, while the calling thread goes
/// on building the devices; `Creation::finish` then creates the rest beside it, both taking
/// the next id from one counter. That thread only makes the `KVM_CREATE_VCPU` calls (the
/// costly part) and hands back bare descriptors, which the calling thread maps and sets up:
/// its filter does not allow `close`, so it never owns a descriptor it could drop. A job that
/// is not taken, or dropped without running, leaves every vCPU to `finish`. The irqchip must
/// exist before the first vCPU.
pub(super) fn start(vm: &VmFd, cpus: u32, aps_later: bool, lend: Lend) -> Creation {
    // KVM copies the registers into kvm_run at each exit and takes them back from there:
    // a BIOS service call then needs no register ioctl (vcpu/mod.rs, `bios_call`).
    let sync = SYNC_REGS as i32;
    let plan = Plan {
        cpus,
        sync_regs: vm.check_extension_int(Cap::SyncRegs) & sync == sync,
        aps_later,
    };
    let next = Arc::new(AtomicU32::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    if cpus >= TWO_THREADS_MIN {
        // The VM's descriptor number, not a handle on it: if the build fails and lets the
        // VM go while the job still runs, the job must not be the one that closes it.
        let (vm, next) = (vm.as_raw_fd(), next.clone());
        // When the job is refused, or dropped unrun, `tx` goes with it and `rx` ends empty.
        lend(Box::new(move || plan.create_fds(&next, vm, &tx)));
    }
    Creation {
        plan,
        next,
        other: rx,
    }
}

/// vCPUs being created, by the thread `start` lent a job to.
pub(super) struct Creation {
    plan: Plan,
    next: Arc<AtomicU32>,
    /// That thread's vCPU descriptors, by id, not mapped yet, or the error that stopped it;
    /// closed when it is done.
    other: Receiver<BareVcpu>,
}

/// A vCPU descriptor from `Plan::create_fds`, or why it could not be made.
type BareVcpu = Result<(u32, RawFd), VmError>;

impl Creation {
    /// Creates the vCPUs left, setting up the other thread's as they come, and returns all
    /// in id order.
    pub(super) fn finish(self, vm: &VmFd, cpuid: &CpuId) -> Result<NewVcpus, VmError> {
        let plan = self.plan;
        let mut made = Vec::with_capacity(plan.cpus as usize);
        let mut failed = None;
        // Whether `vcpu` was made; the first error is the one returned.
        let mut keep = |vcpu: Result<NewVcpu, VmError>| match vcpu {
            Ok(v) => {
                made.push(v);
                true
            }
            Err(e) => {
                failed.get_or_insert(e);
                false
            }
        };
        while let Some(id) = plan.next_id(&self.next) {
            while let Ok(bare) = self.other.try_recv() {
                keep(plan.adopt(vm, cpuid, bare));
            }
            let own = vm.create_vcpu(id as u64).map_err(kvm_err("create vCPU"));
            if !keep(own.and_then(|fd| plan.set_up(fd, cpuid, id))) {
                break;
            }
        }
        // The rest of the other thread's, until it is done.
        for bare in self.other.iter() {
            keep(plan.adopt(vm, cpuid, bare));
        }
        if let Some(e) = failed {
            return Err(e);
        }
        made.sort_unstable_by_key(|m| m.id);
        Ok(made.into_iter().map(|m| (m.fd, m.cpuid)).unzip())
    }
}

/// Hands a job to another thread, or drops it when no thread can take it.
pub type Lend<'a> = &'a dyn Fn(Box<dyn FnOnce() + Send>);

/// What every vCPU is created with.
#[derive(Clone, Copy)]
struct Plan {
    cpus: u32,
    /// Whether KVM keeps the registers in `kvm_run`.
    sync_regs: bool,
    aps_later: bool,
}

impl Plan {
    /// Bare vCPU descriptors, each with the next id from `next`, sent to `to` until none is
    /// left or KVM refuses one; not mapped or set up (`Creation::finish` does that).
    fn create_fds(&self, next: &AtomicU32, vm: RawFd, to: &Sender<BareVcpu>) {
        while let Some(id) = self.next_id(next) {
            // SAFETY: KVM_CREATE_VCPU takes the id by value and returns a new descriptor or
            // -1; nothing in this process's memory changes. Should `vm` be closed meanwhile
            // (a failed build), the call fails, or finds no VM behind the number.
            let fd =
                unsafe { vmm_sys_util::ioctl::ioctl_with_val(&vm, KVM_CREATE_VCPU as _, id as _) };
            if fd < 0 {
                let e = kvm_err("create vCPU")(kvm_ioctls::Error::last());
                let _ = to.send(Err(e));
                return;
            }
            // Sent even when nobody receives any more: the descriptor then stays open until
            // the process exits, rather than being closed here.
            let _ = to.send(Ok((id, fd)));
        }
    }

    /// A descriptor from `create_fds`, mapped and set up.
    fn adopt(&self, vm: &VmFd, cpuid: &CpuId, bare: BareVcpu) -> Result<NewVcpu, VmError> {
        let (id, fd) = bare?;
        // SAFETY: `fd` is a vCPU descriptor KVM_CREATE_VCPU returned, owned by nothing else:
        // the thread that made it handed it over and forgot it.
        let fd = unsafe { vm.create_vcpu_from_rawfd(fd) }.map_err(kvm_err("map vCPU"))?;
        self.set_up(fd, cpuid, id)
    }

    fn next_id(&self, next: &AtomicU32) -> Option<u32> {
        Some(next.fetch_add(1, Ordering::Relaxed)).filter(|&id| id < self.cpus)
    }

    /// vCPU `id`, its registers in `kvm_run` when KVM can keep them there, and its CPUID set
    /// (vCPU 0, or every vCPU unless `aps_later`) or returned.
    fn set_up(&self, mut fd: VcpuFd, cpuid: &CpuId, id: u32) -> Result<NewVcpu, VmError> {
        if self.sync_regs {
            fd.set_sync_valid_reg(SyncReg::Register);
            fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        let mut c = cpuid.clone();
        set_topology(&mut c, id, self.cpus);
        let cpuid = if id > 0 && self.aps_later {
            Some(c)
        } else {
            fd.set_cpuid2(&c).map_err(kvm_err("set CPUID"))?;
            None
        };
        Ok(NewVcpu { id, fd, cpuid })
    }
}

/// A vCPU as `Plan::set_up` leaves it.
struct NewVcpu {
    id: u32,
    fd: VcpuFd,
    /// The CPUID its thread sets; None when set here.
    cpuid: Option<CpuId>,
}

/// Fills in the topology the guest sees in CPUID, consistent with the MADT: one package of
/// `cpus` cores, one thread each, APIC ID = vCPU index.
fn set_topology(cpuid: &mut CpuId, apic_id: u32, cpus: u32) {
    // Bits of the APIC ID that number the cores.
    let core_bits = 32 - (cpus.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_FFFF) | (apic_id << 24) | (cpus.min(255) << 16);
                if cpus > 1 {
                    e.edx |= 1 << 28; // HTT: more than one logical processor
                }
            }
            4 => {
                // Cores per package - 1, for every cache level.
                e.eax = (e.eax & 0x03FF_FFFF) | ((cpus - 1).min(63) << 26);
            }
            0xB | 0x1F => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: every vCPU.
                        e.eax = core_bits;
                        e.ebx = cpus;
                        e.ecx = 1 | 2 << 8;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn topology_sets_apic_ids() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xFFFF_0801,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xB,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xB,
                index: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 4,
                eax: 0xFC00_4121,
                ..Default::default()
            },
        ])
        .unwrap();
        set_topology(&mut c, 3, 6);
        let s = c.as_slice();
        assert_eq!(s[0].ebx, 0x0306_0801);
        assert_ne!(s[0].edx & (1 << 28), 0);
        assert_eq!((s[1].edx, s[1].ebx, s[1].ecx), (3, 1, 0x100));
        // Six cores need three bits of the APIC ID.
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx), (3, 6, 0x201));
        assert_eq!(s[3].eax >> 26, 5);
        assert_eq!(s[3].eax & 0x03FF_FFFF, 0x0000_4121);
    }

    /// A VM with its irqchip, and the host's CPUID; None (the test skipped) without KVM.
    fn vm() -> Option<(Arc<VmFd>, CpuId)> {
        if !crate::testing::precondition(std::path::Path::new("/dev/kvm").exists(), "no /dev/kvm") {
            return None;
        }
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        Some((Arc::new(vm), cpuid))
    }

    /// Each vCPU at its id's place: its LAPIC's ID and the APIC ID in the CPUID its thread
    /// sets (or KVM has) are its index.
    fn check_order(vcpus: &NewVcpus, cpus: u32) {
        assert_eq!(vcpus.0.len(), cpus as usize);
        for (i, (fd, cpuid)) in vcpus.0.iter().zip(&vcpus.1).enumerate() {
            let lapic = fd.get_lapic().unwrap();
            let id = u32::from_le_bytes(std::array::from_fn(|b| lapic.regs[0x20 + b] as u8));
            assert_eq!(id >> 24, i as u32, "LAPIC of vCPU {i}");
            let cpuid = match cpuid {
                Some(c) => c.clone(),
                None => fd.get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES).unwrap(),
            };
            let leaf1 = cpuid.as_slice().iter().find(|e| e.function == 1).unwrap();
            assert_eq!(leaf1.ebx >> 24, i as u32, "CPUID of vCPU {i}");
        }
        assert!(vcpus.1[0].is_none(), "vCPU 0's CPUID is set at once");
    }

    /// Runs a lent job on a thread of its own.
    fn on_a_thread(job: Box<dyn FnOnce() + Send>) {
        std::thread::spawn(job);
    }

    /// Runs a lent job at once, before `start` returns: it takes every id.
    fn at_once(job: Box<dyn FnOnce() + Send>) {
        job()
    }

    #[test]
    fn two_threads_create_every_vcpu_once_in_id_order() {
        let Some((vm, cpuid)) = vm() else {
            return;
        };
        let vcpus = start(&vm, 24, true, &on_a_thread)
            .finish(&vm, &cpuid)
            .unwrap();
        check_order(&vcpus, 24);
        assert!(vcpus.1[1..].iter().all(Option::is_some));
    }

    #[test]
    fn descriptors_from_the_lent_job_are_set_up_by_the_caller() {
        let Some((vm, cpuid)) = vm() else {
            return;
        };
        for aps_later in [true, false] {
            let vm = self::vm().unwrap().0;
            let vcpus = start(&vm, 6, aps_later, &at_once)
                .finish(&vm, &cpuid)
                .unwrap();
            check_order(&vcpus, 6);
            assert!(vcpus.1[1..].iter().all(|c| c.is_some() == aps_later));
        }
        drop(vm);
    }

    #[test]
    fn without_the_other_thread_the_caller_creates_them_all() {
        let Some((_, cpuid)) = vm() else {
            return;
        };
        // The job dropped unrun (no thread to take it, or one without its filter).
        let vm = self::vm().unwrap().0;
        let vcpus = start(&vm, 5, true, &drop).finish(&vm, &cpuid).unwrap();
        check_order(&vcpus, 5);
    }

    #[test]
    fn a_failure_in_the_lent_job_is_the_builds_error() {
        let Some((vm, cpuid)) = vm() else {
            return;
        };
        // vCPU 5 exists already: the job creates 0-4, then KVM refuses 5 (EEXIST).
        let _five = vm.create_vcpu(5).unwrap();
        let e = start(&vm, 8, true, &at_once)
            .finish(&vm, &cpuid)
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("KVM API: create vCPU: "), "{e}");
        assert!(
            e.ends_with(&std::io::Error::from_raw_os_error(libc::EEXIST).to_string()),
            "{e}"
        );
    }
}
