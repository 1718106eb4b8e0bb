"""Confidentiality policies as files: what each role may see of each department's data.

A policy file, written by security officers, gives per role:

- ``classes``: a default treatment per sharing class (``published: allow``, ``confidential: hash``);
- ``tables``: per ``department.table``, ``access`` (``allow``, ``aggregate_only`` with a minimum
  group size ``k``, or ``deny``), column treatments that refine the class defaults, and a
  ``row_filter`` over the table's columns and the caller's claims (``district = :claims.district``);
- ``all_columns``: treatments by column name across every table (``id_card: partial(6,4)``).

A treatment is ``allow``, ``deny`` or a mask: ``partial(first,last)``, ``hash``, ``nullify``,
``year``, ``bucket(width)``, ``redact``, or ``sql: <expression over the column>``.

Departments add floors in their own files: the most any central rule may reveal of a column
(``unmasked_for: [health_analyst]``, otherwise ``deny``, the one mask it allows, or
``aggregate_only``: only inside aggregate-only grants); where a rule
reveals the value in any other form (raw, hashed, partial...), the floor wins and ``citygate
policy check`` reports it. A table rule's ``relationships`` grants (or withholds) a relationship
whose join column the role may not see, and ``k_distinct`` makes an aggregate-only table's k
count entities rather than rows. Deny by default: a column no rule grants
is absent, and a table with no visible column is absent.

An aggregate-only rule may add ``noise``: its counts and sums are released with random noise
(``epsilon``, and ``bounds`` for each column it may sum), its groups appear only where a noisy
count reaches a threshold (``delta``, ``threshold``), and each noisy answer, keys alone
included, spends the role's ``privacy_budget`` (an epsilon per period), past which the gateway
refuses (:mod:`policies.noise`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalogue.errors import ConfigError
from catalogue.files import read_yaml
from catalogue.model import SharingClass
from policies.masks import parse_custom
from policies.noise import least_threshold, selection_delta
from policies.rowfilter import parse_filter
from policies.treatments import DENY, RAW, Treatment, parse_treatment

__all__ = [
    "AGGREGATE_ONLY",
    "DENY",
    "RAW",
    "Accepted",
    "Checks",
    "Floor",
    "FloorRule",
    "Noise",
    "Policies",
    "PrivacyBudget",
    "RolePolicy",
    "TableRule",
    "Treatment",
    "load_policies",
    "period_seconds",
]


def _check_treatments(value: dict[Any, TreatmentText]) -> dict[Any, TreatmentText]:
    """Every treatment of a mapping must parse, and a custom mask's expression use only allowed
    functions of the column; the error says which and what is allowed."""
    for text in value.values():
        _check_treatment(text)
    return value


def _check_treatment(text: TreatmentText) -> Treatment:
    treatment = parse_treatment(text)
    if treatment.kind == "sql":
        parse_custom(treatment.params[0])
    return treatment


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TreatmentText = str | dict[str, str]

_PERIOD = re.compile(r"^([1-9][0-9]*)([mhd])$")
_UNIT = {"m": 60, "h": 3600, "d": 86400}


def period_seconds(text: str) -> int:
    """A budget period, ``30m``, ``12h`` or ``1d``, in seconds.

    >>> period_seconds("1d"), period_seconds("12h")
    (86400, 43200)
    """
    match = _PERIOD.match(text)
    if match is None:
        raise ValueError(f"period {text!r} must be a whole number of minutes, hours or days: 30m, 12h, 1d")
    return int(match.group(1)) * _UNIT[match.group(2)]


class Noise(_Model):
    """An aggregate-only table's counts and sums, released with Laplace noise.

    ``epsilon`` is what one released statistic costs of the role's budget: the smaller, the
    more noise. A count changes by at most 1 when one row is added or removed, so its noise
    has scale 1/epsilon; a sum changes by at most the largest magnitude its ``bounds`` allow
    (values are clamped to them before summing), so its noise has scale max(|lo|, |hi|)/epsilon.
    A column without bounds cannot be summed.

    Which groups appear is decided by a noisy count too (partition selection): a group is shown
    only if its count with noise reaches ``threshold``. ``delta`` bounds the chance that one
    row decides whether a group appears; without a ``threshold``, the least one that keeps to
    ``delta`` is used (:func:`policies.noise.least_threshold`)."""

    epsilon: float = Field(gt=0, description="the privacy cost of one released count or sum")
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)  # column -> [lo, hi]
    delta: float = Field(1e-6, gt=0, le=1e-3, description="the chance one row may decide whether a group appears")
    threshold: int | None = Field(None, ge=1, description="the noisy count a group needs to appear")

    @field_validator("bounds")
    @classmethod
    def _ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for column, (lo, hi) in value.items():
            if not lo <= hi:
                raise ValueError(f"bounds of {column}: {lo} is more than {hi}")
        return value


class PrivacyBudget(_Model):
    """What a role's noisy answers may spend in all, per period: the sum of their epsilons."""

    epsilon: float = Field(gt=0, description="the total epsilon the role's noisy answers may spend per period")
    period: str = "1d"

    @field_validator("period")
    @classmethod
    def _period(cls, value: str) -> str:
        period_seconds(value)
        return value

    @property
    def seconds(self) -> int:
        return period_seconds(self.period)


