"""The NoCloud seed of a VM: user-data, meta-data and network-config, built as data.

Nothing here is a string template: each document is a dict dumped with yaml.safe_dump, so no
user value can change its structure. The seed ISO (volume label "cidata") is written in pure
Python with pycdlib.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.state.files import NO_SPACE, no_space

PROVISION_DIR = "/var/lib/qemu-compose/provision"
SEED_MIN_BYTES = 1 << 20
NINE_P_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144,nofail"


@dataclass(frozen=True, slots=True)
class Mount:
    """One filesystem cloud-init mounts: a 9p tag or a /dev/disk/by-id device."""

    source: str
    target: str
    fstype: str  # "9p" or "ext4"
    options: str

    def entry(self) -> list[str]:
        passno = "2" if self.fstype == "ext4" else "0"
        return [self.source, self.target, self.fstype, self.options, "0", passno]


def share_mount(tag: str, target: str, *, read_only: bool, extra_options: str = "") -> Mount:
    options = (
        NINE_P_OPTIONS
        + (",ro" if read_only else "")
        + (f",{extra_options}" if extra_options else "")
    )
    return Mount(tag, target, "9p", options)


def volume_mount(serial: str, target: str, *, read_only: bool) -> Mount:
    options = "defaults,nofail" + (",ro" if read_only else "")
    return Mount(f"/dev/disk/by-id/virtio-{serial}", target, "ext4", options)


@dataclass(frozen=True, slots=True)
class Nic:
    mac: str
    kind: str  # "user" or "bridge"
    dns: str = ""  # a bridge NIC: its network's DNS server (the dnsmasq on its gateway)


@dataclass(frozen=True, slots=True)
class GuestConfig:
    """Everything the seed says about one VM."""

    hostname: str
    domain: str  # the project: the guest's FQDN is <hostname>.<domain>
    user: str
    ssh_public_key: str
    password_hash: str  # for the serial console only; SSH passwords stay off
    instance_id: str
    mounts: Sequence[Mount] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    provision: Sequence[str] = ()  # shell scripts, run once, in order
    nics: Sequence[Nic] = ()
    extra_user_data: Mapping[str, Any] | None = None
    # the VMs of its bridge networks, (address, name), for /etc/hosts: names resolve
    # where the guest's resolver does not ask the network's DNS (a user-mode NIC's may win)
    hosts: Sequence[tuple[str, str]] = ()

    @property
    def on_bridges(self) -> bool:
        return any(nic.kind == "bridge" for nic in self.nics)

    @property
    def nameservers(self) -> list[str]:
        """The DNS servers of its bridge networks, which know the VMs' names."""
        return list(dict.fromkeys(n.dns for n in self.nics if n.kind == "bridge" and n.dns))


def instance_id(project: str, vm: str) -> str:
    """Stable for a VM: cloud-init runs its once-per-instance steps once per disk."""
    return "qc-" + hashlib.sha256(f"{project}/{vm}".encode()).hexdigest()[:16]


# Our lines of /etc/environment and /etc/fstab, between markers, rewritten at every boot from
# the arguments ("$@": NAME=value, or six fstab fields a mount); the file replaced whole, and
# left as it is when it cannot be read (no awk, say).
REWRITE = (
    'f={file}; b="# qemu-compose {what}: begin"; e="# qemu-compose {what}: end"; '
    "t=$(mktemp /etc/.qemu-compose.XXXXXX) || exit 1; "
    'if [ -f $f ]; then awk -v b="$b" -v e="$e" '
    '\'$0==b{{s=1;next}} $0==e{{s=0;next}} !s\' $f > "$t" || {{ rm -f "$t"; exit 1; }}; fi; '
    'if [ $# -gt 0 ]; then {{ echo "$b"; {lines} echo "$e"; }} >> "$t"; fi; '
    'chmod 644 "$t" && mv -f "$t" {file} || {{ rm -f "$t"; exit 1; }}'
)
ENVIRONMENT_SCRIPT = REWRITE.format(
    file="/etc/environment", what="environment", lines="printf '%s\\n' \"$@\";"
)
FSTAB_SCRIPT = (
    REWRITE.format(
        file="/etc/fstab",
        what="mounts",
        lines='while [ $# -ge 6 ]; do mkdir -p "$2"; '
        'printf \'%s %s %s %s %s %s\\n\' "$1" "$2" "$3" "$4" "$5" "$6"; '
        "shift 6; done;",
    )
    + "; systemctl daemon-reload 2>/dev/null; mount -a 2>/dev/null; true"
)

# (the warm clones' identity script leaves the lines between them alone: clone.RENAME_AWK)
HOSTS_BEGIN, HOSTS_END = "# qemu-compose hosts: begin", "# qemu-compose hosts: end"
HOSTS_SCRIPT = REWRITE.format(
    file="/etc/hosts",
    what="hosts",
    lines='while [ $# -ge 3 ]; do printf \'%s %s %s\\n\' "$1" "$2" "$3"; shift 3; done;',
)
assert HOSTS_BEGIN in HOSTS_SCRIPT
assert HOSTS_END in HOSTS_SCRIPT

