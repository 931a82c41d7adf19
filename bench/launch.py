#!/usr/bin/env python3
"""Launch-to-exit time and peak memory of minipc, side by side with QEMU when installed.

Each case is run N times (default 30) after 3 warm-up runs; the figures are the median and
90th percentile of wall time from spawn to exit status, the median time until every process
the launch started is gone (minipc's VM process outlives the exit status while KVM tears the
VM down: the script is a child subreaper, so that process is reparented to it and reaped
here), the median CPU time of all those processes (user + system, from wait4), and the median
peak RSS of each process, in 5 extra runs: of the process that runs the VM (minipc reports
its own with `--stats`, getrusage; QEMU's is taken with /usr/bin/time) and of minipc's
supervisor (its VmHWM, read from /proc while it lives). Ratios are against minipc running the same
guest, measured in the same run, because these machines are shared and noisy. A pause between
runs lets the previous VM's teardown finish first. Beside them runs the KVM floor
(examples/kvm_floor.rs): the same KVM objects in the same process layout, none of minipc's
own work, so the difference is what minipc adds.

Then how the launch scales: the same ROM with `--cpus 1/4/16/64` (and the floor with 1 and
64 vCPUs created) and with `--mem
256M/4G/64G`, and a guest that wakes every AP and waits for all (`tests/guests/smp.s`) with
`--cpus 1/64` (same round-robin, medians, ratios against the first of each); the
launches per second back to back, with 1, 2 and 4 streams in parallel, each starting its
next launch as soon as the previous exit status is in (QEMU `-M microvm` alongside when
installed); and the CPU an idle guest costs over 5 s: one halted with interrupts on and
nothing to wake it, and one woken by the BIOS tick (PIT channel 0 at 18.2 Hz, IRQ 0
acknowledged).

Usage: python3 bench/launch.py [-n N] [--minipc PATH] [--baseline PATH] [--seconds S]
"""
import argparse
import ctypes
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import cargo_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "tests", "guests")


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def build_guest(tmp, name, rom_size):
    """Assembles tests/guests/NAME.s into a ROM of rom_size bytes (code in its last 4 KiB)."""
    obj, elf, raw = (os.path.join(tmp, name + ext) for ext in (".o", ".elf", ".raw"))
    sh("as", "--32", "-I", GUESTS, "-o", obj, os.path.join(GUESTS, name + ".s"))
    sh("ld", "-m", "elf_i386", "-nostdlib", "-T", os.path.join(GUESTS, "rom.ld"), "-o", elf, obj)
    sh("objcopy", "-O", "binary", elf, raw)
    data = open(raw, "rb").read()
    out = os.path.join(tmp, f"{name}-{rom_size // 1024}k.bin")
    with open(out, "wb") as f:
        f.write(b"\0" * (rom_size - len(data)) + data)
    return out


PAUSE = 0.03


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper(on=True):
    """Orphans of the processes this script starts are reparented to it (prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        sys.exit(f"bench: prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def throughput(cmd, expect, streams, seconds):
    """Launches per second with `streams` loops in parallel, each starting its next launch
    as soon as the previous one's exit status is in, for `seconds`. Orphans (minipc's VM
    processes tearing down) are left to init here, as a caller's would be."""
    done = [0] * streams
    errors = []
    stop = time.perf_counter() + seconds

    def loop(i):
        while time.perf_counter() < stop:
            code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode
            if code != expect:
                errors.append(code)
            done[i] += 1

    become_subreaper(False)
    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    become_subreaper(True)
    if errors:
        sys.exit(f"bench: {' '.join(cmd)}: {len(errors)} launches exited {set(errors)}, "
                 f"expected {expect}")
    return sum(done) / elapsed


