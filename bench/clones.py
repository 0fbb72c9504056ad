"""Warm clones (#16), measured against booting the same replicas, in the same script.

For N replicas of the tiny guest (4, 10: busybox and dropbear in an initramfs) and of the
Debian guest (3: systemd, cloud-init), all on one bridge network:

  cold   `up -d --wait` of ``replicas: N``: every replica boots until it is ready
  warm   the same with ``warm: true``: replica 1 boots, its state is saved, the others load
         it and become themselves (hostname, MAC, address, host key, machine-id, clock)
  clone  per clone (medians): seconds to load the template's state, seconds to become itself
         (the SSH fix-up and DHCP), from the CLONE records
  PSS    the proportional set size of each replica's QEMU once all are ready (cold ones and
         clones), from /proc/PID/smaps_rollup: what each costs the host's memory

The headline is cold / warm. Each case runs its cold and warm `up` in turn, ``--repeat``
times (this machine drifts within minutes), medians reported.

Usage: .venv/bin/python bench/clones.py [--tiny 4,10] [--debian 3] [--repeat 1]
Where PID 1 is not systemd it starts a private user manager (needs root), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.systemd_units import user_manager_env
from bench.whole_tool import run_cli
from tests.guest_images.build import build

EXE = str(Path(sys.executable).parent / "qemu-compose")


def project(directory: Path, name: str, kind: str, n: int, warm: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "tiny":
        tiny = build("tiny")
        guest = [f"    boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, "
                 "cmdline: console=ttyS0 quiet}", "    memory: 128", "    cpu: 1",
                 "    user: root"]  # fmt: skip
    else:
        deb = build("debian")
        guest = [f"    image: {deb}/root.qcow2", f"    boot: {{kernel: {deb}/vmlinuz, "
                 f"initrd: {deb}/initrd.img, cmdline: root=LABEL=rootfs rw console=ttyS0 quiet}}",
                 "    memory: 384", "    user: debian"]  # fmt: skip
    lines = [f"name: {name}", "networks:", "  lan: {}", "vms:", "  w:", *guest,
             f"    replicas: {n}", f"    warm: {'true' if warm else 'false'}",
             "    networks: [lan]"]  # fmt: skip
    (directory / "qemu-compose.yaml").write_text("\n".join(lines) + "\n")
    return directory


def pss_mib(directory: Path, names: list[str]) -> list[float]:
    """Each VM's QEMU's proportional set size."""
    found = []
    for name in names:
        pid = (directory / ".qemu-compose" / name / "qemu.pid").read_text().strip()
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                found.append(int(line.split()[1]) / 1024)
    return found


def clone_records(directory: Path, env: dict[str, str]) -> list[dict[str, float]]:
    out = Path(directory / "watch.json")
    with out.open("w") as fh:
        subprocess.run(
            [EXE, "watch", "--since", "all", "--no-follow", "--json"],
            cwd=directory, env=env, stdout=fh, check=True,
        )  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    return [r["data"] for r in records if r["event"] == "CLONE"]


def case(base: Path, env: dict[str, str], kind: str, n: int, repeat: int) -> dict[str, float]:
    rows: dict[str, list[float]] = {k: [] for k in ("cold", "warm", "load", "become",
                                                   "pss_cold", "pss_clone")}  # fmt: skip
    names = [f"w-{i}" for i in range(1, n + 1)]
    for round_ in range(repeat):
        for warm in (False, True):
            directory = project(
                base / f"{kind}{n}-{round_}-{warm}", f"cl{kind[0]}{n}", kind, n, warm
            )
            try:
                took, _ = run_cli(
                    EXE, ["up", "-d", "--wait", "--progress", "quiet"], directory, env
                )
                rows["warm" if warm else "cold"].append(took)
                sizes = pss_mib(directory, names[1:])
                rows["pss_clone" if warm else "pss_cold"].append(statistics.median(sizes))
                if warm:
                    clones = clone_records(directory, env)
                    rows["load"].append(statistics.median(c["load_seconds"] for c in clones))
                    rows["become"].append(statistics.median(c["identity_seconds"] for c in clones))
            finally:
                run_cli(EXE, ["destroy", "--progress", "quiet"], directory, env)
    return {k: statistics.median(v) for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", default="4,10")
    parser.add_argument("--debian", default="3")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="qc-bench-clones-"))
    cases = [("tiny", int(n)) for n in args.tiny.split(",") if n]
    cases += [("debian", int(n)) for n in args.debian.split(",") if n]
    results = []
    with user_manager_env() as manager_env:
        env = {**manager_env, "XDG_STATE_HOME": str(base / "xdg")}
        try:
            for kind, n in cases:
                results.append((f"{n} {kind}", case(base, env, kind, n, args.repeat)))
                print(results[-1], flush=True)
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print("\n| replicas | cold | warm | cold / warm | clone: load, become itself |", end="")
    print(" PSS per replica: cold, clone |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, r in results:
        print(
            f"| {label} | {r['cold']:.1f} s | {r['warm']:.1f} s | {r['cold'] / r['warm']:.1f}x | "
            f"{r['load']:.2f} s, {r['become']:.1f} s | "
            f"{r['pss_cold']:.0f} MiB, {r['pss_clone']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
