"""Warm clones (#16), measured against booting the same replicas, in the same script.

For N replicas of the tiny guest (4, 10: busybox and dropbear in an initramfs) and of the
Debian guest (3: systemd, cloud-init), all on one bridge network:

  cold   `up -d --wait` of ``replicas: N``: every replica boots until it is ready
  warm   the same with ``warm: true``: replica 1 boots, its state is saved, the others load
         it and become themselves (hostname, MAC, address, host key, machine-id, clock);
         twice: with the template's RAM in a file the clones map (the default), and with it
         in the migration stream that each clone reads (QEMU_COMPOSE_TEMPLATE_RAM=stream)
  clone  per clone (medians): seconds to load the template's state, seconds to become itself
         (the SSH fix-up and DHCP), from the CLONE records; how long the source stood still
         while its template was saved (TEMPLATE_SAVE)
  PSS    the proportional set size of each replica's QEMU once all are ready (cold ones and
         clones), from /proc/PID/smaps_rollup: what each costs the host's memory (pages of
         the RAM file that clones share count a share each)

The headline is cold / warm. Each case runs its cold and warm `up`s in turn, ``--repeat``
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


def records(directory: Path, env: dict[str, str], event: str) -> list[dict[str, float]]:
    out = Path(directory / "watch.json")
    with out.open("w") as fh:
        subprocess.run(
            [EXE, "watch", "--since", "all", "--no-follow", "--json"],
            cwd=directory, env=env, stdout=fh, check=True,
        )  # fmt: skip
    found = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    return [r["data"] for r in found if r["event"] == event]


MODES = {"cold": None, "file": "file", "stream": "stream"}  # QEMU_COMPOSE_TEMPLATE_RAM


def case(base: Path, env: dict[str, str], kind: str, n: int, repeat: int) -> dict[str, float]:
    rows: dict[str, list[float]] = {}
    names = [f"w-{i}" for i in range(1, n + 1)]
    for round_ in range(repeat):
        for mode, ram in MODES.items():
            directory = project(
                base / f"{kind}{n}-{round_}-{mode}", f"cl{kind[0]}{n}", kind, n, ram is not None
            )
            run_env = {**env, "QEMU_COMPOSE_TEMPLATE_RAM": ram or "file"}
            try:
                took, _ = run_cli(
                    EXE, ["up", "-d", "--wait", "--progress", "quiet"], directory, run_env
                )
                rows.setdefault(mode, []).append(took)
                sizes = pss_mib(directory, names[1:])
                rows.setdefault(f"pss_{mode}", []).append(statistics.median(sizes))
                if ram is not None:
                    clones = records(directory, run_env, "CLONE")
                    load = statistics.median(c["load_seconds"] for c in clones)
                    become = statistics.median(c["identity_seconds"] for c in clones)
                    (saved,) = records(directory, run_env, "TEMPLATE_SAVE")
                    rows.setdefault(f"load_{mode}", []).append(load)
                    rows.setdefault(f"become_{mode}", []).append(become)
                    rows.setdefault(f"save_{mode}", []).append(saved["seconds"])
            finally:
                run_cli(EXE, ["destroy", "--progress", "quiet"], directory, run_env)
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
    print("\n| replicas | cold | warm (RAM file) | cold / warm | warm (RAM in the stream) |")
    print("|---|---:|---:|---:|---:|")
    for label, r in results:
        print(
            f"| {label} | {r['cold']:.1f} s | {r['file']:.1f} s | {r['cold'] / r['file']:.1f}x | "
            f"{r['stream']:.1f} s ({r['cold'] / r['stream']:.1f}x) |"
        )
    print(
        "\n| replicas | template saved (stood still): file, stream | clone load: file, "
        "stream | become itself | PSS per replica: cold, clone (file), clone (stream) |"
    )
    print("|---|---:|---:|---:|---:|")
    for label, r in results:
        print(
            f"| {label} | {r['save_file']:.2f} s, {r['save_stream']:.2f} s | "
            f"{r['load_file']:.2f} s, {r['load_stream']:.2f} s | {r['become_file']:.1f} s | "
            f"{r['pss_cold']:.0f}, {r['pss_file']:.0f}, {r['pss_stream']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