class TableRule(_Model):
    access: Literal["allow", "aggregate_only", "deny"] = "allow"
    k: int = Field(1, ge=1, description="aggregate_only: groups of fewer rows are left out")
    columns: dict[str, TreatmentText] = Field(default_factory=dict)
    row_filter: str | None = None
    # aggregate_only: the columns a role may group by (the others only inside aggregates)
    group_by: list[str] | None = None
    # deny every column the rule does not list, whatever the class defaults say
    only_listed: bool = False
    # aggregate_only: k counts distinct values of this column (the entity: a patient), not rows
    k_distinct: str | None = None
    # relationships from this table the role may follow although it may not see their join
    # column (``allow``), or may not follow although it may (``deny``); the others follow the
    # join column: a role follows a relationship only if it sees its key, in some form
    relationships: dict[str, Literal["allow", "deny"]] = Field(default_factory=dict)
    # aggregate_only: counts and sums released with calibrated noise, spending the role's budget
    noise: Noise | None = None

    @model_validator(mode="after")
    def _noisy_aggregates(self) -> TableRule:
        if self.noise is not None and self.access != "aggregate_only":
            raise ValueError("noise is for aggregate_only tables: other access releases single rows")
        for column in self.noise.bounds if self.noise is not None else ():
            if self.group_by is not None and column in self.group_by:
                raise ValueError(f"noise.bounds: {column} is in group_by; only the other columns are summed")
        if self.noise is not None and self.noise.threshold is not None:
            noise, least = self.noise, least_threshold(self.noise.epsilon, self.k, self.noise.delta)
            if noise.threshold is not None and noise.threshold < least:
                raise ValueError(
                    f"noise.threshold: {noise.threshold} lets one row decide whether a group appears with "
                    f"probability {selection_delta(noise.epsilon, self.k, noise.threshold):.2g}, more than "
                    f"noise.delta {noise.delta:g}; use at least {least}, or leave it out"
                )
        return self

    @field_validator("columns")
    @classmethod
    def _treatments(cls, value: dict[str, TreatmentText]) -> dict[str, TreatmentText]:
        return _check_treatments(value)

    @field_validator("row_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is not None:
            parse_filter(value)
        return value


class RolePolicy(_Model):
    description: str = ""
    department: str | None = None  # the owner department, for `reported` columns
    classes: dict[SharingClass, TreatmentText] = Field(default_factory=dict)
    all_columns: dict[str, TreatmentText] = Field(default_factory=dict)
    tables: dict[str, TableRule] = Field(default_factory=dict)
    # what the role's noisy answers may spend per period; needed by any rule with `noise`
    privacy_budget: PrivacyBudget | None = None
    # claims a token must carry, each with a value, for the role to see anything: without one,
    # the role's view is empty (every field refused, as for a role with no policy), published
    # tables included (a citizen's token without their identity number: `[id_card]`)
    requires_claims: list[str] = Field(default_factory=list)

    @field_validator("requires_claims")
    @classmethod
    def _claim_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"claim {name!r} must be a name: letters, digits and _, not starting with a digit")
        if len(set(value)) != len(value):
            raise ValueError("a claim is named twice")
        return value

    def missing_claims(self, claims: dict[str, Any] | None) -> tuple[str, ...]:
        """The claims of ``requires_claims`` that ``claims`` lacks or holds empty (``None``,
        blank text, an empty list).

        >>> RolePolicy(requires_claims=["id_card"]).missing_claims({"id_card": "  "})
        ('id_card',)
        """
        given = claims or {}
        return tuple(name for name in self.requires_claims if _empty(given.get(name)))

    @model_validator(mode="after")
    def _budgeted(self) -> RolePolicy:
        noisy = [name for name, rule in self.tables.items() if rule.noise is not None]
        if noisy and self.privacy_budget is None:
            raise ValueError(f"tables.{noisy[0]} has noise, so the role needs a privacy_budget")
        return self

    @field_validator("classes", "all_columns")
    @classmethod
    def _treatments(cls, value: dict[Any, TreatmentText]) -> dict[Any, TreatmentText]:
        return _check_treatments(value)

    @field_validator("tables")
    @classmethod
    def _table_names(cls, value: dict[str, TableRule]) -> dict[str, TableRule]:
        for name in value:
            if not re.match(r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"table {name!r} must be written department.table")
        return value


