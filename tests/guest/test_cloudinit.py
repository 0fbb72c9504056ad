"""Cloud-init documents built as data, and the seed ISO they go into."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pycdlib
import pytest
import yaml

from orchestrator.guest.cloudinit import (
    ENVIRONMENT_SCRIPT,
    FSTAB_SCRIPT,
    HOSTS_SCRIPT,
    RESOLVER_HOOK,
    RESOLVER_MERGE,
    RESOLVER_SCRIPT,
    GuestConfig,
    Nic,
    instance_id,
    merge,
    meta_data,
    network_config,
    seed_files,
    share_mount,
    user_data,
    volume_mount,
    write_seed_iso,
)
from orchestrator.guest.images import default_user, detect_os


@pytest.mark.parametrize(
    ("image", "user"),
    [
        (
            "https://download.fedoraproject.org/x/Fedora-Cloud-Base-Generic-42-1.1.x86_64.qcow2",
            "fedora",
        ),
        (
            "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
            "cloud-user",
        ),
        ("https://cloud-images.ubuntu.com/releases/ubuntu-24.04.img", "ubuntu"),
        ("/home/me/.cache/qemu-compose/test-guest/debian-12.qcow2", "debian"),
        ("file:///srv/CentOS-Stream-GenericCloud-9.qcow2", "centos"),
        ("https://example.org/rhel-9.4-x86_64-kvm.qcow2", "cloud-user"),
        (None, "cloud-user"),
    ],
)
def test_default_user_from_the_image_name(image: str | None, user: str) -> None:
    assert default_user(image) == user


def test_os_is_read_from_the_file_name_only() -> None:
    assert detect_os("https://debian.example/images/fedora.qcow2") == "fedora"


GUEST = GuestConfig(
    hostname="web",
    domain="demo",
    user="debian",
    ssh_public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample qemu-compose@demo",
    password_hash="$6$salt$hash",
    instance_id=instance_id("demo", "web"),
    mounts=(
        share_mount("mount0", "/srv/www", read_only=True, extra_options="cache=loose"),
        volume_mount("data", "/var/lib/data", read_only=False),
    ),
    environment={"DB_HOST": "db", "QUOTE": 'say "hi"; rm -rf /'},
    provision=("echo one", "#!/bin/sh\necho two\n"),
    nics=(Nic("52:54:00:00:00:01", "user"), Nic("52:54:aa:bb:cc:dd", "bridge", "10.89.0.1")),
    hosts=(("10.89.0.2", "db"),),
)


def test_user_data_golden() -> None:
    assert user_data(GUEST) == {
        "hostname": "web",
        "fqdn": "web.demo",
        "manage_etc_hosts": "localhost",
        "users": [
            {
                "name": "debian",
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": False,
                "passwd": "$6$salt$hash",
                "ssh_authorized_keys": [GUEST.ssh_public_key],
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
        "bootcmd": [
            ["sh", "-c", ENVIRONMENT_SCRIPT, "qemu-compose-environment",
             "DB_HOST=db", 'QUOTE=say "hi"; rm -rf /'],
            ["sh", "-c", FSTAB_SCRIPT, "qemu-compose-mounts",
             "mount0", "/srv/www", "9p", "trans=virtio,version=9p2000.L,msize=262144,nofail,ro,cache=loose", "0", "0",
             "/dev/disk/by-id/virtio-data", "/var/lib/data", "ext4", "defaults,nofail", "0", "2"],
            ["sh", "-c", "echo 1 > /proc/sys/kernel/unknown_nmi_panic 2>/dev/null || true",
             "qemu-compose-nmi-panic"],
            ["sh", "-c", HOSTS_SCRIPT, "qemu-compose-hosts", "10.89.0.2", "db", "db.demo"],
            ["sh", "-c", RESOLVER_SCRIPT, "qemu-compose-resolver", RESOLVER_MERGE, RESOLVER_HOOK,
             "demo", "10.89.0.1"],
            ["sh", "-c",
             'mkdir -p /etc/systemd/resolved.conf.d && printf "[Resolve]\\nDomains=%s\\n" "$1" > /etc/systemd/resolved.conf.d/qemu-compose.conf && { systemctl try-restart systemd-resolved.service || true; }',
             "qemu-compose-search-domain", "demo"],
        ],
        "write_files": [
            {"path": "/var/lib/qemu-compose/provision/01.sh", "content": "echo one", "permissions": "0755"},
            {"path": "/var/lib/qemu-compose/provision/02.sh", "content": "#!/bin/sh\necho two\n", "permissions": "0755"},
        ],
        "runcmd": [
            ["sh", "-c", 'echo "qemu-compose: provision step 1"; exec /var/lib/qemu-compose/provision/01.sh'],
            ["sh", "-c", 'echo "qemu-compose: provision step 2"; exec /var/lib/qemu-compose/provision/02.sh'],
        ],
    }  # fmt: skip


def test_hostile_values_stay_values() -> None:
    """A value that looks like YAML or a shell command is dumped as a string, nothing more."""
    evil = "x\nusers: [{name: root}]\n#cloud-config"
    text = seed_files(GUEST)["user-data"].decode()
    assert text.startswith("#cloud-config\n")
    assert f"- {GUEST.ssh_public_key}\n" in text  # on one line, not folded
    assert yaml.safe_load(text) == user_data(GUEST)
    hostile = GuestConfig(
        hostname="web", domain="demo", user="u", ssh_public_key="k", password_hash="h",
        instance_id="i", environment={"A": evil.replace("\n", " ")}, provision=(evil,),
    )  # fmt: skip
    data = yaml.safe_load(seed_files(hostile)["user-data"])
    assert [u["name"] for u in data["users"]] == ["u"]
    assert data["write_files"][0]["content"] == evil
    assert data["bootcmd"][0][4:] == [f"A={evil.replace(chr(10), ' ')}"]  # an argument


def test_user_cloud_config_is_merged_over_ours() -> None:
    extra = {
        "packages": ["nginx"],
        "runcmd": [["touch", "/x"]],
        "ssh_pwauth": True,
        "users": [{"name": "ops"}],
    }
    merged = merge(user_data(GUEST), extra)
    assert merged["packages"] == ["nginx"]
    assert merged["runcmd"][-1] == ["touch", "/x"]
    assert len(merged["runcmd"]) == 3
    assert [u["name"] for u in merged["users"]] == ["debian", "ops"]
    assert merged["ssh_pwauth"] is True  # the user asked for it
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_meta_data_and_network_config() -> None:
    assert meta_data(GUEST) == {"instance-id": instance_id("demo", "web"), "local-hostname": "web"}
    assert instance_id("demo", "web") == instance_id("demo", "web") != instance_id("demo", "db")
    assert network_config(GUEST) == {
        "version": 2,
        "ethernets": {
            "nic0": {
                "match": {"macaddress": "52:54:00:00:00:01"},
                "dhcp4": True,
                "dhcp-identifier": "mac",
            },
            "nic1": {
                "match": {"macaddress": "52:54:aa:bb:cc:dd"},
                "dhcp4": True,
                "dhcp-identifier": "mac",
                "dhcp4-overrides": {"use-routes": False},
                "nameservers": {"search": ["demo"], "addresses": ["10.89.0.1"]},
            },
        },
    }


def test_seed_iso_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "seed.iso"
    files = seed_files(GUEST)
    write_seed_iso(path, files)
    assert path.stat().st_mode & 0o777 == 0o600
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, data in files.items():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue() == data
    finally:
        iso.close()
    assert sorted(files) == ["meta-data", "network-config", "user-data"]


def test_vms_on_bridges_get_the_project_as_search_domain() -> None:
    data = user_data(GUEST)  # GUEST has a bridge NIC
    command = data["bootcmd"][-1]
    assert command[:2] == ["sh", "-c"]
    assert command[-1] == "demo"  # the domain is an argument ($1), never part of the script
    assert "demo" not in command[2]
    user_only = GuestConfig(
        hostname="a", domain="demo", user="u", ssh_public_key="k", password_hash="h",
        instance_id="i", nics=(Nic("52:54:00:00:00:09", "user"),),
    )  # fmt: skip
    assert [c[3] for c in user_data(user_only)["bootcmd"]] == [
        "qemu-compose-environment",
        "qemu-compose-mounts",
        "qemu-compose-nmi-panic",
        "qemu-compose-hosts",
        "qemu-compose-resolver",
    ]
    hosts, resolver = user_data(user_only)["bootcmd"][-2:]
    assert len(hosts) == 4  # no names: the block goes
    assert len(resolver) == 6  # the merge and the hook, no servers: ours go
    assert "search" not in network_config(user_only)["ethernets"]["nic0"]


def run_boot_script(script: str, etc: Path, *args: str) -> None:
    """One of our bootcmd scripts, on files under ``etc`` instead of /etc (and without the
    host's systemctl and mount -a)."""
    script = script.replace("/etc/", f"{etc}/").replace(
        "systemctl daemon-reload 2>/dev/null; mount -a 2>/dev/null; true", "true"
    )
    subprocess.run(["sh", "-c", script, "name", *args], check=True)


def test_every_boot_rewrites_our_lines_of_environment_and_fstab(tmp_path: Path) -> None:
    """A VM restarted with other environment or volumes gets exactly those; the guest's own
    lines stay; values are arguments, never script."""
    (tmp_path / "environment").write_text("LANG=C.UTF-8\n")
    (tmp_path / "fstab").write_text("LABEL=rootfs / ext4 defaults 0 1\n")
    run_boot_script(ENVIRONMENT_SCRIPT, tmp_path, "A=1", 'B=say "hi"; $(reboot)')
    run_boot_script(ENVIRONMENT_SCRIPT, tmp_path, "A=2")
    assert (tmp_path / "environment").read_text() == (
        "LANG=C.UTF-8\n# qemu-compose environment: begin\nA=2\n# qemu-compose environment: end\n"
    )
    run_boot_script(ENVIRONMENT_SCRIPT, tmp_path)
    assert (tmp_path / "environment").read_text() == "LANG=C.UTF-8\n"
    mounts = [*share_mount("mount0", str(tmp_path / "www"), read_only=True).entry()]
    run_boot_script(FSTAB_SCRIPT, tmp_path, *mounts)
    run_boot_script(FSTAB_SCRIPT, tmp_path, *mounts)
    fstab = (tmp_path / "fstab").read_text().splitlines()
    assert fstab == [
        "LABEL=rootfs / ext4 defaults 0 1",
        "# qemu-compose mounts: begin",
        " ".join(mounts),
        "# qemu-compose mounts: end",
    ]
    assert (tmp_path / "www").is_dir()  # the mount point is made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["environment", "fstab", "www"]


def test_every_boot_writes_the_network_neighbours_into_hosts(tmp_path: Path) -> None:
    """The other VMs of its bridge networks by name and by name.project, between markers
    (cloud-init's own 127.0.1.1 line and the guest's lines stay); none: the block goes."""
    (tmp_path / "hosts").write_text("127.0.0.1 localhost\n127.0.1.1 web.demo web\n")
    run_boot_script(HOSTS_SCRIPT, tmp_path, "10.89.0.9", "old", "old.demo")
    run_boot_script(
        HOSTS_SCRIPT, tmp_path, "10.89.0.2", "db", "db.demo", "10.89.0.3", "app", "app.demo"
    )
    assert (tmp_path / "hosts").read_text() == (
        "127.0.0.1 localhost\n127.0.1.1 web.demo web\n# qemu-compose hosts: begin\n"
        "10.89.0.2 db db.demo\n10.89.0.3 app app.demo\n# qemu-compose hosts: end\n"
    )
    run_boot_script(HOSTS_SCRIPT, tmp_path)
    assert (tmp_path / "hosts").read_text() == "127.0.0.1 localhost\n127.0.1.1 web.demo web\n"


RESOLV_BY_DHCLIENT = "domain demo\nsearch demo.\nnameserver 10.0.2.3\n"
RESOLV_OURS_FIRST = "search demo\nnameserver 10.89.0.1\nnameserver 10.89.1.1\nnameserver 10.0.2.3\n"


def run_resolver(etc: Path, *args: str, shell: Sequence[str] = ("sh",)) -> None:
    """RESOLVER_SCRIPT as bootcmd runs it, on files under ``etc`` instead of /etc (and the
    leases in ``etc``/leases)."""
    script, merge_, hook = (
        text.replace("/etc/", f"{etc}/").replace("/var/lib/dhcp/", f"{etc}/leases/")
        for text in (RESOLVER_SCRIPT, RESOLVER_MERGE, RESOLVER_HOOK)
    )
    subprocess.run([*shell, "-c", script, "name", merge_, hook, *args], check=True)


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
def test_dhclient_resolv_conf_gets_the_bridges_dns_first(tmp_path: Path, shell: str) -> None:
    """Where dhclient writes resolv.conf, the bridge networks' DNS servers and the project's
    domain come first every boot and after every lease (the hook), the lease's servers
    after them, once each; off the bridges, the lease's own file is left as it is."""
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    if shutil.which(argv[0]) is None:
        pytest.skip(f"no {shell}")
    hooks = tmp_path / "dhcp" / "dhclient-exit-hooks.d"
    hooks.mkdir(parents=True)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("domain demo\nsearch demo.\nnameserver 10.89.0.1\n")  # the bridge's
    (tmp_path / "leases").mkdir()  # the user-mode NIC's lease, older, then newer
    (tmp_path / "leases" / "dhclient.enp0s4.leases").write_text(
        'lease {\n  interface "enp0s4";\n  option domain-name-servers 10.0.9.9;\n}\n'
        'lease {\n  interface "enp0s4";\n  option domain-name-servers 10.0.2.3;\n}\n'
    )

    def run(*args: str) -> None:
        run_resolver(tmp_path, *args, shell=argv)

    run("demo", "10.89.0.1", "10.89.1.1")
    assert resolv.read_text() == RESOLV_OURS_FIRST
    run("demo", "10.89.0.1", "10.89.1.1")  # the next boot: the same, nothing doubled
    assert resolv.read_text() == RESOLV_OURS_FIRST
    assert oct(resolv.stat().st_mode & 0o777) == "0o644"
    # a renewed lease of the user-mode NIC: dhclient-script replaces the file, then its hook
    resolv.write_text("# by dhclient\nnameserver 10.0.2.3\noptions edns0\n")
    subprocess.run([*argv, "-c", f"reason=RENEW; . {hooks / 'qemu-compose'}"], check=True)
    assert resolv.read_text() == (
        "search demo\nnameserver 10.89.0.1\nnameserver 10.89.1.1\nnameserver 10.0.2.3\n"
        "# by dhclient\noptions edns0\n"
    )
    # restarted on no bridge: our servers are no longer added, the lease's file stays
    resolv.write_text(RESOLV_BY_DHCLIENT)
    run()
    assert resolv.read_text() == RESOLV_BY_DHCLIENT
    assert not (tmp_path / "qemu-compose" / "resolv.conf").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dhcp",
        "leases",
        "qemu-compose",
        "resolv.conf",
    ]  # nothing left behind (no temporary file)


