"""Health kept by the supervisor (#14), measured.

  a. a no-op `up -d --wait` and `ps` on running projects: 3 tiny guests (each with a
     healthcheck, healthy) and 100 no-disk VMs; baseline in the same run: the CLI's floor,
     `config --quiet` of the same file (start-up and loading, nothing asked of systemd);
     with --baseline-exe, also the same commands by another build (an earlier tree's venv).
  b. the supervisor's CPU while N tiny guests sit healthy, probed every 5 s (a check of
     their own) over kept SSH connections: CPU seconds per wall second over a minute, and
     the checks it ran in the window's last 24 s (each VM's kept log holds its last 5).

Usage: .venv/bin/python bench/health.py [--guests 30] [--repeat 5] [--baseline-exe PATH]
       [--part a|b|all]
Where PID 1 is not systemd it starts a private user manager (needs root), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.systemd_units import user_manager_env
from bench.whole_tool import median_cli, no_disk_project, run_cli
from tests.guest_images.build import build

EXE = str(Path(sys.executable).parent / "qemu-compose")
SETTLE = 15.0  # seconds between `up` and the measures of a project (100 firmwares booting)


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


def cli(exe: str, args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one run."""
    wall, usage = run_cli(exe, args, cwd, env)
    return wall, usage.ru_utime + usage.ru_stime


def medians(
    builds: list[tuple[str, str]], commands: list[list[str]], cwd: Path, env: dict[str, str],
    repeat: int,
) -> dict[tuple[str, int], tuple[float, float]]:  # fmt: skip
    """{(build, command index): (median wall, median CPU)}, the builds and commands taken in
    turn at each repetition: this machine drifts by tens of percent within minutes."""
    runs: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(repeat):
        for name, exe in builds:
            for i, args in enumerate(commands):
                runs.setdefault((name, i), []).append(cli(exe, args, cwd, env))
    return {
        key: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
        for key, got in runs.items()
    }


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
    parser.add_argument("--part", choices=["a", "b", "all"], default="all")
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
    print(f"# health.py  ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)")
    if args.part in ("a", "all"):
        running_projects(args, root, env)
    if args.part in ("b", "all"):
        supervisor_at_rest(args, root, env)


def running_projects(args: argparse.Namespace, root: Path, env: dict[str, str]) -> None:
    repeat = args.repeat
    print(f"\n## a. on running projects (s, median of {repeat})")
    print("(wall seconds, in brackets the CLI's own CPU seconds; the builds and commands are"
          " taken in turn at each repetition)")  # fmt: skip
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
        time.sleep(SETTLE)  # at rest: a just-started QEMU runs its firmware for seconds
        got = medians(builds, [up, ["ps"], ["config", "--quiet"]], project, env, repeat)
        for build_name, _ in builds:
            (noop, noop_cpu), (ps, ps_cpu), (floor, floor_cpu) = (
                got[build_name, i] for i in range(3)
            )
            print(f"| {label} | {build_name} | {noop:.3f} ({noop_cpu:.3f}) | {ps:.3f}"
                  f" ({ps_cpu:.3f}) | {floor:.3f} ({floor_cpu:.3f}) | {noop / floor:.2f}x |"
                  f" {ps / floor:.2f}x |", flush=True)  # fmt: skip
        cli(EXE, ["destroy", "--progress", "quiet"], project, env)


def supervisor_at_rest(args: argparse.Namespace, root: Path, env: dict[str, str]) -> None:
    repeat, n = args.repeat, args.guests
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
