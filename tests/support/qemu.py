"""Real QEMU processes for tests: no-disk VMs (cheap QMP peers) and a power-button guest.

A no-disk VM (``-S``, no disk, TCG) starts in well under a second, answers QMP and emits
STOP/RESUME/POWERDOWN/SHUTDOWN. The power-button guest is a 512-byte boot sector that SeaBIOS
runs: it enables the ACPI power-button event, waits for it, and powers the machine off
through the ICH9 PM1a control register, as an operating system would; so a graceful
powerdown can be tested end to end in a second or two, without any disk image.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from qmp import monitor_args

QEMU = shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"

# 16-bit real mode at 0x7c00 (q35: ACPI PM base 0x600, as SeaBIOS sets it up):
#   mov dx,0x602; mov ax,0x100; out dx,ax      PM1a_EN: power button enabled
#   mov dx,0x402; mov al,'R'; out dx,al        "ready" on the debug console
# wait:
#   mov dx,0x600; in ax,dx; test ax,0x100; jz wait     PM1a_STS: power button pressed?
#   mov dx,0x604; mov ax,0x2000; out dx,ax     PM1a_CNT: SLP_EN, S5 -> power off
#   hlt; jmp $
_POWER_BUTTON_CODE = bytes.fromhex(
    "ba0206" "b80001" "ef"
    "ba0204" "b052" "ee"
    "ba0006" "ed" "a90001" "74f7"
    "ba0406" "b80020" "ef"
    "f4" "ebfe"
)  # fmt: skip


# A guest that powers off by itself at once (as `poweroff` in a guest would):
#   mov dx,0x604; mov ax,0x2000; out dx,ax; hlt; jmp $
POWEROFF_CODE = bytes.fromhex("ba0406" "b80020" "ef" "f4" "ebfe")  # fmt: skip
# A guest whose kernel panics at once and says so to the pvpanic device (-device pvpanic):
#   mov dx,0x505; mov al,1; out dx,al; hlt; jmp $
PANIC_CODE = bytes.fromhex("ba0505" "b001" "ee" "f4" "ebfe")  # fmt: skip


def power_button_boot_sector(code: bytes = _POWER_BUTTON_CODE) -> bytes:
    """A disk image (1 MiB: SeaBIOS will not boot a one-sector disk) that boots that code."""
    return (code.ljust(510, b"\0") + b"\x55\xaa").ljust(1 << 20, b"\0")


def short_tempdir(prefix: str = "qc-") -> Path:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class Vm:
    """One QEMU process with qemu-compose's two QMP monitors."""

    directory: Path
    name: str = "vm"
    paused: bool = True  # -S: no guest code runs until "cont"
    boot_sector: bool = False  # boot the power-button guest
    boot_code: bytes | None = None  # ... or this code (POWEROFF_CODE, PANIC_CODE)
    extra: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def supervision_socket(self) -> str:
        return str(self.directory / f"{self.name}.qmp")

    @property
    def control_socket(self) -> str:
        return str(self.directory / f"{self.name}.ctl")

    @property
    def debugcon(self) -> Path:
        return self.directory / f"{self.name}.debugcon"

    def guest_ready(self) -> bool:
        """The power-button guest says "R" once it listens for the button."""
        return self.debugcon.exists() and self.debugcon.read_bytes().endswith(b"R")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [
            QEMU, "-name", self.name, "-accel", "tcg", "-machine", "q35", "-m", "64",
            "-nodefaults", "-display", "none", "-no-user-config",
            *monitor_args(self.supervision_socket, self.control_socket),
        ]  # fmt: skip
        if self.paused:
            argv.append("-S")
        if self.boot_sector or self.boot_code:
            image = self.directory / f"{self.name}-boot.img"
            image.write_bytes(power_button_boot_sector(self.boot_code or _POWER_BUTTON_CODE))
            argv += [
                "-drive", f"file={image},format=raw,if=none,id=boot",
                "-device", "virtio-blk-pci,drive=boot,bootindex=1",
                "-chardev", f"file,id=debugcon,path={self.debugcon}",
                "-device", "isa-debugcon,iobase=0x402,chardev=debugcon",
            ]  # fmt: skip
        return argv + self.extra

    def start(self) -> Vm:
        for sock in (self.supervision_socket, self.control_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(sock)
        log = (self.directory / f"{self.name}.log").open("wb")
        self.process = subprocess.Popen(
            self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
        log.close()
        deadline = time.monotonic() + 20
        while not (
            Path(self.supervision_socket).is_socket() and Path(self.control_socket).is_socket()
        ):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"qemu exited with {self.process.returncode}: "
                    + (self.directory / f"{self.name}.log").read_text(errors="replace")
                )
            if time.monotonic() > deadline:
                raise RuntimeError("qemu made no QMP socket within 20 s")
            time.sleep(0.01)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