def test_the_resolver_is_left_alone_without_dhclient_or_when_managed(tmp_path: Path) -> None:
    """No dhclient hooks (networkd, resolved, NetworkManager images): nothing written; a
    resolv.conf that is a link (resolved's stub, resolvconf) is never replaced."""
    stub = tmp_path / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    (tmp_path / "resolv.conf").symlink_to(stub)
    run_resolver(tmp_path, "demo", "10.89.0.1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resolv.conf", "stub-resolv.conf"]
    (tmp_path / "dhcp" / "dhclient-exit-hooks.d").mkdir(parents=True)
    run_resolver(tmp_path, "demo", "10.89.0.1")
    assert (tmp_path / "resolv.conf").is_symlink()
    assert stub.read_text() == "nameserver 127.0.0.53\n"


def test_a_file_that_cannot_be_read_is_left_as_it_is(tmp_path: Path) -> None:
    """Without awk (or with a file it cannot read) the guest's fstab is kept, never replaced
    by our lines alone."""
    (tmp_path / "fstab").write_text("LABEL=rootfs / ext4 defaults 0 1\n")
    script = FSTAB_SCRIPT.replace("awk ", "no-such-awk ")
    with pytest.raises(subprocess.CalledProcessError):
        run_boot_script(script, tmp_path, *share_mount("m", "/m", read_only=True).entry())
    assert (tmp_path / "fstab").read_text() == "LABEL=rootfs / ext4 defaults 0 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fstab"]
