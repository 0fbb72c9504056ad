"""UEFI firmware for `firmware: uefi`: OVMF's code, read-only and shared, and a VM's own copy
of its variables (boot entries, settings), made once from OVMF's template and kept with the
VM's disk.

Where OVMF lives differs between distributions; the code and the variables come as a pair
(the 4 MiB builds with their own template): the first pair found is taken.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import PeerError
from orchestrator.state.files import atomic_write

# (code, variables template), by distribution: Debian and Ubuntu (package ovmf, 4 MiB and
# 2 MiB builds), Fedora (edk2-ovmf), Arch (edk2-ovmf)
OVMF_PAIRS: tuple[tuple[str, str], ...] = (
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
    ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
    ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
)
INSTALL_HINT = "install OVMF (Debian, Ubuntu: apt-get install ovmf; Fedora, Arch: edk2-ovmf)"


class FirmwareError(PeerError):
    """UEFI was asked for and the host has no OVMF."""


@dataclass(frozen=True, slots=True)
class Ovmf:
    code: Path  # read-only, shared by every VM
    variables: Path  # the template of a VM's own variables


def find_ovmf(pairs: Sequence[tuple[str, str]] = OVMF_PAIRS) -> Ovmf | None:
    """The first pair of OVMF files that are both there, or None."""
    for code, variables in pairs:
        if Path(code).is_file() and Path(variables).is_file():
            return Ovmf(Path(code), Path(variables))
    return None


def required_ovmf() -> Ovmf:
    """OVMF, or a FirmwareError saying how to install it."""
    found = find_ovmf()
    if found is None:
        raise FirmwareError(f"firmware: uefi needs OVMF, which is not installed: {INSTALL_HINT}")
    return found


def vm_variables(ovmf: Ovmf, path: Path) -> Path:
    """The VM's own variables at ``path``: kept when there (what the guest stored, as its
    boot entries), else made from OVMF's template, whole or not at all, private. One of a
    size the code does not take (made from another OVMF's template) is made anew."""
    template = ovmf.variables.read_bytes()
    try:
        if path.stat().st_size == len(template):
            return path
    except FileNotFoundError:
        pass
    atomic_write(path, template, mode=0o600)
    return path
