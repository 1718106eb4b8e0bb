"""Masks proven, not assumed, to mean the same on every route.

citygate renders one mask into the dialect of each route a statement can take: the engine
(Trino or DuckDB) and each store that runs its own statements (the delegated route). Rendering
alone proves nothing: ``SUBSTRING(value, -4)`` is the last four characters on four of them and
the whole value on PostgreSQL. So at start-up, at each policy reload and in
``citygate policy check``, every mask of every role (built-in and custom) is evaluated on every
route that would run it, over the same values, and the outputs are compared:

- the values are a bounded sample of the column's own (:data:`SAMPLE_ROWS` rows of each masked
  table, read through the engine, so the same values reach every route) and edge cases of its
  type (:func:`edge_cases`: empty, one character, multibyte text, NULL, the type's extremes);
- on each route they enter as literals of the column's type, read as the route reads a column
  (:meth:`connectors.base.Engine.as_read`), one statement per table and route;
- a mask whose outputs differ between two routes, or whose output is the raw value where it
  should hide it (:func:`should_hide`), is refused (:class:`Refusal`), with a message that
  shows the column's own values only by their shape (:func:`shape`).

A route that does not answer is left unchecked (:class:`Unchecked`): the proof says so
(:class:`Proof`), ``policy check`` reports it as a finding, and a serving gateway sends that
route no statement until the masks are proven there too, which it tries when the route is next
found answering (:meth:`gateway.execution.gateway.Gateway.prove_routes`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cachetools import TTLCache
from sqlglot import exp

from catalogue.errors import CitygateError, EngineUnavailableError, StatementTimeout, StoreUnavailableError
from catalogue.model import Catalogue
from catalogue.sql import logical_table
from catalogue.types import LogicalType
from connectors.base import Engine
from gateway.config import CatalogueSettings
from gateway.execution.routes import DELEGATED, Routes
from policies.decide import decide
from policies.masks import REDACTED, mask
from policies.model import Policies
from policies.treatments import Treatment

log = logging.getLogger("citygate")

SAMPLE_ROWS = 20  # of each masked table: enough to meet its real shapes, few enough to start fast
# A custom mask may show a text of this many characters or fewer whole, as "the last four" does
# (the partial mask stars such a value instead).
SHORT_TEXT = 4
_UNREACHABLE = (EngineUnavailableError, StoreUnavailableError, StatementTimeout)
# Proofs made in this process: a gateway started again on the same masks, routes and key (a
# reload that changed no mask, a test suite's many gateways) does not ask every route again.
# Kept a few minutes only, since a proof also reads the columns' own values, which change; a
# proof that found a route down is not kept.
PROOF_SECONDS = 300.0
_proven: TTLCache[str, tuple[Refusal, ...]] = TTLCache(maxsize=64, ttl=PROOF_SECONDS)
_proven_lock = threading.Lock()


@dataclass(frozen=True)
class Masked:
    """One mask of one column, and the roles (and their policies' keys) that see it so."""

    department: str
    table: str
    column: str
    kind: LogicalType
    treatment: Treatment
    roles: tuple[str, ...]
    reasons: tuple[str, ...]

    @property
    def where(self) -> str:
        """The roles, the column, the mask and where the policies say so.

        >>> Masked("health", "visits", "doctor", LogicalType("string"), Treatment("nullify", ()),
        ...        ("a", "b"), ("rule for health.visits.doctor", "b's default")).where
        "roles.a.tables.health.visits.columns.doctor, b (b's default): health.visits.doctor as nullify"
        """
        keys = []
        for role, reason in zip(self.roles, self.reasons, strict=True):
            rule = reason.startswith("rule for ")
            key = f"roles.{role}.tables.{self.department}.{self.table}.columns.{self.column}"
            keys.append(key if rule else f"{role} ({reason})")
        return f"{', '.join(keys)}: {self.department}.{self.table}.{self.column} as {self.treatment}"


@dataclass(frozen=True)
class Refusal:
    """A mask that is not proven: ``message`` names role, table, column, routes and a sample."""

    masked: Masked
    message: str


@dataclass(frozen=True)
class Unchecked:
    """A route the masks could not be tried on: it did not answer."""

    key: str  # what the route is known by (:attr:`gateway.execution.routes.Route.key`)
    name: str
    why: str

    @property
    def message(self) -> str:
        return (
            f"masks not tried on {self.name}, which did not answer; a serving gateway sends it no statement "
            f"until they are proven there: {self.why}"
        )


@dataclass(frozen=True)
class Proof:
    """What a proof found: masks refused, and routes it could not try them on."""

    refusals: list[Refusal]
    unchecked: list[Unchecked]


@dataclass(frozen=True)
class Sample:
    """A value a mask is tried on: the column's own (``own``) or an edge case of its type."""

    value: Any
    own: bool
    extreme: bool = False  # an extreme of the type: left out where a mask cannot compute on it


Row = dict[str, Sample]  # column -> the value tried in it


@dataclass
class _Table:
    department: str
    table: str
    kinds: dict[str, LogicalType]
    masks: list[Masked] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """The masked columns: the only ones sampled."""
        return sorted({m.column for m in self.masks})


def masked_columns(policies: Policies, catalogue: Catalogue, settings: CatalogueSettings) -> list[_Table]:
    """Every table with a masked column, and its masks: one per column and treatment, with
    every role that sees the column so."""
    found = []
    for table in catalogue.tables:
        classes = settings.sharing_classes(table.department, table.name, [c.name for c in table.columns])
        seen: dict[tuple[str, Treatment], list[tuple[str, str]]] = {}
        for role in sorted(policies.roles):
            decision = decide(policies, role, table.department, table.name, classes)
            if decision.access == "deny":
                continue
            for column, treatment in decision.columns.items():
                if treatment.kind not in ("raw", "deny"):
                    seen.setdefault((column, treatment), []).append((role, decision.reasons[column]))
        if not seen:
            continue
        kinds = {c.name: c.type for c in table.columns}
        entry = _Table(table.department, table.name, kinds)
        for (column, treatment), holders in seen.items():
            roles, reasons = zip(*holders, strict=True)
            entry.masks.append(
                Masked(table.department, table.name, column, kinds[column], treatment, tuple(roles), tuple(reasons))
            )
        found.append(entry)
    return found


_EDGES: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {  # kind -> (plain, extremes)
    "string": (("", "a", "ab", "张伟", "欧阳娜娜", "Zoë Ünïcødé", "441900199604273847", "******", None), ("x" * 200,)),
    "integer": ((0, 1, -1, 7, -7, None), (2**31 - 1, -(2**31) + 1)),
    "bigint": ((0, 1, -1, 7, -7, None), (2**63 - 1, -(2**63) + 1)),
    "double": ((0.0, 0.5, -0.5, 2.5, -2.5, 0.1, 142.026, None), (1e300, -1e300)),
    "date": ((dt.date(2000, 2, 29), dt.date(2024, 1, 1), None), (dt.date(1000, 1, 1), dt.date(9999, 12, 31))),
    "timestamp": (
        (dt.datetime(2000, 2, 29, 12, 34, 56, 123456), dt.datetime(2024, 1, 1), None),
        (dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)),
    ),
    "boolean": ((True, False, None), ()),
}


