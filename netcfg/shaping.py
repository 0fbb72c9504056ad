"""Network faults in user space: netem's delay, jitter, loss, duplication, corruption,
reordering and rate, on one direction of one NIC, without a kernel module or privilege.

QEMU hands the frames of a NIC's direction to us and takes them back (a ``filter-redirector``
on the netdev, with an ``outdev`` and an ``indev`` chardev: unix sockets QEMU listens on);
a Pipe reads each frame, decides its fate (``fate``) and writes it back when it is due. The
frames on those sockets are framed as QEMU's redirector frames them: a 4-byte big-endian
length, with ``vnet_hdr_support`` a 4-byte length of the virtio-net header the frame starts
with, then the frame.

Why not tc netem on the TAP: netem is a kernel module (sch_netem) that kernels may lack (the
one this was built on has none), needs CAP_NET_ADMIN, and cannot reach QEMU's user-mode
network. The price of user space: a frame costs microseconds of Python, so rates beyond a
few tens of MB/s are out of reach; faults for resilience tests do not need them.
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
import struct
from collections.abc import Callable

import msgspec
import trio

MAX_FRAME = 69632  # the most QEMU's redirector sends (REDIRECTOR_MAX_LEN: NET_BUFSIZE)
QUEUE_LIMIT = 1000  # frames a direction holds back at most (netem's default limit): more are lost


class Shape(msgspec.Struct, frozen=True, kw_only=True):
    """What happens to the frames of one direction, netem's way. Percentages 0..100."""

    delay: float = 0.0  # seconds added to each frame
    jitter: float = 0.0  # seconds, uniformly +-, around the delay (frames may reorder)
    loss: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0  # a bit flipped where a checksum notices (see corrupted)
    reorder: float = 0.0  # sent at once, ahead of the delayed ones (needs a delay)
    rate: int = 0  # bits a second the direction carries (0: no limit)

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} is a percentage, 0 to 100: got {getattr(self, name)}")
        if self.delay < 0 or self.jitter < 0 or self.rate < 0:
            raise ValueError("delay, jitter and rate cannot be negative")

    @property
    def is_noop(self) -> bool:
        return self == Shape()

    def describe(self) -> str:
        """netem's spelling: "delay=200ms jitter=20ms loss=5% rate=1mbit"."""
        parts = []
        for name in ("delay", "jitter"):
            if getattr(self, name):
                parts.append(f"{name}={format_duration(getattr(self, name))}")
        for name in ("loss", "duplicate", "corrupt", "reorder"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name):g}%")
        if self.rate:
            parts.append(f"rate={format_rate(self.rate)}")
        return " ".join(parts) or "none"


# -- the options, as tc writes them -------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(us|ms|s)$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)$")
_RATE_UNITS = {"bit": 1, "kbit": 1000, "mbit": 1000**2, "gbit": 1000**3}


def parse_duration(text: str) -> float:
    """Seconds in "100ms", "1.5s", "250us"."""
    found = _DURATION.match(text.strip().lower())
    if not found:
        raise ValueError(f"expected a duration such as 100ms, 1s or 250us, got {text!r}")
    return float(found.group(1)) * _DURATION_UNITS[found.group(2)]


def format_duration(seconds: float) -> str:
    if seconds >= 1 and float(seconds).is_integer():
        return f"{seconds:g}s"
    if seconds * 1000 >= 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds * 1e6:g}us"


def parse_percent(text: str) -> float:
    """A percentage, 0 to 100: "5%", "0.1%" or "5"."""
    value = text.strip().removesuffix("%")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"expected a percentage such as 5% or 0.1%, got {text!r}") from None
    if not 0 <= number <= 100:
        raise ValueError(f"a percentage is 0 to 100, got {text!r}")
    return number


def parse_rate(text: str) -> int:
    """Bits a second in "1mbit", "512kbit", "1gbit", "9600bit" (tc's units, powers of 1000)."""
    found = _RATE.match(text.strip().lower())
    if not found:
        raise ValueError(f"expected a rate such as 1mbit, 512kbit or 1gbit, got {text!r}")
    bits = int(float(found.group(1)) * _RATE_UNITS[found.group(2)])
    if bits < 1:
        raise ValueError(f"a rate is at least 1bit, got {text!r}")
    return bits


def format_rate(bits: int) -> str:
    for unit in ("gbit", "mbit", "kbit"):
        if bits % _RATE_UNITS[unit] == 0:
            return f"{bits // _RATE_UNITS[unit]}{unit}"
    return f"{bits}bit"


# -- fate: pure ---------------------------------------------------------------------------------


class Copy(msgspec.Struct, frozen=True):
    """One copy of a frame to send: ``delay`` seconds after it came, ``corrupt`` or not."""

    delay: float
    corrupt: bool = False


def fate(shape: Shape, chance: Callable[[], float]) -> list[Copy]:
    """What becomes of one frame: none (lost), one copy, or two (duplicated). ``chance``
    gives uniform numbers in [0, 1) (random.random)."""
    if shape.loss and chance() * 100 < shape.loss:
        return []
    copies = 2 if shape.duplicate and chance() * 100 < shape.duplicate else 1
    out = []
    for _ in range(copies):
        delay = shape.delay
        if shape.jitter:
            delay = max(0.0, delay + (chance() * 2 - 1) * shape.jitter)
        if shape.reorder and chance() * 100 < shape.reorder:
            delay = 0.0
        corrupt = bool(shape.corrupt) and chance() * 100 < shape.corrupt
        out.append(Copy(delay, corrupt))
    return out


VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2  # "checksums checked already": the receiver skips them
ETHERNET_HEADER = 14


def corrupted(frame: bytes, header: int, chance: Callable[[], float]) -> bytes:
    """``frame`` with one bit flipped past its virtio-net ``header`` and Ethernet header,
    where a checksum covers it. A frame whose transport checksum the host is to fill in
    (NEEDS_CSUM: it would be computed over the flipped bit) gets it before csum_start (its
    IP header, whose checksum the guest made); a GSO frame, segmented later, is left whole
    (segmenting rewrites its headers)."""
    start, end = header + ETHERNET_HEADER, len(frame)
    if header >= 10:  # struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start
        flags, gso_type, _, _, csum_start = struct.unpack_from("<BBHHH", frame)
        if gso_type != 0:
            return frame
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            end = min(end, header + csum_start)
    if end <= start:
        return frame
    at = start + int(chance() * (end - start))
    flipped = bytearray(frame)
    flipped[at] ^= 1 << int(chance() * 8)
    if header >= 10:  # no DATA_VALID: the receiver checks the checksums the bit broke
        flipped[0] &= ~VIRTIO_NET_HDR_F_DATA_VALID
    return bytes(flipped)


# -- framing ------------------------------------------------------------------------------------


class FrameError(Exception):
    """What came on a redirector socket is not a frame (a length beyond any frame)."""


def encode(frame: bytes, vnet_header: int | None) -> bytes:
    """A frame as the redirector reads it (``vnet_header``: its header's length, with
    vnet_hdr_support; None without)."""
    head = struct.pack("!I", len(frame))
    if vnet_header is not None:
        head += struct.pack("!I", vnet_header)
    return head + frame


class Decoder:
    """Frames out of a byte stream from a redirector (see encode)."""

    def __init__(self, *, vnet: bool) -> None:
        self.vnet = vnet
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray) -> list[tuple[int | None, bytes]]:
        """The (vnet header length, frame) pairs ``data`` completes."""
        self._buffer += data
        head = 8 if self.vnet else 4
        frames: list[tuple[int | None, bytes]] = []
        while len(self._buffer) >= head:
            (size,) = struct.unpack_from("!I", self._buffer)
            if size > MAX_FRAME:
                raise FrameError(f"a frame of {size} bytes: not a redirector's stream")
            if len(self._buffer) < head + size:
                break
            vnet = struct.unpack_from("!I", self._buffer, 4)[0] if self.vnet else None
            frames.append((vnet, bytes(self._buffer[head : head + size])))
            del self._buffer[: head + size]
        return frames


# -- a pipe: one direction of one NIC -----------------------------------------------------------


class Pipe:
    """Frames from ``source`` (QEMU's outdev) to ``sink`` (its indev), shaped."""

    def __init__(
        self,
        shape: Shape,
        source: trio.abc.ReceiveStream,
        sink: trio.abc.SendStream,
        *,
        vnet: bool,
        rng: random.Random | None = None,
    ) -> None:
        self.shape = shape
        self.source, self.sink = source, sink
        self.vnet = vnet
        self.rng = rng or random.Random()  # noqa: S311 (faults, not secrets)
        self._due: list[tuple[float, int, bytes]] = []  # (when, order, encoded frame)
        self._order = itertools.count()
        self._wake = trio.Event()
        self._free_at = 0.0  # when the rate lets the next frame go
        self.passed = self.lost = 0

    async def run(self) -> None:
        """Until ``source`` ends (QEMU closed it: the filter removed, or QEMU gone)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send)
            await self._receive()
            nursery.cancel_scope.cancel()

    async def _receive(self) -> None:
        decoder = Decoder(vnet=self.vnet)
        while data := await self.source.receive_some(MAX_FRAME):
            now = trio.current_time()
            for vnet_header, frame in decoder.feed(data):
                self._take(now, vnet_header, frame)

    def _take(self, now: float, vnet_header: int | None, frame: bytes) -> None:
        copies = fate(self.shape, self.rng.random)
        if not copies or len(self._due) >= QUEUE_LIMIT:  # lost, or no room (tail drop)
            self.lost += 1
            return
        for copy in copies:
            body = corrupted(frame, vnet_header or 0, self.rng.random) if copy.corrupt else frame
            when = now + copy.delay
            if self.shape.rate:  # serialised: each frame waits for the ones before it
                when = max(when, self._free_at)
                self._free_at = when + len(frame) * 8 / self.shape.rate
            heapq.heappush(self._due, (when, next(self._order), encode(body, vnet_header)))
        self._wake.set()

    async def _send(self) -> None:
        while True:
            if not self._due:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            when = self._due[0][0]
            if when > trio.current_time():
                with trio.move_on_at(when):
                    await self._wake.wait()  # an earlier frame may come meanwhile
                    self._wake = trio.Event()
                continue
            _, _, data = heapq.heappop(self._due)
            await self.sink.send_all(data)
            self.passed += 1
