"""The city's information-resource catalogue as one role sees it.

A role's catalogue is made from its view (:class:`gateway.execution.views.View`), the same
decisions its queries are rewritten by, so the catalogue can never promise more than a query
gets: a table the role cannot see at all is absent; a table it sees lists every column with the
column's sharing class and what the role gets of it (``raw``, its mask, ``denied``, or
``aggregate only (k=5)``). Nothing in it is a value read from a store but a row count, rounded to
two digits as the cost errors round it. The rules that decided each treatment are for a security
officer's eyes only (:mod:`gateway.console.inspect`).

>>> treatment_text(Treatment("partial", (6, 4)), "allow", 1)
'partial(6,4)'
>>> treatment_text(RAW, "aggregate_only", 5)
'aggregate only (k=5)'
>>> treatment_text(DENY, "aggregate_only", 5)
'denied'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from catalogue.errors import CitygateError
from catalogue.model import Table
from gateway.config import CatalogueSettings
from gateway.execution.views import View
from gateway.graphql.schema import TableInfo
from policies.treatments import DENY, RAW, Treatment

PROBE_SECONDS = 30.0  # a department's status is probed again when the last probe is older
ESTIMATE_SECONDS = 3600.0  # a row count estimate is read again when older


def treatment_text(treatment: Treatment, access: str, k: int) -> str:
    """What a role gets of a column, in the catalogue's words."""
    if not treatment.visible:
        return "denied"
    if access == "aggregate_only":
        mask = f", {treatment}" if treatment.masked else ""
        return f"aggregate only (k={k}){mask}"
    return str(treatment)


def rounded(number: int) -> int:
    """``number`` to two significant digits: the catalogue tells no caller a table's exact size.

    >>> rounded(35714), rounded(24)
    (36000, 24)
    """
    digits = max(len(str(number)) - 2, 0)
    return round(number, -digits)


@dataclass
class Probe:
    """Each department's state from the last health probe, probed again when it is older than
    ``seconds``; a probe that fails leaves every department ``unknown``."""

    check: Callable[[], dict[str, str]]  # department -> "ok" or why not
    seconds: float = PROBE_SECONDS
    states: dict[str, str] = field(default_factory=dict)
    at: float | None = None  # wall-clock time of the last probe
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self) -> tuple[dict[str, str], float | None]:
        with self._lock:
            if self.at is None or time.time() - self.at > self.seconds:
                try:
                    found = self.check()
                except CitygateError:
                    found = {}
                self.states = {d: "up" if state == "ok" else "down" for d, state in found.items()}
                self.at = time.time()
            return dict(self.states), self.at


@dataclass
class Estimates:
    """Row count estimates and when each was read (the entry's refresh time)."""

    count: Callable[[TableInfo], int]
    seconds: float = ESTIMATE_SECONDS
    # counts read side by side (limits.concurrency.console_estimates): a catalogue of 755 tables
    # is not read one by one
    at_once: int = 8
    known: dict[tuple[str, str], tuple[int | None, float]] = field(default_factory=dict)

    def of(self, table: TableInfo) -> tuple[int | None, float]:
        key = (table.department, table.name)
        found = self.known.get(key)
        if found is None or time.time() - found[1] > self.seconds:
            try:
                rows: int | None = rounded(self.count(table))
            except CitygateError:
                rows = None  # its store does not answer: the entry says so, the others still come
            found = self.known[key] = (rows, time.time())
        return found

    def read(self, tables: Iterable[TableInfo]) -> None:
        """Read the estimates of ``tables`` that are missing or old, several at once."""
        now = time.time()
        stale = [t for t in tables if now - self.known.get((t.department, t.name), (None, 0.0))[1] > self.seconds]
        if len(stale) > 1:
            with ThreadPoolExecutor(self.at_once, thread_name_prefix="citygate-estimates") as pool:
                list(pool.map(self.of, stale))


def _matches(needle: str, *texts: str) -> bool:
    return any(needle in text.casefold() for text in texts if text)