def run_once(cmd):
    """Runs cmd; returns (wall to exit status, exit code, stderr, wall until every process
    it started is gone, their CPU time in seconds)."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    p.returncode = os.waitstatus_to_exitcode(status)
    cpu = ru.ru_utime + ru.ru_stime
    # The VM process (minipc's forked child), reparented to this subreaper once the parent
    # exited, and anything else left.
    while True:
        try:
            _, _, ru = os.wait4(-1, 0)
        except ChildProcessError:
            break
        cpu += ru.ru_utime + ru.ru_stime
    gone = time.perf_counter() - start
    return wall, p.returncode, err.decode(errors="replace"), gone, cpu


def run_watching_hwm(cmd):
    """Runs cmd once, reading the started process's peak RSS (VmHWM, KiB) from /proc while
    it lives; returns (its stderr, that peak). Only reads made once the process runs the
    command's own binary count: before its exec, the process shows this script's memory.
    For minipc that process is the supervisor, which after the fork only waits: its peak is
    reached before the VM runs. (wait4's ru_maxrss would not do: Linux carries a process's
    peak across exec, so it would report this script's 15 MiB.)"""
    name = os.path.basename(cmd[0])[:15]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    hwm = 0
    path = f"/proc/{p.pid}/status"
    while p.poll() is None:
        try:
            with open(path) as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            break
        if fields.get("Name", "").strip() == name and "VmHWM" in fields:
            hwm = max(hwm, int(fields["VmHWM"].split()[0]))
    err = p.stderr.read()
    p.wait()
    while True:
        try:
            os.wait4(-1, 0)
        except ChildProcessError:
            break
    return err.decode(errors="replace"), hwm


def peak_rss_mib(cmd, own_stats):
    """Median peak RSS over 5 runs, in MiB: of the process that runs the VM, and of the
    others (minipc's supervisor; QEMU has no other)."""
    vals, others = [], []
    for _ in range(5):
        if own_stats:
            err, supervisor = run_watching_hwm(cmd + ["--stats"])
            m = re.search(r'"peak_rss_kib":(\d+)', err)
            vals.append(int(m.group(1)) / 1024)
            others.append(supervisor / 1024)
        else:
            with tempfile.NamedTemporaryFile("r") as f:
                subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name] + cmd,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                vals.append(int(f.read().split()[-1]) / 1024)
            others.append(0.0)
        time.sleep(PAUSE)
    return statistics.median(vals), statistics.median(others)


def summary(walls, gones, cpus):
    walls = sorted(walls)
    return {
        "median_ms": statistics.median(walls),
        "p90_ms": walls[int(0.9 * (len(walls) - 1))],
        "gone_ms": statistics.median(gones),
        "cpu_ms": statistics.median(cpus),
    }


def measure(cases, n):
    """Runs every case n times, round-robin (run i of every case before run i + 1 of any),
    so that a noisy neighbour affects all cases alike; each round in its own random order,
    because a fixed order measured the first case of a round up to 9% slower here."""
    samples = [([], [], []) for _ in cases]
    for _ in range(3):
        for _, cmd, _, _ in cases:
            run_once(cmd)
            time.sleep(PAUSE)
    rng = random.Random(1)
    for _ in range(n):
        order = list(zip(cases, samples))
        rng.shuffle(order)
        for (_, cmd, expect, _), (walls, gones, cpus) in order:
            w, code, err, gone, cpu = run_once(cmd)
            if code != expect:
                sys.exit(f"bench: {' '.join(cmd)} exited {code}, expected {expect}: {err}")
            walls.append(w * 1000)
            gones.append(gone * 1000)
            cpus.append(cpu * 1000)
            time.sleep(PAUSE)
    results = []
    for (name, cmd, _, kind), smp in zip(cases, samples):
        r = summary(*smp)
        if kind.startswith("floor"):
            # Its VM runs in a forked child that nothing here can ask for its peak RSS.
            r["rss_mib"] = r["other_rss_mib"] = float("nan")
        else:
            r["rss_mib"], r["other_rss_mib"] = peak_rss_mib(
                cmd, own_stats=not os.path.basename(cmd[0]).startswith("qemu"))
        results.append((name, kind, r))
    return results


