//! The KVM floor of a minipc launch, for `bench/launch.py`: the KVM objects minipc creates to
//! run a bare-metal ROM, in the same order and the same process layout, with none of
//! minipc's own work.
//!
//! Like minipc it forks before it opens KVM; the child builds the VM and runs it, hands the
//! exit code to the parent through a pipe, and then adds and removes an ioeventfd to
//! shorten the teardown (src/vm/teardown.rs). The VM is built as minipc builds it:
//! - `KVM_CAP_HALT_POLL` 0, the TSS and identity-map addresses;
//! - four memory slots, registered before the irqchip: RAM below 640 KiB, RAM from 1 MiB
//!   up, the ROM read-only below 4 GiB, and the 128 KiB BIOS region read-only at 0xE0000;
//! - the in-kernel irqchip, its GSI routes and five irqfds;
//! - the vCPUs (one by default), all created before the first instruction, by two threads
//!   when there are several (as minipc creates them, src/vm/vcpus.rs); vCPU 0 with the
//!   host's supported CPUID (cached in a file per host boot, as minipc caches it) and its
//!   registers in `kvm_run`;
//! - COM1's data port as a coalesced zone, its ring read before each exit is handled
//!   (src/coalesced_io.rs), where KVM has coalesced port I/O.
//!
//! Only vCPU 0 runs. The APs wait for an INIT-SIPI that this ROM never sends, and an AP's
//! CPUID is needed only before it first runs (minipc sets them while the guest runs), so
//! what they cost here is their creation: the floor under `--cpus N`.
//!
//! What it leaves out is minipc's: seccomp filters, threads (the vCPU runs on the main
//! thread; the second one only helps create the vCPUs), the chipset, the monitor and its halt
//! detection. Its devices are the UART's data and line-status ports and debug-exit.
//!
//! Usage: `kvm_floor ROM [CPUS]` (a ROM of at most 128 KiB; the guest's serial output goes to
//! stdout, and debug-exit's value v becomes the exit code 2v+1, as minipc's). The ROM must
//! end through debug-exit: with the in-kernel irqchip a halt never leaves `KVM_RUN`, and
//! there is no halt detector here, so a ROM that halts waits until it is killed.

use std::io::{Read, Write};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, kvm_irq_routing_entry, kvm_userspace_memory_region, CpuId,
    KvmIrqRouting, KVM_CAP_HALT_POLL, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_MAX_CPUID_ENTRIES, KVM_MEM_READONLY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, NoDatamatch, SyncReg, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

const LOW_RAM: usize = 640 << 10;
const RAM_START: u64 = 1 << 20;
const RAM_END: u64 = 256 << 20;
const BIOS_REGION: u64 = 0xE_0000;
const BIOS_REGION_LEN: usize = 128 << 10;

const COM1_DATA: u16 = 0x3F8;
const COM1_LSR: u16 = 0x3FD;
const DEBUG_EXIT: u16 = 0xF4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, cpus) = match args.as_slice() {
        [rom] => (rom, 1),
        [rom, n] => match n.parse::<u64>() {
            Ok(n @ 1..=254) => (rom, n),
            _ => bad(&format!("{n}: CPUS is 1 to 254")),
        },
        _ => {
            eprintln!("usage: kvm_floor ROM [CPUS]");
            std::process::exit(2)
        }
    };
    // At most one byte past the largest ROM: a file may not say its size (a FIFO, /dev/zero).
    let mut rom = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(BIOS_REGION_LEN as u64 + 1).read_to_end(&mut rom));
    match read {
        Ok(n) if n > 0 && n <= BIOS_REGION_LEN && n % 4096 == 0 => {}
        Ok(_) => bad(&format!(
            "{path}: a ROM is 4 KiB to 128 KiB, in whole pages"
        )),
        Err(e) => bad(&format!("{path}: {e}")),
    }
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        fail("pipe2");
    }
    // SAFETY: the process is single-threaded here; the child only continues this program.
    match unsafe { libc::fork() } {
        -1 => fail("fork"),
        0 => {
            // SAFETY: closing the pipe's read end, which this process does not use.
            unsafe { libc::close(fds[0]) };
            run(&rom, cpus, fds[1])
        }
        _ => {
            // SAFETY: closing the write end, then reading at most 4 bytes into `code`.
            let mut code = [0u8; 4];
            let n = unsafe {
                libc::close(fds[1]);
                libc::read(fds[0], code.as_mut_ptr().cast(), 4)
            };
            std::process::exit(if n == 4 { i32::from_ne_bytes(code) } else { 6 })
        }
    }
}

/// A bad argument or ROM file: exit 2, as minipc.
fn bad(why: &str) -> ! {
    eprintln!("kvm_floor: {why}");
    std::process::exit(2)
}

/// The host or KVM failed: exit 6, as minipc.
fn fail(why: &str) -> ! {
    eprintln!("kvm_floor: {why}");
    std::process::exit(6)
}

