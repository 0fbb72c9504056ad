"""Can this machine run VMs: `doctor`'s checks, each with the command that fixes it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orchestrator.runtime.doctor import Check


async def doctor(*, bus: str = "user") -> list[Check]:
    """systemd on the bus, QEMU, KVM, the networking tools, disk space: a Check each
    (verdict ok/warn/fail, detail, fix, required)."""
    from orchestrator.runtime.doctor import evaluate, gather

    return evaluate(await gather(bus))
