"""Measurements of ``citygate policy check``, run on the engine as the gateway itself.

Each is one aggregate query over raw tables (:mod:`policies.disclosure`); they run a few at a
time, since on Trino most of a short query's time is its round trip and planning."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlglot import exp

from catalogue.errors import CitygateError
from connectors.base import Engine
from policies.disclosure import Unmeasured

log = logging.getLogger("citygate")
AT_ONCE = 4


def run_all(engine: Engine, trees: Sequence[exp.Select]) -> list[Sequence[Any] | Unmeasured]:
    """The first row of each tree's answer, in order; :class:`Unmeasured` with the engine's
    message where it failed (the check reports it and fails, it does not stop)."""

    def run(tree: exp.Select) -> Sequence[Any] | Unmeasured:
        try:
            return engine.execute(tree).rows[0]
        except CitygateError as error:
            log.warning("policy check: a measurement failed: %s", error.message)
            return Unmeasured(error.message)

    if not trees:
        return []
    with ThreadPoolExecutor(min(len(trees), AT_ONCE), thread_name_prefix="citygate-check") as pool:
        return list(pool.map(run, trees))
