"""The whole tool, measured against baselines run in the same script.

  a. `up -d --wait` of N no-disk VMs (healthcheck disabled: ready when QEMU runs) against
     (i) a loop starting the same QEMU command lines directly (the physical limit) and
     (ii) `systemd-run --user` for each, one after another (the prototype's way);
     each ends when every VM's QMP says "running".
  b. a dependency graph 5 deep and 10 wide (each VM depends on two of the layer before):
     wall time against the critical path (5 x the start of one VM, measured here).
  c. a no-op `up`, and `ps`, on the largest N running.
  d. CLI start-up: `--help`, and `ps` of a project with nothing created.
  e. peak memory (VmHWM / ru_maxrss) of the CLI's `up` and of the project's supervisor.

Usage: .venv/bin/python bench/whole_tool.py [--sizes 1,10,50,100] [--repeat 3]
Where PID 1 is not systemd it starts a private user manager (needs root), as the tests do.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.systemd_units import user_manager_env
from netcfg import Forward, choose_port, mac_address
from orchestrator.guest.accel import choose_accel, read_host_facts
from orchestrator.guest.qemu_argv import UserNic, VmLaunch, qemu_argv

EXE = str(Path(sys.executable).parent / "qemu-compose")
QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"


def no_disk_project(directory: Path, name: str, vms: dict[str, list[str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", "vms:"]
    for vm, needs in vms.items():
        deps = f", depends_on: [{', '.join(needs)}]" if needs else ""
        lines.append(f"  {vm}: {{memory: 64, cpu: 1, healthcheck: {{disable: true}}{deps}}}")
    (directory / "qemu-compose.yaml").write_text("\n".join(lines) + "\n")
    return directory


def run_cli(
    exe: str, args: list[str], cwd: Path, env: dict[str, str]
) -> tuple[float, resource.struct_rusage]:
    """Seconds and resource usage (wait4) of one run of ``exe``; SystemExit when it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [exe, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        err = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"{exe} {' '.join(args)} failed: {err[-2000:]}")
    return elapsed, usage


