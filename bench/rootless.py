"""Rootless bridge networks (#19) against host bridges, side by side in one run.

Two tiny guests on one bridge network, brought up by the real CLI:

  host      as root: the bridge, TAPs and dnsmasq on the host (the baseline)
  rootless  as an ordinary user (made by the tests' support, with their own private
            `systemd --user`): the same in the user's own namespace, each TAP handed to
            QEMU by the bridge helper, the links made by the link agent

  up        seconds of `up -d --wait` (both guests booted and ready, the network made)
  transfer  MiB/s of a TCP transfer from a to b over the bridge (busybox nc, 512 MiB of
            zeros, timed in the guest by its own clock, every byte counted by b)

Each mode runs ``--repeat`` times in turn (host, rootless, host, ...); medians reported, with
rootless / host. Needs root (it makes the user and the managers). Usage:
    .venv/bin/python bench/rootless.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.guest_images.build import build
from tests.support.cli import compose, ps_rows
from tests.support.systemd_user import ManagerHandle, UserManager
from tests.support.users import ordinary

MIB = 512
TRANSFER = (  # on a: the seconds its clock says the transfer took
    "s=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero bs=65536 count={count} 2>/dev/null"
    " | nc {to} 5000; e=$(cut -d' ' -f1 /proc/uptime); echo $s $e"
)


def one(mode: str, top: Path) -> dict[str, float]:
    user = ordinary() if mode == "rootless" else None
    place = Path(tempfile.mkdtemp(prefix=f"qc-bench-{mode}-", dir=top))
    place.chmod(0o755)
    tiny = place / "tiny"
    tiny.mkdir()
    for name in ("vmlinuz", "initrd.img"):
        shutil.copyfile(build("tiny") / name, tiny / name)
        (tiny / name).chmod(0o644)
    project = place / "project"
    project.mkdir()
    (project / "qemu-compose.yaml").write_text(
        f"name: bench{mode}\nnetworks:\n  lan: {{}}\nx-tiny: &tiny\n"
        f"  boot: {{kernel: {tiny}/vmlinuz, initrd: {tiny}/initrd.img, "
        "cmdline: console=ttyS0 quiet}\n"
        "  memory: 128\n  cpu: 1\n  user: root\n  networks: [lan]\nvms:\n  a: *tiny\n  b: *tiny\n"
    )
    ids = {"uid": user.uid, "gid": user.gid, "user": user.name} if user else {}
    if user is not None:
        os.chown(project, user.uid, user.gid)
        os.chown(project / "qemu-compose.yaml", user.uid, user.gid)
    manager = UserManager(place / "manager", name=f"qc-bench-{mode}-{os.getpid()}", **ids)  # type: ignore[arg-type]
    manager.start()
    handle = ManagerHandle(manager.bus_address, manager.journal_dir, manager)
    try:
        started = time.monotonic()
        up = compose("up", "-d", "--wait", "--progress", "quiet", cwd=project, manager=handle)
        took = time.monotonic() - started
        if up.returncode != 0:
            raise SystemExit(f"{mode}: up failed: {up.stderr}")
        b = ps_rows(project, handle)["b"]["addresses"]["lan"]
        listen = (  # (its stdin never ends: nc would close at once on /dev/null's EOF)
            "setsid sh -c 'sleep 600 | nc -l -p 5000 | wc -c > /tmp/got' "
            "</dev/null >/dev/null 2>&1 &"
        )
        compose("ssh", "b", listen, cwd=project, manager=handle)
        time.sleep(1)
        said = compose(
            "ssh", "a", TRANSFER.format(count=MIB * 16, to=b), cwd=project, manager=handle
        ).stdout.split()
        seconds = float(said[1]) - float(said[0])
        time.sleep(1)
        got = compose("ssh", "b", "cat /tmp/got", cwd=project, manager=handle).stdout.strip()
        if got != str(MIB << 20):
            raise SystemExit(f"{mode}: b got {got!r} bytes of {MIB << 20}")
        return {"up": took, "transfer": MIB / seconds}
    finally:
        compose("destroy", "--progress", "quiet", cwd=project, manager=handle)
        manager.stop()
        shutil.rmtree(place, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="qc-bench-", dir="/tmp"))
    top.chmod(0o755)
    runs: dict[str, list[dict[str, float]]] = {"host": [], "rootless": []}
    try:
        for _ in range(args.repeat):
            for mode, done in runs.items():
                done.append(one(mode, top))
    finally:
        shutil.rmtree(top, ignore_errors=True)
    median = {
        mode: {k: statistics.median(r[k] for r in rs) for k in ("up", "transfer")}
        for mode, rs in runs.items()
    }
    print(f"{'mode':<10} {'up s':>8} {'transfer MiB/s':>15}")
    for mode, m in median.items():
        print(f"{mode:<10} {m['up']:>8.2f} {m['transfer']:>15.1f}")
    ratio = {k: median["rootless"][k] / median["host"][k] for k in ("up", "transfer")}
    print(f"rootless / host: up {ratio['up']:.2f}x, transfer {ratio['transfer']:.2f}x")
    print(json.dumps({"runs": runs, "median": median, "ratio": ratio}))


if __name__ == "__main__":
    main()
