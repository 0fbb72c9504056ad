"""The accelerator rule and the QEMU command line (pure, golden)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netcfg import Forward
from orchestrator.guest.accel import AccelError, HostFacts, choose_accel, read_host_facts
from orchestrator.guest.qemu_argv import (
    DirectBoot,
    Drive,
    Share,
    TapNic,
    UserNic,
    VmLaunch,
    qemu_argv,
    volume_serial,
)

REAL = HostFacts(frozenset({"fpu", "vmx", "sse2"}), kvm_openable=True, kvm_pvm_loaded=False)
PVM = HostFacts(frozenset({"fpu", "sse2"}), kvm_openable=True, kvm_pvm_loaded=True)
NO_DEVICE = HostFacts(frozenset({"svm"}), kvm_openable=False, kvm_pvm_loaded=False)


def test_auto_takes_kvm_only_on_real_hardware_virtualisation() -> None:
    kvm = choose_accel("auto", REAL)
    assert (kvm.name, kvm.cpu_model, kvm.args()) == (
        "kvm",
        "host",
        ["-accel", "kvm", "-cpu", "host"],
    )
    for facts, why in ((PVM, "no hardware virtualisation"), (NO_DEVICE, "cannot be opened")):
        tcg = choose_accel("auto", facts)
        assert tcg.args() == ["-accel", "tcg,thread=multi", "-cpu", "max"]
        assert why in tcg.reason


def test_nested_pvm_is_refused_even_with_the_flags() -> None:
    facts = HostFacts(frozenset({"vmx"}), kvm_openable=True, kvm_pvm_loaded=True)
    assert choose_accel("auto", facts).name == "tcg"
    with pytest.raises(AccelError, match="nested PVM"):
        choose_accel("kvm", facts)


def test_explicit_choices_and_cpu_model() -> None:
    assert choose_accel("tcg", REAL).name == "tcg"
    assert choose_accel("tcg", REAL, "qemu64").cpu_model == "qemu64"
    assert (
        choose_accel("kvm", REAL, "host,-arch-capabilities").args()[-1] == "host,-arch-capabilities"
    )


def test_host_facts_from_files(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text("processor : 0\nflags\t: fpu vme svm\n")
    (tmp_path / "modules").write_text("kvm_pvm 123 0 - Live 0x0\nkvm 1 1 kvm_pvm, Live 0x0\n")
    facts = read_host_facts(tmp_path / "cpuinfo", tmp_path / "no-kvm", tmp_path / "modules")
    assert facts == HostFacts(frozenset({"fpu", "vme", "svm"}), False, True)


def launch(**overrides: object) -> VmLaunch:
    base: dict[str, object] = {
        "name": "web",
        "accel": choose_accel("tcg", REAL),
        "cpus": 2,
        "memory_mib": 256,
        "machine": "q35",
        "console_socket": "/p/.qemu-compose/web/console.sock",
        "console_log": "/p/.qemu-compose/web/console.log",
        "qmp_supervision": "/p/.qemu-compose/web/qmp.sock",
        "qmp_control": "/p/.qemu-compose/web/qmp-ctl.sock",
        "pidfile": "/p/.qemu-compose/web/qemu.pid",
    }
    base.update(overrides)
    return VmLaunch(**base)  # type: ignore[arg-type]


def test_golden_argv_of_a_full_vm() -> None:
    vm = launch(
        drives=(
            Drive("root", "/p/.qemu-compose/web/disk.qcow2", "qcow2", "root", bootindex=0),
            Drive("seed", "/p/.qemu-compose/web/seed.iso", "raw", "cidata", read_only=True),
            Drive("vol-data", "/p/.qemu-compose/volumes/data/disk.qcow2", "qcow2", "data"),
        ),
        shares=(Share("mount0", "/home/me/site,v2", read_only=True), Share("mount1", "/tmp/x")),
        nics=(
            UserNic("nic0", "52:54:00:00:00:01", (Forward(2222, 22), Forward(8080, 80, "0.0.0.0"))),
            TapNic("nic1", "52:54:aa:bb:cc:dd", "qct-0123456789"),
        ),
        boot=DirectBoot("/g/vmlinuz", "/g/initrd.img", "root=LABEL=rootfs rw console=ttyS0"),
    )
    root = {"driver": "qcow2", "node-name": "root", "read-only": False,
            "file": {"driver": "file", "filename": "/p/.qemu-compose/web/disk.qcow2"}}  # fmt: skip
    assert qemu_argv(vm) == [
        "qemu-system-x86_64",
        "-name", "web,debug-threads=on",
        "-machine", "q35",
        "-accel", "tcg,thread=multi", "-cpu", "max",
        "-smp", "2",
        "-m", "256",
        "-nodefaults", "-no-user-config",
        "-display", "none",
        "-chardev", "socket,id=console,path=/p/.qemu-compose/web/console.sock,server=on,wait=off,"
        "logfile=/p/.qemu-compose/web/console.log,logappend=on",
        "-serial", "chardev:console",
        "-chardev", "socket,id=qmp-supervise,path=/p/.qemu-compose/web/qmp.sock,server=on,wait=off",
        "-mon", "chardev=qmp-supervise,mode=control",
        "-chardev", "socket,id=qmp-control,path=/p/.qemu-compose/web/qmp-ctl.sock,server=on,wait=off",
        "-mon", "chardev=qmp-control,mode=control",
        "-pidfile", "/p/.qemu-compose/web/qemu.pid",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-pci,rng=rng0",
        "-device", "pvpanic",
        "-action", "panic=exit-failure",
        "-kernel", "/g/vmlinuz",
        "-initrd", "/g/initrd.img",
        "-append", "root=LABEL=rootfs rw console=ttyS0",
        "-blockdev", json.dumps(root, separators=(",", ":")),
        "-device", "virtio-blk-pci,drive=root,id=root,serial=root",  # -kernel boots it
        "-blockdev", '{"driver":"raw","node-name":"seed","read-only":true,'
        '"file":{"driver":"file","filename":"/p/.qemu-compose/web/seed.iso"}}',
        "-device", "virtio-blk-pci,drive=seed,id=seed,serial=cidata",
        "-blockdev", '{"driver":"qcow2","node-name":"vol-data","read-only":false,'
        '"file":{"driver":"file","filename":"/p/.qemu-compose/volumes/data/disk.qcow2"}}',
        "-device", "virtio-blk-pci,drive=vol-data,id=vol-data,serial=data",
        "-fsdev", "local,id=fs0,path=/home/me/site,,v2,security_model=passthrough,readonly=on",
        "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=mount0",
        "-fsdev", "local,id=fs1,path=/tmp/x,security_model=passthrough",
        "-device", "virtio-9p-pci,fsdev=fs1,mount_tag=mount1",
        "-netdev", "user,id=nic0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:0.0.0.0:8080-:80",
        "-device", "virtio-net-pci,netdev=nic0,mac=52:54:00:00:00:01,romfile=",
        "-netdev", "tap,id=nic1,ifname=qct-0123456789,script=no,downscript=no,vhost=off",
        "-device", "virtio-net-pci,netdev=nic1,mac=52:54:aa:bb:cc:dd,romfile=",
    ]  # fmt: skip


def test_disk_boot_keeps_the_bootindex() -> None:
    argv = qemu_argv(launch(drives=(Drive("root", "/d.qcow2", "qcow2", "root", bootindex=0),)))
    assert "virtio-blk-pci,drive=root,id=root,serial=root,bootindex=0" in argv


def test_a_path_with_a_comma_cannot_add_options() -> None:
    argv = qemu_argv(launch(shares=(Share("mount0", "/x,readonly=off,security_model=none"),)))
    fsdev = argv[argv.index("-fsdev") + 1]
    assert fsdev == (
        "local,id=fs0,path=/x,,readonly=off,,security_model=none,security_model=passthrough"
    )


def test_socket_paths_longer_than_unix_sockets_allow_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than"):
        qemu_argv(launch(console_socket="/" + "x" * 120))
    with pytest.raises(ValueError, match="longer than"):
        qemu_argv(launch(qmp_control="/" + "x" * 120))


def test_volume_serials_fit_virtio() -> None:
    assert volume_serial("data") == "data"
    long = volume_serial("a-very-long-volume-name-indeed")
    assert len(long) == 20
    assert long.startswith("vol-")
    with pytest.raises(ValueError, match="at most 20"):
        Drive("x", "/x", "raw", "s" * 21)


def test_a_vm_restarted_in_place_stays_after_poweroff_and_panic() -> None:
    argv = qemu_argv(launch(restart_in_place=True))
    assert argv[argv.index("-no-shutdown") :][:3] == ["-no-shutdown", "-action", "panic=pause"]
    assert "panic=exit-failure" not in argv
    assert "-no-shutdown" not in qemu_argv(launch())


def test_a_rootless_bridge_nic_gets_its_tap_from_the_helper() -> None:
    nic = TapNic("nic1", "52:54:aa:bb:cc:dd", "qct-0123456789", "/v,env/bin/helper")
    argv = qemu_argv(launch(nics=(nic,)))
    netdev = argv[argv.index("-netdev") + 1]
    assert netdev == "bridge,id=nic1,br=qct-0123456789,helper=/v,,env/bin/helper"  # (commas)