def timed_cli(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of a CLI run."""
    elapsed, usage = run_cli(EXE, args, cwd, env)
    return elapsed, usage.ru_maxrss


def qmp_running(path: str) -> bool:
    """One raw QMP exchange: is the VM running? (False while the socket is not there yet.)"""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(path)
            reader = sock.makefile("rb")
            reader.readline()  # greeting
            sock.sendall(b'{"execute":"qmp_capabilities"}\n')
            reader.readline()
            sock.sendall(b'{"execute":"query-status"}\n')
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply:
                    return bool(reply["return"]["running"])
    except (OSError, ValueError):
        return False


def wait_all_running(sockets: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    pending = list(sockets)
    while pending:
        pending = [s for s in pending if not qmp_running(s)]
        if pending and time.monotonic() > deadline:
            raise SystemExit(f"{len(pending)} VMs not running after {timeout} s")
        if pending:
            time.sleep(0.01)


def launches(directory: Path, n: int) -> list[VmLaunch]:
    """The command lines qemu-compose gives no-disk VMs: with the user-mode NIC and its SSH
    forward, which every VM has."""
    accel = choose_accel("auto", read_host_facts())
    out = []
    ports: set[int] = set()
    for i in range(n):
        port = choose_port(f"v{i}", None, taken=ports, start=40000)
        ports.add(port)
        nic = UserNic("nic0", mac_address("bench", f"v{i}", "user"), (Forward(port, 22),))
        d = directory / f"v{i}"
        d.mkdir(parents=True, exist_ok=True)
        out.append(
            VmLaunch(
                name=f"v{i}",
                accel=accel,
                cpus=1,
                memory_mib=64,
                machine="q35",
                console_socket=str(d / "console.sock"),
                console_log=str(d / "console.log"),
                qmp_supervision=str(d / "qmp.sock"),
                qmp_control=str(d / "qmp-ctl.sock"),
                pidfile=str(d / "qemu.pid"),
                nics=(nic,),
                qemu=QEMU,
            )
        )
    return out


def baseline_direct(directory: Path, n: int) -> float:
    vms = launches(directory, n)
    started = time.perf_counter()
    processes = [
        subprocess.Popen(qemu_argv(vm), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for vm in vms
    ]
    wait_all_running([vm.qmp_control for vm in vms])
    elapsed = time.perf_counter() - started
    for p in processes:
        p.kill()
    for p in processes:
        p.wait()
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed


def baseline_systemd_run(directory: Path, n: int, env: dict[str, str]) -> float:
    vms = launches(directory, n)
    units = [f"qc-bench-{uuid.uuid4().hex[:8]}-{vm.name}" for vm in vms]
    started = time.perf_counter()
    for unit, vm in zip(units, vms, strict=True):
        subprocess.run(
            ["systemd-run", "--user", "--quiet", f"--unit={unit}", "--", *qemu_argv(vm)],
            env=env,
            check=True,
        )
    wait_all_running([vm.qmp_control for vm in vms])
    elapsed = time.perf_counter() - started
    subprocess.run(["systemctl", "--user", "kill", "--signal=KILL", *units], env=env, check=False)
    subprocess.run(["systemctl", "--user", "stop", *units], env=env, check=False)
    subprocess.run(["systemctl", "--user", "reset-failed", *units], env=env, check=False)
    shutil.rmtree(directory, ignore_errors=True)
    return elapsed


def supervisor_hwm_kib(project: str, env: dict[str, str]) -> int:
    unit = f"qemu-compose-{project}-supervisor.service"
    pid = subprocess.run(
        ["systemctl", "--user", "show", "-p", "MainPID", "--value", unit],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def median(f: Callable[[], float], repeat: int) -> float:
    return statistics.median(f() for _ in range(repeat))


def median_cli(args: list[str], cwd: Path, env: dict[str, str], repeat: int) -> float:
    return statistics.median(timed_cli(args, cwd, env)[0] for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,50,100")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the quick measures")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="qcb-", dir="/tmp"))
    try:
        measure(sizes, args.repeat, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(sizes: list[int], repeat: int, root: Path) -> None:
    with user_manager_env() as manager_env:
        env = {k: v for k, v in manager_env.items() if not k.startswith("QEMU_COMPOSE")}
        env["XDG_STATE_HOME"] = str(root / "xdg-state")
        print(f"# whole_tool.py  ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs)")
        print("\n## a. up -d --wait of N no-disk VMs (s)")
        print("| N | qemu-compose up | direct QEMU loop | systemd-run loop | ours / direct |"
              " ours - direct |")  # fmt: skip
        print("|---:|---:|---:|---:|---:|---:|")
        n = max(sizes)
        extra: list[str] = []
        for size in sizes:
            project = no_disk_project(
                root / f"up{size}", f"up{size}", {f"v{i}": [] for i in range(size)}
            )
            ours, rss = timed_cli(["up", "-d", "--wait", "--progress", "quiet"], project, env)
            if size == n:  # c and e on the largest, before any baseline runs beside it
                noop = median_cli(["up", "-d", "--progress", "quiet"], project, env, repeat)
                ps = median_cli(["ps"], project, env, repeat)
                extra += [
                    f"\n## c. on {n} running VMs (s, median of {repeat})",
                    f"| no-op up | {noop:.3f} |\n| ps | {ps:.3f} |",
                    f"\n## e. peak memory with {n} VMs (MiB)",
                    f"| CLI up (ru_maxrss) | {rss / 1024:.1f} |",
                    f"| supervisor (VmHWM) | {supervisor_hwm_kib(project.name, env) / 1024:.1f} |",
                ]
            timed_cli(["destroy", "--progress", "quiet"], project, env)
            direct = baseline_direct(root / f"direct{size}", size)
            sdrun = baseline_systemd_run(root / f"sdrun{size}", size, env)
            print(f"| {size} | {ours:.2f} | {direct:.2f} | {sdrun:.2f} | {ours / direct:.2f}x |"
                  f" {ours - direct:+.2f} |", flush=True)  # fmt: skip
        print("\n".join(extra), flush=True)

        print("\n## b. a dependency graph 5 deep, 10 wide (s)")
        single = no_disk_project(root / "single", "single", {"v": []})
        one, _ = timed_cli(["up", "-d", "--wait", "--progress", "quiet"], single, env)
        timed_cli(["destroy", "--progress", "quiet"], single, env)
        graph = {
            f"l{d}v{i}": ([f"l{d - 1}v{i}", f"l{d - 1}v{(i + 1) % 10}"] if d else [])
            for d in range(5)
            for i in range(10)
        }
        dag = no_disk_project(root / "dag", "dag", graph)
        wall, _ = timed_cli(["up", "-d", "--wait", "--progress", "quiet"], dag, env)
        timed_cli(["destroy", "--progress", "quiet"], dag, env)
        help_time = median(lambda: timed_cli(["--help"], root, env)[0], max(repeat, 5))
        empty = no_disk_project(root / "empty", "empty", {"v": []})
        empty_ps = median(lambda: timed_cli(["ps"], empty, env)[0], max(repeat, 5))
        # the critical path: 5 VMs one after another; a 1-VM up is 1 VM + the CLI's own cost
        critical = 5 * (one - empty_ps) + empty_ps
        print(f"| 1-VM up | {one:.2f} |\n| 50-VM DAG up | {wall:.2f} |")
        print(f"| critical path (5 x (1-VM up - CLI start) + CLI start) | {critical:.2f} |")
        print(f"| DAG / critical path | {wall / critical:.2f}x |")
        print("\n## d. CLI start-up (s, median)")
        print(f"| --help | {help_time:.3f} |\n| ps, nothing created | {empty_ps:.3f} |")


if __name__ == "__main__":
    main()
