#!/usr/bin/env python3
"""Load and leaks: minipc launched many times in a row, and many VMs at once.

Sequential: the tiny guest tests/guests/load.s (prints two lines, leaves through debug-exit)
launched back to back, N times (default 1000) or until --seconds have passed. Concurrent:
C VMs (default 64) started at once, each with --mem 16M and its own build of the guest
(its ID in the output, its own debug-exit code) that waits about a second, halted on the
PIT, before it leaves.

Every exit code and every stdout is checked. The script makes itself a child subreaper,
so the VM process of each launch (which finishes its teardown after its parent has
exited, see src/supervisor.rs) is re-parented to it and reaped here: "VMs reaped" must
equal the launches, and "left behind" counts the processes that still run the binary with
this run's marker in their environment afterwards. "VM peak RSS" is the largest maximum
resident set of those VM processes (getrusage of the reaped process). MemAvailable is
read from /proc/meminfo before and after each case.

Usage: python3 bench/load.py [-n N] [--seconds S] [-c C] [--binary PATH]
"""
import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time

import cargo_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "tests", "guests")
MARK_VAR = "MINIPC_LOAD_BENCH"
PR_SET_CHILD_SUBREAPER = 36


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def build_guest(tmp, defs):
    """Assembles tests/guests/load.s with the --defsym values `defs` into a 4 KiB ROM."""
    tag = "-".join(f"{k}{v}" for k, v in defs.items())
    obj, elf, out = (os.path.join(tmp, f"load-{tag}{ext}") for ext in (".o", ".elf", ".bin"))
    syms = [f"--defsym={k}={v}" for k, v in defs.items()]
    sh("as", "--32", "-I", GUESTS, *syms, "-o", obj, os.path.join(GUESTS, "load.s"))
    sh("ld", "-m", "elf_i386", "-nostdlib", "-T", os.path.join(GUESTS, "rom.ld"), "-o", elf, obj)
    sh("objcopy", "-O", "binary", elf, out)
    return out


def expected_output(ident):
    return f"load {ident:04x} start\r\nload {ident:04x} done\r\n".encode()


def mem_available_kib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def marked(binary, mark):
    """PIDs of the processes running `binary` with this run's marker in their environment."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if f.read().split(b"\0")[0] != binary.encode():
                    continue
            with open(f"/proc/{name}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
        except OSError:
            continue
        found.append(int(name))
    return found


class Reaper:
    """Reaps the VM processes re-parented to this (subreaper) process."""

    def __init__(self):
        self.reaped = 0
        self.max_rss_kib = 0

    def reap(self, block_until=None):
        """Reaps what has exited; with `block_until` (a count), waits up to 10 s for that many."""
        deadline = time.monotonic() + 10
        while True:
            try:
                pid, _, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if pid > 0:
                self.reaped += 1
                self.max_rss_kib = max(self.max_rss_kib, ru.ru_maxrss)
                continue
            if block_until is None or self.reaped >= block_until or time.monotonic() > deadline:
                return
            time.sleep(0.005)


def settle(binary, mark, reaper, launches):
    """Waits for every VM process of the case to be reaped; returns those still there."""
    reaper.reap(block_until=launches)
    deadline = time.monotonic() + 10
    while marked(binary, mark) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(marked(binary, mark))


def sequential(binary, rom, n, seconds, mark):
    env = dict(os.environ, **{MARK_VAR: mark})
    cmd = [binary, "--firmware", rom, "--timeout", "30"]
    want = expected_output(0x1D)
    reaper = Reaper()
    before = mem_available_kib()
    errors = []
    launches = 0
    start = time.perf_counter()
    while launches < n and time.perf_counter() - start < seconds:
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate()
        launches += 1
        if p.returncode != (0x21 << 1 | 1) or out != want:
            errors.append(f"launch {launches}: exit {p.returncode}, stdout {out!r}, "
                          f"stderr {err.decode(errors='replace')!r}")
        reaper.reap()
    wall = time.perf_counter() - start
    left = settle(binary, mark, reaper, launches)
    return {
        "runs": launches, "errors": errors, "wall": wall, "rate": launches / wall,
        "reaped": reaper.reaped, "left": left, "rss_kib": reaper.max_rss_kib,
        "mem_change_mib": (mem_available_kib() - before) / 1024,
    }


def concurrent(binary, roms, mark):
    env = dict(os.environ, **{MARK_VAR: mark})
    reaper = Reaper()
    before = mem_available_kib()
    start = time.perf_counter()
    procs = [subprocess.Popen([binary, "--firmware", rom, "--mem", "16M", "--timeout", "60"],
                              env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for rom in roms]
    errors = []
    # Each VM prints a few dozen bytes, far less than a pipe holds: reading the VMs one
    # after another holds none of them up.
    outs = [p.communicate(timeout=120) for p in procs]
    wall = time.perf_counter() - start
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        if p.returncode != ((i + 1) << 1 | 1) or out != expected_output(i):
            errors.append(f"VM {i}: exit {p.returncode}, stdout {out!r}, "
                          f"stderr {err.decode(errors='replace')!r}")
    left = settle(binary, mark, reaper, len(procs))
    return {
        "runs": len(procs), "errors": errors, "wall": wall, "rate": len(procs) / wall,
        "reaped": reaper.reaped, "left": left, "rss_kib": reaper.max_rss_kib,
        "mem_change_mib": (mem_available_kib() - before) / 1024,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1000, help="sequential launches (default 1000)")
    ap.add_argument("--seconds", type=float, default=120,
                    help="stop the sequential launches after this long (default 120)")
    ap.add_argument("-c", type=int, default=64, help="VMs at once (default 64, at most 127)")
    ap.add_argument("--binary", help="the minipc binary (default: build the release binary)")
    args = ap.parse_args()
    if not 1 <= args.c <= 127:
        sys.exit("bench: -c must be from 1 to 127 (one debug-exit code per VM)")
    if args.binary:
        binary = os.path.abspath(args.binary)
    else:
        binary = cargo_build.minipc()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("bench: prctl(PR_SET_CHILD_SUBREAPER) failed")
    tmp = tempfile.mkdtemp(prefix="minipc-load-")
    try:
        rom = build_guest(tmp, {"ID": 0x1D, "CODE": 0x21})
        roms = [build_guest(tmp, {"ID": i, "CODE": i + 1, "TICKS": 18}) for i in range(args.c)]
        mark = f"{os.getpid()}"
        results = [
            ("sequential: 2 lines, debug-exit", sequential(binary, rom, args.n, args.seconds,
                                                           mark + "-seq")),
            (f"concurrent: {args.c} x --mem 16M, ~1 s wait", concurrent(binary, roms,
                                                                         mark + "-conc")),
        ]
    finally:
        shutil.rmtree(tmp)
    print(f"{'case':40} {'runs':>5} {'errors':>6} {'wall s':>7} {'VMs/s':>7} {'reaped':>6} "
          f"{'left':>4} {'VM peak RSS MiB':>15} {'MemAvailable MiB':>16}")
    failed = False
    for name, r in results:
        print(f"{name:40} {r['runs']:5} {len(r['errors']):6} {r['wall']:7.2f} {r['rate']:7.1f} "
              f"{r['reaped']:6} {r['left']:4} {r['rss_kib'] / 1024:15.1f} "
              f"{r['mem_change_mib']:+16.1f}")
        failed |= bool(r["errors"]) or r["left"] > 0 or r["reaped"] != r["runs"]
    print(f"({binary}; {os.cpu_count()} CPUs, {os.uname().release})")
    for name, r in results:
        for e in r["errors"][:5]:
            print(f"{name}: {e}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
