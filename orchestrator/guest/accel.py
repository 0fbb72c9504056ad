"""Which accelerator a VM runs with: KVM only where the host really has it, else TCG.

``/dev/kvm`` alone proves nothing: a nested "PVM" KVM (module kvm_pvm) exposes it on CPUs
without VMX/SVM, and guests crawl or die there. ``auto`` takes KVM (with ``-cpu host``) only
when the CPU has vmx or svm, /dev/kvm opens, and kvm_pvm is not loaded; otherwise TCG (with
``-cpu max`` and one host thread per vCPU). The decision is a pure function of the facts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import QemuComposeError


class AccelError(QemuComposeError):
    """KVM was asked for and cannot be had here."""


@dataclass(frozen=True, slots=True)
class HostFacts:
    cpu_flags: frozenset[str]
    kvm_openable: bool
    kvm_pvm_loaded: bool


@dataclass(frozen=True, slots=True)
class Accel:
    name: str  # "kvm" or "tcg"
    cpu_model: str
    reason: str  # why, in words, for `doctor` and `inspect`

    def args(self) -> list[str]:
        if self.name == "kvm":
            return ["-accel", "kvm", "-cpu", self.cpu_model]
        return ["-accel", "tcg,thread=multi", "-cpu", self.cpu_model]


def read_host_facts(
    cpuinfo: Path = Path("/proc/cpuinfo"),
    kvm: Path = Path("/dev/kvm"),
    modules: Path = Path("/proc/modules"),
) -> HostFacts:
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        fd = os.open(kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        openable = False
    else:
        os.close(fd)
        openable = True
    try:
        loaded = {line.split()[0] for line in modules.read_text().splitlines() if line.strip()}
    except OSError:
        loaded = set()
    return HostFacts(frozenset(flags), openable, "kvm_pvm" in loaded)


def kvm_usable(facts: HostFacts) -> tuple[bool, str]:
    if not facts.cpu_flags & {"vmx", "svm"}:
        return False, "the CPU has no hardware virtualisation (no vmx or svm flag)"
    if facts.kvm_pvm_loaded:
        return False, "/dev/kvm is nested PVM (kvm_pvm), which cannot run guests well"
    if not facts.kvm_openable:
        return False, "/dev/kvm cannot be opened (missing, or no permission: group kvm)"
    return True, "hardware virtualisation and /dev/kvm are usable"


def choose_accel(requested: str, facts: HostFacts, cpu_model: str | None = None) -> Accel:
    """The accelerator for ``requested`` ("auto", "kvm" or "tcg") on a host with ``facts``."""
    usable, why = kvm_usable(facts)
    if requested == "kvm" and not usable:
        raise AccelError(f"accel: kvm was asked for, but {why}; use accel: auto or tcg")
    if requested == "kvm" or (requested == "auto" and usable):
        return Accel("kvm", cpu_model or "host", why)
    reason = "asked for" if requested == "tcg" else why
    return Accel("tcg", cpu_model or "max", f"TCG (software emulation): {reason}")