def num(v, width, digits=1):
    """A figure (MiB, or a ratio with digits=2), or '-' where it was not measured (NaN)."""
    return f"{'-':>{width}}" if v != v else f"{v:{width}.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    ap.add_argument("--minipc", help="the minipc binary to measure (default: build the release one)")
    ap.add_argument("--baseline", help="another minipc binary, measured on the same cases in the "
                    "same rounds (before/after comparisons on a noisy machine)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="length of each back-to-back throughput run")
    args = ap.parse_args()
    become_subreaper()
    if args.minipc:
        minipc = os.path.abspath(args.minipc)
    else:
        minipc = cargo_build.minipc()
    tmp = tempfile.mkdtemp(prefix="minipc-bench-")
    rom = build_guest(tmp, "bench", 64 * 1024)

    def minipc_cases(binary, tag):
        return [
            ("minipc demo (embedded firmware, halts)" + tag, [binary], 0, "demo"),
            ("minipc bare-metal ROM (debug-exit)" + tag, [binary, "--firmware", rom], 1,
             "rom" if not tag else "baseline"),
            ("minipc bare-metal ROM, --cpus 4 --mem 4G" + tag,
             [binary, "--firmware", rom, "--cpus", "4", "--mem", "4G"], 1, "rom4"),
        ]

    cases = minipc_cases(minipc, "")
    if args.baseline:
        cases += minipc_cases(os.path.abspath(args.baseline), " [baseline]")
    # The same KVM objects without minipc's own work (examples/kvm_floor.rs).
    floor = cargo_build.example("kvm_floor")
    cases.append(("KVM floor: the same KVM objects, no VMM work, same ROM", [floor, rom], 1,
                  "floor"))
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        common = ["-bios", rom, "-nographic", "-nodefaults", "-serial", "null", "-m", "256",
                  "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-accel", "kvm", "-no-reboot"]
        cases.append(("QEMU -M microvm, same ROM", [qemu, "-M", "microvm"] + common, 1, "rom"))
        cases.append(("QEMU -M pc, same ROM", [qemu, "-M", "pc"] + common, 1, "rom"))
    else:
        print("QEMU is not installed: no comparison (apt-get install qemu-system-x86)")

    results = measure(cases, args.n)
    base = next(r for name, kind, r in results if kind == "rom")
    print(f"{'case':57} {'median ms':>10} {'p90 ms':>8} {'gone ms':>8} {'CPU ms':>7} "
          f"{'peak RSS MiB':>13} {'others MiB':>10} {'time x':>7} {'RSS x':>6}")
    for name, kind, r in results:
        print(f"{name:57} {r['median_ms']:10.2f} {r['p90_ms']:8.2f} {r['gone_ms']:8.2f} "
              f"{r['cpu_ms']:7.2f} {num(r['rss_mib'], 13)} {num(r['other_rss_mib'], 10)} "
              f"{r['median_ms'] / base['median_ms']:7.2f} "
              f"{num(r['rss_mib'] / base['rss_mib'], 6, 2)}")
    print("(peak RSS: the process that runs the VM; others: minipc's supervisor, which waits "
          "for the exit code)")
    print("(KVM floor: examples/kvm_floor.rs, forked like minipc, no seccomp, threads, chipset "
          "or monitor)")
    print(f"(n={args.n} runs each; ratios against minipc running the same bare-metal ROM; "
          f"{os.cpu_count()} CPUs, {os.uname().release})")

    # How the launch scales with vCPUs and RAM: same round-robin, ratios against the smallest.
    print()
    scaling = [(f"minipc ROM, --cpus {c}", [minipc, "--firmware", rom, "--cpus", str(c)], 1,
                "cpus") for c in (1, 4, 16, 64)]
    scaling += [(f"KVM floor, {c} vCPUs created", [floor, rom, str(c)], 1, "floor-cpus")
                for c in (1, 64)]
    scaling += [(f"minipc ROM, --mem {m}", [minipc, "--firmware", rom, "--mem", m], 1, "mem")
                for m in ("256M", "4G", "64G")]
    # The ROM above never wakes the APs, so the VM may end before they are all set up (they
    # are set up while the guest runs); tests/guests/smp.s wakes every AP at once and waits
    # until all have reported, then halts.
    smp = build_guest(tmp, "smp", 64 * 1024)
    scaling += [(f"minipc smp.s (waits for every AP), --cpus {c}",
                 [minipc, "--firmware", smp, "--cpus", str(c)], 0, "smp") for c in (1, 64)]
    scaled = measure(scaling, max(args.n // 2, 5))
    print(f"{'case':57} {'median ms':>10} {'p90 ms':>8} {'gone ms':>8} {'CPU ms':>7} "
          f"{'peak RSS MiB':>13} {'time x':>7}")
    for group in ("cpus", "floor-cpus", "mem", "smp"):
        rows = [(name, r) for name, kind, r in scaled if kind == group]
        first = rows[0][1]
        for name, r in rows:
            print(f"{name:57} {r['median_ms']:10.2f} {r['p90_ms']:8.2f} {r['gone_ms']:8.2f} "
                  f"{r['cpu_ms']:7.2f} {num(r['rss_mib'], 13)} "
                  f"{r['median_ms'] / first['median_ms']:7.2f}")
    print("(time x: against the first row of each group: --cpus 1, the floor with 1 vCPU, "
          "--mem 256M, smp.s --cpus 1)")

    # Launches per second, back to back.
    print()
    loops = [("minipc ROM", [minipc, "--firmware", rom], 1)]
    if qemu:
        loops.append(("QEMU -M microvm, same ROM", [qemu, "-M", "microvm"] + common, 1))
    for label, cmd, expect in loops:
        rates = [throughput(cmd, expect, p, args.seconds) for p in (1, 2, 4)]
        print(f"{label:57} launches/s back to back: " +
              ", ".join(f"{r:.1f} with {p} in parallel" for r, p in zip(rates, (1, 2, 4))))

    # Idle guests: halted with interrupts enabled, nothing to wake them; and the same woken
    # by the BIOS tick (18.2 Hz). What does the VMM cost while they wait?
    secs = 5
    binaries = [("minipc", minipc)]
    if args.baseline:
        binaries.append(("minipc [baseline]", os.path.abspath(args.baseline)))
    for label, guest in [("idle guest", "halt_if_on"), ("idle guest, 18.2 Hz tick", "idle_tick")]:
        idle_rom = build_guest(tmp, guest, 64 * 1024)
        print()
        own = None
        for bname, binary in binaries:
            _, _, err, _, tree_cpu = run_once(
                [binary, "--firmware", idle_rom, "--timeout", str(secs), "--stats"])
            cpu_ms = int(re.search(r'"cpu_us":(\d+)', err).group(1)) / 1000
            own = cpu_ms if own is None else own
            print(f"{label} for {secs} s: {bname} used {cpu_ms:.1f} ms of CPU "
                  f"({cpu_ms / secs / 10:.3f}% of a core; {tree_cpu * 1000:.1f} ms with the "
                  f"supervisor and the teardown)")
        if qemu:
            with tempfile.NamedTemporaryFile("r") as f:
                subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", f.name, "timeout",
                                str(secs), qemu, "-M", "microvm", "-bios", idle_rom] + common[2:],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                u, s_ = (float(x) for x in f.read().split()[-2:])
            qcpu = (u + s_) * 1000
            print(f"{label} for {secs} s: QEMU -M microvm used {qcpu:.1f} ms of CPU "
                  f"({qcpu / secs / 10:.3f}% of a core), {qcpu / max(own, 0.001):.1f}x minipc")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
