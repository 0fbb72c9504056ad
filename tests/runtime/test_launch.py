"""How a VM is launched (`vm_launch`): QEMU's argv, the guest's configuration and the unit,
from an instance and its facts. Pure, golden."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from netcfg import Forward
from orchestrator import load_project
from orchestrator.config.topology import Instance, instances
from orchestrator.errors import UsageError
from orchestrator.guest.accel import Accel
from orchestrator.guest.qemu_argv import RamFile, SharedRam, Uefi
from orchestrator.runtime.clones import shares_ram
from orchestrator.runtime.launch import (
    Launch,
    LaunchFacts,
    grace_period,
    recorded,
    vm_launch,
)
from orchestrator.state.files import VmState
from orchestrator.state.identity import state_of
from orchestrator.state.paths import VmPaths
from orchestrator.supervisor.health import has_health

TEXT = """
name: lab
networks: {back: {}}
volumes: {data: {size: 1G}}
vms:
  db:
    image: /images/debian.qcow2
    cpu: 2
    memory: 512
    networks: [back]
    volumes: [data:/var/lib/db]
    ports: ["5432:5432"]
    restart: on-failure:3
    stop_grace_period: 20s
    environment: {ROLE: db}
    provision: [{inline: "echo hi"}]
  fw:
    memory: 64