def edge_cases(kind: LogicalType) -> list[Sample]:
    """Values of ``kind`` where engines are known to part: empty and one-character text,
    multibyte text, NULL, and the extremes of the type (MariaDB's dates start in year 1000).

    >>> [s.value for s in edge_cases(LogicalType("decimal", 4, 2))]
    [Decimal('0'), Decimal('0.50'), None, Decimal('99.99'), Decimal('-99.99')]
    """
    if kind.kind == "decimal" and kind.precision is not None:
        scale = kind.scale or 0
        largest = Decimal(10) ** (kind.precision - scale) - Decimal(1).scaleb(-scale)
        plain: tuple[Any, ...] = (Decimal(0), Decimal("0.5").quantize(Decimal(1).scaleb(-scale)), None)
        extremes: tuple[Any, ...] = (largest, -largest)
    else:
        plain, extremes = _EDGES.get(kind.kind, ((None,), ()))
    return [Sample(v, own=False) for v in plain] + [Sample(v, own=False, extreme=True) for v in extremes]


def literal(value: Any, kind: LogicalType) -> exp.Expr:
    """``value`` as a literal of ``kind``: a user's or a store's value enters SQL only so.

    >>> literal("张伟", LogicalType("string")).sql("trino")
    "CAST('张伟' AS VARCHAR)"
    """
    to = kind.to_sqlglot()
    if value is None:
        return exp.Cast(this=exp.Null(), to=to)
    if kind.kind == "boolean":
        return exp.Boolean(this=bool(value))
    text: exp.Expr
    if isinstance(value, dt.datetime):
        text = exp.Literal.string(value.isoformat(sep=" ", timespec="microseconds"))
    elif isinstance(value, dt.date):
        text = exp.Literal.string(value.isoformat())
    elif isinstance(value, int | float) and kind.kind in ("integer", "bigint", "double"):
        text = exp.Literal.number(repr(value) if isinstance(value, float) else value)
    else:
        text = exp.Literal.string(str(value))
    return exp.Cast(this=text, to=to)


