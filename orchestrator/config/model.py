"""The compose model: what a qemu-compose.yaml says, as frozen, strictly typed structs.

These are the *resolved* forms: short forms are expanded to long ones, variables interpolated,
sizes and durations spelled canonically and relative paths made absolute before data is
converted into them (see ``normalize``). Names are restricted to characters that are safe in
systemd unit names, QEMU option strings, file names and hostnames. Runtime state lives in
``state``, never here.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .quantities import DURATION_PATTERN, SIZE_PATTERN


class Model(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every compose struct."""


def _text(pattern: str, hint: str, max_length: int | None = None) -> Meta:
    # `$` also matches before a final newline ("web\n" would pass): anchor at the very end
    if pattern.endswith("$"):
        pattern = pattern[:-1] + r"(?![\s\S])"
    return Meta(pattern=pattern, max_length=max_length, extra={"hint": hint})


# A VM name is also the guest's hostname and part of unit names: a DNS label, with room for
# the "-N" suffix of replicas.
VmName = Annotated[
    str,
    _text(
        r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        "lower-case letters, digits and '-', starting and ending with a letter or digit",
        48,
    ),
]
ResourceName = Annotated[
    str,
    _text(
        r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$",
        "letters, digits, '_' and '-', starting with a letter or digit",
        48,
    ),
]
ProjectName = Annotated[
    str,
    _text(
        r"^[a-z0-9][a-z0-9_-]*$",
        "lower-case letters, digits, '_' and '-', starting with a letter or digit",
        48,
    ),
]
Hostname = Annotated[
    str,
    _text(
        r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$",
        "lower-case letters, digits and '-', starting and ending with a letter or digit",
        63,
    ),
]
UserName = Annotated[
    str,
    _text(r"^[a-z_][a-z0-9_-]*$", "a Linux user name: lower-case letters, digits, '_', '-'", 32),
]
Size = Annotated[str, _text(SIZE_PATTERN, "a size such as 512M or 10G")]
Duration = Annotated[str, _text(DURATION_PATTERN, "a duration such as 30s, 1m30s or 500ms")]
Port = Annotated[int, Meta(ge=1, le=65535)]
PortRange = Annotated[str, _text(r"^[0-9]{1,5}-[0-9]{1,5}$", "a host port range such as 8000-8010")]
AbsolutePath = Annotated[str, _text(r"^/[^\x00\n]*$", "an absolute path (starting with '/')")]
# Option lists copied into QEMU (-cpu, -machine) and fstab: no spaces, quotes or shell syntax.
OptionList = Annotated[
    str,
    _text(
        r"^[A-Za-z0-9_.+=:-]+(,[A-Za-z0-9_.+=:/-]+)*$",
        "comma-separated options of letters, digits and _.+=:-",
    ),
]
MountOptions = Annotated[
    str,
    _text(r"^([A-Za-z0-9_.+=-]+(,[A-Za-z0-9_.+=-]+)*)?$", "comma-separated mount options"),
]
Checksum = Annotated[
    str,
    _text(
        r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$", "sha256:<64 hex digits> or sha512:<128>"
    ),
]
EnvName = Annotated[
    str, _text(r"^[A-Za-z_][A-Za-z0-9_]*$", "a variable name: letters, digits and '_'")
]
EnvValue = Annotated[str, _text(r"^[^\x00\n]*$", "a single line of text")]
Ipv4Address = Annotated[
    str, _text(r"^([0-9]{1,3}\.){3}[0-9]{1,3}$", "an IPv4 address such as 192.168.100.10")
]
MacAddress = Annotated[
    str, _text(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", "a MAC address such as 52:54:00:12:34:56")
]


class Image(Model, frozen=True, kw_only=True):
    """The base image: an http(s) URL, a file:// URL or an absolute path."""

    source: str
    checksum: Checksum | None = None


class Boot(Model, frozen=True, kw_only=True):
    """Direct kernel boot (QEMU -kernel/-initrd/-append) instead of the disk's bootloader."""

    kernel: AbsolutePath
    initrd: AbsolutePath | None = None
    cmdline: str = ""


class Disk(Model, frozen=True, kw_only=True):
    size: Size | None = None  # None: the base image's own size


class NetworkAttachment(Model, frozen=True, kw_only=True):
    ipv4_address: Ipv4Address | None = None
    mac_address: MacAddress | None = None


class VolumeMount(Model, frozen=True, kw_only=True):
    type: Literal["volume", "bind"]
    source: str  # a named volume, or an absolute host path for a bind mount
    target: AbsolutePath
    read_only: bool = False
    automount: bool = True
    mount_options: MountOptions = ""


class PortMapping(Model, frozen=True, kw_only=True):
    target: Port  # the guest port
    # the host port, or a range "A-B" whose first free port is taken; None: any free port
    published: Port | PortRange | None = None
    host_ip: Ipv4Address = "127.0.0.1"
    protocol: Literal["tcp", "udp"] = "tcp"

    @property
    def host_range(self) -> range | None:
        """The host ports a ``published`` range offers, in order; None for one port or any."""
        if not isinstance(self.published, str):
            return None
        first, _, last = self.published.partition("-")
        return range(int(first), int(last) + 1)


class Provision(Model, frozen=True, kw_only=True):
    type: Literal["shell"] = "shell"
    inline: str | None = None
    script: AbsolutePath | None = None


class Dependency(Model, frozen=True, kw_only=True):
    condition: Literal["service_started", "service_healthy", "service_completed_successfully"] = (
        "service_started"
    )
    required: bool = True


class Healthcheck(Model, frozen=True, kw_only=True):
    test: list[str] = []  # ["CMD", argv...] | ["CMD-SHELL", command] | ["NONE"]
    interval: Duration = "30s"
    timeout: Duration = "30s"
    retries: Annotated[int, Meta(ge=1, le=1000)] = 3
    start_period: Duration = "0s"
    start_interval: Duration = "5s"
    disable: bool = False


class Ssh(Model, frozen=True, kw_only=True):
    user: UserName | None = None  # who `ssh` logs in as; default: the VM's user
    port: Port | None = None  # host port forwarded to the guest's sshd; None: allocated


class CloudInit(Model, frozen=True, kw_only=True):
    # A mapping is cloud-config written inline; a string is a file (absolute once resolved).
    user_data: dict[str, Any] | AbsolutePath | None = None


class RestartKind(enum.StrEnum):
    NO = "no"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"
    ON_FAILURE = "on-failure"


class RestartPolicy(msgspec.Struct, frozen=True):
    """A ``restart:`` policy, parsed (docker compose's values); ``str()`` spells it back."""

    kind: RestartKind = RestartKind.NO
    max_restarts: int | None = None  # on-failure:N

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """The one reader of a policy: the model's pattern lets only these through."""
        name, colon, limit = text.partition(":")
        try:
            kind = RestartKind(name)
        except ValueError:
            raise ValueError(f"not a restart policy: {text!r}") from None
        if not colon:
            return cls(kind)
        if kind is not RestartKind.ON_FAILURE or not limit.isdigit() or int(limit) < 1:
            raise ValueError(f"not a restart policy: {text!r}")
        return cls(kind, int(limit))

    def __str__(self) -> str:
        return f"{self.kind}:{self.max_restarts}" if self.max_restarts else str(self.kind)

    @property
    def supervised(self) -> bool:
        """The supervisor decides what happens when the guest ends (QEMU keeps it, paused)."""
        return self.kind is not RestartKind.NO

    @property
    def after_poweroff(self) -> bool:
        """A guest that powers off by itself is started again."""
        return self.kind in (RestartKind.ALWAYS, RestartKind.UNLESS_STOPPED)


class Vm(Model, frozen=True, kw_only=True):
    image: Image | None = None  # none and no boot.kernel: firmware only (tests, benchmarks)
    boot: Boot | None = None
    cpu: Annotated[int, Meta(ge=1, le=1024)] = 2
    memory: Annotated[int, Meta(ge=16, le=16 * 1024 * 1024)] = 1024  # MiB
    disk: Disk = Disk()
    networks: dict[ResourceName, NetworkAttachment] = {}
    volumes: list[VolumeMount] = []
    ports: list[PortMapping] = []
    environment: dict[EnvName, EnvValue] = {}
    provision: list[Provision] = []
    depends_on: dict[VmName, Dependency] = {}
    healthcheck: Healthcheck | None = None
    restart: Annotated[
        str,
        _text(
            r"^(no|always|unless-stopped|on-failure(:[1-9][0-9]*)?)$",
            "no, always, unless-stopped, on-failure or on-failure:N",
        ),
    ] = "no"
    replicas: Annotated[int, Meta(ge=1, le=1000)] = 1
    # Replicas after the first start from its saved state (a template), not from a boot
    warm: bool = False
    ssh: Ssh = Ssh()
    user: UserName | None = None  # the guest account; default: by the image's OS
    hostname: Hostname | None = None
    cloud_init: CloudInit = CloudInit()
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    cpu_model: OptionList | None = None  # default: host with KVM, max with TCG
    machine: OptionList = "q35"
    # bios: the machine's own (SeaBIOS); uefi: OVMF, with the VM's own variables
    firmware: Literal["bios", "uefi"] = "bios"
    stop_grace_period: Duration = "1m"

    @property
    def restart_policy(self) -> RestartPolicy:
        return RestartPolicy.parse(self.restart)

    @property
    def has_os(self) -> bool:
        """An image or a kernel to boot; without, the VM runs firmware only."""
        return self.image is not None or self.boot is not None


class Network(Model, frozen=True, kw_only=True):
    driver: Literal["bridge"] = "bridge"
    subnet: Annotated[
        str,
        _text(
            r"^(auto|([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2})$",
            "auto, or an IPv4 subnet such as 192.168.100.0/24",
        ),
    ] = "auto"
    nat: bool = False  # outbound NAT to the host's uplink
    upstream_dns: list[Ipv4Address] = []  # forward other names here; none: no forwarding


class Volume(Model, frozen=True, kw_only=True):
    size: Size = "10G"


class ComposeFile(Model, frozen=True, kw_only=True):
    name: ProjectName | None = None
    vms: dict[VmName, Vm]
    networks: dict[ResourceName, Network] = {}
    volumes: dict[ResourceName, Volume] = {}
