"""`citygate policy check`: what a security officer should know before a policy goes live.

It reports rules that match nothing (a table, column or role that does not exist), row filters
over unknown columns, every place where a department's floor overrides a central rule, and,
measured through the engine, pseudonyms that are code books and partial masks that other
visible columns narrow to few candidates (:mod:`policies.exposure`). Of noisy aggregates, a
budget too small for one answer, and bounds that clamp many real values
(:func:`~policies.exposure.clamped`).

>>> from policies.model import Policies, RolePolicy, TableRule
>>> p = Policies({"r": RolePolicy(tables={"health.nope": TableRule()})}, {}, "v")
>>> print(review(p, {("health", "visits"): {"cost": None}})[0].message)
roles.r.tables.health.nope: no such table (known: health.visits)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from catalogue.model import SharingClass
from catalogue.types import LogicalType
from policies.decide import TableDecision, decide
from policies.exposure import clamped, probes
from policies.model import Policies, RolePolicy, TableRule
from policies.rowfilter import columns_used, parse_filter

Columns = Mapping[tuple[str, str], Mapping[str, SharingClass | None]]
Measure = Callable[[exp.Select], Sequence[Any]]  # runs a one-row query over raw tables


@dataclass(frozen=True)
class Finding:
    kind: str  # "unmatched", "floor", "codebook", "inference", "noise" or "mask" (gateway.execution.proof)
    message: str


def review(
    policies: Policies,
    tables: Columns,
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]] | None = None,
    measure: Measure | None = None,
    min_distinct: int = 50,
    min_candidates: int = 1000,
    relations: Mapping[tuple[str, str], frozenset[str]] | None = None,
) -> list[Finding]:
    """Findings of the policy files alone and, given column ``types`` and a way to ``measure``
    through the engine, of what the roles' masks reveal together (:mod:`policies.exposure`).
    Given each table's ``relations`` (the relationship fields on it), a table rule's
    ``relationships`` that name none of them are reported too."""
    findings = _review_files(policies, tables)
    for role_name, role in sorted(policies.roles.items()) if relations is not None else ():
        for name, rule in sorted(role.tables.items()):
            department, _, table = name.partition(".")
            known = relations.get((department, table), frozenset()) if relations is not None else frozenset()
            findings += [
                Finding("unmatched", f"roles.{role_name}.tables.{name}.relationships.{r}: no such relationship")
                for r in sorted(set(rule.relationships) - known)
            ]
    if types is None or measure is None:
        return findings
    decisions: dict[str, dict[tuple[str, str], TableDecision]] = {}
    for role_name in sorted(policies.roles):
        for (department, table), columns in sorted(tables.items()):
            try:
                decisions.setdefault(role_name, {})[(department, table)] = decide(
                    policies, role_name, department, table, columns
                )
            except ValueError:  # a row filter over a column the table lacks: found above
                continue
    found = probes(decisions, types, min_distinct, min_candidates) + clamped(policies, set(tables))
    for probe in found:
        findings.extend(Finding(probe.kind, message) for message in probe.judge(measure(probe.tree)))
    return findings


def _review_files(policies: Policies, tables: Columns) -> list[Finding]:
    findings: list[Finding] = []
    all_columns = {c for columns in tables.values() for c in columns}
    for role_name, role in sorted(policies.roles.items()):
        for name, rule in sorted(role.tables.items()):
            findings += _table_rule(f"roles.{role_name}.tables.{name}", name, rule, tables)
        findings += _budget(role_name, role)
        for column in sorted(set(role.all_columns) - all_columns):
            findings.append(Finding("unmatched", f"roles.{role_name}.all_columns.{column}: no table has this column"))
        for (department, table), columns in sorted(tables.items()):
            try:
                decision = decide(policies, role_name, department, table, columns)
            except ValueError:  # a row filter over a column the table lacks: found above
                continue
            findings.extend(Finding("floor", conflict) for conflict in decision.floor_conflicts)
    departments = {department for department, _ in tables}
    for department, rules in sorted(policies.floors.items()):
        if department not in departments:
            findings.append(Finding("unmatched", f"floors.{department}: no such department"))
            continue
        for key, floor in sorted(rules.items()):
            table, _, column = key.partition(".")
            if (department, table) not in tables or column not in tables[(department, table)]:
                findings.append(Finding("unmatched", f"floors.{department}.{key}: no such column"))
            findings.extend(
                Finding("unmatched", f"floors.{department}.{key}: no role {role_name!r}")
                for role_name in floor.unmasked_for
                if role_name not in policies.roles
            )
    return findings


def _budget(name: str, role: RolePolicy) -> list[Finding]:
    """A noisy rule whose one answer (a count and each bounded sum) costs more than the role's
    whole budget: every noisy answer of it would be refused."""
    budget = role.privacy_budget
    findings = []
    for table, rule in sorted(role.tables.items()):
        if rule.noise is None or budget is None:
            continue
        cost = rule.noise.epsilon * (1 + len(rule.noise.bounds))
        if cost > budget.epsilon:
            findings.append(
                Finding(
                    "noise",
                    f"roles.{name}.tables.{table}.noise: a count and its sums cost epsilon {cost:g}, more than "
                    f"the role's privacy_budget of {budget.epsilon:g} per {budget.period}",
                )
            )
    return findings


def _table_rule(where: str, name: str, rule: TableRule, tables: Columns) -> list[Finding]:
    department, _, table = name.partition(".")
    if (department, table) not in tables:
        known = ", ".join(sorted(f"{d}.{t}" for d, t in tables))
        return [Finding("unmatched", f"{where}: no such table (known: {known})")]
    columns = set(tables[(department, table)])
    findings = [
        Finding("unmatched", f"{where}.columns.{c}: no such column") for c in sorted(set(rule.columns) - columns)
    ]
    findings += [
        Finding("unmatched", f"{where}.group_by: no such column {c!r}")
        for c in sorted(set(rule.group_by or ()) - columns)
    ]
    if rule.k_distinct is not None and rule.k_distinct not in columns:
        findings.append(Finding("unmatched", f"{where}.k_distinct: no such column {rule.k_distinct!r}"))
    elif rule.k_distinct is not None and rule.access != "aggregate_only":
        findings.append(Finding("unmatched", f"{where}.k_distinct: counts entities only of an aggregate_only table"))
    if rule.row_filter is not None:
        findings += [
            Finding("unmatched", f"{where}.row_filter: no such column {c!r}")
            for c in sorted(columns_used(parse_filter(rule.row_filter)) - columns)
        ]
    return findings
