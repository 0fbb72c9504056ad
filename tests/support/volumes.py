"""What a VM left on a disk image, read from the host: no guest needs to boot for it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def ext4_file(image: Path, name: str, scratch: Path) -> str:
    """The file ``name`` of the ext4 filesystem that fills ``image`` (a volume: qcow2 or raw),
    read with debugfs from a raw copy at ``scratch`` (removed after)."""
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(image), str(scratch)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    try:
        read = subprocess.run(
            ["debugfs", "-R", f"cat {name}", str(scratch)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
    finally:
        scratch.unlink()
    return read.stdout
