"""Linkage keys across roles: a column two roles both see, or can both compute, in one form, with
a distinct value on nearly every row, or columns that do so together, which anyone holding both
tokens joins their views on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import reveals
from policies.disclosure.context import (
    Decisions,
    Found,
    as_shown,
    raw_table,
    row_level,
    share_of,
    shown_columns,
    sum_when,
)
from policies.exposure import Probe
from policies.model import ANONYMOUS, Checks
from policies.treatments import Treatment

# -- linkage keys across roles -------------------------------------------------------------------


def common_form(a: Treatment, b: Treatment) -> Treatment | None:
    """The form of a column both of two roles see or can compute: the same one, or the coarser,
    when the other role can compute it from what it is shown (not a keyed hash).

    >>> from policies.treatments import parse_treatment as t
    >>> str(common_form(t("allow"), t("year"))), str(common_form(t("partial(6,4)"), t("partial(10,0)")))
    ('year', 'partial(6,0)')
    >>> common_form(t("allow"), t("hash")) is None
    True
    """
    if a == b:
        return a
    if a.kind == "raw" and b.kind in ("partial", "year", "bucket", "sql"):
        return b
    if b.kind == "raw" and a.kind in ("partial", "year", "bucket", "sql"):
        return a
    if a.kind == b.kind == "partial":
        return Treatment("partial", (min(a.params[0], b.params[0]), min(a.params[1], b.params[1])))
    return None


def finer(a: Treatment, b: Treatment) -> bool:
    """Whether a role shown a column as ``a`` knows all that one shown it as ``b`` knows.

    >>> from policies.treatments import parse_treatment as t
    >>> finer(t("allow"), t("partial(6,4)")), finer(t("allow"), t("hash")), finer(t("hash"), t("deny"))
    (True, False, True)
    """
    return a == b or not reveals(b) or (a.kind != "hash" and common_form(a, b) == b)


def _dominates(a: Mapping[Any, Treatment], b: Mapping[Any, Treatment]) -> bool:
    """Whether view ``a`` shows every column at least as finely as view ``b``: joining the two
    then tells the holder of ``a`` nothing new."""
    return all(c in a and finer(a[c], t) for c, t in b.items())


def _keyed(a: Treatment | None, b: Treatment | None) -> bool:
    """Whether two roles see a key column in one form that keeps it a key (raw, or one hash)."""
    return a is not None and a == b and a.kind in ("raw", "hash")


def _pairs(decisions: Decisions, key: tuple[str, str], primary: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs of roles that read the table row by row, see its rows differently and each see
    something (in any table) the other does not, and do not both see its key as a key: the
    pairs whose views two tokens join to more than either shows."""
    shown = {
        role: shown_columns(decision)
        for role, tables in sorted(decisions.items())
        if row_level(decision := tables.get(key))
    }
    everywhere = {
        role: {(t, c): f for t in tables if row_level(tables[t]) for c, f in shown_columns(tables[t]).items()}
        for role, tables in decisions.items()
    }
    pairs = []
    roles = sorted(shown)
    for i, first in enumerate(roles):
        for second in roles[i + 1 :]:
            one, other = everywhere[first], everywhere[second]
            if shown[first] == shown[second] or _dominates(one, other) or _dominates(other, one):
                continue  # the same rows, or one role sees all the other does: joining adds nothing
            if primary and all(_keyed(shown[first].get(c), shown[second].get(c)) for c in primary):
                continue  # both see the key itself: their views join on it by design
            pairs.append((first, second))
    return pairs


def linkage_probes(
    decisions: Decisions, key: tuple[str, str], types: Mapping[str, LogicalType], primary: Sequence[str], checks: Checks
) -> list[Probe[Found]]:
    """One probe per column and form that two roles share, where they see the table's rows
    differently and each sees something (in any table) the other does not: the column's
    distinct values, of its rows. A column anonymous requests see in that form is public:
    anyone joins on it without a token, so two tokens add nothing (a vehicle's owner's
    published credit code)."""
    public = _public(decisions, key)
    shared: dict[tuple[str, Treatment], list[tuple[str, Treatment, str, Treatment]]] = {}
    for first, second in _pairs(decisions, key, primary):
        one, other = shown_columns(decisions[first][key]), shown_columns(decisions[second][key])
        for column in sorted(set(one) & set(other) - set(primary)):
            a, b = one[column], other[column]
            form = common_form(a, b)
            if form is not None and not (column in public and finer(public[column], form)):
                shared.setdefault((column, form), []).append((first, a, second, b))
    return [
        _linkage(key, column, form, pairs, types, checks)
        for (column, form), pairs in sorted(shared.items(), key=lambda i: (i[0][0], str(i[0][1])))
    ]


def _public(decisions: Decisions, key: tuple[str, str]) -> dict[str, Treatment]:
    decision = decisions.get(ANONYMOUS, {}).get(key)
    return shown_columns(decision) if row_level(decision) else {}


