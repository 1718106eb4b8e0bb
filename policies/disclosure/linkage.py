"""Linkage keys across roles: a column two roles both see, or can both compute, in one form, with
a distinct value on nearly every row, which anyone holding both tokens joins their views on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import reveals
from policies.disclosure.context import Decisions, Found, as_shown, raw_table, row_level, share_of, shown_columns
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


def linkage_probes(
    decisions: Decisions, key: tuple[str, str], types: Mapping[str, LogicalType], primary: Sequence[str], checks: Checks
) -> list[Probe[Found]]:
    """One probe per column and form that two roles share, where they see the table's rows
    differently and each sees something (in any table) the other does not: the column's
    distinct values, of its rows. A column anonymous requests see in that form is public:
    anyone joins on it without a token, so two tokens add nothing (a vehicle's owner's
    published credit code)."""
    shown = {
        role: shown_columns(decision)
        for role, tables in sorted(decisions.items())
        if row_level(decision := tables.get(key))
    }
    everywhere = {
        role: {(t, c): f for t in tables if row_level(tables[t]) for c, f in shown_columns(tables[t]).items()}
        for role, tables in decisions.items()
    }
    public = shown.get(ANONYMOUS, {})
    shared: dict[tuple[str, Treatment], list[tuple[str, Treatment, str, Treatment]]] = {}
    roles = sorted(shown)
    for i, first in enumerate(roles):
        for second in roles[i + 1 :]:
            one, other = everywhere[first], everywhere[second]
            if shown[first] == shown[second] or _dominates(one, other) or _dominates(other, one):
                continue  # the same rows, or one role sees all the other does: joining adds nothing
            if primary and all(_keyed(shown[first].get(c), shown[second].get(c)) for c in primary):
                continue  # both see the key itself: their views join on it by design
            for column in sorted(set(shown[first]) & set(shown[second]) - set(primary)):
                a, b = shown[first][column], shown[second][column]
                form = common_form(a, b)
                if form is not None and not (column in public and finer(public[column], form)):
                    shared.setdefault((column, form), []).append((first, a, second, b))
    return [
        _linkage(key, column, form, pairs, types, checks)
        for (column, form), pairs in sorted(shared.items(), key=lambda i: (i[0][0], str(i[0][1])))
    ]


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