def sample_query(table: TableInfo) -> str:
    """A query the role may run on ``table``, for the console's "open in GraphiQL".

    An aggregate-only table is asked for groups by a column it may group by, or for its count."""
    columns = list(table.columns)
    if table.aggregate_only:
        keys = [c for c in columns if table.groupable(c)]
        if keys and table.group_by is not None:
            key = keys[0]
            groups = f"{table.root}_group_by(by: [{key}])"
            return f"{{\n  {groups} {{\n    keys {{ {key} }}\n    aggregate {{ count }}\n  }}\n}}\n"
        return f"{{\n  {table.root}_aggregate {{\n    aggregate {{ count }}\n  }}\n}}\n"
    shown = "\n".join(f"    {c}" for c in columns[:8])
    return f"{{\n  {table.root}(limit: 5) {{\n{shown}\n  }}\n}}\n"


def _resource(
    table: Table, info: TableInfo, view: View, settings: CatalogueSettings, estimates: Estimates
) -> dict[str, Any]:
    decision = view.decisions.get((table.department, table.name)) if view.decisions is not None else None
    access, k = (decision.access, decision.k) if decision is not None else ("allow", 1)
    classes = settings.sharing_classes(table.department, table.name, [c.name for c in table.columns])
    table_config = settings.departments[table.department].tables.get(table.name)
    rows, refreshed = estimates.of(info)
    if decision is not None and decision.row_filter is not None:
        # the estimate counts every row of the table, not the rows this caller may see: an
        # officer who may read one district's 1,240 residents must not learn there are 10,000
        rows = None
    columns = []
    for column in table.columns:
        treatment = decision.columns.get(column.name, DENY) if decision is not None else RAW
        sharing = classes.get(column.name)
        described = table_config.columns.get(column.name) if table_config is not None else None
        columns.append(
            {
                "name": column.name,
                "type": str(column.type),
                "sharing": sharing.value if sharing is not None else None,
                "sharing_label": sharing.label if sharing is not None else None,
                "treatment": treatment_text(treatment, access, k),
                "description": described.description if described is not None else "",
            }
        )
    return {
        "name": table.name,
        "root": info.root,
        "description": table_config.description if table_config is not None else "",
        "primary_key": list(info.primary_key),
        "relationships": [
            {"name": r.name, "kind": r.kind, "column": r.column, "target": r.target}
            for r in info.relations.values()
            if r.target in view.model.tables
        ],
        "access": access,
        "k": k if access == "aggregate_only" else None,
        "row_filter": decision is not None and decision.row_filter is not None,  # that there is one, not what
        "rows_estimate": rows,
        "refreshed": refreshed,
        "columns": columns,
        "sample_query": sample_query(info),
    }


def entries(
    view: View,
    tables: tuple[Table, ...],
    settings: CatalogueSettings,
    estimates: Estimates,
    states: dict[str, str],
    unavailable: dict[str, str],
    search: str = "",
    department: str = "",
) -> list[dict[str, Any]]:
    """The catalogue ``view``'s role sees: departments with the resources it can see, each
    with its columns; filtered by ``search`` (in names, display names, owners, descriptions
    and column names) and ``department``. A department with nothing the role can see, or
    nothing that matches, is left out."""
    needle = search.strip().casefold()
    infos = {(t.department, t.name): t for t in view.model.tables.values()}
    chosen: dict[str, list[tuple[Table, TableInfo]]] = {}
    for name, spec in settings.departments.items():
        if department and name != department:
            continue
        whole = not needle or _matches(needle, name, spec.display_name, spec.owner)
        for table in tables:
            info = infos.get((table.department, table.name))
            if table.department != name or info is None:  # absent for this role: not even named
                continue
            table_config = spec.tables.get(table.name)
            described = table_config.description if table_config is not None else ""
            if whole or _matches(needle, table.name, info.root, described, *(c.name for c in table.columns)):
                chosen.setdefault(name, []).append((table, info))
    estimates.read(info for found in chosen.values() for _, info in found)
    out = []
    for name, found in chosen.items():
        spec = settings.departments[name]
        resources = [_resource(table, info, view, settings, estimates) for table, info in found]
        status = "down" if name in unavailable else states.get(name, "unknown")
        out.append(
            {
                "name": name,
                "display_name": spec.display_name,
                "owner": spec.owner,
                "store": spec.store.kind,
                "status": status,
                "resources": resources,
            }
        )
    return out
