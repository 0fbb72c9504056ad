"""Build (once) and find qemu-compose's test guests, cached outside the repo.

``debian``: a small Debian 12 image with the real cloud-init (debian-guest.sh, ~2 minutes).
``tiny``: the Debian kernel with a busybox + dropbear initramfs (tiny-guest.sh, seconds).
``boot``: a whole Debian 12 disk that boots through firmware and its own bootloader, with
ifupdown and dhclient, as Debian's cloud images (boot-guest.sh, ~2 minutes).
Each is cached in ``$QC_GUEST_CACHE`` (default ``~/.cache/qemu-compose/test-guest``) under
``<kind>-<hash of its script>``, so a changed recipe builds anew; ``<kind>`` is a symlink
to the newest build, for examples that name a fixed path.

    python -m tests.guest_images.build debian|tiny|boot...   # prints the directories
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "debian": HERE / "debian-guest.sh",
    "tiny": HERE / "tiny-guest.sh",
    "boot": HERE / "boot-guest.sh",
}
OUTPUTS = {
    "debian": ("root.qcow2", "vmlinuz", "initrd.img"),
    "tiny": ("vmlinuz", "initrd.img"),
    "boot": ("debian-12-boot.qcow2",),  # named as Debian names its images: user debian
}


def cache_root() -> Path:
    return Path(os.environ.get("QC_GUEST_CACHE", "~/.cache/qemu-compose/test-guest")).expanduser()


def guest_dir(kind: str) -> Path:
    digest = hashlib.sha256(SCRIPTS[kind].read_bytes()).hexdigest()[:12]
    return cache_root() / f"{kind}-{digest}"


def build(kind: str, *, quiet: bool = True) -> Path:
    """The directory of a built guest of ``kind``, building it first if needed."""
    target = guest_dir(kind)
    done = target / ".complete"
    if done.exists():
        return target
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / f".{kind}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait for it
        if done.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        work = root / f".{target.name}.partial"
        shutil.rmtree(work, ignore_errors=True)
        result = subprocess.run(
            ["bash", str(SCRIPTS[kind]), str(work)],
            capture_output=quiet,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"building the {kind} guest failed:\n{result.stdout}\n{result.stderr}"
            )
        missing = [f for f in OUTPUTS[kind] if not (work / f).is_file()]
        if missing:
            raise RuntimeError(f"the {kind} guest build made no {missing}")
        (work / ".complete").write_text(SCRIPTS[kind].name + "\n")
        work.rename(target)
        link = root / kind
        tmp_link = root / f".{kind}.link"
        tmp_link.unlink(missing_ok=True)
        tmp_link.symlink_to(target.name)
        tmp_link.replace(link)
        # builds of older recipes, whole or failed: nothing names them now
        for old in [*root.glob(f"{kind}-*"), *root.glob(f".{kind}-*.partial")]:
            if old != target and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
    return target


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["debian"]:
        print(build(kind, quiet=False))