def _linkage(
    key: tuple[str, str],
    column: str,
    form: Treatment,
    pairs: list[tuple[str, Treatment, str, Treatment]],
    types: Mapping[str, LogicalType],
    checks: Checks,
) -> Probe[Found]:
    shown = as_shown(form, column, types[column])
    tree = exp.select(exp.Count(this=shown), exp.Count(this=exp.Distinct(expressions=[shown.copy()]))).from_(
        raw_table(*key)
    )
    where = f"{key[0]}.{key[1]}"

    def judge(row: Sequence[Any]) -> list[Found]:
        rows, distinct = (int(v or 0) for v in row)
        if not rows or distinct < checks.linkage_share * rows:
            return []
        found = []
        for first, a, second, b in pairs:
            how = f"as {a}" if a == b else f"as {a} and as {b}, so both as {form}"
            found.append(
                Found(
                    "linkage",
                    f"roles.{first} and roles.{second} both see {where}.{column} {how}, with "
                    f"{share_of(distinct, rows)} values distinct: anyone holding both tokens joins the two views on "
                    "it; show it to one of them coarser",
                    (first, second),
                    where,
                    column,
                )
            )
        return found

    return Probe(key[0], key[1], tree, judge, "linkage")


# -- linkage by a combination of columns ---------------------------------------------------------


def composite_probes(
    decisions: Decisions, key: tuple[str, str], types: Mapping[str, LogicalType], primary: Sequence[str], checks: Checks
) -> list[Probe[Found]]:
    """One probe per combination of columns two roles both see, or can both compute, each in
    the coarser of their two forms (raw gives any mask but a keyed hash; equal forms match):
    the rows unique on all of them together. No column of it need be a key for the two views to
    join row by row on all of them: the health analyst's last four ID digits, surname, sex,
    district and registration year, which a district officer computes from the raw values. A
    masked primary key counts (its shown digits tell residents apart); one non-key column alone
    is :func:`linkage_probes`'. What anonymous requests see of the combination is public: when
    that part alone tells the rows apart, anyone joins on it without a token, as on a public
    column."""
    public = _public(decisions, key)
    shared: dict[tuple[tuple[str, Treatment], ...], list[tuple[str, str]]] = {}
    for first, second in _pairs(decisions, key, primary):
        one, other = shown_columns(decisions[first][key]), shown_columns(decisions[second][key])
        combination = tuple(
            (column, form)
            for column in sorted(set(one) & set(other))
            if (form := common_form(one[column], other[column])) is not None
        )
        if not combination or (len(combination) == 1 and combination[0][0] not in primary):
            continue
        shared.setdefault(combination, []).append((first, second))
    return [
        _composite(key, combination, pairs, types, public, checks)
        for combination, pairs in sorted(shared.items(), key=lambda i: [(c, str(f)) for c, f in i[0]])
    ]


def _composite(
    key: tuple[str, str],
    combination: tuple[tuple[str, Treatment], ...],
    pairs: list[tuple[str, str]],
    types: Mapping[str, LogicalType],
    public: Mapping[str, Treatment],
    checks: Checks,
) -> Probe[Found]:
    published = [(c, f) for c, f in combination if c in public and finer(public[c], f)]
    tree = exp.select(exp.Star()).from_(_unique_rows(key, combination, types, "g").subquery("together"))
    if published:
        tree = tree.join(_unique_rows(key, published, types, "p").subquery("published"), join_type="cross")
    where = f"{key[0]}.{key[1]}"
    seen = ", ".join(column if form.kind == "raw" else f"{column} as {form}" for column, form in combination)

    def judge(row: Sequence[Any]) -> list[Found]:
        rows, unique, *rest = (int(v or 0) for v in row)
        if not rows or unique < checks.linkage_share * rows or (rest and rest[1] >= checks.linkage_share * rows):
            return []
        return [
            Found(
                "linkage",
                f"roles.{first} and roles.{second} both see, or can compute, {where} as {seen}: "
                f"{share_of(unique, rows)} rows are unique on these columns together, so anyone holding both tokens "
                "joins the two views row by row on them; show one of the roles a column of them coarser, or not at all",
                (first, second),
                where,
            )
            for first, second in pairs
        ]

    return Probe(key[0], key[1], tree, judge, "linkage")


def _unique_rows(
    key: tuple[str, str], combination: Sequence[tuple[str, Treatment]], types: Mapping[str, LogicalType], alias: str
) -> exp.Select:
    """The table's rows, and those unique on the columns in their forms."""
    # by the expressions: Trino groups by no output's name
    forms = [as_shown(form, column, types[column]) for column, form in combination]
    count = exp.alias_(exp.Count(this=exp.Star()), "n")
    classes = exp.select(count).from_(raw_table(*key)).group_by(*forms).subquery(alias)
    n = exp.column("n", table=alias)
    unique = sum_when(exp.EQ(this=n.copy(), expression=exp.Literal.number(1)))
    return exp.select(exp.alias_(exp.Sum(this=n), f"{alias}_rows"), exp.alias_(unique, f"{alias}_unique")).from_(
        classes
    )


def joined_once(found: Sequence[Found]) -> list[Found]:
    """``found`` without the combinations (a linkage finding without a column) of a pair and
    table that one column joins already: the views join on it whatever else they share, and an
    accepted exception for that column speaks for the pair."""
    single = {(f.roles, f.table) for f in found if f.kind == "linkage" and f.column}
    return [f for f in found if not (f.kind == "linkage" and not f.column and (f.roles, f.table) in single)]
