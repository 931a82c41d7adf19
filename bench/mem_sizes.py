#!/usr/bin/env python3
"""Launch time against guest RAM size: the bare-metal bench ROM (64 KiB, prints a line,
leaves through debug-exit) with `--mem 256M` and `--mem 64G` (or the sizes given), run
alternately so that a noisy neighbour affects every case alike. Prints, per case, the
medians of `--stats` total_us, phases_us.memory and ram_ready_us, of the wall time from
spawn to exit status, and each median's ratio to the first size's.

Usage: python3 bench/mem_sizes.py [-n 40] [--minipc PATH ...] [--mem 256M --mem 64G]
Several --minipc binaries are measured in the same rounds (before/after comparisons).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cargo_build  # noqa: E402
import launch  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--minipc", action="append",
                    help="a minipc binary (repeatable; default: the release build)")
    ap.add_argument("--mem", action="append", help="RAM sizes (default 256M and 64G)")
    args = ap.parse_args()
    launch.become_subreaper()
    binaries = args.minipc or [cargo_build.minipc()]
    sizes = args.mem or ["256M", "64G"]
    tmp = tempfile.mkdtemp(prefix="minipc-mem-")
    rom = launch.build_guest(tmp, "bench", 64 * 1024)
    cases = [(b, m) for b in binaries for m in sizes]
    samples = {c: {"wall": [], "total": [], "memory": [], "ready": []} for c in cases}
    for round_ in range(args.n + 3):
        for b, m in cases:
            cmd = [b, "--firmware", rom, "--mem", m, "--stats"]
            wall, code, err, _, _ = launch.run_once(cmd)
            if code != 1:
                sys.exit(f"bench: {' '.join(cmd)} exited {code}: {err}")
            time.sleep(launch.PAUSE)
            if round_ < 3:
                continue
            line = next(l for l in err.splitlines() if l.startswith('{"exit_reason"'))
            s = json.loads(line)
            d = samples[(b, m)]
            d["wall"].append(wall * 1e6)
            d["total"].append(s["total_us"])
            d["memory"].append(s["phases_us"]["memory"])
            if s.get("ram_ready_us") is not None:
                d["ready"].append(s["ram_ready_us"])
    med = {c: {k: (statistics.median(v) if v else None) for k, v in d.items()}
           for c, d in samples.items()}
    print(f"{args.n} alternating runs per case, medians (µs)")
    print(f"{'binary':<40} {'mem':>5} {'total_us':>9} {'wall_us':>9} {'memory':>8} "
          f"{'ram_ready':>9} {'total/first':>11} {'wall/first':>10}")
    for b in binaries:
        base = med[(b, sizes[0])]
        for m in sizes:
            r = med[(b, m)]
            ready = "null" if r["ready"] is None else f"{r['ready']:.0f}"
            print(f"{b[-40:]:<40} {m:>5} {r['total']:>9.0f} {r['wall']:>9.0f} "
                  f"{r['memory']:>8.0f} {ready:>9} {r['total'] / base['total']:>11.2f} "
                  f"{r['wall'] / base['wall']:>10.2f}")


if __name__ == "__main__":
    main()
