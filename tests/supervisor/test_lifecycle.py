"""A VM's lifecycle under its restart policy: the decision and the machine, without I/O.

The machine is driven with lists of typed QMP events and a clock that is only a number."""

from __future__ import annotations

import pytest

from orchestrator.config.model import RestartKind, RestartPolicy
from orchestrator.supervisor.lifecycle import (
    RESTART_WINDOW,
    Act,
    ActionDone,
    Command,
    Ending,
    GiveUp,
    Input,
    Phase,
    Quit,
    Reset,
    RestartDue,
    ScheduleRestart,
    VmLifecycle,
    backoff,
    decide,
)
from qmp.events import (
    GuestPanicked,
    Powerdown,
    Resume,
    SessionClosed,
    SessionOpened,
    Shutdown,
    Stop,
)
from qmp.events import Reset as ResetEvent

# -- decisions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "ending", "restarts", "act"),
    [
        ("no", Ending.POWEROFF, 0, Act.QUIT),
        ("no", Ending.PANIC, 0, Act.KILL),
        ("always", Ending.POWEROFF, 5, Act.RESTART),
        ("unless-stopped", Ending.POWEROFF, 0, Act.RESTART),
        ("always", Ending.PANIC, 100, Act.RESTART),
        ("on-failure", Ending.POWEROFF, 0, Act.QUIT),  # a clean poweroff is no failure
        ("on-failure", Ending.PANIC, 100, Act.RESTART),
        ("on-failure:3", Ending.PANIC, 2, Act.RESTART),
        ("on-failure:3", Ending.PANIC, 3, Act.KILL),
        ("always", Ending.REQUESTED, 0, Act.QUIT),  # stop means stop
        ("on-failure", Ending.REQUESTED, 0, Act.QUIT),
    ],
)
def test_decide(policy: str, ending: Ending, restarts: int, act: Act) -> None:
    assert decide(RestartPolicy.parse(policy), ending, restarts, restarts).act is act


