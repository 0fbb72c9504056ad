"""The dependency graph: cycles and start layers."""

from __future__ import annotations

import pytest

from orchestrator.config.graph import find_cycle, start_layers


def test_no_cycle() -> None:
    assert find_cycle({"web": ["app"], "app": ["db"], "db": []}) is None


def test_cycle_is_named_in_order() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]


def test_cycle_not_through_the_first_node() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["b"], "d": []}
    assert find_cycle(edges) == ["b", "c", "b"]


def test_self_loop() -> None:
    assert find_cycle({"a": ["a"]}) == ["a", "a"]


def test_unknown_names_are_not_cycles() -> None:
    assert find_cycle({"a": ["ghost"]}) is None


def test_a_long_chain_does_not_hit_the_recursion_limit() -> None:
    n = 5000
    edges = {f"v{i}": [f"v{i + 1}"] for i in range(n)} | {f"v{n}": []}
    assert find_cycle(edges) is None
    edges[f"v{n}"] = ["v0"]
    cycle = find_cycle(edges)
    assert cycle is not None
    assert len(cycle) == n + 2


def test_start_layers() -> None:
    edges = {"web": ["app"], "app": ["db", "cache"], "db": [], "cache": [], "batch": ["db"]}
    assert start_layers(edges) == [["cache", "db"], ["app", "batch"], ["web"]]


def test_start_layers_refuses_a_cycle() -> None:
    with pytest.raises(ValueError, match="cycle"):
        start_layers({"a": ["b"], "b": ["a"]})
