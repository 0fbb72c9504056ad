"""Expand the short forms of a compose file into the long forms of ``model``.

Works on the plain data read from YAML (after interpolation), before it is converted into
structs: strings such as ``./data:/srv:ro`` or ``"127.0.0.1:8080:80/tcp"`` become mappings,
lists of names become mappings, sizes and durations get their canonical spelling and relative
paths become absolute against the project directory. A value of an unexpected type is left
as it is for the schema check to report; a malformed short form is reported here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

from . import quantities
from .yamlsource import PathKey, SourceMap, format_path, load_yaml

Report = Callable[[PathKey, str], None]

_MIB = 1024 * 1024


class Normalizer:
    def __init__(
        self, project_dir: Path, env: Mapping[str, str], source: SourceMap, report: Report
    ) -> None:
        self.project_dir = project_dir
        self.env = env
        self.source = source  # told where rewritten values were written
        self.report = report

    # -- helpers -------------------------------------------------------------------------------

    def path(self, text: str) -> str:
        """``text`` as an absolute, normalised path (``~`` expanded, relative to the project)."""
        expanded = os.path.expanduser(text)
        return os.path.normpath(os.path.join(self.project_dir, expanded))

    def _canonical(self, node: dict[str, Any], key: str, path: PathKey, kind: str) -> None:
        value = node.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            return
        convert = quantities.canonical_size if kind == "size" else quantities.canonical_duration
        try:
            node[key] = convert(value)  # type: ignore[arg-type]
        except ValueError as err:
            self.report((*path, key), str(err))

    def _names_to_mapping(self, value: Any, path: PathKey) -> Any:
        """``[a, b]`` -> ``{a: {}, b: {}}``; ``{a: null}`` -> ``{a: {}}``."""
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            for i, name in enumerate(value):
                self.source.move((*path, name), (*path, i))
            return {v: {} for v in value}
        if isinstance(value, dict):
            return {k: ({} if v is None else v) for k, v in value.items()}
        return value

    # -- the file ------------------------------------------------------------------------------

    def compose(self, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = _without_extensions(data)
        for section in ("networks", "volumes"):
            table = data.get(section)
            if isinstance(table, dict):
                data[section] = {
                    name: ({} if spec is None else _without_extensions(spec))
                    for name, spec in table.items()
                }
        volumes = data.get("volumes")
        if isinstance(volumes, dict):
            for name, spec in volumes.items():
                if isinstance(spec, dict):
                    self._canonical(spec, "size", ("volumes", name), "size")
        vms = data.get("vms")
        if isinstance(vms, dict):
            data["vms"] = {
                name: self.vm(spec, ("vms", name)) if isinstance(spec, dict) else spec
                for name, spec in vms.items()
            }
        return data

    def vm(self, raw: dict[str, Any], path: PathKey) -> dict[str, Any]:
        vm = _without_extensions(raw)
        image = vm.get("image")
        if isinstance(image, str):
            vm["image"] = {"source": self.image_source(image)}
        elif isinstance(image, dict) and isinstance(image.get("source"), str):
            vm["image"] = {**image, "source": self.image_source(image["source"])}
        boot = vm.get("boot")
        if isinstance(boot, dict):
            vm["boot"] = {
                k: self.path(v) if k in ("kernel", "initrd") and isinstance(v, str) else v
                for k, v in boot.items()
            }
        memory = vm.get("memory")
        if isinstance(memory, str) and memory.strip().isascii() and memory.strip().isdigit():
            # A number that interpolation (or quotes) made a string is still a number of MiB,
            # as compose-go casts ${...} in a typed field to the field's type.
            vm["memory"] = int(memory)
        elif isinstance(memory, str):
            try:
                vm["memory"] = quantities.parse_size(memory) // _MIB
            except ValueError as err:
                self.report((*path, "memory"), f"{err}; or a number of MiB")
        disk = vm.get("disk")
        if isinstance(disk, str | int) and not isinstance(disk, bool):
            vm["disk"] = disk = {"size": disk}
        if isinstance(disk, dict):
            self._canonical(disk, "size", (*path, "disk"), "size")
        for key in ("networks", "depends_on"):
            if key in vm:
                vm[key] = self._names_to_mapping(vm[key], (*path, key))
        if isinstance(vm.get("volumes"), list):
            vm["volumes"] = [
                self.volume(v, (*path, "volumes", i)) for i, v in enumerate(vm["volumes"])
            ]
        if isinstance(vm.get("ports"), list):
            ports: list[Any] = []
            for i, p in enumerate(vm["ports"]):
                for expanded in self.ports(p, (*path, "ports", i)):
                    self.source.move(
                        (*path, "ports", len(ports)), (*path, "ports", i), show_written=True
                    )
                    ports.append(expanded)
            vm["ports"] = ports
        if "environment" in vm:
            vm["environment"] = self.environment(vm["environment"], (*path, "environment"))
        if isinstance(vm.get("provision"), list):
            vm["provision"] = [self.provision(p) for p in vm["provision"]]
        health = vm.get("healthcheck")
        if isinstance(health, dict):
            if isinstance(health.get("test"), str):
                health["test"] = ["CMD-SHELL", health["test"]]
            for key in ("interval", "timeout", "start_period", "start_interval"):
                self._canonical(health, key, (*path, "healthcheck"), "duration")
        self._canonical(vm, "stop_grace_period", path, "duration")
        cloud = vm.get("cloud_init")
        if isinstance(cloud, dict) and isinstance(cloud.get("user_data"), str):
            cloud["user_data"] = self.user_data(
                cloud["user_data"], (*path, "cloud_init", "user_data")
            )
        return vm

    def image_source(self, text: str) -> str:
        if "://" in text:
            return text
        return self.path(text)

    def volume(self, value: Any, path: PathKey) -> Any:
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
                self.report(path, f"expected SOURCE:TARGET[:ro|rw], got {value!r}")
                return value
            mount: dict[str, Any] = {"source": parts[0], "target": parts[1]}
            if len(parts) == 3:
                if parts[2] not in ("ro", "rw"):
                    self.report(path, f"the mode must be 'ro' or 'rw', got {parts[2]!r}")
                    return value
                mount["read_only"] = parts[2] == "ro"
            value = mount
        if isinstance(value, dict) and isinstance(value.get("source"), str):
            value = dict(value)
            source = value["source"]
            if "type" not in value:
                value["type"] = "bind" if source.startswith(("/", ".", "~")) else "volume"
            if value["type"] == "bind":
                value["source"] = self.path(source)
        return value

    def ports(self, value: Any, path: PathKey) -> list[Any]:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, dict) and isinstance(value.get("published"), str):
            # compose's long form writes the host port as a string: "8080" or "8080-8090"
            try:
                value = {**value, "published": _published(value["published"])}
            except ValueError as err:
                self.report((*path, "published"), str(err))
            return [value]
        if not isinstance(value, str):
            return [value]
        try:
            return _parse_port_spec(value)
        except ValueError as err:
            self.report(path, str(err))
            return [value]

    def environment(self, value: Any, path: PathKey) -> Any:
        if isinstance(value, list):
            table: dict[str, Any] = {}
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.report((*path, i), "expected NAME=VALUE or NAME")
                    continue
                name, sep, text = item.partition("=")
                table[name] = text if sep else None
            value = table
        if not isinstance(value, dict):
            return value
        env: dict[str, Any] = {}
        for name, text in value.items():
            if text is None:  # take it from our own environment, like docker compose
                if name in self.env:
                    env[name] = self.env[name]
            elif isinstance(text, bool):
                env[name] = "true" if text else "false"
            elif isinstance(text, int | float):
                env[name] = str(text)
            else:
                env[name] = text
        return env

    def provision(self, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": "shell", "inline": value}
        if isinstance(value, dict) and isinstance(value.get("script"), str):
            return {**value, "script": self.path(value["script"])}
        return value

    def user_data(self, text: str, path: PathKey) -> Any:
        if not text.lstrip().startswith("#cloud-config"):
            return self.path(text)
        try:
            parsed, _ = load_yaml(text, Path(f"<{format_path(path)}>"))
        except ConfigError as err:
            self.report(path, f"inline cloud-config: {err.problems[0].render()}")
            return text
        if not isinstance(parsed, dict):
            self.report(path, "inline cloud-config must be a mapping")
            return text
        return parsed


def _without_extensions(table: dict[str, Any]) -> dict[str, Any]:
    """A copy without docker compose's ``x-*`` extension fields, which are ignored."""
    return {k: v for k, v in table.items() if not k.startswith("x-")}


