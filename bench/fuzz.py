#!/usr/bin/env python3
"""A longer run of the fuzz targets (the `::fuzz::` tests of src/), time-bounded.

Builds the unit tests with the `fuzz` profile (optimized, with overflow checks and debug
assertions, so an arithmetic overflow is a crash as in a debug build), then runs every
target for its share of the time: each gets SECONDS * JOBS / TARGETS seconds, JOBS targets
at a time. A crashing case does not stop its target (up to ten); each is printed with the
line that replays it. Prints per target: executions, time, crashes; exits 1 if any crashed.

Usage: python3 bench/fuzz.py [--seconds N] [--jobs J] [--seed S]
"""
import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"^fuzz (\S+): (\d+) executions in ([\d.]+) s, (\d+) crashes$")


def cargo(*args, env=None, capture=False):
    cmd = ["cargo", "test", "--profile", "fuzz", "--bin", "minipc", *args]
    return subprocess.run(
        cmd,
        cwd=ROOT,
        env=env,
        check=False,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="whole run (default 60)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="targets at a time")
    ap.add_argument("--seed", help="MINIPC_FUZZ_SEED for every target (default: per target)")
    a = ap.parse_args()

    if cargo("--no-run").returncode != 0:
        sys.exit("bench/fuzz.py: the build failed")
    listing = cargo("--", "--list", "::fuzz::", capture=True)
    targets = [
        l.split(": test")[0]
        for l in listing.stdout.splitlines()
        if l.endswith(": test") and "::fuzz::" in l
    ]
    if not targets:
        sys.exit("bench/fuzz.py: no fuzz targets found\n" + listing.stdout)
    jobs = max(1, min(a.jobs, len(targets)))
    share = a.seconds * jobs / len(targets)
    print(f"{len(targets)} targets, {share:.1f} s each, {jobs} at a time", flush=True)

    env = dict(os.environ)
    env.update(
        MINIPC_FUZZ_ITERS=str(10**15),
        MINIPC_FUZZ_SECONDS=f"{share:.3f}",
        MINIPC_FUZZ_KEEP_GOING="1",
    )
    env.pop("MINIPC_FUZZ_CASE", None)
    if a.seed:
        env["MINIPC_FUZZ_SEED"] = a.seed
    start = time.monotonic()
    run = cargo("--", "--nocapture", f"--test-threads={jobs}", "::fuzz::", env=env, capture=True)
    wall = time.monotonic() - start

    rows = {}
    lines = run.stdout.splitlines()
    for i, l in enumerate(lines):
        m = LINE.match(l.strip())
        if m:
            rows[m.group(1)] = (int(m.group(2)), float(m.group(3)), int(m.group(4)))
        elif "panicked; replay:" in l:
            print(l.strip())
        elif "' panicked at " in l:
            # A case's panic and its message (not the target's closing summary).
            message = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if not message.startswith("fuzz "):
                print(f"  {l.strip()} {message}")
    print(f"\n{'target':<22} {'executions':>14} {'time (s)':>9} {'crashes':>8}")
    for name in sorted(rows):
        n, t, c = rows[name]
        print(f"{name:<22} {n:>14,} {t:>9.1f} {c:>8}")
    total = sum(r[0] for r in rows.values())
    crashes = sum(r[2] for r in rows.values())
    print(f"{'all':<22} {total:>14,} {wall:>9.1f} {crashes:>8}")
    if len(rows) < len(targets):
        print(f"bench/fuzz.py: {len(targets) - len(rows)} targets printed no result", file=sys.stderr)
        print(run.stdout[-4000:], file=sys.stderr)
    sys.exit(1 if crashes or run.returncode != 0 or len(rows) < len(targets) else 0)


if __name__ == "__main__":
    main()
