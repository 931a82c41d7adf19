#!/usr/bin/env python3
"""Launch-to-hand-off time of every boot path: the synthetic test kernels of tests/kernels.rs
(built here with binutils) booted N times each (default 20) with the release binary; the
medians of `--stats` handoff_us (when the firmware jumped to the guest), first_exit_us (the
firmware's first port access) and total_us (the exit decision), in microseconds since the
VMM's main started. The firmware's instruction count before the hand-off is printed by the
debug build (`--x-count-instructions`), once per path.

Usage: python3 bench/boot_paths.py [-n N]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import cargo_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "tests", "guests")


def sh(*cmd):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def build(tmp, src, script, bits, defs, flat):
    name = src + "".join(f"-{k}{v}" for k, v in defs) + f"-{bits}"
    obj, elf, out = (os.path.join(tmp, name + e) for e in (".o", ".elf", ".bin"))
    sh("as", f"--{bits}", "-I", GUESTS, *[f"--defsym={k}={v}" for k, v in defs], "-o", obj,
       os.path.join(GUESTS, src + ".s"))
    emul = "elf_i386" if bits == 32 else "elf_x86_64"
    sh("ld", "-m", emul, "-nostdlib", "--no-warn-rwx-segments", "-T",
       os.path.join(GUESTS, script + ".ld"), "-o", elf, obj)
    if not flat:
        return elf
    sh("objcopy", "-O", "binary", elf, out)
    return out


def stats(binary, args):
    p = subprocess.run([binary, *args, "--stats", "--serial", "none", "--timeout", "30"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = next(l for l in p.stderr.splitlines() if l.startswith('{"exit_reason"'))
    return json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    a = ap.parse_args()
    release = cargo_build.minipc()
    debug = cargo_build.minipc(release=False)
    with tempfile.TemporaryDirectory() as tmp:
        bz = build(tmp, "bzimage", "bzimage", 64, [], True)
        vm = build(tmp, "vmlinux", "vmlinux", 64, [("PVH", 1)], False)
        mb1 = build(tmp, "mb", "kernel", 32, [("MB2", 0), ("AOUT", 0)], False)
        mb2 = build(tmp, "mb", "kernel", 32, [("MB2", 1), ("AOUT", 0)], False)
        cases = [
            ("Linux bzImage, 64-bit entry", ["--kernel", bz]),
            ("Linux bzImage, 32-bit entry", ["--kernel", bz, "--boot-protocol", "32"]),
            ("Linux bzImage, real-mode setup", ["--kernel", bz, "--boot-protocol", "16"]),
            ("ELF vmlinux, 64-bit entry", ["--kernel", vm]),
            ("ELF vmlinux, PVH", ["--kernel", vm, "--boot-protocol", "pvh"]),
            ("multiboot 1 (ELF32)", ["--kernel", mb1]),
            ("multiboot 2 (ELF32)", ["--kernel", mb2]),
        ]
        print(f"| boot path | hand-off us | first exit us | exit decision us | firmware instructions |")
        print("|---|---|---|---|---|")
        for name, args in cases:
            runs = [stats(release, args) for _ in range(a.n)]
            med = lambda k: statistics.median(r[k] for r in runs)
            insns = stats(debug, [*args, "--x-count-instructions"]).get("firmware_instructions")
            print(f"| {name} | {med('handoff_us'):.0f} | {med('first_exit_us'):.0f} | "
                  f"{med('total_us'):.0f} | {insns} |")
    print(f"\n(n={a.n} each, release build; {os.cpu_count()} CPUs, {os.uname().release})")


if __name__ == "__main__":
    sys.exit(main())
