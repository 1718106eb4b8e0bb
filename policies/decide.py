"""What a role may see of one table: the effective treatment of every column, and why.

Resolution, most specific first: the role's rule for the column in that table, then its
rule for the column name across tables (``all_columns``), then its default for the column's
sharing class, then the built-in class defaults. A department's floor then limits the result:
a column its floor reserves for other roles gets the floor's ``otherwise`` wherever the role
would see anything of it in another form (raw, custom, hashed, partial, year, bucket), or, for
``otherwise: aggregate_only``, is denied unless the role's rule keeps the table aggregate-only
(with k above 1). Deny by default:
a role with no policy sees nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from catalogue.model import SharingClass
from policies.model import Noise, Policies, RolePolicy, TableRule
from policies.rowfilter import columns_used, parse_filter
from policies.treatments import DENY, RAW, Treatment, parse_treatment


@dataclass(frozen=True)
class TableDecision:
    department: str
    table: str
    access: str  # "allow", "aggregate_only" or "deny"
    columns: dict[str, Treatment]  # every column, denied ones included
    reasons: dict[str, str]
    row_filter: str | None = None
    k: int = 1
    group_by: frozenset[str] | None = None
    floor_conflicts: list[str] = field(default_factory=list)
    k_distinct: str | None = None  # aggregate_only: k counts distinct values of this column
    relationships: Mapping[str, str] = field(default_factory=dict)  # name -> "allow" or "deny"
    noise: Noise | None = None  # aggregate_only: counts and sums released with noise

    def follows(self, relation: str, column: str, far: Treatment | None) -> bool:
        """Whether the role may follow ``relation`` from this table, joining on ``column`` to a
        column it sees as ``far`` on the table it reaches: only if it sees the join column in
        some form on both sides, unless its policy names the relationship.

        A denied join column would otherwise be read through its relationship: who the legal
        representative is, and then their diagnoses. From either end: the reverse relationship
        (a resident's enterprises represented) says the same as the forward one, that this
        company's representative is this resident."""
        granted = self.relationships.get(relation)
        if granted is not None:
            return granted == "allow"
        treatment = self.columns.get(column)
        return treatment is not None and treatment.visible and far is not None and far.visible

    @property
    def visible(self) -> bool:
        return self.access != "deny" and any(t.visible for t in self.columns.values())

    @property
    def visible_columns(self) -> dict[str, Treatment]:
        return {c: t for c, t in self.columns.items() if t.visible}


def builtin_default(sharing: SharingClass | None, role: RolePolicy, department: str) -> Treatment:
    """The catalogue's own meaning of each class, before any rule."""
    if sharing in (SharingClass.PUBLISHED, SharingClass.SHARED):
        return RAW
    if sharing == SharingClass.REPORTED and role.department == department:
        return RAW
    return DENY  # exchange needs an agreement, confidential a grant; unclassified: deny


def decide(
    policies: Policies, role: str, department: str, table: str, classes: Mapping[str, SharingClass | None]
) -> TableDecision:
    """The effective policy of ``role`` on ``department.table`` whose columns have ``classes``."""
    policy = policies.role(role)
    if policy is None:
        return TableDecision(
            department, table, "deny", {c: DENY for c in classes}, {c: f"role {role!r} has no policy" for c in classes}
        )
    rule = policy.tables.get(f"{department}.{table}", TableRule())
    columns: dict[str, Treatment] = {}
    reasons: dict[str, str] = {}
    for column, sharing in classes.items():
        if rule.access == "deny":
            columns[column], reasons[column] = DENY, f"table {department}.{table} is denied to {role}"
        elif column in rule.columns:
            columns[column] = parse_treatment(rule.columns[column])
            reasons[column] = f"rule for {department}.{table}.{column}"
        elif rule.only_listed:
            columns[column], reasons[column] = DENY, f"{department}.{table} grants only the columns it lists"
        elif column in policy.all_columns:
            columns[column], reasons[column] = (
                parse_treatment(policy.all_columns[column]),
                f"rule for {column} everywhere",
            )
        elif sharing is not None and sharing in policy.classes:
            columns[column] = parse_treatment(policy.classes[sharing])
            reasons[column] = f"{role}'s default for {sharing.value} columns"
        else:
            columns[column] = builtin_default(sharing, policy, department)
            reasons[column] = f"the catalogue's default for {sharing.value if sharing else 'unclassified'} columns"
    conflicts = _apply_floor(policies, role, rule, department, table, columns, reasons)
    _check_columns(rule, set(classes), f"roles.{role}.tables.{department}.{table}")
    return TableDecision(
        department,
        table,
        rule.access,
        columns,
        reasons,
        rule.row_filter,
        rule.k,
        frozenset(rule.group_by) if rule.group_by is not None else None,
        conflicts,
        rule.k_distinct,
        dict(rule.relationships),
        rule.noise,
    )


def _check_columns(rule: TableRule, columns: set[str], where: str) -> None:
    """Every column a table rule names besides its treatments is one of the table's."""
    named = {"k_distinct": [rule.k_distinct] if rule.k_distinct is not None else []}
    named["noise.bounds"] = list(rule.noise.bounds) if rule.noise is not None else []
    named["row_filter"] = sorted(columns_used(parse_filter(rule.row_filter))) if rule.row_filter is not None else []
    for key, names in named.items():
        for name in names:
            if name not in columns:
                raise ValueError(f"{where}.{key}: no column {name!r}")


# Masks that show nothing of the value: a floor has nothing to hold back from them.
BLANK = frozenset({"deny", "nullify", "redact"})


def reveals(treatment: Treatment) -> bool:
    """Whether ``treatment`` shows anything of the value: raw, a custom expression, and every
    mask but ``nullify`` and ``redact``. A hash is a pseudonym: over a handful of values it is a
    code book, and equal hashes link records as the raw value would.

    >>> reveals(parse_treatment("hash")), reveals(parse_treatment("nullify"))
    (True, False)
    """
    return treatment.kind not in BLANK


def _apply_floor(
    policies: Policies,
    role: str,
    rule: TableRule,
    department: str,
    table: str,
    columns: dict[str, Treatment],
    reasons: dict[str, str],
) -> list[str]:
    conflicts = []
    for column, treatment in columns.items():
        floor = policies.floors.get(department, {}).get(f"{table}.{column}")
        # A custom expression counts as unmasked: whether `COALESCE(value, NULL)` shows the value
        # is not for citygate to decide, so the floor's answer stands in for it. Any other form
        # than the one the floor names gets that one: a floor's deny means no form at all.
        if floor is None or role in floor.unmasked_for or not reveals(treatment):
            continue
        if floor.aggregates_only and rule.access == "aggregate_only" and rule.k > 1:
            continue  # a group key or filter of groups of at least k: no row of it is ever shown
        allowed = DENY if floor.aggregates_only else parse_treatment(floor.otherwise)
        if treatment == allowed:
            continue
        how = {"raw": "raw", "sql": "through a custom expression"}.get(treatment.kind, f"as {treatment}")
        who = ", ".join(floor.unmasked_for) or "no role"
        also = " and inside aggregate_only grants (k above 1)" if floor.aggregates_only else ""
        columns[column] = allowed
        reasons[column] = f"{department}'s floor: unmasked only for {who}{also}"
        conflicts.append(
            f"roles.{role} reveals {department}.{table}.{column} {how}; {department}'s floor "
            f"allows that only for {who}{also}, so it gets {columns[column]}"
        )
    return conflicts
