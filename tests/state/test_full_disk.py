"""A full disk wedges nothing (#13, item 5): what the tool writes appears whole or not at
all, ENOSPC is an error naming the file and the free space, and once there is room again the
same call converges. On a real tmpfs of 256 KiB, in a mount namespace of the test's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from orchestrator.errors import StateError
    from orchestrator.guest.cloudinit import write_seed_iso
    from orchestrator.guest.secrets import ensure_project_key
    from orchestrator.state.files import ProjectState, StateDir
    from orchestrator.supervisor.eventlog import EventLog

    root = Path(sys.argv[1])
    log = EventLog(root / "events")
    log.append("web", "FIRST", {})
    filler = root / "filler"
    with filler.open("wb", buffering=0) as fh:  # the disk is full...
        try:
            while True:
                fh.write(b"x" * 4096)
                fh.flush()
        except OSError:
            pass
    os.truncate(filler, filler.stat().st_size - 3000)  # ... but for a private key's room
    seen = {}
    for name, write in [
        ("key", lambda: ensure_project_key(root / "ssh", "demo")),
        ("seed", lambda: write_seed_iso(root / "seed.iso", {"user-data": b"x" * 8192})),
        ("state", lambda: StateDir(root / "state").write_state(ProjectState(project="x" * 9000))),
    ]:
        try:
            write()
            seen[name] = "written"
        except StateError as err:
            seen[name] = str(err)
    try:
        for i in range(100):  # a record bigger than what is left
            log.append("web", "BIG", {"pad": "x" * 3000})
        seen["log"] = "written"
    except OSError as err:
        seen["log"] = err.strerror
    seen["records"] = [r.event for r in log.read()]
    seen["left"] = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p != filler)
    filler.unlink()  # room again: the same calls converge
    key = ensure_project_key(root / "ssh", "demo")
    write_seed_iso(root / "seed.iso", {"user-data": b"x" * 8192})
    StateDir(root / "state").write_state(ProjectState(project="x" * 9000))
    seen["seq"] = log.append("web", "AGAIN", {}).seq
    seen["final"] = [r.event for r in log.read()]
    seen["public"] = (root / "ssh" / "id_ed25519.pub").read_text().strip() == key.public_line
    seen["after"] = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    print(json.dumps(seen))
    """
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to mount a tmpfs"
)
def test_a_full_disk_leaves_nothing_half_written_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "small"
    root.mkdir()
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         'mount -t tmpfs -o size=256k,mode=0700 tmpfs "$1" && exec "$2" -c "$3" "$1"',
         "-", str(root), sys.executable, SCRIPT],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    for name in ("key", "seed", "state"):
        assert "no space left" in seen[name], seen
        assert "free there" in seen[name]
    assert str(root / "seed.iso") in seen["seed"]
    # no half files: no tmp files, no seed; the ssh directory may hold the private key
    # (written whole) or nothing
    assert not [p for p in seen["left"] if p.startswith(".") or ".tmp" in p], seen["left"]
    assert "seed.iso" not in seen["left"]
    assert seen["public"] is True
    # the event log: every record there parses; the one that did not fit is not there at all
    assert seen["log"] == "No space left on device"
    assert seen["records"][0] == "FIRST"
    assert set(seen["records"]) <= {"FIRST", "BIG"}
    assert seen["seq"] == len(seen["records"]) + 1
    assert seen["final"] == [*seen["records"], "AGAIN"]  # not glued to half a record
    assert {"ssh/id_ed25519", "ssh/id_ed25519.pub", "seed.iso", "state/state.json"} <= set(
        seen["after"]
    )