def should_hide(treatment: Treatment, raw: Any, sample: Sample) -> bool:
    """Whether a mask's output must differ from the raw value ``raw``:

    - ``partial``, ``hash``, ``nullify`` and ``redact`` hide every value that is not NULL and
      not already what they show (a text of stars, ``[REDACTED]``): partial stars a short
      value whole rather than show it;
    - ``year`` and ``bucket`` coarsen: a value already on their grid is shown as it is;
    - a custom mask hides every text longer than :data:`SHORT_TEXT` characters ("the last four
      digits" shows a four-character value whole, which says what the policy says it may).

    >>> should_hide(Treatment("partial", (1, 1)), "ab", Sample("ab", own=False))
    True
    >>> should_hide(Treatment("year", ()), dt.date(2024, 1, 1), Sample(None, own=False))
    False
    """
    if raw is None:
        return False
    match treatment.kind:
        case "partial":
            return not (isinstance(raw, str) and set(raw) <= {"*"})
        case "hash" | "nullify":
            return True
        case "redact":
            return bool(raw != REDACTED)
        case "sql":
            return isinstance(raw, str) and len(raw) > SHORT_TEXT and not set(raw) <= {"*"}
    return False


def same(a: Any, b: Any) -> bool:
    """Whether two routes' outputs are the same value as a caller receives it: numbers by
    value (MariaDB's DECIMAL 3.5000 is DuckDB's double 3.5), a midnight timestamp as its date.

    >>> same(Decimal("3.5000"), 3.5), same(Decimal("0.3333"), 1 / 3)
    (True, False)
    """
    if a is None or b is None:
        return a is None and b is None
    numbers = (int, float, Decimal)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return Decimal(str(a)) == Decimal(str(b))
    if isinstance(a, dt.datetime) != isinstance(b, dt.datetime) and isinstance(a, dt.date) and isinstance(b, dt.date):
        a, b = (x.date() if isinstance(x, dt.datetime) and x.time() == dt.time() else x for x in (a, b))
    return bool(a == b)


def reproduces(output: Any, raw: Any) -> bool:
    """Whether a mask's ``output`` shows ``raw``: the value itself, or a text longer than
    :data:`SHORT_TEXT` characters inside it (``value || '-'`` hides nothing).

    >>> reproduces("441900199604273847-", "441900199604273847"), reproduces("[REDACTED]", "E")
    (True, False)
    """
    inside = isinstance(output, str) and isinstance(raw, str) and len(raw) > SHORT_TEXT and raw in output
    return inside or same(output, raw)


def shape(value: Any) -> str:
    """What a value looks like, without the value: ``18 digits``, ``2 characters``, ``NULL``.

    >>> shape("441900199604273847"), shape("张伟"), shape(None), shape(-7)
    ('18 digits', '2 characters', 'NULL', 'a negative whole number')
    """
    if isinstance(value, str) and value:
        what = "digits" if value.isdigit() else "letters" if value.isalpha() and value.isascii() else "characters"
        return f"{len(value)} {what[:-1] if len(value) == 1 else what}"
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        sign = "a negative" if value < 0 else "a"
        return f"{sign} {'whole ' if float(value).is_integer() else ''}number"
    named = {type(None): "NULL", str: "empty text", bool: "a boolean", dt.datetime: "a timestamp", dt.date: "a date"}
    return named.get(type(value), type(value).__name__)


def _describe(sample: Sample) -> str:
    # the column's own values only by their shape; an edge case is ours, and shown
    return f"a value of {shape(sample.value)}" if sample.own else f"the edge case {sample.value!r}"


# -- evaluation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    name: str
    engine: Engine
    key: str  # the route's key in :class:`Routes` (the fallback's is its engine's name)