"""

TCG = Accel("tcg", "max", "no KVM here")

# restart: on-failure:3 runs QEMU with -no-shutdown and panic=pause (the supervisor decides);
# disks root, seed, volume; the user NIC forwards SSH and the published port, the TAP is given
GOLDEN_DB_ARGV = """
/usr/bin/qemu-system-x86_64
-name
db,debug-threads=on
-machine
q35
-accel
tcg,thread=multi
-cpu
max
-smp
2
-m
512
-nodefaults
-no-user-config
-display
none
-chardev
socket,id=console,path=/p/.qemu-compose/db/console.sock,server=on,wait=off,logfile=/p/.qemu-compose/db/console.log,logappend=on
-serial
chardev:console
-chardev
socket,id=qmp-supervise,path=/p/.qemu-compose/db/qmp.sock,server=on,wait=off
-mon
chardev=qmp-supervise,mode=control
-chardev
socket,id=qmp-control,path=/p/.qemu-compose/db/qmp-ctl.sock,server=on,wait=off
-mon
chardev=qmp-control,mode=control
-pidfile
/p/.qemu-compose/db/qemu.pid
-object
rng-random,id=rng0,filename=/dev/urandom
-device
virtio-rng-pci,rng=rng0
-device
pvpanic
-no-shutdown
-action
panic=pause
-blockdev
{"driver":"qcow2","node-name":"root","read-only":false,"file":{"driver":"file","filename":"/p/.qemu-compose/db/disk.qcow2"}}
-device
virtio-blk-pci,drive=root,id=root,serial=root,bootindex=0
-blockdev
{"driver":"raw","node-name":"seed","read-only":true,"file":{"driver":"file","filename":"/p/.qemu-compose/db/seed.iso"}}
-device
virtio-blk-pci,drive=seed,id=seed,serial=cidata
-blockdev
{"driver":"qcow2","node-name":"vol-data","read-only":false,"file":{"driver":"file","filename":"/p/.qemu-compose/volumes/data/data.img"}}
-device
virtio-blk-pci,drive=vol-data,id=vol-data,serial=data
-netdev
user,id=nic0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:5432-:5432
-device
virtio-net-pci,netdev=nic0,mac=52:54:81:40:99:57,romfile=
-netdev
tap,id=nic1,ifname=qc-tap0,script=no,downscript=no,vhost=off
-device
virtio-net-pci,netdev=nic1,mac=52:54:f1:bc:3c:55,romfile=
"""


@pytest.fixture
def lab(tmp_path: Path) -> dict[str, Instance]:
    (tmp_path / "qemu-compose.yaml").write_text(TEXT)
    project = load_project(tmp_path / "qemu-compose.yaml")
    return {i.name: i for i in instances(project.model)}


def facts(name: str, **more: Any) -> LaunchFacts:
    base = Path("/p/.qemu-compose") / name
    fields: dict[str, Any] = {
        "forwards": (Forward(2222, 22), Forward(5432, 5432, "127.0.0.1")),
        **more,
    }
    return LaunchFacts(
        project="lab",
        paths=VmPaths(base, base),
        accel=TCG,
        qemu="/usr/bin/qemu-system-x86_64",
        python="/venv/bin/python",
        **fields,
    )


def render(launch: Launch) -> str:
    unit = launch.unit
    lines = [
        f"unit {unit.name}",
        f"description {unit.description}",
        f"directory {unit.working_directory}",
        f"stop {' '.join(unit.exec_stop or ())}",
        f"kill {unit.kill_mode} timeout {unit.timeout_stop:g} collect {unit.collect_mode}",
        f"restart {unit.restart} after {unit.restart_sec}",
        *(f"extra {p.name} {p.signature} {p.value}" for p in unit.extra),
        f"macs {launch.macs}",
    ]
    return "\n".join(lines) + "\n"


FACTS_DB: dict[str, Any] = {  # db's TAP and volume
    "taps": {"back": "qc-tap0"},
    "volume_paths": {"data": Path("/p/.qemu-compose/volumes/data/data.img")},
}


def test_a_vm_with_an_os_a_bridge_a_volume_and_a_restart_policy(
    lab: dict[str, Instance],
) -> None:
    launch = vm_launch(
        lab["db"],
        facts(
            "db",
            taps={"back": "qc-tap0"},
            volume_paths={"data": Path("/p/.qemu-compose/volumes/data/data.img")},
            ssh_public_key="ssh-ed25519 AAAA lab",
            password_hash="$6$x$y",
            provision=["echo hi"],
        ),
    )
    assert render(launch) == (
        "unit qemu-compose-lab-db.service\n"
        "description qemu-compose VM lab/db\n"
        "directory /p/.qemu-compose/db\n"
        "stop /venv/bin/python -m qmp.stopvm /p/.qemu-compose/db/qmp-ctl.sock --grace 20\n"
        "kill mixed timeout 35 collect inactive\n"
        "restart on-failure after 2.0\n"
        "extra RestartPreventExitStatus (aiai) ([], [<Signals.SIGPWR: 30>])\n"
        "extra StartLimitBurst u 3\n"
        "macs {'nic0': '52:54:81:40:99:57', 'nic1': '52:54:f1:bc:3c:55'}\n"
    )
    assert launch.unit.argv == launch.argv
    assert "\n".join(launch.argv) == GOLDEN_DB_ARGV.strip()
    guest = launch.guest
    assert guest is not None
    assert (guest.hostname, guest.domain, guest.environment, guest.provision) == (
        "db",
        "lab",
        {"ROLE": "db"},
        ["echo hi"],
    )
    assert [(n.mac, n.kind) for n in guest.nics] == [
        ("52:54:81:40:99:57", "user"),
        ("52:54:f1:bc:3c:55", "bridge"),
    ]
    assert [m.target for m in guest.mounts] == ["/var/lib/db"]


def test_the_unit_records_whose_it_is_and_what_the_state_says(lab: dict[str, Instance]) -> None:
    launch = vm_launch(lab["fw"], facts("fw", forwards=(Forward(2223, 22),), project_dir="/p"))
    assert launch.unit.description == "qemu-compose VM lab/fw of /p"
    state = VmState(unit=launch.unit.name, config_hash="h", created_at=1.0, ssh_port=2223)
    unit = recorded(launch.unit, state)
    assert state_of([f"{k}={v}" for k, v in unit.environment.items()]) == state
    assert unit.argv == launch.unit.argv


def test_a_firmware_only_vm_has_no_seed_no_grace_and_no_restart(lab: dict[str, Instance]) -> None:
    fw = lab["fw"]
    launch = vm_launch(fw, facts("fw", forwards=(Forward(2223, 22),)))
    assert launch.guest is None
    assert not any("seed" in a for a in launch.argv)
    assert render(launch).splitlines()[3:6] == [
        "stop /venv/bin/python -m qmp.stopvm /p/.qemu-compose/fw/qmp-ctl.sock --grace 0",
        "kill mixed timeout 15 collect inactive",
        "restart no after None",
    ]
    assert "-no-shutdown" not in launch.argv
    assert (grace_period(fw.vm), grace_period(fw.vm, 5), has_health(fw.vm)) == (0.0, 0.0, False)
    db = lab["db"].vm
    assert (grace_period(db), grace_period(db, 5), has_health(db)) == (20.0, 5.0, True)
    assert grace_period(None) == 60.0


def test_a_vm_starting_from_a_saved_state_waits_for_it_and_systemd_does_not_restart_it(
    lab: dict[str, Instance],
) -> None:
    facts_db = FACTS_DB
    cold = vm_launch(lab["db"], facts("db", **facts_db))
    warm = vm_launch(lab["db"], facts("db", incoming=True, **facts_db))
    assert warm.argv == [*cold.argv, "-incoming", "defer"]  # the same devices, waiting
    assert "-incoming" not in cold.argv
    assert render(warm).splitlines()[5] == "restart no after None"  # it would wait again
    assert "-no-shutdown" in warm.argv  # the guest's own ends are still the supervisor's


def test_a_warm_vm_has_a_generation_id_that_each_qemu_makes_anew(
    lab: dict[str, Instance],
) -> None:
    facts_db = FACTS_DB
    cold = vm_launch(lab["db"], facts("db", **facts_db))
    warm_db = Instance("db", "db", msgspec.structs.replace(lab["db"].vm, warm=True))
    warm = vm_launch(warm_db, facts("db", **facts_db))
    at = cold.argv.index("pvpanic") + 1
    assert warm.argv == [*cold.argv[:at], "-device", "vmgenid,guid=auto", *cold.argv[at:]]
    assert "vmgenid,guid=auto" not in cold.argv


def test_a_template_source_shares_its_ram_and_a_clone_maps_the_templates_privately(
    lab: dict[str, Instance],
) -> None:
    facts_db = FACTS_DB
    cold = vm_launch(lab["db"], facts("db", **facts_db))
    source = vm_launch(lab["db"], facts("db", ram=SharedRam(), **facts_db))
    clone = vm_launch(lab["db"], facts("db", ram=RamFile("/p/t/ram,x"), **facts_db))
    at = cold.argv.index("virtio-rng-pci,rng=rng0") + 1
    memfd = "memory-backend-memfd,id=pc.ram,size=512M,share=on"
    assert source.argv == [
        *cold.argv[:at], "-object", memfd, "-machine", "memory-backend=pc.ram", *cold.argv[at:]
    ]  # fmt: skip
    mapped = "memory-backend-file,id=pc.ram,size=512M,mem-path=/p/t/ram,,x,share=off"
    assert clone.argv[at : at + 4] == ["-object", mapped, "-machine", "memory-backend=pc.ram"]
    microvm = Instance("db", "db", msgspec.structs.replace(lab["db"].vm, machine="microvm"))
    other = vm_launch(microvm, facts("db", ram=SharedRam(), **facts_db))
    assert "memory-backend" not in " ".join(other.argv)  # its RAM has another name


def test_which_warm_vms_keep_their_templates_ram_as_a_file(
    lab: dict[str, Instance], monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = lab["db"].vm
    monkeypatch.delenv("QEMU_COMPOSE_TEMPLATE_RAM", raising=False)
    assert shares_ram(vm)
    assert not shares_ram(msgspec.structs.replace(vm, machine="microvm"))
    monkeypatch.setenv("QEMU_COMPOSE_TEMPLATE_RAM", "stream")
    assert not shares_ram(vm)
    monkeypatch.setenv("QEMU_COMPOSE_TEMPLATE_RAM", "file")
    assert shares_ram(vm)
    monkeypatch.setenv("QEMU_COMPOSE_TEMPLATE_RAM", "disk")
    with pytest.raises(UsageError, match="QEMU_COMPOSE_TEMPLATE_RAM=disk: file or stream"):
        shares_ram(vm)


def test_uefi_puts_ovmf_and_the_vms_variables_on_the_flash_chips(
    lab: dict[str, Instance],
) -> None:
    facts_db = FACTS_DB
    cold = vm_launch(lab["db"], facts("db", **facts_db))
    uefi = vm_launch(
        lab["db"], facts("db", uefi=Uefi("/usr/share/OVMF/C.fd", "/p/db/v,x.fd"), **facts_db)
    )
    at = cold.argv.index("virtio-rng-pci,rng=rng0") + 1
    assert uefi.argv == [
        *cold.argv[:at],
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/C.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/p/db/v,,x.fd",  # (a comma doubled)
        *cold.argv[at:],
    ]  # fmt: skip
    assert "pflash" not in " ".join(cold.argv)