fn check<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| fail(&format!("{what}: {e}")))
}

/// The child: builds the VM, runs it to debug-exit (or a halt, or a failure), reports.
fn run(rom: &[u8], cpus: u64, report: libc::c_int) -> ! {
    let kvm = check("open /dev/kvm", Kvm::new());
    let vm = check("KVM_CREATE_VM", kvm.create_vm());
    let cap = kvm_enable_cap {
        cap: KVM_CAP_HALT_POLL,
        ..Default::default()
    };
    check("KVM_ENABLE_CAP", vm.enable_cap(&cap));
    check("KVM_SET_TSS_ADDR", vm.set_tss_address(0xFEFF_D000));
    check(
        "KVM_SET_IDENTITY_MAP_ADDR",
        vm.set_identity_map_address(0xFEFF_C000),
    );
    let cpuid = supported_cpuid(&kvm);

    register_memory(&vm, rom);

    check("KVM_CREATE_IRQCHIP", vm.create_irq_chip());
    check("KVM_SET_GSI_ROUTING", vm.set_gsi_routing(&routes()));
    let irqfds: Vec<EventFd> = [4u32, 3, 0, 8, 9]
        .iter()
        .map(|&gsi| {
            let fd = check("eventfd", EventFd::new(libc::EFD_NONBLOCK));
            check("KVM_IRQFD", vm.register_irqfd(&fd, gsi));
            fd
        })
        .collect();

    let mut vcpus = create_vcpus(&vm, cpus);
    let vcpu = &mut vcpus[0];
    check("KVM_SET_CPUID2", vcpu.set_cpuid2(&cpuid));
    vcpu.set_sync_valid_reg(SyncReg::Register);
    vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
    let ring = kvm.check_extension(Cap::CoalescedPio)
        && vm
            .register_coalesced_mmio(IoEventAddress::Pio(COM1_DATA.into()), 1)
            .is_ok()
        && vcpu.map_coalesced_mmio_ring().is_ok();

    let (code, out) = run_vcpu(vcpu, ring);
    let _ = std::io::stdout().write_all(&out);
    let _ = std::io::stdout().flush();
    let bytes = code.to_ne_bytes();
    // SAFETY: writing 4 bytes from a live buffer to the pipe, then closing descriptors.
    unsafe {
        libc::write(report, bytes.as_ptr().cast(), 4);
        for fd in [0, 1, 2, report] {
            libc::close(fd);
        }
    }
    hurry_teardown(&vm);
    drop(irqfds);
    // SAFETY: leaving without destructors; the kernel tears the VM down.
    unsafe { libc::_exit(code) }
}

/// vCPUs 0 to `cpus - 1`, in id order. With more than one, a second thread creates them
/// too, both taking the next id from one counter.
fn create_vcpus(vm: &VmFd, cpus: u64) -> Vec<VcpuFd> {
    let next = std::sync::atomic::AtomicU64::new(0);
    let create = || {
        let mut made = Vec::new();
        loop {
            let id = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if id >= cpus {
                return made;
            }
            made.push((id, check("KVM_CREATE_VCPU", vm.create_vcpu(id))));
        }
    };
    let mut made = if cpus > 1 {
        size_fd_table(cpus);
        std::thread::scope(|s| {
            let other = s.spawn(create);
            let mut own = create();
            own.extend(
                other
                    .join()
                    .unwrap_or_else(|_| fail("the vCPU creating thread panicked")),
            );
            own
        })
    } else {
        create()
    };
    made.sort_unstable_by_key(|m| m.0);
    made.into_iter().map(|m| m.1).collect()
}

/// Grows the descriptor table for every vCPU while this thread is the process's only one,
/// as minipc does (src/vcpu/threads.rs, `size_fd_table`): growing it while threads share it
/// waits for an RCU grace period each time.
fn size_fd_table(cpus: u64) {
    let want = (cpus as usize + 64).next_power_of_two() as libc::c_int;
    // SAFETY: a descriptor duplicated to the lowest free number at or above `want - 1`,
    // then closed; only this process's descriptor table changes.
    unsafe {
        let high = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, want - 1);
        if high >= 0 {
            libc::close(high);
        }
    }
}

