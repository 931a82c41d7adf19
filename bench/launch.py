#!/usr/bin/env python3
"""Launch-to-exit time and peak memory of minipc, side by side with QEMU when installed.

Each case is run N times (default 30) after 3 warm-up runs; the figures are the median and
90th percentile of wall time from spawn to exit status, and the median peak RSS of the
process that runs the VM: minipc reports its own (`--stats`, getrusage), QEMU's is taken with
/usr/bin/time in 5 extra runs. Ratios are against minipc running the same guest, measured in
the same run, because these machines are shared and noisy. A pause between runs lets the
previous VM's teardown (which happens after the exit status is reported) finish first.

Usage: python3 bench/launch.py [-n N]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

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


def run_once(cmd):
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, _ = os.wait4(p.pid, 0)
    wall = time.perf_counter() - start
    return wall, os.waitstatus_to_exitcode(status), err.decode(errors="replace")


def peak_rss_mib(cmd, own_stats):
    """Median peak RSS of the VM process over 5 runs, in MiB."""
    vals = []
    for _ in range(5):
        if own_stats:
            _, _, err = run_once(cmd + ["--stats"])
            m = re.search(r'"peak_rss_kib":(\d+)', err)
            vals.append(int(m.group(1)) / 1024)
        else:
            with tempfile.NamedTemporaryFile("r") as f:
                subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name] + cmd,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                vals.append(int(f.read().split()[-1]) / 1024)
        time.sleep(PAUSE)
    return statistics.median(vals)


def measure(cmd, n, expect, own_stats):
    for _ in range(3):
        run_once(cmd)
        time.sleep(PAUSE)
    walls = []
    for _ in range(n):
        w, code, err = run_once(cmd)
        if code != expect:
            sys.exit(f"bench: {' '.join(cmd)} exited {code}, expected {expect}: {err}")
        walls.append(w * 1000)
        time.sleep(PAUSE)
    walls.sort()
    return {
        "median_ms": statistics.median(walls),
        "p90_ms": walls[int(0.9 * (len(walls) - 1))],
        "rss_mib": peak_rss_mib(cmd, own_stats),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    args = ap.parse_args()
    sh("cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(ROOT, "Cargo.toml"))
    minipc = os.path.join(ROOT, "target", "x86_64-unknown-linux-gnu", "release", "minipc")
    tmp = tempfile.mkdtemp(prefix="minipc-bench-")
    rom = build_guest(tmp, "bench", 64 * 1024)

    cases = [
        ("minipc demo (embedded firmware, halts)", [minipc], 0, "demo"),
        ("minipc bare-metal ROM (debug-exit)", [minipc, "--firmware", rom], 1, "rom"),
        ("minipc bare-metal ROM, --cpus 4 --mem 4G", [minipc, "--firmware", rom, "--cpus", "4", "--mem", "4G"], 1, "rom"),
    ]
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        common = ["-bios", rom, "-nographic", "-nodefaults", "-serial", "null", "-m", "256",
                  "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-accel", "kvm", "-no-reboot"]
        cases.append(("QEMU -M microvm, same ROM", [qemu, "-M", "microvm"] + common, 1, "rom"))
        cases.append(("QEMU -M pc, same ROM", [qemu, "-M", "pc"] + common, 1, "rom"))
    else:
        print("QEMU is not installed: no comparison (apt-get install qemu-system-x86)")

    results = []
    for name, cmd, expect, kind in cases:
        r = measure(cmd, args.n, expect, own_stats=(cmd[0] == minipc))
        results.append((name, kind, r))
    base = next(r for name, kind, r in results if kind == "rom")
    print(f"{'case':46} {'median ms':>10} {'p90 ms':>8} {'peak RSS MiB':>13} {'time x':>7} {'RSS x':>6}")
    for name, kind, r in results:
        print(f"{name:46} {r['median_ms']:10.2f} {r['p90_ms']:8.2f} {r['rss_mib']:13.1f} "
              f"{r['median_ms'] / base['median_ms']:7.2f} {r['rss_mib'] / base['rss_mib']:6.2f}")
    print(f"(n={args.n} runs each; ratios against minipc running the same bare-metal ROM; "
          f"{os.cpu_count()} CPUs, {os.uname().release})")

    # An idle guest: halted with interrupts enabled, nothing to wake it. What does the
    # monitor cost while it waits?
    idle_rom = build_guest(tmp, "halt_if_on", 64 * 1024)
    secs = 5
    _, _, err = run_once([minipc, "--firmware", idle_rom, "--timeout", str(secs), "--stats"])
    cpu_ms = int(re.search(r'"cpu_us":(\d+)', err).group(1)) / 1000
    print(f"\nidle guest for {secs} s: minipc used {cpu_ms:.1f} ms of CPU "
          f"({cpu_ms / secs / 10:.3f}% of a core)")
    if qemu:
        with tempfile.NamedTemporaryFile("r") as f:
            subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", f.name, "timeout", str(secs),
                            qemu, "-M", "microvm", "-bios", idle_rom] + common[2:],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            u, s_ = (float(x) for x in f.read().split()[-2:])
        qcpu = (u + s_) * 1000
        print(f"idle guest for {secs} s: QEMU -M microvm used {qcpu:.1f} ms of CPU "
              f"({qcpu / secs / 10:.3f}% of a core), {qcpu / max(cpu_ms, 0.001):.1f}x minipc")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
