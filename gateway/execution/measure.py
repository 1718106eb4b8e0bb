"""Measurements of ``citygate policy check``, run on the engine as the gateway itself.

Each is one aggregate query over raw tables (:mod:`policies.disclosure`); they run a few at a
time, since on Trino most of a short query's time is its round trip and planning."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlglot import exp

from connectors.base import Engine

AT_ONCE = 4


def run_all(engine: Engine, trees: Sequence[exp.Select]) -> list[Sequence[Any]]:
    """The first row of each tree's answer, in order."""
    if not trees:
        return []
    with ThreadPoolExecutor(min(len(trees), AT_ONCE), thread_name_prefix="citygate-check") as pool:
        return list(pool.map(lambda tree: engine.execute(tree).rows[0], trees))
