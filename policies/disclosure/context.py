"""What the disclosure probes share: their findings, the view of a table as a role is shown it,
and the pieces of SQL they measure it with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeGuard

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision, reveals
from policies.exposure import Probe
from policies.masks import mask
from policies.rewrite import Context, enforce
from policies.rewrite.context import POLICY, raw_column
from policies.rowfilter import columns_used, parse_filter
from policies.treatments import RAW, Treatment

Decisions = Mapping[str, Mapping[tuple[str, str], TableDecision]]  # role -> table -> decision
Types = Mapping[tuple[str, str], Mapping[str, LogicalType]]


@dataclass(frozen=True)
class Found:
    """One finding, with what an accepted exception names: its roles, table and column."""

    kind: str
    message: str
    roles: tuple[str, ...]
    table: str
    column: str = ""


@dataclass(frozen=True)
class Unmeasured:
    """What the caller's runner gives for a measurement the engine could not make: the check
    then fails, naming it, rather than pass on what it did not see."""

    reason: str


def unmeasured(probe: Probe[Found], reason: str) -> Found:
    return Found(
        "unmeasured",
        f"{probe.kind} of {probe.department}.{probe.table}: the engine could not measure it ({reason}); "
        "the check cannot vouch for this table",
        (),
        f"{probe.department}.{probe.table}",
    )


def quoted(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def raw_table(department: str, table: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(department), alias=exp.TableAlias(this="raw"))


def as_shown(treatment: Treatment, column: str, kind: LogicalType) -> exp.Expr:
    """The column as the role is shown it, for counting: the very mask the rewrite computes,
    but a keyed hash as the raw value, which it tells apart exactly as the hash does (one
    pseudonym per value), without the key and the cost of an HMAC on every row."""
    return mask(_counted(treatment), raw_column(column), kind)


def _counted(treatment: Treatment) -> Treatment:
    return RAW if treatment.kind == "hash" else treatment


def share_of(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,}"


def sum_when(condition: exp.Expr, then: exp.Expr | None = None) -> exp.Expr:
    """``SUM(CASE WHEN condition THEN then ELSE 0 END)``: rows (or ``then``) where it holds."""
    value = then if then is not None else exp.Literal.number(1)
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=condition, true=value)], default=exp.Literal.number(0)))


def row_level(decision: TableDecision | None) -> TypeGuard[TableDecision]:
    """Whether a role reads the table row by row (not only aggregated, not denied)."""
    return decision is not None and decision.access == "allow" and decision.visible


def shown_columns(decision: TableDecision) -> dict[str, Treatment]:
    """The columns a role is shown something of (not denied, not blanked by nullify or redact)."""
    return {c: t for c, t in decision.visible_columns.items() if reveals(t)}


# -- the view, as the role's own statement -------------------------------------------------------


PART = "__part_"


def view_of(decision: TableDecision, types: Mapping[str, LogicalType], columns: Sequence[str]) -> exp.Select:
    """The role's rows of the table, as its rewritten statement computes them (masks, custom
    ones included), with each column its row filter reads passed on raw as ``__part_<column>``:
    the claims are unknown here, so the view is split by those columns instead.

    The statement is the policy rewrite's own (:func:`~policies.rewrite.enforce`), of a query
    that reads the columns, with a hash as its raw value (it groups rows alike); what the
    checker adds, it adds after the rewrite."""
    key = (decision.department, decision.table)
    reference = exp.Table(
        this=exp.to_identifier(decision.table),
        db=exp.to_identifier(decision.department),
        alias=exp.TableAlias(this="t"),
    )
    tree = exp.select(*(exp.alias_(exp.column(quoted(c), table="t"), quoted(c)) for c in columns)).from_(reference)
    # counted, not shown: a hash groups rows as its raw value does (see as_shown)
    counted = {c: _counted(t) for c, t in decision.columns.items()}
    unfiltered = replace(decision, row_filter=None, columns=counted)
    view = enforce(tree, Context({key: unfiltered}, {key: types}, {}, {}))
    assert isinstance(view, exp.Select)
    parts = sorted(columns_used(parse_filter(decision.row_filter))) if decision.row_filter is not None else []
    policy = next(s for s in view.find_all(exp.Subquery) if s.meta.get(POLICY))
    inner = policy.this
    assert isinstance(inner, exp.Select)
    for name in parts:
        inner.select(exp.alias_(raw_column(name), quoted(PART + name)), copy=False)
        passed = exp.column(quoted(PART + name), table=policy.alias_or_name)
        view.select(exp.alias_(passed, quoted(PART + name)), copy=False)
    return view