# A floor's ``otherwise`` that keeps a column inside aggregates: see :class:`FloorRule`.
AGGREGATE_ONLY = "aggregate_only"
ANONYMOUS = "anonymous"  # the role of a request without a token: what it sees, anyone may


class FloorRule(_Model):
    """The most any role but ``unmasked_for`` may get of a column: the form ``otherwise`` names.

    ``otherwise: deny`` means no form at all, not raw, hashed, partial or any mask that shows
    something of the value: a pseudonym of a column with a handful of values is a code book.
    ``otherwise: aggregate_only`` lets the other roles use the column only where their rule for
    the table is ``access: aggregate_only`` with a ``k`` above 1 (a group key or a filter, in
    groups of at least k), and denies it to them everywhere else: a diagnosis code read row by
    row beside a name says what the diagnosis says.

    >>> FloorRule(otherwise="aggregate_only").aggregates_only
    True
    """

    unmasked_for: list[str] = Field(default_factory=list)
    otherwise: TreatmentText = "deny"

    @field_validator("otherwise")
    @classmethod
    def _treatment(cls, value: TreatmentText) -> TreatmentText:
        if value == AGGREGATE_ONLY:
            return value
        try:
            _check_treatment(value)
        except ValueError as error:
            raise ValueError(f"{error}; or {AGGREGATE_ONLY}: only inside aggregate-only grants") from None
        return value

    @property
    def aggregates_only(self) -> bool:
        return self.otherwise == AGGREGATE_ONLY


class Floor(_Model):
    """A department's own limit on what any central rule may reveal of its columns."""

    department: str
    columns: dict[str, FloorRule] = Field(default_factory=dict)  # "table.column" -> rule


