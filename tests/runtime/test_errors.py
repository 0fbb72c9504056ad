"""The runtime's error boundaries: the leaf packages' errors leave it as ours. Pure."""

from __future__ import annotations

import pytest

import netcfg
import qmp
import systemd_dbus
from orchestrator.errors import PeerError, QemuComposeError, StateError, VmError
from orchestrator.progress import Stage
from orchestrator.runtime.session import peer_errors, vm_failures


@pytest.mark.parametrize(
    "leaf",
    [
        systemd_dbus.ManagerUnavailableError("no bus at unix:path=/x", "start one"),
        qmp.QmpError("the monitor went away"),
        netcfg.NetcfgError("no CAP_NET_ADMIN"),
    ],
)
def test_a_leaf_error_leaves_as_a_peer_error_from_it(leaf: Exception) -> None:
    with pytest.raises(PeerError) as caught, peer_errors():
        raise leaf
    assert caught.value.__cause__ is leaf
    assert str(caught.value) == str(leaf)
    assert caught.value.exit_status == 1


def test_leaf_errors_in_a_nursery_group_are_converted_and_the_rest_kept() -> None:
    ours = QemuComposeError("a VM name is wrong")
    leaf = qmp.QmpError("gone")
    with pytest.raises(BaseExceptionGroup) as caught, peer_errors():
        raise ExceptionGroup("nursery", [leaf, ExceptionGroup("inner", [ours])])
    outer = caught.value
    assert isinstance(outer.exceptions[0], PeerError)
    assert outer.exceptions[0].__cause__ is leaf
    inner = outer.exceptions[1]
    assert isinstance(inner, BaseExceptionGroup)
    assert inner.exceptions[0] is ours


def test_a_group_without_leaf_errors_passes_untouched() -> None:
    group = ExceptionGroup("nursery", [ValueError("a bug")])
    with pytest.raises(ExceptionGroup) as caught, peer_errors():
        raise group
    assert caught.value is group


@pytest.mark.parametrize(
    "leaf", [OSError(28, "No space left on device"), systemd_dbus.SystemdError("job failed")]
)
def test_what_fails_a_vm_names_the_vm_its_unit_and_stage(leaf: Exception) -> None:
    stage = [Stage.DISK]

    def fail_at_the_unit() -> None:
        stage[0] = Stage.UNIT  # the stage is read when it fails, not when it starts
        raise leaf

    with (
        pytest.raises(VmError) as caught,
        vm_failures("web", "qemu-compose-demo-web.service", lambda: stage[0]),
    ):
        fail_at_the_unit()
    err = caught.value
    assert (err.vm, err.stage, err.unit) == ("web", Stage.UNIT, "qemu-compose-demo-web.service")
    assert err.__cause__ is leaf
    assert str(err) == str(leaf)


def test_our_own_errors_pass_a_vm_boundary_as_they_are() -> None:
    ours = QemuComposeError("db failed: not ready in time")
    with pytest.raises(QemuComposeError) as caught, vm_failures("web", "u", lambda: Stage.DEPENDS):
        raise ours
    assert caught.value is ours


def test_a_full_disk_anywhere_is_said_plainly() -> None:
    """An ENOSPC of a writer that does not say it itself ends as a StateError naming the
    file, not as an internal error."""
    full = OSError(28, "No space left on device", "/tmp/project/.qemu-compose/web/x")
    expected = r"cannot write /tmp/project/\.qemu-compose/web/x: no space"
    with pytest.raises(StateError, match=expected), peer_errors():
        raise full
    with pytest.raises(FileNotFoundError), peer_errors():  # other OSErrors are not ours to say
        raise FileNotFoundError(2, "No such file or directory")
