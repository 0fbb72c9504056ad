"""Taking things down: `stop` (gracefully, disks kept), `destroy` (instance directories too),
and networks nobody uses (`network rm`, and after `destroy`)."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import shutil
import signal
from collections.abc import Awaitable, Callable, Sequence

import trio

import netcfg
import qmp
import systemd_dbus
from orchestrator.config.model import ComposeFile
from orchestrator.config.project import Project
from orchestrator.config.topology import dependants, instances, replica_names
from orchestrator.errors import QemuComposeError, SeveralErrors, UsageError
from orchestrator.guest.knownhosts import forget_host
from orchestrator.progress import Reporter, Stage, Status
from orchestrator.state.paths import remove_socket_dir
from orchestrator.state.templates import Templates

from .faults.inject import clear_faults, forget_partitions
from .launch import grace_period
from .netmode import release_keeper
from .observe import unit_states
from .options import QMP_ANSWER, Connection
from .ports import release_ports
from .session import Session, open_session
from .snapshots.loading import discard_suspended
from .snapshots.manage import forget_vms
from .supervision import stop_supervisor


async def dependants_first(
    compose: ComposeFile, names: Sequence[str], action: Callable[[str], Awaitable[object]]
) -> None:
    """``action`` for each VM of ``names`` at once, except that a VM waits until those of
    ``names`` that depend on it (directly, or through VMs not named) are done: docker
    compose's stop order, dependants first. One that fails (a QemuComposeError) is done too:
    the others go on, and its error is raised once all have ended."""
    after = dependants(compose)
    done = {name: trio.Event() for name in names}

    def waits_for(name: str) -> set[str]:
        found: set[str] = set()
        seen: set[str] = set()
        stack = list(after.get(name, ()))
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in done:
                found.add(node)  # (it waits for its own)
            else:
                stack.extend(after.get(node, ()))
        return found

    failed: list[QemuComposeError] = []

    async def one(name: str) -> None:
        try:
            for dependant in sorted(waits_for(name)):
                await done[dependant].wait()
            await action(name)
        except QemuComposeError as err:  # the others go on: what it needs is stopped too
            failed.append(err)
        finally:
            done[name].set()

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise SeveralErrors(failed)


async def stop_one(session: Session, name: str, grace: float) -> bool:
    """Power button, ``grace`` seconds, then quit; the unit stopped (and reset if failed).
    False when the unit of that name is another project's: it is left alone."""
    manager = session.manager
    unit = session.vm_unit(name)
    status = await manager.status(unit)
    other = session.taken(status, "vm", name)
    if other is not None:  # another project's unit of that name: not ours to stop
        session.report(name, Stage.STOP, Status.SKIPPED, f"{unit} is {other}")
        return False
    if not status.active_state.running:
        if not status.active_state.stopped and status.exists:  # being stopped (by a command
            # that was killed, say): wait for that stop to end, not just for its start
            session.report(name, Stage.STOP, Status.WORKING, f"already {status.active_state}")
            if not grace:  # no grace: not even for the graceful stop under way
                with contextlib.suppress(systemd_dbus.NoSuchUnitError):  # it ended meanwhile
                    await manager.kill(unit, signal.SIGKILL)
            await manager.stop(unit, timeout=grace + 60)
            status = await manager.status(unit)
            session.report(name, Stage.STOP, Status.DONE, "stopped")
        if status.is_failed:
            await manager.reset_failed(unit)
        return True
    session.report(
        name, Stage.STOP, Status.WORKING, f"power button, {grace:g} s grace" if grace else "quit"
    )
    outcome = "stopped"
    socket = session.paths.vm(name).qmp_control_socket
    answered = True
    try:
        async with qmp.open_session(str(socket), timeout=QMP_ANSWER) as qmp_session:
            outcome = (await qmp_session.powerdown(grace=grace)).value
    except (qmp.QmpConnectError, qmp.QmpTimeoutError) as err:
        if socket.is_socket():  # there, and silent: frozen or hung
            answered = False
        else:  # gone: QEMU ended meanwhile
            outcome = f"no QMP ({err})"
    except qmp.QmpError as err:  # it went away meanwhile, say
        outcome = f"no QMP ({err})"
    stopped = await manager.stop(unit, timeout=grace + 60)
    if not answered:  # frozen (SIGSTOP) or hung: systemd's stop is what ended it
        outcome = (
            f"QEMU did not answer QMP within {QMP_ANSWER:g} s (frozen or hung); stopped by "
            f"systemd ({stopped.describe_exit()})"
        )
    if (await manager.status(unit)).is_failed:
        await manager.reset_failed(unit)
    session.report(name, Stage.STOP, Status.DONE, outcome)
    return True


async def remove_vm(session: Session, name: str) -> None:
    """Stop a VM and remove its instance directory, addresses, known host and ports."""
    project = session.project
    inst = {i.name: i for i in instances(project.model)}.get(name)
    if not await stop_one(session, name, grace_period(inst.vm if inst else None)):
        return  # the unit is another project's: so may the directory be, in a moved project
    for network in session.state.addresses.values():
        network.pop(name, None)
    shutil.rmtree(session.paths.vm(name).directory, ignore_errors=True)
    remove_socket_dir(session.paths, name)
    forget_host(session.paths, project.name, name)
    session.state.vms.pop(name, None)
    release_ports(project.name, name)
    session.store.save()
    session.report(name, Stage.DESTROY, Status.DONE, "instance directory removed")


