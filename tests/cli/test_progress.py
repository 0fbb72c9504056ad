"""The progress renderers and the channel between the work and them, without a terminal."""

from __future__ import annotations

import io

import pytest
import trio
import trio.lowlevel

from orchestrator.api import Event, EventCallback, Stage, Status, Transfer
from orchestrator.cli.images import render_lines
from orchestrator.cli.progress import render_plain, with_events
from orchestrator.progress import Reporter


async def test_a_failing_work_still_shows_every_event_it_reported() -> None:
    """pull fails once all its images are tried: their last lines must not be lost."""
    out = io.StringIO()

    async def render(events: trio.MemoryReceiveChannel[Event]) -> None:
        await render_lines(events, out)

    async def work(on_event: EventCallback) -> None:
        report = Reporter(on_event)
        for i in range(3):
            await trio.lowlevel.checkpoint()
            report.transfer(f"http://x/{i}.img", Status.FAILED, detail="HTTP 404")
        raise RuntimeError("3 of 3 images could not be pulled")

    with pytest.raises(RuntimeError, match="3 of 3"):
        await with_events(render, work)
    assert out.getvalue().splitlines() == [
        f"pull http://x/{i}.img: failed: HTTP 404" for i in range(3)
    ]


async def test_plain_lines_of_up_and_a_downloads_lines() -> None:
    out = io.StringIO()
    send, receive = trio.open_memory_channel[Event](10)
    send.send_nowait(Event(time=0, vm="web", stage=Stage.SSH, status=Status.DONE, detail="x"))
    send.send_nowait(Event(time=0, vm="", stage=Stage.IMAGE, status=Status.WORKING))
    send.close()
    await render_plain(receive, out)
    lines = [line.split(maxsplit=1)[1] for line in out.getvalue().splitlines()]
    assert lines == ["web              ssh      done  x", "-                image    working"]
    lines_out = io.StringIO()
    send, receive = trio.open_memory_channel[Event](10)
    for done in (1 << 20, 2 << 20, 10 << 20):
        send.send_nowait(
            Transfer(
                time=0,
                vm="",
                stage=Stage.IMAGE,
                status=Status.WORKING,
                source="u",
                done=done,
                total=10 << 20,
            )
        )
    send.close()
    await render_lines(receive, lines_out)
    assert lines_out.getvalue().splitlines() == [
        "pull u: 10% of 10 MiB", "pull u: 20% of 10 MiB", "pull u: 100% of 10 MiB",
    ]  # fmt: skip
