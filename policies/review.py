"""`citygate policy check`: what a security officer should know before a policy goes live.

It reports rules that match nothing (a table, column or role that does not exist), row filters
over unknown columns, every place where a department's floor overrides a central rule, and,
measured through the engine, pseudonyms that are code books (:mod:`policies.exposure`) and what
each role's view discloses on the data: rows unique on what it sees, masked identifiers narrowed
to few raw values, columns that determine what a floor protects, and keys that join two roles'
views (:mod:`policies.disclosure`). Of noisy aggregates, a budget too small for one answer, and
bounds that clamp many real values (:func:`~policies.exposure.clamped`). A finding the policy
files accept (``checks.accept``) is reported with its reason and fails nothing; an accepted
finding that is no longer found is reported, so exceptions do not outlive their cause.

>>> from policies.model import Policies, RolePolicy, TableRule
>>> p = Policies({"r": RolePolicy(tables={"health.nope": TableRule()})}, {}, "v")
>>> print(review(p, {("health", "visits"): {"cost": None}})[0].message)
roles.r.tables.health.nope: no such table (known: health.visits)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlglot import exp

from catalogue.model import SharingClass
from catalogue.types import LogicalType
from policies.decide import TableDecision, decide
from policies.disclosure import Unmeasured, measure_views
from policies.exposure import clamped, probes
from policies.model import Checks, Policies, RolePolicy, TableRule
from policies.rowfilter import columns_used, parse_filter

Columns = Mapping[tuple[str, str], Mapping[str, SharingClass | None]]
Measure = Callable[[exp.Select], Sequence[Any]]  # runs a one-row query over raw tables
# runs several, answers in order: each one row, or Unmeasured where the engine failed
RunAll = Callable[[Sequence[exp.Select]], Sequence[Sequence[Any] | Unmeasured]]


@dataclass(frozen=True)
class Finding:
    # "unmatched", "floor", "codebook", "identifier", "uniqueness", "dependency", "linkage",
    # "noise", "mask" (gateway.execution.proof) or "unmeasured" (the engine failed; never accepted)
    kind: str
    message: str
    roles: tuple[str, ...] = ()
    table: str = ""
    column: str = ""
    accepted: str = ""  # why the policy files accept it (``checks.accept``); empty: it fails the check


def review(
    policies: Policies,
    tables: Columns,
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]] | None = None,
    measure: Measure | None = None,
    min_distinct: int = 50,
    min_candidates: int = 1000,
    relations: Mapping[tuple[str, str], frozenset[str]] | None = None,
    primary: Mapping[tuple[str, str], Sequence[str]] | None = None,
    run: RunAll | None = None,
    joins: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[Finding]:
    """Findings of the policy files alone and, given column ``types`` and a way to ``measure``
    through the engine, of what the roles' masks reveal together (:mod:`policies.exposure`,
    :mod:`policies.disclosure`; ``run``: how to run several measurements, by default one after
    the other; ``primary``: each table's primary key; ``joins``: the columns relationships join
    on). Given each table's ``relations`` (the
    relationship fields on it), a table rule's ``relationships`` that name none of them are
    reported too. Findings ``checks.accept`` names carry its reason."""
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
    found = probes(decisions, types, min_distinct) + clamped(policies, set(tables))
    runner: RunAll = run if run is not None else (lambda trees: [measure(tree) for tree in trees])
    for probe, row in zip(found, runner([p.tree for p in found]), strict=True):
        if isinstance(row, Unmeasured):
            findings.append(Finding("unmeasured", f"{probe.kind} of {probe.department}.{probe.table}: {row.reason}"))
            continue
        findings.extend(Finding(probe.kind, message) for message in probe.judge(row))
    checks = policies.checks
    if min_candidates != checks.min_candidates and "min_candidates" not in checks.model_fields_set:
        checks = checks.model_copy(update={"min_candidates": min_candidates})  # the config's, unless the files say
    measured = measure_views(decisions, types, primary or {}, policies.floors, checks, runner, joins)
    findings += [Finding(f.kind, f.message, f.roles, f.table, f.column) for f in measured]
    return accept(findings, checks)


def accept(findings: list[Finding], checks: Checks) -> list[Finding]:
    """``findings`` with those ``checks.accept`` covers marked accepted, and an ``unmatched``
    finding for each entry that covers none: an exception outlives nothing it was written for."""
    used: set[int] = set()
    marked = []
    for finding in findings:
        what = (finding.kind, finding.roles, finding.table, finding.column)
        covering = [n for n, entry in enumerate(checks.accept) if entry.covers(*what)]
        used.update(covering)
        marked.append(replace(finding, accepted=checks.accept[covering[0]].because) if covering else finding)
    for n, entry in enumerate(checks.accept):
        if n not in used:
            where = ".".join(x for x in (entry.table, entry.column) if x)
            marked.append(
                Finding(
                    "unmatched",
                    f"checks.accept[{n}] ({entry.finding} of {', '.join(entry.roles)}{' on ' + where if where else ''})"
                    ": the check finds no such finding; remove the entry",
                )
            )
    return marked


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