class Accepted(_Model):
    """A finding of ``citygate policy check`` that the security officers accept, and why: it is
    printed with its reason and no longer fails the check. ``roles`` are the finding's roles
    (both, for a linkage); ``table`` (``department.table``) and ``column`` narrow it."""

    finding: Literal[
        "unmatched", "floor", "codebook", "identifier", "uniqueness", "dependency", "linkage", "noise", "mask"
    ]
    roles: list[str] = Field(min_length=1)
    table: str | None = Field(None, pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    column: str | None = None
    because: str = Field(min_length=1, description="why the finding is accepted, for the next reader")

    def covers(self, kind: str, roles: tuple[str, ...], table: str, column: str) -> bool:
        """Whether this entry accepts a finding of ``kind`` about ``roles``, ``table`` and ``column``."""
        return (
            kind == self.finding
            and bool(roles)
            and set(roles) <= set(self.roles)
            and self.table in (None, table)
            and self.column in (None, column)
        )


class Checks(_Model):
    """What ``citygate policy check`` measures on the roles' views, and the findings accepted.

    ``k``, ``max_small_share``: a role's view of a table in which more than this share of rows
    falls into classes of fewer than ``k`` rows alike (on what the role sees) is a finding.
    ``min_candidates``: a masked identifier that the role's view narrows to fewer raw values.
    ``dependency_share``: a visible column that determines a floor-protected one on this share
    of rows (in groups of two rows or more). ``linkage_share``: a column two roles both see (or
    can compute) in one form, with distinct values on this share of its rows, joins their views."""

    k: int = Field(2, ge=2)
    max_small_share: float = Field(0.05, ge=0, le=1)
    min_candidates: int = Field(1000, ge=2)
    dependency_share: float = Field(0.9, gt=0, le=1)
    linkage_share: float = Field(0.9, gt=0, le=1)
    accept: list[Accepted] = Field(default_factory=list)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value in ([], {}, ())


class PolicyFile(_Model):
    roles: dict[str, RolePolicy] = Field(default_factory=dict)
    floors: list[Floor] = Field(default_factory=list)
    checks: Checks | None = None


@dataclass(frozen=True)
class Policies:
    """Every role's policy and every department's floor, loaded from one or more files."""

    roles: dict[str, RolePolicy]
    floors: dict[str, dict[str, FloorRule]]  # department -> "table.column" -> rule
    version: str
    checks: Checks = field(default_factory=Checks)  # thresholds of `policy check`

    def role(self, name: str) -> RolePolicy | None:
        return self.roles.get(name)


def load_policies(paths: list[Path]) -> Policies:
    """Read policy files (central policies and departments' floors); errors name file and key."""
    import hashlib

    roles: dict[str, RolePolicy] = {}
    floors: dict[str, dict[str, FloorRule]] = {}
    thresholds: dict[str, Any] = {}
    accepted: list[Accepted] = []
    digest = hashlib.sha256()
    for path in paths:
        text, raw = read_yaml(path, "policy file")
        digest.update(text.encode())
        try:
            parsed = PolicyFile.model_validate(raw or {})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            message = first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{path}: {where}: {message}") from None
        for name, role in parsed.roles.items():
            if name in roles:
                raise ConfigError(f"{path}: roles.{name}: defined in two policy files")
            if name == ANONYMOUS and role.requires_claims:
                raise ConfigError(
                    f"{path}: roles.{name}.requires_claims: a request without a token carries no claims, so the "
                    "role would see nothing; leave it out, or deny what anonymous requests may not see"
                )
            roles[name] = role
        for floor in parsed.floors:
            floors.setdefault(floor.department, {}).update(floor.columns)
        if parsed.checks is not None:
            # each file may accept its own findings; a threshold is said once
            for key in sorted(parsed.checks.model_fields_set - {"accept"}):
                if key in thresholds:
                    raise ConfigError(f"{path}: checks.{key}: set in two policy files")
                thresholds[key] = getattr(parsed.checks, key)
            accepted += parsed.checks.accept
    checks = Checks(**thresholds, accept=accepted)
    return Policies(roles=roles, floors=floors, version=digest.hexdigest()[:12], checks=checks)
