"""Typed QMP events and the monitor argv fragment (pure)."""

from __future__ import annotations

import pytest

from qmp import GenericEvent, check_socket_path, monitor_args, parse_event
from qmp.events import BlockIoError, Shutdown, Stop


def test_known_event_is_typed_with_qemu_timestamp() -> None:
    event = parse_event(
        {
            "event": "SHUTDOWN",
            "data": {"guest": True, "reason": "guest-shutdown"},
            "timestamp": {"seconds": 1700000000, "microseconds": 250000},
        }
    )
    assert event == Shutdown(timestamp=1700000000.25, guest=True, reason="guest-shutdown")
    assert event.event == "SHUTDOWN"
    assert event.data() == {"guest": True, "reason": "guest-shutdown"}


def test_event_without_data() -> None:
    event = parse_event({"event": "STOP", "timestamp": {"seconds": 5, "microseconds": 0}})
    assert event == Stop(timestamp=5.0)
    assert event.data() == {}


def test_kebab_case_fields_and_unknown_fields() -> None:
    event = parse_event(
        {
            "event": "BLOCK_IO_ERROR",
            "data": {
                "device": "",
                "node-name": "root",
                "operation": "write",
                "action": "stop",
                "nospace": True,
                "reason": "No space left on device",
                "added-in-qemu-9": 1,
            },
            "timestamp": {"seconds": 1, "microseconds": 0},
        }
    )
    assert isinstance(event, BlockIoError)
    assert (event.node_name, event.nospace) == ("root", True)
    assert event.data()["node-name"] == "root"


def test_unknown_event_is_generic() -> None:
    event = parse_event(
        {
            "event": "RTC_CHANGE",
            "data": {"offset": 3},
            "timestamp": {"seconds": 2, "microseconds": 5},
        }
    )
    assert isinstance(event, GenericEvent)
    assert (event.event, event.data(), event.timestamp) == ("RTC_CHANGE", {"offset": 3}, 2.000005)


def test_a_known_event_of_another_shape_is_kept_generic() -> None:
    event = parse_event({"event": "SHUTDOWN", "data": {"guest": "maybe"}, "timestamp": {}})
    assert isinstance(event, GenericEvent)
    assert event.event == "SHUTDOWN"


def test_monitor_args_escape_commas() -> None:
    assert monitor_args("/run/a,b/qmp.sock", "/run/c.sock") == [
        "-chardev",
        "socket,id=qmp-supervise,path=/run/a,,b/qmp.sock,server=on,wait=off",
        "-mon",
        "chardev=qmp-supervise,mode=control",
        "-chardev",
        "socket,id=qmp-control,path=/run/c.sock,server=on,wait=off",
        "-mon",
        "chardev=qmp-control,mode=control",
    ]


def test_socket_paths_longer_than_a_unix_socket_allows() -> None:
    assert check_socket_path("/" + "a" * 106) == "/" + "a" * 106
    with pytest.raises(ValueError, match="longer than the 107"):
        monitor_args("/" + "a" * 107, "/short")
