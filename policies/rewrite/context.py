"""What every rewrite step shares: the caller's decisions and claims, the refusal they raise,
the marks they leave on the tree, and the few pieces of a policy subquery more than one step
builds or checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from catalogue.names import KEY
from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.masks import mask, tie
from policies.treatments import Treatment

RAW_TABLE = "policy_raw"  # meta mark on the raw table inside a policy subquery
LATE = "policy_mask"  # meta mark on a mask computed outside its policy subquery
POLICY = "policy"  # meta mark on a policy subquery: the table it reads, (department, table)


class PolicyViolation(Exception):
    """The rewritten tree would release data against the policy; the request is refused."""


class NoiseRequired(PolicyViolation):
    """The answer would depend on rows of a table the role reads only with noise, otherwise
    than through a noisy release that spends its budget: refused, with a reason the caller may
    know (the role's schema already says the table is aggregate-only and noisy)."""

    def __init__(self, table: str) -> None:
        super().__init__(f"{table} is read with noise, but this statement depends on its rows without a noisy release")
        self.table = table


@dataclass(frozen=True)
class Context:
    """What the rewrite needs: each table's decision, column types, and the caller's claims."""

    decisions: Mapping[tuple[str, str], TableDecision]
    types: Mapping[tuple[str, str], Mapping[str, LogicalType]]
    claims: Mapping[str, Any]
    keys: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # columns relationships join on


Step = Callable[[exp.Expr, Context], exp.Expr]


def is_policy_table(node: exp.Expr) -> bool:
    """Whether ``node`` is a logical table reference the rewrite has not yet put under its policy."""
    return isinstance(node, exp.Table) and bool(node.db) and not node.catalog and not node.meta.get(RAW_TABLE)


def late_mask(key: tuple[str, str], name: str, treatment: Treatment, kind: LogicalType, raw: exp.Column) -> exp.Expr:
    """The mask of column ``name`` of table ``key``, computed outside the policy subquery from
    ``raw``, the raw value it passes on; marked so that :func:`verify` can check it."""
    masked = mask(treatment, raw, kind)
    if masked is raw:  # never for a masked treatment; a raw value must not pass as masked
        raise PolicyViolation(f"{key[0]}.{key[1]}.{name} has no mask")
    masked.meta[LATE] = (key, name)
    return masked


def raw_column(name: str) -> exp.Column:
    """Column ``name`` of the raw table, inside a policy subquery."""
    return exp.Column(this=exp.to_identifier(name, quoted=True), table=exp.to_identifier("raw"))


def hidden_value(mark: str, name: str, treatment: Treatment, kind: LogicalType) -> exp.Expr:
    """What a policy subquery passes on as a relationship key (the raw value) or a tie-break.

    Ties break on the raw key only where the role sees it raw; elsewhere on a keyed digest of
    it, which is as deterministic and says nothing about the raw order."""
    return raw_column(name) if mark == KEY or treatment.kind == "raw" else tie(raw_column(name), kind)