# route name -> why it did not answer, and its key: each route is asked until it fails once
_Down = dict[str, tuple[str, str]]


def _routes(routes: Routes, department: str, masked: Masked) -> list[_Route]:
    """The routes a statement showing ``masked`` can take: the engine, and the department's
    store when statements are delegated to it and it reads the column as the engines do."""
    found = [_Route(routes.main.name, routes.engine, routes.main.key)]
    fallback = routes.fallback_engine()
    if fallback is not None:  # where the engine's statements run while it does not answer
        found.append(_Route(f"{fallback.name} (fallback)", fallback, fallback.name))
    native = routes.native.get(department)
    delegated = routes.delegating and native is not None and department not in routes.kept
    if delegated and native is not None and masked.kind.kind not in native.differs:
        found.append(_Route(f"{DELEGATED}:{native.key}", native, f"{DELEGATED}:{native.key}"))
    return found


def _expression(masked: Masked) -> exp.Expr:
    return mask(masked.treatment, exp.column(exp.to_identifier(masked.column, quoted=True)), masked.kind)


def _renders(engine: Engine, expression: exp.Expr) -> bool:
    """Whether ``engine`` can render ``expression``: a store has no hash key, SQLite no RPAD;
    a statement with such a mask is never delegated (:meth:`Routes.render`)."""
    try:
        engine.sql(exp.select(expression.copy()))
    except CitygateError:
        return False
    return True


def _statement(engine: Engine, table: _Table, columns: Sequence[str], rows: Sequence[Row]) -> exp.Expr:
    """The samples as a table ``s(i, <columns>)``: VALUES, which Trino plans in a fraction of
    the time of a UNION of one-row SELECTs (seconds for thirty rows on a busy machine); the
    UNION where the dialect cannot name a VALUES table's columns (SQLite; sqlglot writes
    MariaDB's VALUES as that UNION itself)."""
    names = [exp.to_identifier("i"), *(exp.to_identifier(name, quoted=True) for name in columns)]
    tuples = [
        [exp.Literal.number(i)]
        + [
            engine.as_read(literal(sample.value, table.kinds[name]), table.kinds[name])
            for name, sample in ((c, row[c]) for c in columns)
        ]
        for i, row in enumerate(rows)
    ]
    if engine.Dialect.generator_class.SUPPORTS_TABLE_ALIAS_COLUMNS:
        alias = exp.TableAlias(this=exp.to_identifier("s"), columns=names)
        return exp.Values(expressions=[exp.tuple_(*t) for t in tuples], alias=alias)
    selects = [exp.select(*(exp.alias_(v, n) for v, n in zip(t, names, strict=True))) for t in tuples]
    union: exp.Query = selects[0]
    for select in selects[1:]:
        union = exp.union(union, select, distinct=False)
    return union.subquery("s")


def _evaluate(route: _Route, table: _Table, masks: Sequence[Masked], rows: Sequence[Row]) -> list[list[Any]]:
    """Each mask's outputs over ``rows`` on ``route``, in the rows' order."""
    columns = sorted({m.column for m in masks})
    projections = [exp.alias_(_expression(m), f"m{n}") for n, m in enumerate(masks)]
    tree = exp.select(exp.column("i"), *projections).from_(_statement(route.engine, table, columns, rows))
    tree = tree.order_by(exp.column("i"))
    answer = route.engine.run(route.engine.sql(tree), [table.department])
    return [[row[n + 1] for row in answer.rows] for n in range(len(masks))]


def _read_samples(routes: Routes, table: _Table, down: _Down) -> list[dict[str, Any]]:
    """Up to :data:`SAMPLE_ROWS` rows of the table's masked columns, read raw through the
    engine (or the department's store, when the engine does not answer). Never shown."""
    columns = table.columns
    tree = exp.select(*(exp.column(exp.to_identifier(c, quoted=True)) for c in columns)).from_(
        logical_table(table.department, table.table)
    )
    tree = tree.limit(SAMPLE_ROWS)
    native = routes.native.get(table.department)
    engines = [_Route(routes.main.name, routes.engine, routes.main.key)]
    if native is not None:
        engines.append(_Route(f"{DELEGATED}:{native.key}", native, f"{DELEGATED}:{native.key}"))
    for route in engines:
        if route.name in down:
            continue
        try:
            return [dict(zip(columns, row, strict=True)) for row in route.engine.execute(tree).rows]
        except CitygateError as error:
            if isinstance(error, _UNREACHABLE):
                down[route.name] = (route.key, error.message)
            log.warning(
                "masks: cannot sample %s.%s on %s: %s", table.department, table.table, route.name, error.message
            )
    return []


