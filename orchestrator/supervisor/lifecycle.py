"""What the supervisor does when a VM's guest ends: one machine per VM, without I/O.

A VM with a restart policy other than ``no`` runs with ``-no-shutdown`` and ``-action
panic=pause``: when its guest powers off or panics, QEMU stays, paused, and the supervisor
decides (`decide`): reset the guest in place and resume it, after a backoff that doubles with
each restart in the last ten minutes; or quit QEMU; or, when an ``on-failure:N`` policy has
used its N restarts, give up (the unit is killed with GIVE_UP_SIGNAL, so that it ends failed
and stays so). A poweroff that someone asked for (a POWERDOWN came first: ``stop``) is never
undone, also when it comes during the backoff.

`VmLifecycle.on(event, now)` takes what happened (typed QMP events, the session opening, the
driver's own timers and completions) and returns the commands to carry out; it holds the
requested poweroff, the generation (one more with each new QEMU: restarts are in place) and
the restarts of the window. The driver (service.py) only carries commands out and feeds
back ``RestartDue`` when a command's time comes and ``ActionDone`` when it is carried out.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass, field

from orchestrator.config.model import RestartPolicy
from qmp.events import GuestPanicked, Powerdown, SessionEvent, SessionOpened, Shutdown

# Giving up on a VM: a signal QEMU does not handle (it ends it, without a core dump) and that
# systemd is told not to restart on (RestartPreventExitStatus=SIGPWR): the unit ends failed.
GIVE_UP_SIGNAL = signal.SIGPWR
RESTART_WINDOW = 600.0  # restarts further back than this no longer lengthen the backoff
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0


# -- the decision ---------------------------------------------------------------------------------


class Ending(enum.Enum):
    POWEROFF = "poweroff"  # the guest powered off by itself
    PANIC = "panic"  # the guest's kernel panicked
    REQUESTED = "requested"  # someone pressed the power button first (stop, destroy, ExecStop)


class Act(enum.Enum):
    RESTART = "restart"  # system_reset and cont, after the delay
    QUIT = "quit"  # QEMU exits cleanly: the unit ends as a success
    KILL = "kill"  # the unit ends failed: a panic nobody restarts


@dataclass(frozen=True, slots=True)
class Decision:
    act: Act
    delay: float = 0.0
    why: str = ""


def backoff(recent_restarts: int) -> float:
    return min(BACKOFF_FIRST * 2.0**recent_restarts, BACKOFF_MAX)


def decide(policy: RestartPolicy, ending: Ending, restarts: int, recent_restarts: int) -> Decision:
    """What to do with a VM whose guest ended, under ``policy`` (docker compose's values).

    ``restarts``: how many times the supervisor restarted it so far (for on-failure:N);
    ``recent_restarts``: how many of them in the last RESTART_WINDOW seconds (the backoff).
    """
    if ending is Ending.REQUESTED:
        return Decision(Act.QUIT, why="stop requested")
    if ending is Ending.POWEROFF:
        if policy.after_poweroff:
            why = f"powered off, restart: {policy}"
            return Decision(Act.RESTART, backoff(recent_restarts), why)
        return Decision(Act.QUIT, why="powered off")
    if policy.supervised:
        if policy.max_restarts is not None and restarts >= policy.max_restarts:
            return Decision(Act.KILL, why=f"panicked; {restarts} restarts used, restart: {policy}")
        return Decision(Act.RESTART, backoff(recent_restarts), f"panicked, restart: {policy}")
    return Decision(Act.KILL, why="panicked, restart: no")


# -- what the driver feeds back, and the commands it carries out ----------------------------------


@dataclass(frozen=True, slots=True)
class RestartDue:
    """The delay of a ScheduleRestart has passed."""

    generation: int


@dataclass(frozen=True, slots=True)
class ActionDone:
    """A Reset, Quit or GiveUp has been carried out (or failed trying)."""

    generation: int


@dataclass(frozen=True, slots=True)
class ScheduleRestart:
    """Log RESTARTING, then feed RestartDue at ``at`` (the clock of ``on``'s ``now``)."""

    generation: int
    at: float
    delay: float
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reset:
    """system_reset and cont: the guest boots again in the same QEMU; log RESTARTED."""

    generation: int
    attempt: int


@dataclass(frozen=True, slots=True)
class Quit:
    """QEMU quits: its unit ends as a success."""

    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Log RESTART_GIVEN_UP and kill the unit with GIVE_UP_SIGNAL: it ends failed."""

    generation: int
    reason: str


Input = SessionEvent | RestartDue | ActionDone
Command = ScheduleRestart | Reset | Quit | GiveUp


class Phase(enum.Enum):
    WATCHING = "watching"  # an ending will be decided
    WAITING = "waiting"  # a restart is scheduled
    ACTING = "acting"  # a command is being carried out


@dataclass
class VmLifecycle:
    policy: RestartPolicy  # the one its QEMU was started with
    generation: int = 0
    requested: bool = False  # a POWERDOWN came: the next poweroff was asked for
    phase: Phase = Phase.WATCHING
    restarts: list[float] = field(default_factory=list)  # when, on the clock of ``now``

    def on(self, event: Input, now: float) -> list[Command]:
        """What to do about ``event``, which happened at ``now``."""
        ending: Ending | None = None
        match event:
            case SessionOpened(status=status):  # a new QEMU (or supervisor): count afresh
                self.generation += 1
                self.requested = False
                self.phase = Phase.WATCHING
                self.restarts.clear()
                ending = _ENDED_STATUSES.get(status or "")  # it may have ended unwatched
            case Powerdown():
                self.requested = True
            case Shutdown(guest=True, reason=reason):
                if reason == "guest-panic":
                    ending = Ending.PANIC
                else:
                    ending = Ending.REQUESTED if self.requested else Ending.POWEROFF
            case GuestPanicked(action="pause"):
                ending = Ending.PANIC
            case RestartDue(generation=generation):
                return self._restart_due(generation)
            case ActionDone(generation=generation):
                if generation == self.generation:
                    self.phase = Phase.WATCHING
        if ending is None or self.phase is not Phase.WATCHING or not self.policy.supervised:
            return []  # (without a policy QEMU ends by itself: nothing to decide)
        return [self._decided(ending, now)]

    def _decided(self, ending: Ending, now: float) -> Command:
        recent = sum(1 for t in self.restarts if now - t < RESTART_WINDOW)
        decision = decide(self.policy, ending, len(self.restarts), recent)
        if decision.act is Act.RESTART:
            self.restarts.append(now)
            self.phase = Phase.WAITING
            return ScheduleRestart(
                self.generation, now + decision.delay, decision.delay, len(self.restarts),
                decision.why,
            )  # fmt: skip
        self.phase = Phase.ACTING
        if decision.act is Act.QUIT:
            return Quit(self.generation, decision.why)
        return GiveUp(self.generation, decision.why)

    def _restart_due(self, generation: int) -> list[Command]:
        if generation != self.generation or self.phase is not Phase.WAITING:
            return []  # replaced by a new QEMU while we waited: not ours to touch
        self.phase = Phase.ACTING
        if self.requested:  # a stop came while we waited: it wants the VM off
            return [Quit(generation, "stop requested")]
        return [Reset(generation, len(self.restarts))]


_ENDED_STATUSES = {"shutdown": Ending.POWEROFF, "guest-panicked": Ending.PANIC}
