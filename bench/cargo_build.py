"""Builds minipc (or one of its examples) with cargo and returns the path of the binary cargo
reports.

The build target comes from .cargo/config.toml (or CARGO_BUILD_TARGET), so the binary's
directory is not fixed: it is read from cargo's own JSON messages.
"""
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def minipc(release=True):
    """Builds the minipc binary (release or debug profile) and returns its path."""
    return build(["--bin", "minipc"], "minipc", release)


def example(name):
    """Builds the release binary of examples/NAME.rs and returns its path."""
    return build(["--example", name], name, True)


def build(what, name, release):
    cmd = ["cargo", "build", "--quiet", "--message-format=json", *what,
           "--manifest-path", os.path.join(ROOT, "Cargo.toml")]
    if release:
        cmd.append("--release")
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == name:
            return msg["executable"]
    raise SystemExit(f"bench: cargo built no {name} binary")
