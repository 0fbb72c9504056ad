"""A guest shaped like Debian 12's own cloud images (tests/guest_images/boot-guest.sh): one
disk that boots through firmware and its own bootloader, ifupdown and dhclient, no
systemd-resolved. Brought up with `image:` alone, no `boot:`: one VM through OVMF (UEFI) on
a disk grown to 4 GiB, one through SeaBIOS (`firmware: bios`, the default), on one bridge
network. Slow under TCG (three to four minutes), so one test walks it all.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from orchestrator.guest.firmware import find_ovmf
from tests.guest_images.build import build
from tests.support.cli import compose, ps_rows
from tests.support.systemd_user import ManagerHandle

pytestmark = [
    pytest.mark.slow,
    pytest.mark.built_guest,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None or shutil.which("dnsmasq") is None,
        reason="needs QEMU and dnsmasq",
    ),
    pytest.mark.skipif(find_ovmf() is None, reason="needs OVMF (apt-get install ovmf)"),
]

GIB = 1 << 30


def test_a_cloud_image_boots_by_uefi_and_by_bios_and_names_resolve(
    tmp_path: Path, user_manager: ManagerHandle
) -> None:
    image = build("boot") / "debian-12-boot.qcow2"
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "note.txt").write_text("from the host\n")
    (tmp_path / "qemu-compose.yaml").write_text(
        f"""
name: cloudy
networks:
  lan: {{}}
volumes:
  data: {{size: 64M}}
vms:
  efi:
    image: {image}
    firmware: uefi
    disk: 4G
    memory: 384
    networks: [lan]
    volumes: [data:/var/lib/data, ./share:/srv/share:ro]
    environment: {{GREETING: hello}}
  legacy:
    image: {image}
    firmware: bios  # the default, said
    memory: 384
    networks: [lan]
"""
    )

    def run(vm: str, command: str) -> str:
        done = compose("ssh", vm, "--", command, cwd=tmp_path, manager=user_manager, timeout=120)
        assert done.returncode == 0, (vm, command, done.stderr)
        return done.stdout

    try:
        up = compose(
            "up", "-d", "--wait", "--progress", "quiet", cwd=tmp_path, manager=user_manager,
            timeout=900,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        rows = ps_rows(tmp_path, user_manager)
        assert {r["state"] for r in rows.values()} == {"running"}
        address = {vm: row["addresses"]["lan"] for vm, row in rows.items()}
        # the firmware each was given, and its own bootloader: no kernel from the host
        assert run("efi", "test -d /sys/firmware/efi && echo uefi || echo bios") == "uefi\n"
        assert run("legacy", "test -d /sys/firmware/efi && echo uefi || echo bios") == "bios\n"
        assert (tmp_path / ".qemu-compose/efi/efivars.fd").stat().st_size > 0
        for vm in ("efi", "legacy"):
            unit = user_manager.systemctl("show", "-p", "ExecStart", rows[vm]["unit"]).stdout
            assert str(tmp_path / ".qemu-compose" / vm / "disk.qcow2") in unit
            assert "-kernel" not in unit  # booted by the image's own bootloader
            # the image's own user (the name says Debian), the project's key, sudo
            assert run(vm, "id -un; sudo -n id -un") == "debian\nroot\n"
        # disk: 4G grew the root partition and its filesystem on first boot (growpart)
        sizes = run("efi", "lsblk -dbno SIZE /dev/vda /dev/vda3; df -B1 --output=size / | tail -1")
        disk, part, filesystem = (int(x) for x in sizes.split())
        assert disk == 4 * GIB
        assert part > 3.8 * GIB
        assert filesystem > 3.5 * GIB
        legacy_root = int(run("legacy", "df -B1 --output=size / | tail -1"))
        assert legacy_root < 2 * GIB  # the image's size: nothing asked it to grow
        # the volume, the bind mount (9p) and the environment, as on the other guest
        assert run("efi", "findmnt -no FSTYPE /var/lib/data; findmnt -no FSTYPE /srv/share") == (
            "ext4\n9p\n"
        )
        assert run("efi", "cat /srv/share/note.txt") == "from the host\n"
        assert run("efi", "echo $GREETING") == "hello\n"
        # names, both ways: by the network's DNS (dhclient wrote resolv.conf; our hook puts
        # the bridge's server and the project's domain first) and by /etc/hosts
        gateway = address["efi"].rsplit(".", 1)[0] + ".1"
        for vm, other in (("efi", "legacy"), ("legacy", "efi")):
            resolv = run(vm, "grep -E '^(search|nameserver)' /etc/resolv.conf").splitlines()
            assert resolv[:2] == ["search cloudy", f"nameserver {gateway}"], resolv
            assert "nameserver 10.0.2.3" in resolv  # the user-mode NIC's, after it
            for source in ("dns", "files"):
                for name in (other, f"{other}.cloudy"):
                    said = run(vm, f"getent -s {source} hosts {name}").split()
                    assert said[:1] == [address[other]], (vm, source, name, said)
        # a name outside the project goes on to the user-mode NIC's server (dnsmasq refuses
        # it): where the host resolves one, the guests do too
        try:
            socket.getaddrinfo("deb.debian.org", None)
        except OSError:
            pass
        else:
            assert run("legacy", "getent -s dns hosts deb.debian.org >/dev/null && echo ok") == (
                "ok\n"
            )
    finally:
        compose("destroy", "--progress", "quiet", cwd=tmp_path, manager=user_manager, timeout=300)
