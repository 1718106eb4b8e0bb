"""Functional dependencies on what a floor protects: a column a role is shown whose value
determines a column the department's floor keeps from it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import reveals
from policies.disclosure.context import Decisions, Found, as_shown, raw_table, share_of, shown_columns, sum_when
from policies.exposure import Probe
from policies.model import Checks, FloorRule
from policies.rewrite.context import raw_column
from policies.treatments import RAW, Treatment

# -- functional dependencies on what a floor protects --------------------------------------------


def dependency_probes(
    decisions: Decisions,
    key: tuple[str, str],
    types: Mapping[str, LogicalType],
    floors: Mapping[str, FloorRule],
    checks: Checks,
) -> list[Probe[Found]]:
    """A column a role is shown (row by row, or as a group key of an aggregate-only table) whose
    value determines a column the department's floor keeps from that role. A column the floor
    names itself is the floor's decision, and not measured."""
    department, table = key
    protected = {c.partition(".")[2]: rule for c, rule in floors.items() if c.partition(".")[0] == table}
    pairs: dict[tuple[str, Treatment, str], list[str]] = {}
    for role, tables in sorted(decisions.items()):
        decision = tables.get(key)
        if decision is None or decision.access == "deny":
            continue
        shown = shown_columns(decision)
        if decision.access == "aggregate_only":
            groups = decision.group_by if decision.group_by is not None else frozenset(shown)
            shown = {c: t for c, t in shown.items() if c in groups}
        for target, rule in protected.items():
            if role in rule.unmasked_for or target not in types or reveals(decision.columns.get(target, RAW)):
                continue
            for column, treatment in shown.items():
                if column != target and column not in protected:
                    pairs.setdefault((column, treatment, target), []).append(role)
    return [
        _dependency(department, table, column, treatment, target, roles, types, checks)
        for (column, treatment, target), roles in sorted(pairs.items(), key=lambda i: (i[0][0], str(i[0][1]), i[0][2]))
    ]


def _dependency(
    department: str,
    table: str,
    column: str,
    treatment: Treatment,
    target: str,
    roles: list[str],
    types: Mapping[str, LogicalType],
    checks: Checks,
) -> Probe[Found]:
    shown = as_shown(treatment, column, types[column])
    groups = (
        exp.select(
            exp.alias_(exp.Count(this=exp.Star()), "n"),
            exp.alias_(exp.Count(this=exp.Distinct(expressions=[raw_column(target)])), "d"),
        )
        .from_(raw_table(department, table))
        .group_by(shown)  # by the expression: Trino groups by no output's name
        .subquery("g")
    )
    n, d = exp.column("n", table="g"), exp.column("d", table="g")
    several = exp.GTE(this=n, expression=exp.Literal.number(2))
    tree = exp.select(
        exp.Sum(this=n.copy()),
        sum_when(several, n.copy()),
        sum_when(exp.and_(several.copy(), exp.EQ(this=d, expression=exp.Literal.number(1))), n.copy()),
        sum_when(several.copy()),
    ).from_(groups)
    where = f"{department}.{table}"

    def judge(row: Sequence[Any]) -> list[Found]:
        rows, grouped, determined, values = (int(v or 0) for v in row)
        if not rows or grouped < rows / 2 or determined < checks.dependency_share * grouped:
            return []
        seen = "" if treatment.kind == "raw" else f" as {treatment}"
        return [
            Found(
                "dependency",
                f"roles.{role} sees {where}.{column}{seen}, whose value determines {target} on "
                f"{share_of(determined, grouped)} rows ({values:,} values shared by two rows or more); "
                f"{department}'s floor keeps {target} from {role}, so {column} says what it hides: put {column} "
                f"under the floor too, or deny it",
                (role,),
                where,
                column,
            )
            for role in roles
        ]

    return Probe(department, table, tree, judge, "dependency")