# Where dhclient writes /etc/resolv.conf (ifupdown, as on Debian's cloud images: no resolved,
# no resolvconf, and cloud-init's ENI renderer's DNS lines then go unread), the lease of the
# NIC that answered last wins, often the user-mode one, whose DNS knows no VM. So dhclient
# is given a hook that puts the bridge networks' DNS servers and the project's domain first,
# keeping what the leases said after them (the bridges' dnsmasq refuses other names, and the
# resolver asks the next server). Every boot: the merge and the hook are written from the
# arguments ($1, $2), then the domain and servers ($3...; none: the VM is on no bridge now).
RESOLVER_MERGE = r"""# qemu-compose: the bridge networks' DNS first in /etc/resolv.conf
f=/etc/resolv.conf; ours=/etc/qemu-compose/resolv.conf
[ -f "$ours" ] && [ ! -L "$f" ] || exit 0
# the servers of every NIC's newest lease: the file holds the last lease's alone
l=$(for x in /var/lib/dhcp/dhclient*.leases; do [ -f "$x" ] &&
  sed -n 's/^ *option domain-name-servers \(.*\);$/\1/p' "$x" | tail -n 1; done | tr ',' ' ')
t=$(mktemp /etc/.qemu-compose.XXXXXX) || exit 1
{ cat "$f" 2>/dev/null; for x in $l; do echo "nameserver $x"; done; } | awk '
function key(x) { sub(/\.$/, "", x); return x }
$1 == "search" || $1 == "domain" {
  for (i = 2; i <= NF; i++) if (!(key($i) in s)) { s[key($i)]; sl = sl " " key($i) }
  next
}
$1 == "nameserver" { if (!($2 in n)) { n[$2]; nl = nl "nameserver " $2 "\n" }; next }
{ r = r $0 "\n" }
END { if (sl != "") print "search" sl; printf "%s%s", nl, r }
' "$ours" - > "$t" && chmod 644 "$t" && mv -f "$t" "$f" || { rm -f "$t"; exit 1; }
"""
RESOLVER_HOOK = """# qemu-compose: the bridge networks' DNS first (/etc/qemu-compose/resolv.sh)
case "$reason" in BOUND|RENEW|REBIND|REBOOT) sh /etc/qemu-compose/resolv.sh || true ;; esac
"""
RESOLVER_SCRIPT = (
    "h=/etc/dhcp/dhclient-exit-hooks.d; d=/etc/qemu-compose; [ -d $h ] || exit 0; "
    "mkdir -p $d || exit 1; "
    'printf "%s" "$1" > $d/resolv.sh.new && mv -f $d/resolv.sh.new $d/resolv.sh || exit 1; '
    'printf "%s" "$2" > $h/qemu-compose.new && mv -f $h/qemu-compose.new $h/qemu-compose'
    " || exit 1; shift 2; "
    'if [ $# -gt 1 ]; then { printf "search %s\\n" "$1"; shift; printf "nameserver %s\\n" "$@"; }'
    " > $d/resolv.conf.new && mv -f $d/resolv.conf.new $d/resolv.conf || exit 1; "
    "else rm -f $d/resolv.conf; fi; sh $d/resolv.sh"
)

# `fault panic` sends an NMI (QMP inject-nmi): the kernel panics on it only when told to. No
# NMI comes to a VM otherwise; the guest reports the panic through the pvpanic device.
NMI_PANIC_SCRIPT = "echo 1 > /proc/sys/kernel/unknown_nmi_panic 2>/dev/null || true"