async def stop(
    project: Project,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    timeout: float | None = None,
) -> list[str]:
    """Power the VMs down gracefully (grace: --timeout, else each VM's stop_grace_period)."""
    async with open_session(project, connection, report) as session:
        names = session.names(vms)
        by_name = {i.name: i for i in instances(session.project.model)}
        await clear_faults(session, names, why="stopped")

        async def one(name: str) -> None:
            inst = by_name.get(name)
            await stop_one(session, name, grace_period(inst.vm if inst else None, timeout))
            if discard_suspended(session.paths.vm(name)):  # it boots next time
                session.report(name, Stage.STOP, Status.DONE, "its suspended state discarded")

        await dependants_first(session.project.model, names, one)
        if not vms or not await unit_states(project, session.manager):
            await stop_supervisor(session)  # nothing left to watch
        return names


async def destroy(
    project: Project,
    vms: Sequence[str],
    connection: Connection,
    report: Reporter,
    *,
    volumes: bool = False,
) -> list[str]:
    """Stop and remove VMs; then the networks nobody uses; named volumes only if asked."""
    async with open_session(project, connection, report) as session:
        state = session.state
        names = [
            n
            for n in session.names(vms)
            if n in state.vms or session.paths.vm(n).directory.exists()
        ]
        await clear_faults(session, names, why="destroyed")
        if not vms:
            await forget_partitions(session)
        await dependants_first(session.project.model, names, functools.partial(remove_vm, session))
        await forget_vms(session, names, everything=not vms, volumes_kept=not volumes)
        _forget_templates(session, vms, names)
        in_use = state.networks_in_use()
        await _remove_networks(session, [n for n in state.subnets if n not in in_use])
        if not state.vms:  # (each removal saved the supervised VMs without it)
            await stop_supervisor(session)
        if volumes and not vms:
            for name in project.model.volumes:
                path = session.paths.volume(name).parent
                if path.exists():
                    shutil.rmtree(path)
                    report("", Stage.VOLUME, Status.DONE, f"{name} removed")
        if not state.vms:
            with netcfg.Registry().claims() as claims:
                claims.forget_project(project.name)
        session.store.save()
        return names


def _forget_templates(session: Session, vms: Sequence[str], names: Sequence[str]) -> None:
    """The templates (and `up --scale` counts) of the definitions destroyed whole: named, or
    every replica of them (all of them, when no VM is named)."""
    templates = Templates(session.paths.state_dir)
    everything, gone = not vms, set(names)
    whole = {
        definition
        for definition, vm in session.project.model.vms.items()
        if everything or definition in vms or set(replica_names(definition, vm)) <= gone
    }
    for definition in sorted(whole | (set(templates.names()) if everything else set())):
        session.state.scale.pop(definition, None)
        if templates.remove(definition):
            session.report("", Stage.TEMPLATE, Status.DONE, f"{definition}'s template removed")
    if everything:
        session.state.scale.clear()


async def remove_networks(
    project: Project, names: Sequence[str], connection: Connection, report: Reporter
) -> list[str]:
    """Remove networks no created VM uses: bridge, dnsmasq unit, subnet claim."""
    async with open_session(project, connection, report) as session:
        state = session.state
        in_use = state.networks_in_use()
        known = set(project.model.networks) | set(state.subnets)
        for name in names:
            if name not in known:
                raise UsageError(f"no network named {name!r} in {project.name}")
            if name in in_use:
                users = ", ".join(in_use[name])
                raise UsageError(
                    f"network {name!r} is in use by {users}: `qemu-compose destroy {users}` first"
                )
        created = [n for n in names if n in state.subnets]
        for name in names:
            if name not in created:
                report("", Stage.NETWORK, Status.SKIPPED, f"{name} is not created")
        await _remove_networks(session, created)
        session.store.save()
        return created


async def _remove_networks(session: Session, names: Sequence[str]) -> None:
    project, state = session.project, session.state
    for name in names:
        network = netcfg.BridgeNetwork(
            project.name,
            name,
            ipaddress.IPv4Network(state.subnets[name]),
            session.paths.network_dir(name),
        )
        unit = session.dnsmasq_unit(name)
        other = session.taken(await session.manager.status(unit), "dnsmasq", name)
        if other is not None:  # its bridge is that project's too: leave the network alone
            session.report("", Stage.NETWORK, Status.SKIPPED, f"{name}: {unit} is {other}")
            continue

        async def stop_dnsmasq(unit: str = unit) -> None:
            await session.manager.stop(unit)

        if session.network_mode == "rootless":  # in the user's namespace
            await netcfg.remove_network(network, stop_dnsmasq, plumbing=await session.links())
        elif netcfg.has_net_admin():
            await netcfg.remove_network(network, stop_dnsmasq)
        else:
            await stop_dnsmasq()
        state.subnets.pop(name, None)
        state.addresses.pop(name, None)
        with netcfg.Registry().claims() as claims:
            claims.subnets.pop(f"{project.name}/{name}", None)
        orphan = "" if name in project.model.networks else " (orphan)"
        session.report("", Stage.NETWORK, Status.DONE, f"{name} removed{orphan}")
    if names and session.namespace is not None:  # rootless: the last network gone, its keeper
        await release_keeper(session.manager)