/// The four memory slots, as minipc registers them for a ROM, before the irqchip.
fn register_memory(vm: &VmFd, rom: &[u8]) {
    let ram_len = (RAM_END - RAM_START) as usize;
    let low = map(LOW_RAM);
    let ram = map(ram_len);
    let top = map(rom.len());
    let bios = map(BIOS_REGION_LEN);
    // SAFETY: both mappings are writable and at least rom.len() long (checked in main).
    unsafe {
        std::ptr::copy_nonoverlapping(rom.as_ptr(), top, rom.len());
        std::ptr::copy_nonoverlapping(
            rom.as_ptr(),
            bios.add(BIOS_REGION_LEN - rom.len()),
            rom.len(),
        );
    }
    let slots = [
        (0, 0, LOW_RAM, low, 0),
        (1, RAM_START, ram_len, ram, 0),
        (
            2,
            (1u64 << 32) - rom.len() as u64,
            rom.len(),
            top,
            KVM_MEM_READONLY,
        ),
        (16, BIOS_REGION, BIOS_REGION_LEN, bios, KVM_MEM_READONLY),
    ];
    for (slot, guest, len, host, flags) in slots {
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: guest,
            memory_size: len as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is a live mapping of `len` bytes that outlives the VM (the process
        // exits without unmapping it).
        check("KVM_SET_USER_MEMORY_REGION", unsafe {
            vm.set_user_memory_region(region)
        });
    }
}

/// Runs the vCPU until debug-exit (code 2v+1) or a failure (4); what the guest
/// wrote to COM1 comes back with the code. With `ring`, the bytes KVM buffered in the
/// coalesced ring are taken before the exit's own byte, as minipc orders them.
fn run_vcpu(vcpu: &mut VcpuFd, ring: bool) -> (i32, Vec<u8>) {
    let mut out = Vec::new();
    loop {
        let mut byte = None;
        let end = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                data.fill(if port == COM1_LSR { 0x60 } else { 0xFF });
                None
            }
            Ok(VcpuExit::IoOut(COM1_DATA, data)) => {
                byte = data.first().copied();
                None
            }
            Ok(VcpuExit::IoOut(DEBUG_EXIT, data)) => {
                Some(i32::from(data.first().copied().unwrap_or(0)) << 1 | 1)
            }
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::MmioWrite(..)) => None,
            Ok(VcpuExit::MmioRead(_, data)) => {
                data.fill(0xFF);
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Ok(_) | Err(_) => Some(4),
        };
        if ring {
            while let Ok(Some(e)) = vcpu.coalesced_mmio_read() {
                out.extend_from_slice(&e.data[..(e.len as usize).min(8)]);
            }
        }
        out.extend(byte);
        if let Some(code) = end {
            return (code, out);
        }
    }
}

/// An anonymous mapping of `len` bytes, reserved lazily as minipc maps guest memory.
fn map(len: usize) -> *mut u8 {
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        fail("mmap");
    }
    p.cast()
}

/// KVM's default routes: the 8259 pair on GSIs 0-15, the I/O APIC's pins on GSIs 0-23.
fn routes() -> KvmIrqRouting {
    let mut entries = Vec::new();
    let mut route = |gsi: u32, chip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = chip;
        e.u.irqchip.pin = pin;
        entries.push(e);
    };
    for gsi in 0..16 {
        let chip = if gsi < 8 {
            KVM_IRQCHIP_PIC_MASTER
        } else {
            KVM_IRQCHIP_PIC_SLAVE
        };
        route(gsi, chip, gsi % 8);
    }
    for pin in 0..24 {
        route(pin, KVM_IRQCHIP_IOAPIC, pin);
    }
    check("GSI routes", KvmIrqRouting::from_entries(&entries))
}

/// KVM's supported CPUID, from a cache file keyed by the host's boot id (the first launch
/// after a boot asks KVM and writes it), as minipc keeps its own.
fn supported_cpuid(kvm: &Kvm) -> CpuId {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let path = std::env::temp_dir().join(format!("minipc-kvm-floor-cpuid-{uid}"));
    let size = std::mem::size_of::<kvm_cpuid_entry2>();
    if let Ok(b) = std::fs::read(&path) {
        if let Some(rest) = b.strip_prefix(boot.as_bytes()) {
            if rest.len() % size == 0 {
                let entries: Vec<kvm_cpuid_entry2> = rest
                    .chunks_exact(size)
                    // SAFETY: kvm_cpuid_entry2 is plain data (integers only), and each chunk
                    // holds exactly one, as written below.
                    .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast()) })
                    .collect();
                if let Ok(c) = CpuId::from_entries(&entries) {
                    return c;
                }
            }
        }
    }
    let c = check(
        "KVM_GET_SUPPORTED_CPUID",
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    );
    let mut b = boot.into_bytes();
    for e in c.as_slice() {
        // SAFETY: reading the bytes of a plain-data struct.
        b.extend_from_slice(unsafe {
            std::slice::from_raw_parts((e as *const kvm_cpuid_entry2).cast::<u8>(), size)
        });
    }
    let _ = std::fs::write(&path, b);
    c
}

/// Completes the VM's pending SRCU grace period early, as minipc does once its exit code is
/// out (src/vm/teardown.rs).
fn hurry_teardown(vm: &VmFd) {
    let Ok(fd) = EventFd::new(libc::EFD_NONBLOCK) else {
        return;
    };
    let at = IoEventAddress::Pio(0x5F0);
    if vm.register_ioevent(&fd, &at, NoDatamatch).is_ok() {
        let _ = vm.unregister_ioevent(&fd, &at, NoDatamatch);
    }
}
