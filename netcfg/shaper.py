"""``python -m netcfg.shaper SPEC``: shape the directions of NICs that SPEC (JSON, ShaperSpec)
names, until QEMU closes their sockets (the filter taken away, or QEMU gone); then exit 0.

It runs as a transient unit of its own, one a VM (the runtime starts it after adding the
chardevs QEMU listens on, and adds the redirectors once it is connected).
"""

from __future__ import annotations

import contextlib
import sys

import msgspec
import trio

from .shaping import Pipe, Shape

CONNECT_WITHIN = 10.0  # seconds for QEMU's sockets to take our connection


class PipeSpec(msgspec.Struct, frozen=True):
    source: str  # the outdev chardev's socket: QEMU's frames to us
    sink: str  # the indev chardev's socket: ours back to QEMU
    shape: Shape
    vnet: bool = True  # the redirector has vnet_hdr_support


class ShaperSpec(msgspec.Struct, frozen=True):
    pipes: list[PipeSpec]


async def _connect(path: str) -> trio.SocketStream:
    with trio.fail_after(CONNECT_WITHIN):
        while True:
            try:
                return await trio.open_unix_socket(path)
            except OSError:
                await trio.sleep(0.05)


async def serve(spec: ShaperSpec) -> None:
    """Every pipe until the first of them ends."""
    async with trio.open_nursery() as nursery:
        for pipe in spec.pipes:
            source, sink = await _connect(pipe.source), await _connect(pipe.sink)
            nursery.start_soon(_run_then_end, Pipe(pipe.shape, source, sink, vnet=pipe.vnet),
                               nursery.cancel_scope)  # fmt: skip


async def _run_then_end(pipe: Pipe, scope: trio.CancelScope) -> None:
    # QEMU closed the other socket of the pair: the filter went, or QEMU
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await pipe.run()
    scope.cancel()  # (a FrameError ends the shaper failed: the journal says why)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m netcfg.shaper SPEC-JSON")
    try:
        spec = msgspec.json.decode(args[0], type=ShaperSpec)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as err:
        sys.exit(f"netcfg.shaper: bad spec: {err}")
    try:
        trio.run(serve, spec)
    except trio.TooSlowError:
        sys.exit("netcfg.shaper: QEMU's sockets did not take the connection")


if __name__ == "__main__":
    main()
