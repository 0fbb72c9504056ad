"""`doctor`'s verdicts: a pure function of what it read from the machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from orchestrator.guest.accel import HostFacts
from orchestrator.runtime.doctor import APT, Facts, evaluate, render

KVM_HOST = HostFacts(frozenset({"vmx", "sse2"}), kvm_openable=True, kvm_pvm_loaded=False)


def facts(**changes: object) -> Facts:
    base = Facts(
        os_name="Debian GNU/Linux 12 (bookworm)",
        binaries={name: f"/usr/bin/{name}" for name in APT},
        versions={"qemu-system-x86_64": "QEMU emulator version 7.2.0"},
        host=KVM_HOST,
        bus_error=None,
        bus="user",
        net_admin=True,
        is_root=False,
        cache_dir=Path("/home/me/.local/share/qemu-compose/images"),
        cache_free=50 << 30,
        ovmf="/usr/share/OVMF/OVMF_CODE_4M.fd",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def by_name(f: Facts) -> dict[str, tuple[str, str]]:
    return {c.name: (c.verdict, c.fix) for c in evaluate(f)}


def test_a_good_machine() -> None:
    checks = evaluate(facts())
    assert {c.verdict for c in checks} == {"ok"}
    assert render(checks).endswith("qemu-compose can run here.\n")
    kvm = next(c for c in checks if c.name == "kvm")
    assert kvm.detail.startswith("KVM: ")


def test_missing_qemu_fails_with_the_package_to_install() -> None:
    binaries = {**facts().binaries, "qemu-system-x86_64": None}
    checks = evaluate(facts(binaries=binaries))
    qemu = next(c for c in checks if c.name == "qemu-system-x86_64")
    assert (qemu.verdict, qemu.fix, qemu.required) == (
        "fail",
        "sudo apt-get install -y qemu-system-x86",
        True,
    )
    assert "1 required check(s) failed." in render(checks)
    as_root = evaluate(facts(binaries=binaries, is_root=True))
    assert next(c for c in as_root if c.name == "qemu-system-x86_64").fix == (
        "apt-get install -y qemu-system-x86"
    )


def test_optional_tools_only_warn() -> None:
    binaries = {**facts().binaries, "dnsmasq": None, "ssh": None}
    verdicts = by_name(facts(binaries=binaries, net_admin=False))
    assert verdicts["dnsmasq"] == ("warn", "sudo apt-get install -y dnsmasq-base")
    assert verdicts["ssh"] == ("warn", "sudo apt-get install -y openssh-client")
    assert not [c for c in evaluate(facts(binaries=binaries)) if c.verdict == "fail"]


def test_kvm_reasons() -> None:
    none = HostFacts(frozenset({"sse2"}), kvm_openable=True, kvm_pvm_loaded=False)
    pvm = HostFacts(frozenset({"sse2", "vmx"}), kvm_openable=True, kvm_pvm_loaded=True)
    closed = HostFacts(frozenset({"svm"}), kvm_openable=False, kvm_pvm_loaded=False)
    for host, words in [
        (none, "no hardware virtualisation"),
        (pvm, "nested PVM"),
        (closed, "cannot be opened"),
    ]:
        kvm = next(c for c in evaluate(facts(host=host)) if c.name == "kvm")
        assert kvm.verdict == "warn"
        assert "TCG" in kvm.detail
        assert words in kvm.detail
        assert kvm.fix


def test_no_systemd_manager_is_a_required_failure() -> None:
    checks = evaluate(facts(bus_error="no D-Bus at unix:path=/run/user/1000/bus"))
    systemd = next(c for c in checks if c.name == "systemd")
    assert (systemd.verdict, systemd.required) == ("fail", True)
    assert systemd.fix


def test_qemu_older_than_7_1_fails() -> None:
    old = facts(versions={"qemu-system-x86_64": "QEMU emulator version 6.2.0 (Debian 1:6.2)"})
    qemu = next(c for c in evaluate(old) if c.name == "qemu-system-x86_64")
    assert (qemu.verdict, qemu.required) == ("fail", True)
    assert "7.1 or newer" in qemu.detail
    new = facts(versions={"qemu-system-x86_64": "QEMU emulator version 10.0.2"})
    assert next(c for c in evaluate(new) if c.name == "qemu-system-x86_64").verdict == "ok"


def test_low_space_warns() -> None:
    verdicts = by_name(facts(cache_free=1 << 30))
    assert verdicts["image_cache"] == ("warn", "qemu-compose image prune, or free disk space")


def test_no_ovmf_only_warns_with_the_package() -> None:
    assert by_name(facts(ovmf=None))["ovmf"] == ("warn", "sudo apt-get install -y ovmf")
    assert by_name(facts())["ovmf"] == ("ok", "")


def test_the_network_mode_and_what_rootless_lacks() -> None:
    host = next(
        c for c in evaluate(facts(network_why="CAP_NET_ADMIN (root)")) if c.name == "network_mode"
    )
    assert (host.verdict, host.detail) == ("ok", "host: CAP_NET_ADMIN (root)")
    rootless = facts(net_admin=False, network_mode="rootless", network_why="no CAP_NET_ADMIN")
    check = next(c for c in evaluate(rootless) if c.name == "network_mode")
    assert (check.verdict, check.detail) == ("ok", "rootless: no CAP_NET_ADMIN")
    lacking = dataclasses.replace(
        rootless, rootless_problem=("/dev/net/tun is not open", "sudo chmod 0666 /dev/net/tun")
    )
    check = next(c for c in evaluate(lacking) if c.name == "network_mode")
    assert check.verdict == "warn"
    assert "but /dev/net/tun is not open: VMs on user-mode networking only" in check.detail
    assert check.fix == "sudo chmod 0666 /dev/net/tun"
    forced = facts(net_admin=False, network_why="QEMU_COMPOSE_NETWORK_MODE=host")
    check = next(c for c in evaluate(forced) if c.name == "network_mode")
    assert check.verdict == "warn"
    assert "no bridge networks" in check.detail
    refused = facts(network_mode="QEMU_COMPOSE_NETWORK_MODE='x': use host, rootless or auto")
    check = next(c for c in evaluate(refused) if c.name == "network_mode")
    assert (check.verdict, check.required) == ("fail", True)
