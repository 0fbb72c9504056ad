"""The dependency graph of VMs (``depends_on``): cycles and start order. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as ``[a, b, ..., a]``, or None. ``edges[a]`` are what ``a`` needs.

    Iterative depth-first search (no recursion limit for large topologies); nodes are visited
    in sorted order so the reported cycle is the same on every run.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(edges, white)
    for root in sorted(edges):
        if colour[root] != white:
            continue
        stack: list[tuple[str, list[str]]] = [(root, sorted(edges[root], reverse=True))]
        colour[root] = grey
        while stack:
            node, pending = stack[-1]
            if not pending:
                colour[node] = black
                stack.pop()
                continue
            nxt = pending.pop()
            state = colour.get(nxt, black)  # unknown names are reported elsewhere
            if state == grey:
                trail = [n for n, _ in stack]
                return [*trail[trail.index(nxt) :], nxt]
            if state == white:
                colour[nxt] = grey
                stack.append((nxt, sorted(edges[nxt], reverse=True)))
    return None


def start_layers(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Nodes grouped in the order they can start: each layer needs only earlier layers.

    Raises ValueError on a cycle (validation rejects those first).
    """
    needs = {node: set(deps) & edges.keys() for node, deps in edges.items()}
    layers: list[list[str]] = []
    done: set[str] = set()
    while len(done) < len(needs):
        ready = sorted(n for n, deps in needs.items() if n not in done and deps <= done)
        if not ready:
            raise ValueError(f"dependency cycle: {find_cycle(edges)}")
        layers.append(ready)
        done.update(ready)
    return layers
