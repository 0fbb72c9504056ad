"""Fixtures for qmp tests: real QEMU processes, stopped and removed after each test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.qemu import QEMU, Vm, short_tempdir

if not Path(QEMU).exists():
    pytest.skip("qemu-system-x86_64 is not installed", allow_module_level=True)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_vm(sockdir: Path) -> Iterator[Callable[..., Vm]]:
    """Start QEMUs: ``make_vm(name="a", paused=True, boot_sector=False)``."""
    started: list[Vm] = []

    def make(**kwargs: Any) -> Vm:
        vm = Vm(sockdir, **kwargs).start()
        started.append(vm)
        return vm

    yield make
    for vm in started:
        vm.stop()
