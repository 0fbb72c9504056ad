"""The commands that give a warm clone its identity: valid sh, every value an argument."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.guest import clone
from orchestrator.guest.clone import CloneIdentity, host_key, identity_command

IDENTITY = CloneIdentity(
    hostname="web-2",
    domain="shop",
    machine_id="0123456789abcdef0123456789abcdef",
    instance_id="qc-0011223344556677",
    user_macs={"52:54:00:00:00:01": "52:54:00:00:00:02"},
    bridge_macs={"52:54:00:00:01:01": "52:54:00:00:01:02"},
)


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
@pytest.mark.parametrize("script", [clone.IDENTITY_SCRIPT, clone.NETWORK_SCRIPT])
def test_the_scripts_are_valid_shell(shell: str, script: str) -> None:
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    argv = [shell, "sh", "-n"] if shell == "busybox" else [shell, "-n"]
    done = subprocess.run([*argv, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_values_reach_the_script_as_arguments_whatever_they_hold(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(clone, "IDENTITY_SCRIPT", 'printf "%s\\n" "$0" "$@"')
    odd = CloneIdentity("a b", "$(touch /tmp/x)", "'; exit 1; '", "`id`", {}, {})
    done = subprocess.run(
        ["sh", "-c", identity_command(odd, 1234.5)], capture_output=True, text=True, check=False
    )
    assert done.stdout.splitlines() == [
        "qemu-compose-identity", "a b", "$(touch /tmp/x)", "'; exit 1; '", "`id`", "1234.500",
    ]  # fmt: skip


def test_the_identity_names_each_nic_with_its_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clone, "IDENTITY_SCRIPT", 'shift 5; printf "%s\\n" "$@"')

    def run(command: str) -> list[str]:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False)
        return done.stdout.splitlines()

    assert run(identity_command(IDENTITY, 1)) == [
        "52:54:00:00:00:01", "52:54:00:00:00:02", "user",
        "52:54:00:00:01:01", "52:54:00:00:01:02", "bridge",
    ]  # fmt: skip


def test_the_new_host_key_is_read_from_what_the_command_printed() -> None:
    out = b"noise\nqemu-compose-host-key: ssh-ed25519 AAAAC3Nza\nmore\n"
    assert host_key(out) == "ssh-ed25519 AAAAC3Nza"
    assert host_key(b"qemu-compose-host-key: \n") is None  # none made (no sshd)
    assert host_key(b"") is None


def test_the_guest_says_how_long_each_step_took() -> None:
    out = b"qemu-compose-step: start 10.00\nx\nqemu-compose-step: hostname 10.50\n"
    out += b"qemu-compose-step: ids 12.25\nqemu-compose-step: bad x\n"
    assert clone.steps(out) == {"hostname": 0.5, "ids": 1.75}
    assert clone.steps(b"") == {}


def test_the_commands_fit_what_dropbear_takes() -> None:
    """dropbear refuses a command longer than 9000 bytes (its MAX_CMD_LEN: the tiny guest's
    clones lost their session when the script was in the command twice), with room: the
    longest names, a VM on eight bridge networks."""
    many = {f"52:54:00:00:01:{i:02x}": f"52:54:00:00:02:{i:02x}" for i in range(8)}
    identity = CloneIdentity(
        "w" * 63, "p" * 48, "0" * 32, "qc-0011223344556677",
        {"52:54:00:00:00:01": "52:54:00:00:00:02"}, many,
    )  # fmt: skip
    assert len(identity_command(identity, 1_700_000_000.0)) < 8500


@pytest.mark.parametrize("shell", ["sh", "dash", "bash", "busybox"])
def test_the_network_files_name_the_new_macs(shell: str, tmp_path: Path) -> None:
    """A bridge NIC's files name its new MAC; a networkd file of the user-mode NIC matches
    both (its live MAC stays the template's until it boots again: a file that matched
    neither would leave it, and the SSH session, unconfigured) and asks DHCP as the MAC."""
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell} here")
    files = {
        "etc/systemd/network/10-cloud-init-enp0s2.network":
            "[Match]\nName=enp0s2\nMACAddress=52:54:00:00:00:01\n[Network]\nDHCP=ipv4\n"
            "[Link]\nMACAddress=52:54:00:00:00:01\n",
        "run/systemd/network/10-netplan-nic0.network":
            "[Match]\nMACAddress=52:54:00:00:00:01\n",
        "etc/systemd/network/10-cloud-init-enp0s3.network":
            "[Match]\nName=enp0s3\nMACAddress=52:54:00:00:01:01\n",
        "run/systemd/network/10-netplan-nic1.link": "[Match]\nMACAddress=52:54:00:00:01:01\n",
        "etc/systemd/network/99-other.network": "[Match]\nName=en*\n",
        "etc/netplan/50-cloud-init.yaml":
            "nic0: {match: {macaddress: '52:54:00:00:00:01'}}\n"
            "nic1: {match: {macaddress: '52:54:00:00:01:01'}}\n",
        "etc/NetworkManager/system-connections/lan.nmconnection":
            "[ethernet]\nmac-address=52:54:00:00:01:01\n",
    }  # fmt: skip
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    argv = [shell, "sh"] if shell == "busybox" else [shell]
    args = ["52:54:00:00:00:01", "52:54:00:00:00:02", "user"]
    args += ["52:54:00:00:01:01", "52:54:00:00:01:02", "bridge", "52;rm -rf /", "x", "user"]
    done = subprocess.run(
        [*argv, "-c", f'files() {{{clone.FILES_SCRIPT}}}\nfiles "$@"', "sh", str(tmp_path), *args],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    network = tmp_path / "etc/systemd/network"
    user = (network / "10-cloud-init-enp0s2.network").read_text()
    assert user.startswith(
        "[Match]\nName=enp0s2\nMACAddress=52:54:00:00:00:01\t52:54:00:00:00:02\n"
    )
    assert user.endswith("[Link]\nMACAddress=52:54:00:00:00:01\n")  # one value there: kept
    assert (tmp_path / "run/systemd/network/10-netplan-nic0.network").read_text() == (
        "[Match]\nMACAddress=52:54:00:00:00:01\t52:54:00:00:00:02\n"
    )
    assert (
        "MACAddress=52:54:00:00:01:02\n" in (network / "10-cloud-init-enp0s3.network").read_text()
    )
    assert (
        (tmp_path / "run/systemd/network/10-netplan-nic1.link")
        .read_text()
        .endswith("MACAddress=52:54:00:00:01:02\n")
    )
    assert (tmp_path / "etc/netplan/50-cloud-init.yaml").read_text() == (
        "nic0: {match: {macaddress: '52:54:00:00:00:02'}}\n"
        "nic1: {match: {macaddress: '52:54:00:00:01:02'}}\n"
    )  # netplan renders networkd's files again at boot, when the NIC has its new MAC
    nm = tmp_path / "etc/NetworkManager/system-connections/lan.nmconnection"
    assert nm.read_text() == "[ethernet]\nmac-address=52:54:00:00:01:02\n"
    # every .network asks DHCP as the MAC (one matching by name too): drop-ins in /etc
    for name in ("10-cloud-init-enp0s2", "10-cloud-init-enp0s3", "10-netplan-nic0", "99-other"):
        dropin = network / f"{name}.network.d/50-qemu-compose-clone.conf"
        assert dropin.read_text() == "[DHCPv4]\nClientIdentifier=mac\n"
    assert (network / "99-other.network").read_text() == "[Match]\nName=en*\n"
    assert not (tmp_path / "run/systemd/network/10-netplan-nic0.network.d").exists()


@pytest.mark.parametrize("awk", [["awk"], ["busybox", "awk"]])
def test_hosts_takes_the_new_name_outside_our_block_of_the_networks_vms(awk: list[str]) -> None:
    if shutil.which(awk[0]) is None:
        pytest.skip(f"no {awk[0]} here")
    hosts = (
        "127.0.0.1 localhost\n127.0.1.1 w-1.shop w-1\n# qemu-compose hosts: begin\n"
        "10.0.0.10 w-1 w-1.shop\n10.0.0.11 w-2 w-2.shop\n# qemu-compose hosts: end\n"
    )
    done = subprocess.run(
        [*awk, "-v", "o=w-1", "-v", "n=w-2", "-v", "d=shop", clone.RENAME_AWK],
        input=hosts, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout == hosts.replace("127.0.1.1 w-1.shop w-1", "127.0.1.1 w-2.shop w-2")
