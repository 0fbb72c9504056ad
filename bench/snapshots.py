"""Snapshots (#15), measured against booting the same VMs, in the same script.

For N tiny guests (1, 3, 10: busybox and dropbear in an initramfs, ready when SSH answers)
and for one Debian guest (cloud-init, systemd; ready when SSH answers):

  boot     `up -d --wait` of the stopped VMs: QEMU started, the guests boot until SSH answers
  save     `snapshot save s --force` of the running VMs (the guests stand still for
           ``frozen``, the record's own figure)
  restore  `snapshot restore s`: the VMs stopped, disks put back, each QEMU loading its state,
           all resumed, each clock set over SSH (so: SSH answers)
  restore --wait  the same, until `up --wait` would call them ready (the supervisor's probe)

The headline is boot / restore --wait. Medians of ``--repeat`` rounds, each round taking the
measures in turn (this machine drifts within minutes).

Usage: .venv/bin/python bench/snapshots.py [--sizes 1,3,10] [--repeat 3] [--no-debian]
Where PID 1 is not systemd it starts a private user manager (needs root), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.systemd_units import user_manager_env
from bench.whole_tool import run_cli
from tests.guest_images.build import build

EXE = str(Path(sys.executable).parent / "qemu-compose")


def tiny_project(directory: Path, name: str, n: int) -> Path:
    tiny = build("tiny")
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", "x-tiny: &tiny", f"  boot: {{kernel: {tiny}/vmlinuz, "
             f"initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}",
             "  memory: 128", "  cpu: 1", "  user: root",
             "vms:"]  # fmt: skip
    lines += [f"  g{i}: {{<<: *tiny}}" for i in range(1, n + 1)]
    (directory / "qemu-compose.yaml").write_text("\n".join(lines) + "\n")
    return directory


def debian_project(directory: Path, name: str) -> Path:
    guest = build("debian")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "qemu-compose.yaml").write_text(
        f"name: {name}\nvms:\n  d1:\n    image: {guest}/root.qcow2\n"
        f"    boot: {{kernel: {guest}/vmlinuz, initrd: {guest}/initrd.img, "
        "cmdline: root=LABEL=rootfs rw console=ttyS0 quiet}\n"
        "    memory: 384\n    user: debian\n"
    )
    return directory


def seconds(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    return run_cli(EXE, [*args, "--progress", "quiet"], cwd, env)[0]


def measure(project: Path, env: dict[str, str], repeat: int) -> dict[str, float]:
    """Medians of each measure over ``repeat`` rounds (the project is up and ready)."""
    rows: dict[str, list[float]] = {k: [] for k in ("boot", "save", "frozen", "restore",
                                                   "restore_wait", "state_mib")}  # fmt: skip
    for _ in range(repeat):
        run_cli(EXE, ["stop", "--progress", "quiet"], project, env)
        rows["boot"].append(seconds(["up", "-d", "--wait"], project, env))
        rows["save"].append(seconds(["snapshot", "save", "s", "--force"], project, env))
        record = json.loads((project / ".qemu-compose/snapshots/s/snapshot.json").read_text())
        rows["frozen"].append(record["frozen_for"])
        rows["state_mib"].append(sum(v["state_bytes"] for v in record["vms"].values()) / 2**20)
        rows["restore"].append(seconds(["snapshot", "restore", "s"], project, env))
        rows["restore_wait"].append(seconds(["snapshot", "restore", "s", "--wait"], project, env))
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,3,10")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-debian", action="store_true")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qc-bench-snap-"))
    results: list[tuple[str, dict[str, float]]] = []
    with user_manager_env() as manager_env:
        env = {**manager_env, "XDG_STATE_HOME": str(base / "xdg")}
        projects = [(f"{n} tiny", tiny_project(base / f"t{n}", f"snapt{n}", n))
                    for n in map(int, args.sizes.split(","))]  # fmt: skip
        if not args.no_debian:
            projects.append(("1 Debian", debian_project(base / "deb", "snapdeb")))
        try:
            for label, project in projects:
                run_cli(EXE, ["up", "-d", "--wait", "--progress", "quiet"], project, env)
                results.append((label, measure(project, env, args.repeat)))
                run_cli(EXE, ["destroy", "--progress", "quiet"], project, env)
                print(label, results[-1], flush=True)  # (a destroyed project: destroy is a no-op)
        finally:
            for _, project in projects:
                run_cli(EXE, ["destroy", "--progress", "quiet"], project, env)
            shutil.rmtree(base, ignore_errors=True)
    print("\n| VMs | boot to SSH | save (frozen) | state | restore | restore --wait |", end="")
    print(" boot / restore --wait |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, r in results:
        print(
            f"| {label} | {r['boot']:.2f} s | {r['save']:.2f} s ({r['frozen']:.2f} s) | "
            f"{r['state_mib']:.0f} MiB | {r['restore']:.2f} s | {r['restore_wait']:.2f} s | "
            f"{r['boot'] / r['restore_wait']:.1f}x |"
        )


if __name__ == "__main__":
    main()