def test_backoff_doubles_up_to_a_ceiling() -> None:
    assert [backoff(n) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    always = RestartPolicy.parse("always")
    assert decide(always, Ending.POWEROFF, 9, 2).delay == 2.0  # only recent ones count


@pytest.mark.parametrize(
    ("text", "kind", "limit", "supervised", "after_poweroff"),
    [
        ("no", RestartKind.NO, None, False, False),
        ("always", RestartKind.ALWAYS, None, True, True),
        ("unless-stopped", RestartKind.UNLESS_STOPPED, None, True, True),
        ("on-failure", RestartKind.ON_FAILURE, None, True, False),
        ("on-failure:3", RestartKind.ON_FAILURE, 3, True, False),
    ],
)
def test_restart_policies_parse_once_and_spell_back(
    text: str, kind: RestartKind, limit: int | None, supervised: bool, after_poweroff: bool
) -> None:
    policy = RestartPolicy.parse(text)
    assert (policy.kind, policy.max_restarts) == (kind, limit)
    assert (policy.supervised, policy.after_poweroff) == (supervised, after_poweroff)
    assert str(policy) == text


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:0", "on-failure:x", ""])
def test_what_is_not_a_restart_policy(text: str) -> None:
    with pytest.raises(ValueError, match="not a restart policy"):
        RestartPolicy.parse(text)


# -- the machine ----------------------------------------------------------------------------------

POWEROFF = Shutdown(timestamp=0, guest=True, reason="guest-shutdown")
PANIC = GuestPanicked(timestamp=0, action="pause")
PANIC_SHUTDOWN = Shutdown(timestamp=0, guest=True, reason="guest-panic")


def feed(life: VmLifecycle, *steps: tuple[float, Input]) -> list[Command]:
    """Every command the events make, at their times."""
    commands: list[Command] = []
    for now, event in steps:
        commands += life.on(event, now)
    return commands


def scheduled(commands: list[Command]) -> ScheduleRestart:
    [command] = commands
    assert isinstance(command, ScheduleRestart), command
    return command


def phase(life: VmLifecycle) -> Phase:
    return life.phase


def running(policy: str) -> VmLifecycle:
    life = VmLifecycle(RestartPolicy.parse(policy))
    assert life.on(SessionOpened(status="running"), 0.0) == []
    return life


def test_a_poweroff_under_always_restarts_after_the_backoff_then_resets() -> None:
    life = running("always")
    schedule = scheduled(life.on(POWEROFF, 10.0))
    assert schedule == ScheduleRestart(1, 10.5, 0.5, 1, "powered off, restart: always")
    assert phase(life) is Phase.WAITING
    assert life.on(POWEROFF, 10.2) == []  # one decision at a time
    assert life.on(RestartDue(1), 10.5) == [Reset(1, 1)]
    assert life.on(ActionDone(1), 10.6) == []
    assert phase(life) is Phase.WATCHING
    again = scheduled(life.on(POWEROFF, 20.0))  # a second restart in the window: longer
    assert (again.delay, again.attempt) == (1.0, 2)


def test_events_that_end_nothing_decide_nothing() -> None:
    life = running("always")
    quiet: list[Input] = [
        Stop(timestamp=0), Resume(timestamp=0), ResetEvent(timestamp=0, guest=True),
        Shutdown(timestamp=0, guest=False, reason="host-qmp-quit"), SessionClosed("connection-closed"),
        GuestPanicked(timestamp=0, action="poweroff"),  # QEMU ends by itself then
    ]  # fmt: skip
    assert feed(life, *((1.0, e) for e in quiet)) == []
    assert phase(life) is Phase.WATCHING


def test_the_backoff_counts_only_the_restarts_of_the_window() -> None:
    life = running("always")
    for i in range(3):
        schedule = scheduled(life.on(POWEROFF, float(i)))
        life.on(RestartDue(1), schedule.at)
        life.on(ActionDone(1), schedule.at)
    late = scheduled(life.on(POWEROFF, 2.0 + RESTART_WINDOW + 1))  # the three are older
    assert (late.delay, late.attempt) == (0.5, 4)


def test_a_stop_requested_before_the_poweroff_quits() -> None:
    life = running("always")
    commands = feed(life, (1.0, Powerdown(timestamp=0)), (2.0, POWEROFF))
    assert commands == [Quit(1, "stop requested")]


def test_a_stop_during_the_backoff_quits_instead_of_resetting() -> None:
    life = running("unless-stopped")
    schedule = scheduled(life.on(POWEROFF, 1.0))
    assert life.on(Powerdown(timestamp=0), 1.2) == []
    assert life.on(RestartDue(schedule.generation), schedule.at) == [Quit(1, "stop requested")]


def test_a_new_qemu_during_the_backoff_is_not_touched_and_counts_afresh() -> None:
    life = running("on-failure:1")
    schedule = scheduled(life.on(PANIC, 1.0))
    assert life.on(SessionOpened(status="running"), 1.1) == []  # systemd made a new QEMU
    assert life.on(RestartDue(schedule.generation), schedule.at) == []  # not ours any more
    assert life.on(ActionDone(schedule.generation), 2.0) == []
    fresh = scheduled(life.on(PANIC, 3.0))  # counted from the new QEMU on: one more allowed
    assert (fresh.generation, fresh.attempt) == (2, 1)


def test_on_failure_n_gives_up_after_n_restarts() -> None:
    life = running("on-failure:2")
    for attempt in (1, 2):
        panic = PANIC_SHUTDOWN if attempt == 1 else PANIC
        schedule = scheduled(life.on(panic, 10.0 * attempt))
        assert schedule.attempt == attempt
        assert life.on(RestartDue(1), schedule.at) == [Reset(1, attempt)]
        life.on(ActionDone(1), schedule.at)
    assert life.on(PANIC, 50.0) == [GiveUp(1, "panicked; 2 restarts used, restart: on-failure:2")]
    assert life.on(PANIC, 51.0) == []  # giving up already


def test_a_vm_found_ended_when_the_session_opens_is_decided() -> None:
    life = VmLifecycle(RestartPolicy.parse("always"))
    assert scheduled(life.on(SessionOpened(status="shutdown"), 5.0)).attempt == 1
    panicked = VmLifecycle(RestartPolicy.parse("on-failure"))
    restart = scheduled(panicked.on(SessionOpened(status="guest-panicked"), 5.0))
    assert restart.reason == "panicked, restart: on-failure"
    assert VmLifecycle(RestartPolicy.parse("always")).on(SessionOpened(error="gone"), 5.0) == []


def test_without_a_policy_qemu_ends_by_itself() -> None:
    life = running("no")
    assert feed(life, (1.0, PANIC), (2.0, POWEROFF)) == []


def test_a_clean_poweroff_under_on_failure_quits() -> None:
    life = running("on-failure")
    assert life.on(POWEROFF, 1.0) == [Quit(1, "powered off")]
    assert phase(life) is Phase.ACTING
