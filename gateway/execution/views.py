"""The gateway as one role sees it: the schema it may query, each table's decision, and the
policy rewrite of its statements.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlglot import exp

from catalogue.errors import ConfigError
from catalogue.model import Catalogue
from catalogue.types import NUMERIC, TEMPORAL, WHOLE, LogicalType
from gateway.config import CatalogueSettings
from gateway.graphql.schema import Model, build_model
from gateway.identity.caller import Identity
from policies.decide import TableDecision, decide
from policies.model import ANONYMOUS, Policies, PrivacyBudget
from policies.noise import Release
from policies.rewrite import Context, enforce, releases
from policies.rowfilter import claims_used, parse_filter

# The masks that fit only some kinds of column (the others fit any).
FITS = {"year": TEMPORAL, "bucket": NUMERIC}


def join_columns(model: Model) -> dict[tuple[str, str], frozenset[str]]:
    """The columns of each table that the role's relationships join on, at either end."""
    keys: dict[tuple[str, str], set[str]] = {}
    for table in model.tables.values():
        for relation in table.relations.values():
            target = model.tables.get(relation.target)
            if target is None:  # a relationship into a table the role may not read links nothing
                continue
            keys.setdefault((table.department, table.name), set()).add(relation.column)
            keys.setdefault((target.department, target.name), set()).add(relation.target_column)
    return {key: frozenset(columns) for key, columns in keys.items()}


@dataclass
class View:
    """The gateway as one role sees it: its schema, and the policy rewrite of its queries."""

    role: str | None
    model: Model
    decisions: dict[tuple[str, str], TableDecision] | None = None
    types: dict[tuple[str, str], dict[str, LogicalType]] = field(default_factory=dict)
    claim_names: tuple[str, ...] = ()  # the claims this role's row filters read
    keys: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)  # columns relationships join on
    version: str = "-"  # the policies' version it was made of: every cache key holds this one
    privacy: PrivacyBudget | None = None  # what the role's noisy answers may spend per period
    missing_claims: tuple[str, ...] = ()  # the role's required claims the token lacks: the view is empty

    def used_claims(self, identity: Identity | None) -> dict[str, Any]:
        """The caller's claims that this role's policies read: all that can change its SQL."""
        if identity is None or not self.claim_names:
            return {}
        return {name: identity.claims.get(name) for name in self.claim_names}

    def rewrite(self, tree: exp.Expr, claims: Mapping[str, Any]) -> exp.Expr:
        if self.decisions is None:
            return tree
        return enforce(tree, Context(self.decisions, self.types, claims, self.keys))

    def releases(self, rewritten: exp.Expr) -> dict[str, Release]:
        """The noisy statistics of a rewritten tree, by output name (:mod:`policies.noise`)."""
        if self.decisions is None:
            return {}
        return releases(rewritten, Context(self.decisions, self.types, {}, self.keys))


def role_of(policies: Policies | None, identity: Identity | None) -> str | None:
    """The role a request acts as: none without policies, else its own or `anonymous`."""
    if policies is None:
        return None
    return identity.role if identity is not None else ANONYMOUS


def build_view(role: str, policies: Policies, catalogue: Catalogue, settings: CatalogueSettings) -> View:
    """What ``role`` sees: each table's decision, the schema made of them, and the claims its
    row filters read."""
    decisions: dict[tuple[str, str], TableDecision] = {}
    types: dict[tuple[str, str], dict[str, LogicalType]] = {}
    claims: set[str] = set()
    for table in catalogue.tables:
        key = (table.department, table.name)
        classes = settings.sharing_classes(table.department, table.name, [c.name for c in table.columns])
        decision = decisions[key] = decide(policies, role, table.department, table.name, classes)
        if decision.row_filter is not None:
            claims |= claims_used(parse_filter(decision.row_filter))
        types[key] = {c.name: c.type for c in table.columns}
    model = build_model(catalogue, settings, decisions)
    policy = policies.role(role)
    return View(
        role,
        model,
        decisions,
        types,
        tuple(sorted(claims)),
        join_columns(model),
        version=policies.version,
        privacy=policy.privacy_budget if policy is not None else None,
    )


def missing_claims(policies: Policies | None, role: str | None, identity: Identity | None) -> tuple[str, ...]:
    """The claims ``role`` requires (``requires_claims``) that the caller's token lacks, or
    holds empty."""
    policy = policies.role(role) if policies is not None and role is not None else None
    if policy is None or not policy.requires_claims:  # asked of every request: most roles require none
        return ()
    return policy.missing_claims(dict(identity.claims) if identity is not None else None)


def unclaimed_view(
    role: str, missing: tuple[str, ...], policies: Policies, catalogue: Catalogue, settings: CatalogueSettings
) -> View:
    """What ``role`` sees with a token that lacks a claim it requires: nothing, as a role with
    no policy, published tables included. Errors name the claim (``missing_claims``); the claims
    the role reads are kept, so the audit record shows them missing."""
    others = replace(policies, roles={name: p for name, p in policies.roles.items() if name != role})
    empty = build_view(role, others, catalogue, settings)
    named = build_view(role, policies, catalogue, settings).claim_names
    return replace(empty, claim_names=tuple(sorted({*named, *missing})), missing_claims=missing)


def validate_decisions(policies: Policies, catalogue: Catalogue, settings: CatalogueSettings) -> None:
    """Every role's decision on every table can be made and fits the table: a row filter over a
    column the table lacks, or `year` of a text column, fails here, naming its key, rather than
    at each of the role's requests."""
    tables = [
        (t, settings.sharing_classes(t.department, t.name, [c.name for c in t.columns])) for t in catalogue.tables
    ]
    for role in sorted(policies.roles):
        for table, classes in tables:
            try:
                decision = decide(policies, role, table.department, table.name, classes)
            except ValueError as error:
                raise ConfigError(f"policies: {error}") from None
            _check_bounds(role, decision, {c.name: c.type.kind for c in table.columns})
            for column in table.columns:
                treatment = decision.columns.get(column.name)
                fits = FITS.get(treatment.kind) if treatment is not None else None
                if treatment is not None and fits is not None and column.type.kind not in fits:
                    raise ConfigError(
                        f"policies: role {role}: {table.department}.{table.name}.{column.name} is "
                        f"{column.type.kind}, which {treatment} cannot mask ({decision.reasons[column.name]})"
                    )


def _check_bounds(role: str, decision: TableDecision, kinds: Mapping[str, str]) -> None:
    """A noisy table's bounds are of number columns, and whole for whole-number ones."""
    for column, (lo, hi) in decision.noise.bounds.items() if decision.noise is not None else ():
        whole = float(lo).is_integer() and float(hi).is_integer()
        if kinds[column] not in NUMERIC or (kinds[column] in WHOLE and not whole):
            raise ConfigError(
                f"policies: role {role}: {decision.department}.{decision.table}.noise.bounds: {column} is "
                f"{kinds[column]}, which [{lo:g}, {hi:g}] cannot bound: bounds are for number columns, "
                "whole numbers for whole-number columns"
            )