def user_data(guest: GuestConfig) -> dict[str, Any]:
    data: dict[str, Any] = {
        "hostname": guest.hostname,
        "fqdn": f"{guest.hostname}.{guest.domain}",
        "manage_etc_hosts": "localhost",
        "users": [
            {
                "name": guest.user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": False,
                "passwd": guest.password_hash,
                "ssh_authorized_keys": [guest.ssh_public_key],
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
    }
    # Every boot (bootcmd), not once per instance: a VM restarted on its disk with other
    # environment or volumes gets them. The values are arguments, never part of the script.
    bootcmd: list[list[str]] = [
        ["sh", "-c", ENVIRONMENT_SCRIPT, "qemu-compose-environment"]
        + [f"{k}={v}" for k, v in guest.environment.items()],
        ["sh", "-c", FSTAB_SCRIPT, "qemu-compose-mounts"]
        + [field for mount in guest.mounts for field in mount.entry()],
        ["sh", "-c", NMI_PANIC_SCRIPT, "qemu-compose-nmi-panic"],
    ]
    files: list[dict[str, Any]] = []
    # (both every time: a VM restarted off its bridges loses the lines they gave it)
    bootcmd.append(
        ["sh", "-c", HOSTS_SCRIPT, "qemu-compose-hosts"]
        + [
            f
            for address, name in (guest.hosts if guest.on_bridges else ())
            for f in (address, name, f"{name}.{guest.domain}")
        ]
    )
    servers = guest.nameservers
    bootcmd.append(
        ["sh", "-c", RESOLVER_SCRIPT, "qemu-compose-resolver", RESOLVER_MERGE, RESOLVER_HOOK]
        + ([guest.domain, *servers] if servers else [])
    )
    if guest.on_bridges:
        # A search domain for <vm> alone: networkd ignores the DHCP one and cloud-init the
        # network-config one, so tell systemd-resolved (where the image has it). bootcmd runs
        # before write_files, so it writes the file itself; the domain is an argument.
        bootcmd.append(
            [
                "sh",
                "-c",
                'mkdir -p /etc/systemd/resolved.conf.d && printf "[Resolve]\\nDomains=%s\\n" "$1"'
                " > /etc/systemd/resolved.conf.d/qemu-compose.conf"
                " && { systemctl try-restart systemd-resolved.service || true; }",
                "qemu-compose-search-domain",
                guest.domain,
            ]
        )
    data["bootcmd"] = bootcmd
    runcmd: list[list[str]] = []
    for i, script in enumerate(guest.provision, start=1):
        path = f"{PROVISION_DIR}/{i:02d}.sh"
        files.append({"path": path, "content": script, "permissions": "0755"})
        runcmd.append(["sh", "-c", f'echo "qemu-compose: provision step {i}"; exec {path}'])
    if files:
        data["write_files"] = files
    if runcmd:
        data["runcmd"] = runcmd
    if guest.extra_user_data:
        data = merge(data, guest.extra_user_data)
    return data


def merge(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """The user's cloud-config over ours: mappings merge, lists append, scalars replace."""
    result = dict(ours)
    for key, value in theirs.items():
        mine = result.get(key)
        if isinstance(mine, Mapping) and isinstance(value, Mapping):
            result[key] = merge(mine, value)
        elif isinstance(mine, list) and isinstance(value, list):
            result[key] = [*mine, *value]
        else:
            result[key] = value
    return result


def meta_data(guest: GuestConfig) -> dict[str, Any]:
    return {"instance-id": guest.instance_id, "local-hostname": guest.hostname}


def network_config(guest: GuestConfig) -> dict[str, Any]:
    """Netplan v2: every NIC matched by its MAC, addressed by DHCP (bridge ones reserved)."""
    ethernets: dict[str, Any] = {}
    for i, nic in enumerate(guest.nics):
        # DHCP asks as the MAC, which dnsmasq reserves by, not by a DUID made from the
        # machine-id (systemd-networkd's default): a warm clone's was its template's until it
        # was given its own. Netplan honours it; cloud-init's networkd renderer does not (the
        # clone's identity command adds the same as a drop-in).
        config: dict[str, Any] = {
            "match": {"macaddress": nic.mac},
            "dhcp4": True,
            "dhcp-identifier": "mac",
        }
        if nic.kind == "bridge":  # user-mode networking keeps the default route
            config["dhcp4-overrides"] = {"use-routes": False}
            # its DNS knows the VMs, <vm> alone too: the project is the search domain of
            # bridge links (every renderer writes these; dhclient's files: RESOLVER_SCRIPT)
            config["nameservers"] = {"search": [guest.domain]}
            if nic.dns:
                config["nameservers"]["addresses"] = [nic.dns]
        ethernets[f"nic{i}"] = config
    return {"version": 2, "ethernets": ethernets}


def dump(document: Mapping[str, Any], header: str = "") -> bytes:
    return (
        header + yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False)
    ).encode()


def seed_files(guest: GuestConfig) -> dict[str, bytes]:
    files = {
        "user-data": dump(user_data(guest), "#cloud-config\n"),
        "meta-data": dump(meta_data(guest)),
    }
    if guest.nics:
        files["network-config"] = dump(network_config(guest))
    return files


def write_seed_iso(path: Path, files: Mapping[str, bytes]) -> None:
    """An ISO 9660 image labelled "cidata" with Rock Ridge names, written atomically.

    No Joliet: some readers (busybox's findfs, in the tiny test guest) take the Joliet
    volume label, which pycdlib pads with UCS-2 blanks, over the primary one.
    """
    import pycdlib  # here: what only reads (ps, ssh) never writes a seed

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", vol_ident="cidata")
    for i, (name, data) in enumerate(sorted(files.items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{i};1", rr_name=name)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        try:
            iso.write(str(tmp))
        finally:
            iso.close()
        # Pad as genisoimage does: filesystem probes (busybox's) read past a tiny image's end.
        with tmp.open("r+b") as fh:
            if fh.seek(0, os.SEEK_END) < SEED_MIN_BYTES:
                fh.truncate(SEED_MIN_BYTES)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in NO_SPACE:
            raise no_space(path, err) from err
        raise
