"""Network faults in user space (netcfg.shaping): each frame's fate, the redirector's framing,
a pipe's timing on a fake clock, and the shaper process against sockets as QEMU offers them."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from netcfg.shaper import PipeSpec, ShaperSpec
from netcfg.shaping import (
    QUEUE_LIMIT,
    Copy,
    Decoder,
    FrameError,
    Pipe,
    Shape,
    corrupted,
    encode,
    fate,
    format_duration,
    format_rate,
    parse_duration,
    parse_percent,
    parse_rate,
)


def test_the_options_as_tc_writes_them() -> None:
    assert parse_duration("100ms") == pytest.approx(0.1)
    assert parse_duration("1.5s") == 1.5
    assert parse_duration("250us") == pytest.approx(250e-6)
    assert (parse_percent("5%"), parse_percent("0.1"), parse_percent("100%")) == (5, 0.1, 100)
    assert (parse_rate("1mbit"), parse_rate("512kbit"), parse_rate("9600bit")) == (
        1_000_000,
        512_000,
        9600,
    )
    for bad, parse in [("-5ms", parse_duration), ("5 parsecs", parse_duration),
                       ("101%", parse_percent), ("-1%", parse_percent), ("x%", parse_percent),
                       ("1mb", parse_rate), ("0bit", parse_rate), ("fast", parse_rate)]:  # fmt: skip
        with pytest.raises(ValueError):  # noqa: PT011 (each parser's own message)
            parse(bad)
    assert (format_duration(0.2), format_duration(2.0), format_rate(1_000_000)) == (
        "200ms",
        "2s",
        "1mbit",
    )
    shape = Shape(delay=0.2, jitter=0.02, loss=5, rate=1_000_000)
    assert shape.describe() == "delay=200ms jitter=20ms loss=5% rate=1mbit"
    with pytest.raises(ValueError, match="percentage"):
        Shape(loss=150)


def test_fate_follows_the_shape() -> None:
    rng = random.Random(7)
    assert fate(Shape(loss=100), rng.random) == []
    assert fate(Shape(delay=0.1), rng.random) == [Copy(0.1)]
    assert len(fate(Shape(duplicate=100), rng.random)) == 2
    assert fate(Shape(delay=0.1, reorder=100), rng.random) == [Copy(0.0)]
    assert fate(Shape(corrupt=100), rng.random) == [Copy(0.0, corrupt=True)]
    delays = [c.delay for _ in range(2000) for c in fate(Shape(delay=0.1, jitter=0.02), rng.random)]
    assert 0.08 <= min(delays) < 0.081
    assert 0.119 < max(delays) <= 0.12
    lost = sum(not fate(Shape(loss=30), rng.random) for _ in range(10000))
    assert 2800 < lost < 3200


def test_corruption_flips_one_bit_past_the_headers() -> None:
    rng = random.Random(1)
    frame = bytes(12 + 14 + 100)  # a virtio-net header of 12 bytes, Ethernet, payload
    for _ in range(50):
        bad = corrupted(frame, 12, rng.random)
        diff = [i for i, (x, y) in enumerate(zip(frame, bad, strict=True)) if x != y]
        assert len(diff) == 1
        assert diff[0] >= 26
        assert bin(bad[diff[0]]).count("1") == 1
    assert corrupted(bytes(20), 12, rng.random) == bytes(20)  # nothing past the headers


def test_corruption_keeps_clear_of_checksums_yet_to_be_made() -> None:
    """A frame whose TCP checksum the host fills in (NEEDS_CSUM, csum_start 34: after an
    IPv4 header) is flipped in its IP header only; a GSO frame is left whole."""
    rng = random.Random(2)
    needs_csum = struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 16) + bytes(2) + bytes(14 + 20 + 100)
    for _ in range(50):
        bad = corrupted(needs_csum, 12, rng.random)
        [at] = [i for i, (x, y) in enumerate(zip(needs_csum, bad, strict=True)) if x != y]
        assert 12 + 14 <= at < 12 + 34
    gso = struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16) + bytes(2) + bytes(14 + 20 + 100)
    assert corrupted(gso, 12, rng.random) == gso
    # a frame to the guest marked DATA_VALID (checked already): no longer, once corrupted
    valid = struct.pack("<BBHHHH", 2, 0, 0, 0, 0, 0) + bytes(2) + bytes(14 + 20 + 100)
    bad = corrupted(valid, 12, rng.random)
    assert bad[0] == 0
    assert sum(x != y for x, y in zip(valid[1:], bad[1:], strict=True)) == 1


def test_framing_round_trip_in_any_chunks() -> None:
    frames = [(12, b"\x01" * 60), (12, b"\x02" * 1514), (12, b"")]
    stream = b"".join(encode(f, n) for n, f in frames)
    decoder = Decoder(vnet=True)
    got = []
    for i in range(0, len(stream), 7):
        got += decoder.feed(stream[i : i + 7])
    assert got == frames
    plain = Decoder(vnet=False)
    assert plain.feed(encode(b"abc", None)) == [(None, b"abc")]
    with pytest.raises(FrameError):
        Decoder(vnet=False).feed(b"\xff\xff\xff\xff")


async def _through(
    shape: Shape, frames: list[bytes], gap: float = 0.0
) -> list[tuple[float, bytes]]:
    """The frames sent through a pipe (one each ``gap`` seconds), with when each came out."""
    into, source = trio.testing.memory_stream_one_way_pair()
    sink, out = trio.testing.memory_stream_one_way_pair()
    pipe = Pipe(shape, source, sink, vnet=False, rng=random.Random(3))
    got: list[tuple[float, bytes]] = []

    async def read() -> None:
        decoder = Decoder(vnet=False)
        while data := await out.receive_some(65536):
            got.extend((trio.current_time(), f) for _, f in decoder.feed(data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe.run)
        nursery.start_soon(read)
        for frame in frames:
            await into.send_all(encode(frame, None))
            await trio.sleep(gap)
        await trio.sleep(30)
        await into.aclose()
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    return got


def test_a_pipe_delays_and_rate_limits_on_a_fake_clock() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> None:
        start = trio.current_time()
        delayed = await _through(Shape(delay=0.2), [b"a" * 100, b"b" * 100], gap=0.05)
        assert [round(t - start, 3) for t, _ in delayed] == [0.2, 0.25]
        start = trio.current_time()
        # 1000-byte frames at 80 kbit: 0.1 s each, back to back, whatever their arrival
        limited = await _through(Shape(rate=80_000), [bytes(1000)] * 5)
        assert [round(t - start, 3) for t, _ in limited] == [0.0, 0.1, 0.2, 0.3, 0.4]
        start = trio.current_time()
        # reordered: sent at once, ahead of the delayed one before it
        both = await _through(Shape(delay=0.5, reorder=50), [bytes([i]) for i in range(8)], 0.01)
        order = [f[0] for _, f in both]
        assert sorted(order) == list(range(8))
        assert order != sorted(order)
        assert [f for _, f in await _through(Shape(loss=100), [b"x"] * 5)] == []
        # at most QUEUE_LIMIT frames held back: the rest are lost, as netem's limit does
        held = await _through(Shape(delay=1.0), [b"y"] * (QUEUE_LIMIT + 50))
        assert len(held) == QUEUE_LIMIT

    trio.run(main, clock=clock)


def test_the_shaper_process_connects_shapes_and_ends_with_qemu(tmp_path: Path) -> None:
    """The process against listening sockets as QEMU's chardevs are: it passes the frames
    back delayed, and exits 0 once the source socket closes."""

    async def main() -> None:
        paths = {n: str(tmp_path / f"{n}.sock") for n in ("out", "in")}
        listeners = {}
        for name, path in paths.items():
            sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
            await sock.bind(path)
            sock.listen(1)
            listeners[name] = sock
        spec = ShaperSpec([PipeSpec(paths["out"], paths["in"], Shape(delay=0.3), vnet=True)])
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "netcfg.shaper", msgspec.json.encode(spec).decode()]
        )
        with trio.fail_after(20):
            out, _ = await listeners["out"].accept()
            back, _ = await listeners["in"].accept()
            sent = trio.current_time()
            await out.send(encode(b"\x00" * 12 + b"frame" * 20, 12))
            data = await back.recv(65536)
            took = trio.current_time() - sent
            assert Decoder(vnet=True).feed(data) == [(12, b"\x00" * 12 + b"frame" * 20)]
            assert 0.29 < took < 2
            out.close()
            assert await process.wait() == 0

    trio.run(main)


def test_a_bad_spec_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "netcfg.shaper", '{"pipes": [{"source": 1}]}'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "bad spec" in done.stderr
