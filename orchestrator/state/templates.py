"""Warm templates: the saved state of a warm VM's first replica, from which its other
replicas start (runtime.clones).

A template is a directory, ``.qemu-compose/templates/<definition>/``, holding ``state`` (QEMU's
migration stream of the replica's devices, and of its RAM unless ``ram`` has it), ``ram``
(the guest's RAM as a file, which the clones map privately: see guest.qemu_argv.RamFile;
never written once the template is whole), ``disk.qcow2`` (a copy of its disk at the same
instant, backed by the same base image) and ``template.json`` (the record, written last: a
directory without it is nothing). A new template is written beside the old one under
a temporary name and swapped in whole. A template fits a replica while the definition's shape,
the accelerator, QEMU and the base image file are what it was made with; one that no longer
fits is removed by the next `up` of its VM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import msgspec

from .files import atomic_write, private_dir, read_struct, sync_dir

VERSION = 2  # 2: the RAM file (ram_bytes); a record of another version is not read


class ImageFile(msgspec.Struct, frozen=True):
    """The base image a template's disk is backed by, as it was: a changed file (pulled
    again) would corrupt every disk made from the template."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> ImageFile:
        st = path.stat()
        return cls(str(path), st.st_size, st.st_mtime_ns)


class TemplateRecord(msgspec.Struct, frozen=True, kw_only=True):
    version: int = VERSION
    definition: str
    source: str  # the replica it was saved from
    saved_at: float
    shape: dict[str, str]  # what the definition was (runtime.changes)
    accel: str
    qemu: str  # the version that saved it: the one that can load it
    image: ImageFile | None = None
    has_disk: bool = True  # a VM without an image has no disk: its clones have none either
    macs: dict[str, str] = {}  # netdev -> MAC: what the clones' guests have, to be changed
    user: str | None = None  # the guest account its disk has
    state_bytes: int = 0
    ram_bytes: int = 0  # the RAM file's size (0: none, the state holds the RAM)
    disk_bytes: int = 0
    save_seconds: float = 0.0  # how long the source stood still


class TemplatePaths(msgspec.Struct, frozen=True):
    directory: Path

    @property
    def record(self) -> Path:
        return self.directory / "template.json"

    @property
    def state(self) -> Path:
        return self.directory / "state"

    @property
    def ram(self) -> Path:
        return self.directory / "ram"

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"


class Templates:
    """The templates of one project, under its state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "templates"

    def paths(self, definition: str) -> TemplatePaths:
        return TemplatePaths(self.root / definition)

    def read(self, definition: str) -> TemplateRecord | None:
        """The template of ``definition``, if one is there whole."""
        paths = self.paths(definition)
        record = read_struct(paths.record, TemplateRecord)
        try:  # (sizes as recorded: nothing cut short by a power cut is taken for whole)
            if record is None or record.version != VERSION:
                return None  # (another qemu-compose's: made again)
            if paths.state.stat().st_size != record.state_bytes:
                return None
            if record.has_disk and paths.disk.stat().st_size != record.disk_bytes:
                return None
            if record.ram_bytes and paths.ram.stat().st_size != record.ram_bytes:
                return None
        except OSError:
            return None
        return record

    def usage(self, definition: str) -> int:
        """Bytes its files take on disk (a sparse RAM file or disk: what is allocated)."""
        paths = self.paths(definition)
        total = 0
        for path in (paths.record, paths.state, paths.ram, paths.disk):
            with contextlib.suppress(OSError):
                total += path.stat().st_blocks * 512
        return total

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith("."))

    def staging(self, definition: str) -> TemplatePaths:
        """A new, empty, private directory for a template being written."""
        private_dir(self.root)
        staged = self.root / f".{definition}.{os.getpid()}.new"
        shutil.rmtree(staged, ignore_errors=True)
        private_dir(staged)
        return TemplatePaths(staged)

    def commit(self, definition: str, staged: TemplatePaths, record: TemplateRecord) -> None:
        """The staged template, its record written last, in place of the old one."""
        atomic_write(staged.record, msgspec.json.encode(record))
        target = self.paths(definition).directory
        old = self.root / f".{definition}.{os.getpid()}.old"
        if target.exists():
            os.replace(target, old)
        os.replace(staged.directory, target)
        sync_dir(self.root)
        shutil.rmtree(old, ignore_errors=True)

    def discard(self, staged: TemplatePaths) -> None:
        """A staged template that will not be committed."""
        shutil.rmtree(staged.directory, ignore_errors=True)

    def remove(self, definition: str) -> bool:
        """Forget ``definition``'s template (its record first); True if there was one."""
        paths = self.paths(definition)
        if not paths.directory.exists():
            return False
        paths.record.unlink(missing_ok=True)
        shutil.rmtree(paths.directory, ignore_errors=True)
        return True

    def clean_staging(self) -> None:
        """Leftovers of writes that did not finish (a crash mid-save)."""
        if self.root.is_dir():
            for leftover in self.root.glob(".*"):
                shutil.rmtree(leftover, ignore_errors=True)


def misfits(
    record: TemplateRecord,
    shape: dict[str, str],
    accel: str,
    qemu: str,
    image: ImageFile | None,
) -> list[str]:
    """Why a template no longer fits its definition (nothing: it does). Any field of the
    shape counts, but those only qemu-compose reads: the template's guest ran the rest."""
    found = [
        f"{name} changed"
        for name in sorted(set(record.shape) | set(shape))
        if name not in IGNORED and record.shape.get(name) != shape.get(name)
    ]
    if accel != record.accel:
        found.append(f"saved on {record.accel}, would run on {accel}")
    if qemu != record.qemu:
        found.append(f"saved by QEMU {record.qemu}, this is {qemu}")
    if image != record.image:
        found.append("its base image file changed")
    return found


# What a template does not depend on: read by qemu-compose alone, or set on each QEMU's command
# line (a clone gets its own ports).
IGNORED = frozenset({"depends_on", "healthcheck", "ssh.user", "ports", "ssh.port", "restart",
                     "stop_grace_period"})  # fmt: skip
