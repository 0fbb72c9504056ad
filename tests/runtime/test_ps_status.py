"""`ps`'s STATUS as docker shows it: pure text from the state, the health and the times."""

from __future__ import annotations

import pytest

from orchestrator.runtime.query import age, status_text

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (-3, "0s"), (59.9, "59s"), (60, "1m"), (119 * 60, "119m"), (2 * 3600, "2h"),
     (47 * 3600, "47h"), (2 * 86400, "2d"), (400 * 86400, "400d")],
)  # fmt: skip
def test_ages_are_short_and_never_round_up(seconds: float, text: str) -> None:
    assert age(seconds) == text


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (("running", "healthy", NOW - 720, None, None), "running (healthy) 12m"),
        (("running", "starting", NOW - 40, None, None), "running (starting) 40s"),
        (("running", "unhealthy", NOW - 180, None, None), "running (unhealthy) 3m"),
        (("running", None, NOW - 5, None, None), "running 5s"),  # no OS: no health
        (("paused", "healthy", NOW - 60, None, None), "paused (healthy) 1m"),
        (("exited", None, None, NOW - 120, 0), "exited (0) 2m ago"),
        (("failed", None, None, NOW - 3600 * 3, 137), "failed (137) 3h ago"),
        (("exited", None, None, None, None), "exited"),  # its run's end was not kept
        (("failed", None, None, NOW, None), "failed 0s ago"),
        (("not-created", None, None, None, None), "not-created"),
        (("starting", None, None, None, None), "starting"),
        (("restarting", None, NOW - 5, None, None), "restarting"),  # in its policy's backoff
    ],
)
def test_status_reads_as_docker_ps(args: tuple[str, str | None, float | None, float | None,
                                               int | None], text: str) -> None:  # fmt: skip
    assert status_text(*args, NOW) == text
