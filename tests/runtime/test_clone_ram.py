"""Where a warm template's RAM is read from: the one memfd of the guest's RAM size among its
QEMU's fds (runtime.clones), found in a real process's /proc (this one's, holding memfds
named as QEMU names its own)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from orchestrator.runtime.clones import CloneError, open_ram_memfd

NAME = "memory-backend-memfd"  # (hostmem-memfd.c: /proc shows it as /memfd:NAME (deleted))
SIZE = 1 << 20


@pytest.fixture
def memfds() -> Iterator[list[int]]:
    made: list[int] = []
    yield made
    for fd in made:
        os.close(fd)


def memfd(made: list[int], size: int, name: str = NAME) -> int:
    fd = os.memfd_create(name)
    os.ftruncate(fd, size)
    made.append(fd)
    return fd


def test_the_memfd_of_the_rams_size_is_opened_on_its_own(memfds: list[int]) -> None:
    ram = memfd(memfds, SIZE)
    os.pwrite(ram, b"guest", 0)
    memfd(memfds, SIZE // 2)  # another backend's, of another size
    memfd(memfds, SIZE, name="something-else")  # not a backend of QEMU's
    fd = open_ram_memfd(os.getpid(), SIZE)
    try:
        assert os.fstat(fd).st_size == SIZE
        assert os.pread(fd, 5, 0) == b"guest"  # that one, held open by its own fd
        assert os.fstat(fd).st_ino == os.fstat(ram).st_ino
    finally:
        os.close(fd)


@pytest.mark.parametrize("sizes", [[], [SIZE // 2], [SIZE, SIZE]])
def test_none_or_two_of_the_rams_size_is_an_error(memfds: list[int], sizes: list[int]) -> None:
    for size in sizes:
        memfd(memfds, size)
    before = sorted(os.listdir("/proc/self/fd"))
    with pytest.raises(CloneError, match=f"{sizes.count(SIZE)} memfds of {SIZE} bytes"):
        open_ram_memfd(os.getpid(), SIZE)
    assert sorted(os.listdir("/proc/self/fd")) == before  # none left open


def test_a_process_gone_is_an_os_error_to_wrap() -> None:
    with pytest.raises(FileNotFoundError):  # (runtime.clones says it as a CloneError)
        open_ram_memfd(1 << 30, SIZE)