def _rows(table: _Table, own: list[dict[str, Any]], extremes: bool) -> list[Row]:
    """The table's own rows, then edge-case rows (each column its own edge cases, side by side)."""
    columns = table.columns
    rows = [{c: Sample(row[c], own=True) for c in columns} for row in own]
    edges = {c: [s for s in edge_cases(table.kinds[c]) if extremes or not s.extreme] for c in columns}
    for i in range(max(len(e) for e in edges.values())):
        rows.append({c: edges[c][i] if i < len(edges[c]) else Sample(None, own=False) for c in columns})
    return rows


def _outputs(
    table: _Table, masks: Sequence[Masked], routes: Mapping[str, _Route], rows: list[Row], down: _Down
) -> tuple[dict[tuple[int, str], list[Any]], dict[tuple[int, str], str]]:
    """Each (mask, route)'s outputs, the masks on a route together and, if that statement
    fails, each alone; and each (mask, route) that failed alone, with the error's class. A
    route that does not answer is left out, and not asked again (``down``)."""
    outputs: dict[tuple[int, str], list[Any]] = {}
    failed: dict[tuple[int, str], str] = {}
    for name, route in routes.items():
        try:
            found, errors = _on_route(route, table, masks, rows) if name not in down else ({}, {})
        except _UNREACHABLE as error:
            down[name] = (route.key, error.message)
            log.warning("masks not proven on %s: %s", name, error.message)
            continue
        outputs.update(((n, name), values) for n, values in found.items())
        failed.update(((n, name), error) for n, error in errors.items())
    return outputs, failed


def _on_route(
    route: _Route, table: _Table, masks: Sequence[Masked], rows: list[Row]
) -> tuple[dict[int, list[Any]], dict[int, str]]:
    on_route = [n for n, m in enumerate(masks) if _renders(route.engine, _expression(m))]
    if not on_route:
        return {}, {}
    try:
        return dict(zip(on_route, _evaluate(route, table, [masks[n] for n in on_route], rows), strict=True)), {}
    except _UNREACHABLE:
        raise
    except CitygateError:
        pass  # one of them fails on these values: which?
    found, failed = {}, {}
    for n in on_route:
        try:
            found[n] = _evaluate(route, table, [masks[n]], rows)[0]
        except _UNREACHABLE:
            raise
        except CitygateError as error:
            failed[n] = type(error).__name__
    return found, failed


def _judge(masked: Masked, column: str, rows: list[Row], results: dict[str, list[Any]]) -> str | None:
    """Why ``masked`` is not proven over ``rows`` given each route's ``results``, or None."""
    names = list(results)
    first = names[0]
    for other in names[1:]:
        for row, a, b in zip(rows, results[first], results[other], strict=True):
            if not same(a, b):
                sample = row[column]
                # what a mask makes of an edge case is ours to show; of the column's values, shapes
                shown = (repr(a), repr(b)) if not sample.own else (shape(a), shape(b))
                return (
                    f"{masked.where} gives different values on {first} and {other}: for "
                    f"{_describe(sample)}, {first} gives {shown[0]} and {other} gives {shown[1]}"
                )
    for name in names:
        for row, out in zip(rows, results[name], strict=True):
            sample = row[column]
            if should_hide(masked.treatment, sample.value, sample) and reproduces(out, sample.value):
                return f"{masked.where} shows the raw value on {name}: {_describe(sample)} comes out as it is"
    if masked.treatment.kind == "sql" and masked.kind.kind != "string":
        for name in names:  # a number mask that shows every value as it is masks nothing
            pairs = [(r[column].value, out) for r, out in zip(rows, results[name], strict=True)]
            if any(raw is not None for raw, _ in pairs) and all(
                same(raw, out) for raw, out in pairs if raw is not None
            ):
                return f"{masked.where} shows the raw value on {name}: it gives every sample value itself"
    return None


