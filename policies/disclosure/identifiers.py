"""Masked identifiers: how many raw values each shown value of a fixed-length identifier can stand
for, given the characters its mask hides, the dates inside it and its check character.

>>> candidates_of(18, hidden=set(range(11, 15)), alphabet=dict.fromkeys(range(1, 19), 10),
...               blocks=[DateBlock("birth_date", 7, 70)], seen={}, check=True)
(33, [])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision
from policies.disclosure.context import Decisions, Found, as_shown, raw_table, row_level, shown_columns, sum_when
from policies.disclosure.profiles import Profile
from policies.exposure import Probe
from policies.masks import mask
from policies.model import Checks
from policies.rewrite.context import raw_column
from policies.treatments import RAW, Treatment

SHARE = 0.9  # a measurement "holds" on a column when it does on this share of rows or more
IDENTIFIER_SHARE = 0.5  # a fixed-length text with distinct values on this share of rows identifies
LONGEST = 64  # identifiers longer than this are not taken apart character by character
SAMPLE = 1000  # values a mask is tried on, each character changed in turn
CHECK = "10X98765432"  # ISO 7064 MOD 11-2, as GB 11643 uses it: the check character of a sum
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


@dataclass(frozen=True)
class DateBlock:
    """A date column whose ``YYYYMMDD`` sits at ``start`` (1-based) in an identifier, on
    nearly every row, and how many distinct ``years`` it has; ``column`` ``""``: a date the
    identifier holds that no column of its table does (a birth date in a visit's ID number)."""

    column: str
    start: int
    years: int


# -- masked identifiers --------------------------------------------------------------------------


def _digit(value: exp.Expr, position: int) -> exp.Expr:
    """The digit at ``position`` of ``value`` as a number, -1 for another character: found in a
    text of digits, so that no engine fails on a letter."""
    char = exp.Substring(this=value, start=exp.Literal.number(position), length=exp.Literal.number(1))
    position_in = exp.StrPosition(this=exp.Literal.string("0123456789"), substr=char)
    return exp.Paren(this=exp.Sub(this=position_in, expression=exp.Literal.number(1)))


def _checked(value: exp.Expr) -> exp.Expr:
    """Whether an 18-character ``value`` ends in its ISO 7064 MOD 11-2 check character."""
    total: exp.Expr = exp.Literal.number(0)
    for position, weight in enumerate(WEIGHTS, start=1):
        total = exp.Add(
            this=total, expression=exp.Mul(this=_digit(value, position), expression=exp.Literal.number(weight))
        )
    remainder = exp.Mod(this=exp.Paren(this=total), expression=exp.Literal.number(11))
    check = exp.Substring(
        this=exp.Literal.string(CHECK),
        start=exp.Add(this=remainder, expression=exp.Literal.number(1)),
        length=exp.Literal.number(1),
    )
    last = exp.Substring(this=value.copy(), start=exp.Literal.number(18), length=exp.Literal.number(1))
    return exp.EQ(this=check, expression=last)


def _changed(value: exp.Expr, position: int, width: int) -> exp.Expr:
    """``value`` with the character at ``position`` changed (``0`` to ``1``, anything else to ``0``)."""
    before = exp.Substring(this=value, start=exp.Literal.number(1), length=exp.Literal.number(position - 1))
    char = exp.Substring(this=value.copy(), start=exp.Literal.number(position), length=exp.Literal.number(1))
    other = exp.Case(
        ifs=[exp.If(this=exp.EQ(this=char, expression=exp.Literal.string("0")), true=exp.Literal.string("1"))],
        default=exp.Literal.string("0"),
    )
    after = exp.Substring(
        this=value.copy(), start=exp.Literal.number(position + 1), length=exp.Literal.number(width - position)
    )
    return exp.Concat(expressions=[before, other, after])


def _part(value: exp.Expr, start: int, length: int) -> exp.Expr:
    return exp.Substring(this=value.copy(), start=exp.Literal.number(start), length=exp.Literal.number(length))


def _dated(value: exp.Expr, start: int) -> exp.Expr:
    """Whether the eight characters of ``value`` at ``start`` read as a date ``YYYYMMDD`` of
    1900 to 2099, compared as text (of digits, one width: text orders them as numbers)."""

    def within(part: exp.Expr, low: str, high: str) -> exp.Expr:
        return exp.Between(this=part, low=exp.Literal.string(low), high=exp.Literal.string(high))

    return exp.and_(
        within(_part(value, start, 4), "1900", "2099"),
        within(_part(value, start + 4, 2), "01", "12"),
        within(_part(value, start + 6, 2), "01", "31"),
    )


def _date_text(column: str) -> exp.Expr:
    """A date as an identifier writes it: ``YYYYMMDD``."""
    text = exp.cast(raw_column(column), exp.DataType(this=exp.DataType.Type.VARCHAR))
    return exp.func("REPLACE", text, exp.Literal.string("-"), exp.Literal.string(""))


def candidates_of(
    width: int,
    hidden: set[int],
    alphabet: Mapping[int, int],
    blocks: Sequence[DateBlock],
    seen: Mapping[str, Treatment],
    check: bool,
) -> tuple[int, list[DateBlock]]:
    """How many raw values one shown value can be, and the dates the shown value shows whole.

    ``hidden``: the positions the mask hides; ``alphabet``: how many characters each position
    takes in the column; ``blocks``: dates inside the identifier; ``seen``: how the role is
    shown each date column; ``check``: the last character is a check character."""
    total, covered, shows = 1, set(), []
    for block in blocks:
        year, day = set(range(block.start, block.start + 4)), set(range(block.start + 4, block.start + 8))
        treatment = seen.get(block.column)
        kind = treatment.kind if treatment is not None else "deny"
        if not (year | day) & hidden and kind != "raw":
            shows.append(block)
        year_known = not year & hidden or kind in ("raw", "year")
        day_known = not day & hidden or kind == "raw"
        total *= (1 if year_known else max(block.years, 1)) * (1 if day_known else 366)
        covered |= year | day
    last = {width} if check else set()
    for position in sorted(hidden - covered - last):
        total *= max(alphabet.get(position, 1), 1)
    if check and width not in hidden:  # a shown check character: one in 11 of the others is right
        total = max(round(total / 11), 1)
    return total, shows


def identifier_probe(
    department: str,
    table: str,
    column: str,
    treatment: Treatment,
    holders: Sequence[tuple[str, TableDecision]],
    types: Mapping[str, LogicalType],
    width: int,
    checks: Checks,
) -> Probe[Found]:
    """Which characters of ``column`` its mask hides, how many characters each position takes,
    where the table's dates sit inside it and whether it ends in a check character: one query,
    over the values of the identifier's own width. What the mask hides is the mask's, so it is
    tried on :data:`SAMPLE` values; the rest is counted on all of them."""
    value = raw_column(column)
    kind = types[column]
    shown = as_shown(treatment, column, kind)
    fits = exp.EQ(this=exp.Length(this=value.copy()), expression=exp.Literal.number(width))
    tried: list[exp.Expr] = [exp.Count(this=exp.Star())]
    measures: list[exp.Expr] = [exp.Count(this=exp.Star())]
    for position in range(1, width + 1):
        changed = mask(treatment, _changed(value.copy(), position, width), kind)
        tried.append(sum_when(exp.EQ(this=changed, expression=shown.copy())))
        char = exp.Substring(this=value.copy(), start=exp.Literal.number(position), length=exp.Literal.number(1))
        measures.append(exp.Count(this=exp.Distinct(expressions=[char])))
    dates = sorted(c for c, k in types.items() if k.kind == "date")
    for date in dates:
        at = exp.StrPosition(this=value.copy(), substr=_date_text(date))
        inside = exp.GT(this=at, expression=exp.Literal.number(0))
        measures += [sum_when(inside), exp.Min(this=at.copy()), exp.Max(this=at.copy())]
        year = exp.DateTrunc(this=raw_column(date), unit=exp.var("YEAR"))  # type: ignore[no-untyped-call]
        measures.append(exp.Count(this=exp.Distinct(expressions=[year])))
    starts = range(1, width - 6)
    for start in starts:  # a date the table holds in no column of its own (a birth date in a visit's ID)
        measures += [sum_when(_dated(value, start)), exp.Count(this=exp.Distinct(expressions=[_part(value, start, 4)]))]
    measures.append(sum_when(_checked(value.copy())) if width == 18 else exp.Literal.number(0))
    values = exp.select(value.copy()).from_(raw_table(department, table)).where(fits.copy()).limit(SAMPLE)
    sample = exp.select(*tried).from_(values.subquery("raw")).subquery("tried")
    counted = exp.select(*measures).from_(raw_table(department, table)).where(fits).subquery("counted")
    tree = exp.select(exp.Star()).from_(sample).join(counted, join_type="cross")
    where = f"{department}.{table}"

    def judge(row: Sequence[Any]) -> list[Found]:
        values = [int(v or 0) for v in row]
        tried, rows = values[0], values[width + 1]
        if not tried or not rows:
            return []
        hidden = {p for p in range(1, width + 1) if values[p] >= SHARE * tried}
        alphabet = {p: values[width + 1 + p] for p in range(1, width + 1)}
        rest = values[2 * width + 2 :]
        blocks = _blocks(dates, starts, rest, rows)
        check = width == 18 and rest[-1] >= SHARE * rows
        if not hidden:
            return []
        found = []
        for role, decision in holders:
            seen = {b.column: decision.columns.get(b.column, RAW) for b in blocks if b.column}
            count, shows = candidates_of(width, hidden, alphabet, blocks, seen, check)
            for block in shows:
                what = (
                    f"{block.column} whole (characters {block.start} to {block.start + 7}), while it sees "
                    f"{block.column} as {seen[block.column]}"
                    if block.column
                    else f"the date in characters {block.start} to {block.start + 7} whole (a birth date, in an "
                    "identity number), which no column of the table it sees shows"
                )
                found.append(
                    Found(
                        "identifier",
                        f"roles.{role} sees {where}.{column} as {treatment}, which shows {what}: mask those "
                        "characters too",
                        (role,),
                        where,
                        column,
                    )
                )
            if count < checks.min_candidates:
                dates_seen = "".join(f", {b.column} as {seen[b.column]}" for b in blocks if b.column)
                found.append(
                    Found(
                        "identifier",
                        f"roles.{role} sees {where}.{column} as {treatment}, which hides {len(hidden)} of its "
                        f"{width} characters{dates_seen}: each shown value stands for about {count:,} raw values, "
                        f"fewer than {checks.min_candidates:,} (hidden characters that are the same on every row, "
                        "or part of a date it is shown, add none); mask more, or show less of the date",
                        (role,),
                        where,
                        column,
                    )
                )
        return found

    return Probe(department, table, tree, judge, "identifier")


def _blocks(dates: Sequence[str], starts: Sequence[int], measured: Sequence[int], rows: int) -> list[DateBlock]:
    """The dates inside an identifier, from what :func:`identifier_probe` measured: the table's
    date columns found at one place on nearly every row, then the places where eight characters
    read as a date on nearly every row that no column's date covers (a column named ``""``)."""
    blocks = []
    for i, date in enumerate(dates):
        hits, first, last, years = measured[4 * i : 4 * i + 4]
        if hits >= SHARE * rows and first == last:
            blocks.append(DateBlock(date, first, years))
    found = measured[4 * len(dates) : 4 * len(dates) + 2 * len(starts)]
    for i, start in enumerate(starts):
        hits, years = found[2 * i : 2 * i + 2]
        covered = any(abs(b.start - start) < 8 for b in blocks)  # a column's, or one found before
        if hits >= SHARE * rows and not covered:
            blocks.append(DateBlock("", start, years))
    return blocks


def identifying(
    profiles: Mapping[tuple[str, str], Profile], keys: Mapping[tuple[str, str], Sequence[str]]
) -> dict[tuple[str, str], set[str]]:
    """The identifiers of each table: its fixed-length text columns that are mostly distinct, or
    a key (its primary key, a column a relationship joins on), or named as an identifier of
    another table is. A visit's ``id_card`` repeats (three visits a person) and is still the
    person's ID number, as it is in the residents' table: what its mask shows is measured too.

    ``keys``: each table's key columns (primary key and relationship join columns)."""
    fixed: dict[tuple[str, str], set[str]] = {}
    mostly: dict[tuple[str, str], set[str]] = {}
    for key, profile in profiles.items():
        for column, (shortest, longest, distinct) in (profile.lengths or {}).items():
            if shortest == longest and 0 < longest <= LONGEST:
                fixed.setdefault(key, set()).add(column)
                if distinct >= IDENTIFIER_SHARE * profile.rows:
                    mostly.setdefault(key, set()).add(column)
    named = {
        column
        for key, columns in fixed.items()
        for column in columns
        if column in mostly.get(key, set()) or column in keys.get(key, ())
    }
    return {key: {c for c in columns if c in named or c in keys.get(key, ())} for key, columns in fixed.items()}


def identifier_probes(
    decisions: Decisions,
    key: tuple[str, str],
    types: Mapping[str, LogicalType],
    profile: Profile,
    checks: Checks,
    identifiers: set[str] | None = None,
) -> list[Probe[Found]]:
    """One probe per masked identifier of the table and mask, with every role shown it so.
    ``identifiers``: the table's (:func:`identifying`); by default, its fixed-length text
    columns distinct on half its rows or more."""
    if profile.lengths is None:
        return []
    if identifiers is None:
        identifiers = set(identifying({key: profile}, {}).get(key, set()))
    holders: dict[tuple[str, Treatment], list[tuple[str, TableDecision]]] = {}
    for role, tables in sorted(decisions.items()):
        decision = tables.get(key)
        if decision is None or not row_level(decision):
            continue
        for column, treatment in shown_columns(decision).items():
            if treatment.kind in ("partial", "sql") and column in profile.lengths:
                holders.setdefault((column, treatment), []).append((role, decision))
    found = []
    for (column, treatment), roles in sorted(holders.items(), key=lambda i: (i[0][0], str(i[0][1]))):
        if column not in identifiers:
            continue
        longest = profile.lengths[column][1]
        found.append(identifier_probe(key[0], key[1], column, treatment, roles, types, longest, checks))
    return found
