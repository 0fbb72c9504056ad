"""Unit-name escaping exactly as ``systemd-escape`` does it, and unit object paths. Pure."""

from __future__ import annotations

import re
import string

_VALID = frozenset(string.ascii_letters + string.digits + ":_.")
_UNIT_NAME = re.compile(
    r"^[A-Za-z0-9:_.\\@-]+\.(service|socket|target|slice|scope|timer|path|mount)$"
)
UNIT_NAME_MAX = 255


def escape(text: str) -> str:
    """``systemd-escape TEXT``: "/" becomes "-", other unsafe bytes (and a leading ".") \\xNN."""
    out: list[str] = []
    for i, byte in enumerate(text.encode()):
        char = chr(byte)
        if char == "/":
            out.append("-")
        elif (char == "." and i == 0) or char not in _VALID:
            out.append(f"\\x{byte:02x}")
        else:
            out.append(char)
    return "".join(out)


def unescape(text: str) -> str:
    """``systemd-escape --unescape TEXT``."""
    raw = bytearray()
    i = 0
    while i < len(text):
        if text.startswith("\\x", i) and len(text) >= i + 4:
            raw.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            raw.extend(b"/" if text[i] == "-" else text[i].encode())
            i += 1
    return raw.decode()


def is_valid_unit_name(name: str) -> bool:
    return len(name) <= UNIT_NAME_MAX and bool(_UNIT_NAME.match(name))


def unit_object_path(unit: str) -> str:
    """The D-Bus object path of ``unit`` (sd_bus_path_encode): every byte not [A-Za-z0-9] is _xx."""
    encoded = "".join(
        chr(b) if chr(b).isascii() and chr(b).isalnum() else f"_{b:02x}" for b in unit.encode()
    )
    return f"/org/freedesktop/systemd1/unit/{encoded or '_'}"
