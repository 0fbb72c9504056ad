"""Which network mode a command runs in, and why: pure."""

from __future__ import annotations

import pytest

from orchestrator.errors import UsageError
from orchestrator.runtime.netmode import MODE_VARIABLE, network_mode


def test_the_mode_follows_the_capability_unless_forced() -> None:
    assert network_mode({}, net_admin=True)[0] == "host"
    assert network_mode({}, net_admin=False)[0] == "rootless"
    assert network_mode({MODE_VARIABLE: "auto"}, net_admin=False)[0] == "rootless"
    assert network_mode({MODE_VARIABLE: ""}, net_admin=True)[0] == "host"
    assert network_mode({MODE_VARIABLE: "rootless"}, net_admin=True) == (
        "rootless",
        f"{MODE_VARIABLE}=rootless",
    )
    assert network_mode({MODE_VARIABLE: "host"}, net_admin=False)[0] == "host"
    assert "CAP_NET_ADMIN" in network_mode({}, net_admin=True)[1]
    with pytest.raises(UsageError, match="use host, rootless or auto"):
        network_mode({MODE_VARIABLE: "bridge"}, net_admin=True)
