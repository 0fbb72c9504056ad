"""Health kept by the supervisor (#14), measured.

  a. a no-op `up -d --wait` and `ps` on running projects: 3 tiny guests (each with a
     healthcheck, healthy) and 100 no-disk VMs; baseline in the same run: the CLI's floor,
     `config --quiet` of the same file (start-up and loading, nothing asked of systemd);
     with --baseline-exe, also the same commands by another build (an earlier tree's venv).
  b. the supervisor's CPU while N tiny guests sit healthy, probed every 5 s (a check of
     their own) over kept SSH connections: CPU seconds per wall second over a minute, and
     the checks it ran in the window's last 24 s (each VM's kept log holds its last 5).

Usage: .venv/bin/python bench/health.py [--guests 30] [--repeat 5] [--baseline-exe PATH]
Where PID 1 is not systemd it starts a private user manager (needs root), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.systemd_units import user_manager_env
from bench.whole_tool import median_cli, no_disk_project
from tests.guest_images.build import build

EXE = str(Path(sys.executable).parent / "qemu-compose")


def tiny_project(directory: Path, name: str, n: int, interval: str) -> Path:
    """N tiny guests (g1..gN), each with a check of its own every ``interval``."""
    tiny = build("tiny")
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", "x-tiny: &tiny", f"  boot: {{kernel: {tiny}/vmlinuz, "
             f"initrd: {tiny}/initrd.img, cmdline: console=ttyS0 quiet}}",
             "  memory: 128", "  cpu: 1", "  user: dev",
             f"  healthcheck: {{test: [CMD, 'true'], interval: {interval}}}", "vms:"]  # fmt: skip
    lines += [f"  g{i}: {{<<: *tiny}}" for i in range(1, n + 1)]
    (directory / "qemu-compose.yaml").write_text("\n".join(lines) + "\n")
    return directory


def healthy(project_dir: Path) -> int:
    count = 0
    for path in (project_dir / ".qemu-compose").glob("*/health.json"):
        count += json.loads(path.read_text())["status"] == "healthy"
    return count


def cli(exe: str, args: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{exe} {' '.join(args)} failed: {done.stderr.decode()[-2000:]}")
    return time.perf_counter() - started


def median_of(exe: str, args: list[str], cwd: Path, env: dict[str, str], repeat: int) -> float:
    return sorted(cli(exe, args, cwd, env) for _ in range(repeat))[repeat // 2]


def supervisor_cpu(project: str, env: dict[str, str]) -> float:
    """CPU seconds the project's supervisor has used (user + system)."""
    unit = f"qemu-compose-{project}-supervisor.service"
    pid = subprocess.run(
        ["systemctl", "--user", "show", "-p", "MainPID", "--value", unit],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probes_between(project_dir: Path, start: float, end: float) -> int:
    count = 0
    for path in (project_dir / ".qemu-compose").glob("*/health.json"):
        log = json.loads(path.read_text())["log"]
        count += sum(start <= r["start"] < end for r in log)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guests", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of part b")
    parser.add_argument("--baseline-exe", help="another build's qemu-compose, run beside")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="qch-", dir="/tmp"))
    try:
        with user_manager_env() as manager_env:
            env = {k: v for k, v in manager_env.items() if not k.startswith("QEMU_COMPOSE")}
            env["XDG_STATE_HOME"] = str(root / "xdg-state")
            measure(args, root, env)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace, root: Path, env: dict[str, str]) -> None:
    repeat = args.repeat
    print(f"# health.py  ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)")
    print(f"\n## a. on running projects (s, median of {repeat})")
    print("| project | build | no-op up -d --wait | ps | config --quiet (floor) |"
          " up / floor | ps / floor |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    hundred: dict[str, list[str]] = {f"v{i}": [] for i in range(100)}
    projects = [
        ("3 tiny guests", tiny_project(root / "t3", "t3", 3, "30s")),
        ("100 no-disk VMs", no_disk_project(root / "n100", "n100", hundred)),
    ]
    builds = [("this", EXE)] + ([("baseline", args.baseline_exe)] if args.baseline_exe else [])
    for label, project in projects:
        up = ["up", "-d", "--wait", "--progress", "quiet"]
        cli(EXE, up, project, env)
        for build_name, exe in builds:
            noop = median_of(exe, up, project, env, repeat)
            ps = median_of(exe, ["ps"], project, env, repeat)
            floor = median_of(exe, ["config", "--quiet"], project, env, repeat)
            print(f"| {label} | {build_name} | {noop:.3f} | {ps:.3f} | {floor:.3f} |"
                  f" {noop / floor:.2f}x | {ps / floor:.2f}x |", flush=True)  # fmt: skip
        cli(EXE, ["destroy", "--progress", "quiet"], project, env)

    n = args.guests
    print(f"\n## b. the supervisor while {n} tiny guests sit healthy (checks every 5 s)")
    project = tiny_project(root / "t30", "t30", n, "5s")
    started = time.perf_counter()
    for wave in range(0, n, 10):  # 30 TCG boots at once on 2 cores: some kernels panic
        names = [f"g{i}" for i in range(wave + 1, min(n, wave + 10) + 1)]
        up = ["up", "-d", "--wait", "--wait-timeout", "300", "--progress", "quiet", *names]
        subprocess.run([EXE, *up], cwd=project, env=env, capture_output=True, check=False)
    took = time.perf_counter() - started
    time.sleep(10)  # past the first checks
    cpu0, t0 = supervisor_cpu("t30", env), time.time()
    time.sleep(args.window)
    cpu1, t1 = supervisor_cpu("t30", env), time.time()
    last = 24.0  # the kept log holds a VM's last 5 checks: 25 s of them
    probes = probes_between(project, t1 - last, t1)
    print(f"| up -d --wait of {n} tiny guests, 10 at a time | {took:.1f} s,"
          f" {healthy(project)} healthy |")  # fmt: skip
    print(f"| supervisor CPU over {t1 - t0:.0f} s | {(cpu1 - cpu0) / (t1 - t0) * 100:.1f} %"
          " of one core |")  # fmt: skip
    print(f"| checks in the last {last:.0f} s | {probes} (every 5 s: {n * last / 5:.0f}) |")
    ps = median_cli(["ps"], project, env, repeat)
    print(f"| ps of {n} healthy guests | {ps:.3f} s |")
    cli(EXE, ["destroy", "--progress", "quiet"], project, env)


if __name__ == "__main__":
    main()
