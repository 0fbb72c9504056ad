"""What makes a warm clone its own machine, inside its guest: the command run over SSH
(runtime.clones) right after it resumes from its template's state. Pure.

A clone resumes as a copy of the template's guest: its hostname, MACs and addresses, SSH host
keys, machine-id, cloud-init instance-id and clock are the template's. Its bridge NICs are cut
off (the guest sees their links down) until it says they can be joined again. A NIC on a
bridge network takes its own MAC at once; the user-mode NIC keeps the template's until the
guest next boots (its network is the clone's own QEMU, and changing it under the SSH session
that carries the command would cut it off); the network configuration names the new MACs for
that boot, when QEMU gives each NIC its own.

`identity_command` is one POSIX sh script (a systemd, ifupdown or busybox userland; every
value an argument, quoted, never part of the script; root, or sudo where the account is not
root), in two halves with the host in between. First, its own clock, hostname, machine-id,
instance-id and MACs, so that nothing of the old identity reaches a peer (systemd-networkd
reloads its configuration and asks DHCP as the NIC's MAC: its own default identity comes
from the machine-id, which was the template's); then it prints `JOIN_LINE`. The host joins
the links again and answers with a line on the command's standard input, while the script
makes a new SSH host key and prints ``qemu-compose-host-key: <type> <key>`` (for the project's
known_hosts). Then it asks for its own addresses on the bridge NICs and waits for them.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

from .clock import SET_CLOCK, as_root
from .cloudinit import HOSTS_BEGIN, HOSTS_END

HOST_KEY_LINE = "qemu-compose-host-key: "


@dataclass(frozen=True, slots=True)
class CloneIdentity:
    hostname: str
    domain: str  # the project
    machine_id: str  # 32 hex digits
    instance_id: str  # cloud-init's
    user_macs: Mapping[str, str]  # the template's MAC -> this clone's, user-mode NICs
    bridge_macs: Mapping[str, str]  # the same for its NICs on bridge networks


IDENTITY_SCRIPT = r"""
set -u
umask 022
host=$1 domain=$2 mid=$3 iid=$4 boot=$5; shift 5
step() { read -r u _ < /proc/uptime; printf 'qemu-compose-step: %s %s\n' "$1" "$u"; }
network() {@NETWORK@}
files() {@FILES@}
step start
@SET_CLOCK@ || true
old=
read -r old < /proc/sys/kernel/hostname 2>/dev/null || old=$(hostname 2>/dev/null) || true
{ printf '%s\n' "$host" > /proc/sys/kernel/hostname; } 2>/dev/null || hostname "$host"
printf '%s\n' "$host" > /etc/hostname  # (hostnamectl: seconds, under TCG)
if [ -n "$old" ] && [ "$old" != "$host" ] && [ -f /etc/hosts ]; then
  t=/etc/.hosts.qemu-compose
  awk -v o="$old" -v n="$host" -v d="$domain" '@RENAME@' /etc/hosts > "$t" \
    && mv -f "$t" /etc/hosts || rm -f "$t"
fi
step hostname
printf '%s\n' "$mid" > /etc/.machine-id.new && mv -f /etc/.machine-id.new /etc/machine-id
if [ -f /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
  printf '%s\n' "$mid" > /var/lib/dbus/machine-id
fi
c=/var/lib/cloud
if [ -f $c/data/instance-id ]; then
  was=; read -r was < $c/data/instance-id || true
  if [ "$was" != "$iid" ] && [ -d "$c/instances/$was" ] && [ ! -e "$c/instances/$iid" ]; then
    mv "$c/instances/$was" "$c/instances/$iid" && ln -sfn "$c/instances/$iid" $c/instance
  fi
  [ ! -e "$c/instances/$iid/obj.pkl" ] || rm -f "$c/instances/$iid/obj.pkl"
  printf '%s\n' "$iid" > $c/data/instance-id
  printf '%s\n' "$iid" > $c/data/previous-instance-id
fi
step ids
files "" "$@"
step macs
joined=
while [ $# -ge 3 ]; do
  o=$1 n=$2 kind=$3; shift 3
  case "$o$n" in *[!0-9a-fA-F:]*) continue;; esac
  [ "$kind" = bridge ] || continue
  joined="$joined $n"
  for d in /sys/class/net/*; do
    a=; read -r a < "$d/address" 2>/dev/null || continue
    [ "$a" = "$o" ] || continue
    i=${d##*/}
    ip link set dev "$i" address "$n" 2>/dev/null \
      || { ip link set dev "$i" down; ip link set dev "$i" address "$n"; ip link set dev "$i" up; }
    ip -4 addr flush dev "$i"  # the template's address: never seen on the network
  done
