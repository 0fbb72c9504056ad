"""OVMF for firmware: uefi: which pair is taken, and a VM's own variables."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from orchestrator.guest.firmware import FirmwareError, Ovmf, find_ovmf, required_ovmf, vm_variables


def test_the_first_whole_pair_is_taken(tmp_path: Path) -> None:
    (tmp_path / "a-code").write_bytes(b"c")  # its variables are missing: not a pair
    (tmp_path / "b-code").write_bytes(b"c")
    (tmp_path / "b-vars").write_bytes(b"v")
    pairs = [(str(tmp_path / f"{p}-code"), str(tmp_path / f"{p}-vars")) for p in "abc"]
    assert find_ovmf(pairs) == Ovmf(tmp_path / "b-code", tmp_path / "b-vars")
    assert find_ovmf(pairs[:1]) is None


def test_no_ovmf_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.guest.firmware.find_ovmf", lambda: None)
    with pytest.raises(FirmwareError, match="apt-get install ovmf"):
        required_ovmf()


def test_a_vms_variables_are_its_own_kept_and_private(tmp_path: Path) -> None:
    template = tmp_path / "OVMF_VARS.fd"
    template.write_bytes(b"\0" * 4096)
    ovmf = Ovmf(tmp_path / "OVMF_CODE.fd", template)
    mine = tmp_path / "vm" / "efivars.fd"
    mine.parent.mkdir()
    assert vm_variables(ovmf, mine) == mine
    assert mine.read_bytes() == template.read_bytes()
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    mine.write_bytes(b"\1" * 4096)  # what the guest stored (boot entries): kept
    vm_variables(ovmf, mine)
    assert mine.read_bytes() == b"\1" * 4096
    mine.write_bytes(b"\1" * 100)  # another OVMF's size: made anew
    vm_variables(ovmf, mine)
    assert mine.read_bytes() == template.read_bytes()