def _again_without_extremes(
    by_route: Mapping[str, _Route],
    table: _Table,
    masked: Masked,
    own: list[dict[str, Any]],
    names: list[str],
    down: _Down,
) -> tuple[list[Row], dict[str, list[Any]]] | Refusal:
    """A mask that failed somewhere, once more without the type's extremes (where an overflow
    fails on one store and not on another): its rows and outputs, or why it is refused."""
    rows = _rows(table, own, extremes=False)
    results = {}
    for name in names:
        try:
            results[name] = _evaluate(by_route[name], table, [masked], rows)[0]
        except _UNREACHABLE as error:
            down[name] = (by_route[name].key, error.message)
            log.warning("mask not proven on %s: %s", name, error.message)
        except CitygateError as error:
            return Refusal(masked, f"{masked.where} fails on {name} ({type(error).__name__}) over the column's values")
    return rows, results


def _prove_table(routes: Routes, table: _Table, down: _Down) -> list[Refusal]:
    own = _read_samples(routes, table, down)
    by_route = {r.name: r for m in table.masks for r in _routes(routes, table.department, m)}
    rows = _rows(table, own, extremes=True)
    outputs, failed = _outputs(table, table.masks, by_route, rows, down)
    refusals = []
    for n, masked in enumerate(table.masks):
        names = [r.name for r in _routes(routes, table.department, masked) if (n, r.name) in outputs | failed]
        use_rows, results = rows, {name: outputs[(n, name)] for name in names if (n, name) in outputs}
        if any((n, name) in failed for name in names):
            again = _again_without_extremes(by_route, table, masked, own, names, down)
            if isinstance(again, Refusal):
                refusals.append(again)
                continue
            use_rows, results = again
        reason = _judge(masked, masked.column, use_rows, results) if results else None
        if reason is not None:
            refusals.append(Refusal(masked, reason))
    return refusals


def _proof_key(routes: Routes, tables: Sequence[_Table]) -> str:
    """What a proof's outcome depends on besides the columns' values: the masks (role, column,
    type, treatment), every route that runs them (Trino by its address: another is another
    server, and one proven does not prove it), and the hash key each engine renders with."""
    stores = sorted((department, native.key) for department, native in routes.native.items())
    fallback = routes.fallback_settings
    keys = (routes.engine.settings.hash_key, fallback.hash_key if fallback is not None else None)
    trino = routes.engine.settings.trino
    main = (routes.main.key, trino.host, trino.port) if routes.main.key == "trino" else routes.main.key
    described = (repr(tables), main, routes.delegating, stores, fallback is not None, keys)
    return hashlib.sha256(repr(described).encode()).hexdigest()


def prove_masks(routes: Routes, policies: Policies, catalogue: Catalogue, settings: CatalogueSettings) -> Proof:
    """Every mask of every role, tried on every route it can take (see the module's text): the
    masks refused, and the routes that did not answer (their masks untried)."""
    began = time.perf_counter()
    tables = masked_columns(policies, catalogue, settings)
    key = _proof_key(routes, tables)
    with _proven_lock:
        earlier = _proven.get(key)
    if earlier is not None:
        log.info("masks: %d masks proven on every route in this process already", sum(len(t.masks) for t in tables))
        return Proof(list(earlier), [])
    # Tables side by side: on Trino most of a statement's time is its round trips and planning.
    with ThreadPoolExecutor(min(len(tables), 4) or 1, thread_name_prefix="citygate-proof") as pool:
        down: _Down = {}  # routes that did not answer: not asked again
        found = pool.map(lambda table: _prove_table(routes, table, down), tables)
        refusals = [refusal for some in found for refusal in some]
    if not down:
        with _proven_lock:
            _proven[key] = tuple(refusals)
    log.info(
        "masks: %d masks of %d tables tried on every route in %.2f s",
        sum(len(t.masks) for t in tables),
        len(tables),
        time.perf_counter() - began,
    )
    return Proof(refusals, [Unchecked(key, name, why) for name, (key, why) in sorted(down.items())])


def refusal_text(refusals: Iterable[Refusal], files: Sequence[Any]) -> str:
    """The start-up error: the policy files, and each refused mask's key and why."""
    where = ", ".join(str(f) for f in files)
    lines = "\n  ".join(r.message for r in refusals)
    return (
        f"policies ({where}): masks that do not mean the same on every route, or show the raw value; "
        f"the gateway does not serve them (change or remove each):\n  {lines}"
    )