def _port_range(text: str) -> list[int]:
    low, sep, high = text.partition("-")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise ValueError(f"expected a port number or range, got {text!r}")
    first, last = int(low), int(high) if sep else int(low)
    if not (1 <= first <= last <= 65535):
        raise ValueError(f"ports are 1-65535 and ranges ascend, got {text!r}")
    return list(range(first, last + 1))


def _published(text: str) -> int | str:
    """A host port, or a range "A-B" kept as written (one port when A is B)."""
    ports = _port_range(text.strip())
    return ports[0] if len(ports) == 1 else f"{ports[0]}-{ports[-1]}"


def _parse_port_spec(spec: str) -> list[dict[str, Any]]:
    """``[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]``, each port possibly a range ``A-B``."""
    body, _, protocol = spec.partition("/")
    protocol = protocol or "tcp"
    if protocol not in ("tcp", "udp"):
        raise ValueError(f"the protocol must be tcp or udp, got {protocol!r}")
    parts = body.split(":")
    if len(parts) > 3:
        raise ValueError(f"expected [HOST_IP:][HOST_PORT:]GUEST_PORT[/PROTOCOL], got {spec!r}")
    host_ip = parts[0] if len(parts) == 3 else None
    published_text = parts[-2] if len(parts) >= 2 else ""
    targets = _port_range(parts[-1])
    published: list[int | str | None]
    if published_text and len(targets) == 1:  # "8000-8010:80": the first free of the range
        published = [_published(published_text)]
    elif published_text:
        published = list(_port_range(published_text))
        if len(published) != len(targets):
            raise ValueError(f"the host and guest port ranges differ in length in {spec!r}")
    else:
        published = [None] * len(targets)
    out = []
    for target, pub in zip(targets, published, strict=True):
        mapping: dict[str, Any] = {"target": target, "protocol": protocol}
        if pub is not None:
            mapping["published"] = pub
        if host_ip:
            mapping["host_ip"] = host_ip
        out.append(mapping)
    return out