done
if [ -d /run/systemd/system ] && systemctl -q is-active systemd-networkd 2>/dev/null; then
  # what it matches and how it asks, read again; the links it reconfigures
  networkctl reload 2>/dev/null || systemctl restart systemd-networkd
fi
step networkd
[ -z "$joined" ] || printf '\n@JOIN_LINE@\n'  # its links can be joined: the host does, answers
if command -v ssh-keygen >/dev/null 2>&1 && [ -d /etc/ssh ]; then
  rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
  ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key >/dev/null
  read -r kt k _ < /etc/ssh/ssh_host_ed25519_key.pub
  printf 'qemu-compose-host-key: %s %s\n' "$kt" "$k"
  p=; read -r p < /run/sshd.pid 2>/dev/null || true
  { [ -n "$p" ] && kill -HUP "$p"; } 2>/dev/null \
    || systemctl reload ssh 2>/dev/null || systemctl reload sshd 2>/dev/null
elif command -v dropbearkey >/dev/null 2>&1; then
  for p in /proc/[0-9]*; do
    [ "$(cat $p/comm 2>/dev/null)" = dropbear ] || continue
    [ "$(awk '/^PPid:/{print $2}' $p/status)" = 1 ] || continue
    args=$(tr '\0' ' ' < $p/cmdline); key=
    set -- $args
    while [ $# -gt 0 ]; do [ "$1" = -r ] && key=$2; shift; done
    [ -n "$key" ] || key=/etc/dropbear/dropbear_ed25519_host_key
    rm -f "$key"; dropbearkey -t ed25519 -f "$key" >/dev/null 2>&1
    pub=$(dropbearkey -y -f "$key" | grep '^ssh-' | cut -d' ' -f1,2)
    printf 'qemu-compose-host-key: %s\n' "$pub"
    kill "${p#/proc/}"
    n=0; while [ -e "$p" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
    $args
    break
  done
fi
step host-key
if [ -n "$joined" ]; then
  read -r _ || { echo "no word that its links were joined again"; exit 1; }
  # shellcheck disable=SC2086
  network $joined
  step network
fi
"""

# Addresses on the bridge NICs (their new MACs, the arguments), by DHCP, as their new selves:
# a function of the identity script, called once the host has joined their links again.
NETWORK_SCRIPT = r"""
if [ -d /run/systemd/system ] && systemctl -q is-active systemd-networkd 2>/dev/null; then
  :  # reloaded with the new identity: it asks, as its MAC, when the link comes back
elif [ -d /run/systemd/system ] && systemctl -q is-active NetworkManager 2>/dev/null; then
  nmcli connection reload >/dev/null 2>&1
  for m in "$@"; do
    for d in /sys/class/net/*; do
      [ "$(cat "$d/address" 2>/dev/null)" = "$m" ] || continue
      nmcli device connect "${d##*/}" >/dev/null 2>&1
    done
  done
else
  for m in "$@"; do
    for d in /sys/class/net/*; do
      [ "$(cat "$d/address" 2>/dev/null)" = "$m" ] || continue
      i=${d##*/}
      if command -v ifquery >/dev/null 2>&1 && ifquery "$i" >/dev/null 2>&1; then
        ifdown --force "$i" >/dev/null 2>&1; ifup "$i" >/dev/null 2>&1; continue
      fi
      for p in /proc/[0-9]*; do  # a client still running has the template's lease
        case "$(cat $p/comm 2>/dev/null)" in dhclient|udhcpc) ;; *) continue;; esac
        tr '\0' '\n' < $p/cmdline 2>/dev/null | grep -qx "$i" && kill "${p#/proc/}"
      done
      if command -v dhclient >/dev/null 2>&1; then dhclient -1 "$i"
      elif command -v udhcpc >/dev/null 2>&1; then udhcpc -i "$i" -f -q -n -t 10 -T 1 >/dev/null
      fi
    done
  done
fi
for m in "$@"; do
  for d in /sys/class/net/*; do
    [ "$(cat "$d/address" 2>/dev/null)" = "$m" ] || continue
    n=0; until ip -4 addr show dev "${d##*/}" | grep -q inet; do
      n=$((n+1)); [ $n -le 100 ] || { echo "no address on ${d##*/}"; exit 1; }; sleep 0.1
    done
  done
done
"""

# The network configuration under the root $1 names the NICs by their new MACs (the rest:
# old, new, kind). A bridge NIC has its new MAC now; the user-mode NIC keeps the template's
# until it boots again, so a systemd-networkd [Match] names both: networkd, reloaded, would
# leave a NIC that no file matches unconfigured, and with it the SSH session. Every networkd
# .network gets a drop-in that asks DHCP as the MAC (its default DUID is made from the
# machine-id, the template's in the lease; one matching by name, not MAC, too). The MACs
# are checked for hex digits and colons only: they become grep and sed patterns.
FILES_SCRIPT = r"""
r=$1 f= e= k=; shift
while [ $# -ge 3 ]; do
  case "$1$2" in ""|*[!0-9a-fA-F:]*) shift 3; continue;; esac
  f="$f -e $1" e="$e -e s/$1/$2/gI"
  if [ "$3" = bridge ]; then k="$k -e s/$1/$2/gI"; else k="$k -e /^\[Match]/,/^\[/s/$1/&\t$2/I"; fi
  shift 3
done
set -f
[ -z "$f" ] || grep -rlis $f "$r/etc/netplan" "$r/etc/systemd/network" \
    "$r/run/systemd/network" "$r/etc/network" "$r/etc/NetworkManager/system-connections" \
    "$r/run/NetworkManager/system-connections" 2>/dev/null | while IFS= read -r p; do
  case "$p" in */systemd/network/*) sed -i $k "$p";; *) sed -i $e "$p";; esac
done
set +f
for p in "$r"/etc/systemd/network/*.network "$r"/run/systemd/network/*.network \
    "$r"/usr/lib/systemd/network/*.network "$r"/lib/systemd/network/*.network; do
  [ -f "$p" ] || continue
  d="$r/etc/systemd/network/${p##*/}.d"
  mkdir -p "$d" && printf '[DHCPv4]\nClientIdentifier=mac\n' > "$d/50-qemu-compose-clone.conf"
done
"""
# The old hostname's words in /etc/hosts become the new one's (o, n; d: the domain), except
# in our block of the network's VMs (cloudinit.HOSTS_SCRIPT), which names the template too.
RENAME_AWK = (
    f"/^{HOSTS_BEGIN}$/{{s=1}}"
    ' !s{for(i=2;i<=NF;i++){if($i==o)$i=n; else if($i==o"."d)$i=n"."d}}'
    f" /^{HOSTS_END}$/{{s=0}} 1"
)
JOIN_LINE = "qemu-compose-join: now"
IDENTITY_SCRIPT = (
    IDENTITY_SCRIPT.replace("@SET_CLOCK@", SET_CLOCK)
    .replace("@JOIN_LINE@", JOIN_LINE)
    .replace("@NETWORK@", NETWORK_SCRIPT)
    .replace("@FILES@", FILES_SCRIPT)
    .replace("@RENAME@", RENAME_AWK)
)


def identity_command(identity: CloneIdentity, boot: float) -> str:
    """The command: clock (``boot``: the guest's boot on the host's clock, as
    `clock.boot_epoch` found it), hostname, machine-id, instance-id, MACs; `JOIN_LINE`, then
    host keys; once a line comes on its standard input, addresses on the bridge NICs."""
    pairs = [
        field
        for kind, macs in (("user", identity.user_macs), ("bridge", identity.bridge_macs))
        for old, new in macs.items()
        for field in (old, new, kind)
    ]
    args = [
        identity.hostname, identity.domain, identity.machine_id, identity.instance_id,
        f"{boot:.3f}", *pairs,
    ]  # fmt: skip
    return as_root(IDENTITY_SCRIPT, "qemu-compose-identity", args)


def steps(output: bytes) -> dict[str, float]:
    """Seconds each step of the identity command took (``qemu-compose-step`` lines, the
    guest's uptime at the end of each)."""
    marks = []
    for line in output.decode(errors="replace").splitlines():
        if line.startswith("qemu-compose-step: "):
            name, _, at = line.removeprefix("qemu-compose-step: ").partition(" ")
            try:
                marks.append((name, float(at)))
            except ValueError:
                continue
    return {b[0]: round(b[1] - a[1], 3) for a, b in itertools.pairwise(marks)}


def host_key(output: bytes) -> str | None:
    """The ``<type> <key>`` the identity command printed, if it made one."""
    for line in output.decode(errors="replace").splitlines():
        if line.startswith(HOST_KEY_LINE):
            key = line[len(HOST_KEY_LINE) :].strip()
            if len(key.split()) == 2:
                return key
    return None
