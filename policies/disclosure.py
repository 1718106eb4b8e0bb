"""What a role's view discloses, measured on the data as the role is shown it.

Rules can each hold while the view they make identifies people. ``citygate policy check``
measures, through the engine, for every role and table (:func:`probes` gives the queries, as
sqlglot trees over the raw tables; the caller runs them, since this package knows no engine):

- **uniqueness**: how many rows of the role's view are alike on everything the role sees of
  them, masked as it is shown (the view is the role's own rewritten statement,
  :func:`view_of`), and the smallest such class: the view's k-anonymity. A column unique on its
  own (a key, a pseudonym) is left out: it says nothing a reader knows of a person, and links
  views (``linkage``). A row filter over the caller's claims splits the view by the columns it
  reads, so each part is what one token sees, or less;
- **identifier**: for each masked identifier (a fixed-length text column, mostly distinct),
  how many raw values each shown value can stand for, given the other columns. The mask is
  evaluated, not read: a character it hides is one whose change leaves the shown value as it
  is (custom masks included). A hidden character that is the same on every row (the city's
  ``441900``) adds nothing; one that belongs to a date the table holds (the birth date inside an
  ID) adds what the role does not see of that date; a check character adds nothing when hidden
  and prunes the others by 11 when shown. A mask that shows a date whole, which the role is
  otherwise not shown whole, is a finding too;
- **dependency**: a visible column whose value determines a column a department's floor keeps
  from the role (a code that says what the denied label says);
- **linkage**: a column two roles both see, or can both compute, in one form (the coarser of
  the two: raw to one and ``year`` to the other is ``year``), with a distinct value on nearly
  every row. Anyone holding both tokens joins the two views on it. A table's primary key links
  every role's view of a record by design (relationships join on it): it is left out, and so
  are two roles that both see it raw or hashed, whose views it joins already.

>>> candidates_of(18, hidden=set(range(11, 15)), alphabet=dict.fromkeys(range(1, 19), 10),
...               blocks=[DateBlock("birth_date", 7, 70)], seen={}, check=True)
(33, [])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

from sqlglot import exp

from catalogue.types import LogicalType
from policies.decide import TableDecision, reveals
from policies.exposure import Probe
from policies.masks import mask
from policies.model import ANONYMOUS, Checks, FloorRule
from policies.rewrite import Context, enforce
from policies.rewrite.context import POLICY, raw_column
from policies.rowfilter import columns_used, parse_filter
from policies.treatments import RAW, Treatment

SHARE = 0.9  # a measurement "holds" on a column when it does on this share of rows or more
KEY_SHARE = 0.99  # a shown column with distinct values on this share of rows is a key of the view
IDENTIFIER_SHARE = 0.5  # a fixed-length text with distinct values on this share of rows identifies
LONGEST = 64  # identifiers longer than this are not taken apart character by character
SAMPLE = 1000  # values a mask is tried on, each character changed in turn
CHECK = "10X98765432"  # ISO 7064 MOD 11-2, as GB 11643 uses it: the check character of a sum
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)

Decisions = Mapping[str, Mapping[tuple[str, str], TableDecision]]  # role -> table -> decision
Types = Mapping[tuple[str, str], Mapping[str, LogicalType]]


@dataclass(frozen=True)
class Found:
    """One finding, with what an accepted exception names: its roles, table and column."""

    kind: str
    message: str
    roles: tuple[str, ...]
    table: str
    column: str = ""


@dataclass(frozen=True)
class Unmeasured:
    """What the caller's runner gives for a measurement the engine could not make: the check
    then fails, naming it, rather than pass on what it did not see."""

    reason: str


def unmeasured(probe: Probe[Found], reason: str) -> Found:
    return Found(
        "unmeasured",
        f"{probe.kind} of {probe.department}.{probe.table}: the engine could not measure it ({reason}); "
        "the check cannot vouch for this table",
        (),
        f"{probe.department}.{probe.table}",
    )


@dataclass(frozen=True)
class DateBlock:
    """A date column whose ``YYYYMMDD`` sits at ``start`` (1-based) in an identifier, on
    nearly every row, and how many distinct ``years`` it has."""

    column: str
    start: int
    years: int


def _q(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _raw_table(department: str, table: str) -> exp.Table:
    return exp.Table(this=exp.to_identifier(table), db=exp.to_identifier(department), alias=exp.TableAlias(this="raw"))


def _shown(treatment: Treatment, column: str, kind: LogicalType) -> exp.Expr:
    """The column as the role is shown it, for counting: the very mask the rewrite computes,
    but a keyed hash as the raw value, which it tells apart exactly as the hash does (one
    pseudonym per value), without the key and the cost of an HMAC on every row."""
    return mask(_counted(treatment), raw_column(column), kind)


def _counted(treatment: Treatment) -> Treatment:
    return RAW if treatment.kind == "hash" else treatment


def _share(part: int, whole: int) -> str:
    return f"{part:,} of {whole:,}"


def _when(condition: exp.Expr, then: exp.Expr | None = None) -> exp.Expr:
    """``SUM(CASE WHEN condition THEN then ELSE 0 END)``: rows (or ``then``) where it holds."""
    value = then if then is not None else exp.Literal.number(1)
    return exp.Sum(this=exp.Case(ifs=[exp.If(this=condition, true=value)], default=exp.Literal.number(0)))


def row_level(decision: TableDecision | None) -> TypeGuard[TableDecision]:
    """Whether a role reads the table row by row (not only aggregated, not denied)."""
    return decision is not None and decision.access == "allow" and decision.visible


def shown_columns(decision: TableDecision) -> dict[str, Treatment]:
    """The columns a role is shown something of (not denied, not blanked by nullify or redact)."""
    return {c: t for c, t in decision.visible_columns.items() if reveals(t)}


# -- the view, as the role's own statement -------------------------------------------------------


PART = "__part_"


def view_of(decision: TableDecision, types: Mapping[str, LogicalType], columns: Sequence[str]) -> exp.Select:
    """The role's rows of the table, as its rewritten statement computes them (masks, custom
    ones included), with each column its row filter reads passed on raw as ``__part_<column>``:
    the claims are unknown here, so the view is split by those columns instead.

    The statement is the policy rewrite's own (:func:`~policies.rewrite.enforce`), of a query
    that reads the columns, with a hash as its raw value (it groups rows alike); what the
    checker adds, it adds after the rewrite."""
    key = (decision.department, decision.table)
    reference = exp.Table(
        this=exp.to_identifier(decision.table),
        db=exp.to_identifier(decision.department),
        alias=exp.TableAlias(this="t"),
    )
    tree = exp.select(*(exp.alias_(exp.column(_q(c), table="t"), _q(c)) for c in columns)).from_(reference)
    # counted, not shown: a hash groups rows as its raw value does (see _shown)
    counted = {c: _counted(t) for c, t in decision.columns.items()}
    unfiltered = replace(decision, row_filter=None, columns=counted)
    view = enforce(tree, Context({key: unfiltered}, {key: types}, {}, {}))
    assert isinstance(view, exp.Select)
    parts = sorted(columns_used(parse_filter(decision.row_filter))) if decision.row_filter is not None else []
    policy = next(s for s in view.find_all(exp.Subquery) if s.meta.get(POLICY))
    inner = policy.this
    assert isinstance(inner, exp.Select)
    for name in parts:
        inner.select(exp.alias_(raw_column(name), _q(PART + name)), copy=False)
        view.select(exp.alias_(exp.column(_q(PART + name), table=policy.alias_or_name), _q(PART + name)), copy=False)
    return view


# -- profiles: the distinct values of each column as each role is shown it -----------------------


@dataclass
class Profile:
    """What :func:`profile_probe` measured of one table."""

    rows: int = 0
    distinct: dict[tuple[str, Treatment], int] | None = None  # shown form -> distinct values
    lengths: dict[str, tuple[int, int, int]] | None = None  # text column -> (shortest, longest, distinct raw)


def _forms(decisions: Decisions, key: tuple[str, str]) -> list[tuple[str, Treatment]]:
    forms = {
        (c, t)
        for tables in decisions.values()
        if row_level(decision := tables.get(key))
        for c, t in shown_columns(decision).items()
    }
    return sorted(forms, key=lambda f: (f[0], str(f[1])))


def profile_probe(
    decisions: Decisions, key: tuple[str, str], types: Mapping[str, LogicalType]
) -> tuple[Probe[Found], Profile] | None:
    """One query per table: its rows, the distinct values of each column in each form a role is
    shown it, and each text column's shortest and longest value and distinct raw values. Its
    judge fills in the :class:`Profile` it comes with, which the other probes are made from."""
    forms = _forms(decisions, key)
    if not forms:
        return None
    texts = sorted({c for c, _ in forms if types[c].kind == "string"})
    measures: list[exp.Expr] = [exp.Count(this=exp.Star())]
    measures += [exp.Count(this=exp.Distinct(expressions=[_shown(t, c, types[c])])) for c, t in forms]
    for column in texts:
        length = exp.Length(this=raw_column(column))
        measures += [exp.Min(this=length), exp.Max(this=length.copy())]
        measures.append(exp.Count(this=exp.Distinct(expressions=[raw_column(column)])))
    tree = exp.select(*measures).from_(_raw_table(*key))
    found = Profile()

    def judge(row: Sequence[Any]) -> list[Found]:
        values = [int(v or 0) for v in row]
        found.rows = values[0]
        found.distinct = dict(zip(forms, values[1 : 1 + len(forms)], strict=True))
        rest = values[1 + len(forms) :]
        found.lengths = {c: (rest[3 * i], rest[3 * i + 1], rest[3 * i + 2]) for i, c in enumerate(texts)}
        return []

    return Probe(key[0], key[1], tree, judge, "profile"), found


# -- uniqueness ----------------------------------------------------------------------------------


def uniqueness_probe(
    role: str, decision: TableDecision, types: Mapping[str, LogicalType], profile: Profile, checks: Checks
) -> Probe[Found] | None:
    """How many of the role's rows are alike on what it sees of them (keys left out), and the
    smallest class: measured only where the role is shown something masked, since a view
    shown raw identifies by design."""
    shown = shown_columns(decision)
    if not any(t.masked for t in shown.values()) or profile.distinct is None:
        return None
    keys = [c for c, t in shown.items() if profile.distinct.get((c, t), 0) >= KEY_SHARE * profile.rows > 0]
    columns = [c for c in shown if c not in keys]
    if not columns:
        return None
    view = view_of(decision, types, columns).subquery("v")
    parts = [p.alias_or_name for p in view.this.expressions if p.alias_or_name.startswith(PART)]
    group = [exp.column(_q(c), table="v") for c in columns + parts]
    classes = exp.select(exp.alias_(exp.Count(this=exp.Star()), "n")).from_(view).group_by(*group).subquery("g")
    n = exp.column("n", table="g")
    tree = exp.select(
        exp.Sum(this=n),
        _when(exp.EQ(this=n, expression=exp.Literal.number(1))),
        _when(exp.LT(this=n.copy(), expression=exp.Literal.number(checks.k)), n.copy()),
        exp.Min(this=n.copy()),
        exp.Count(this=exp.Star()),
    ).from_(classes)
    where = f"{decision.department}.{decision.table}"

    def judge(row: Sequence[Any]) -> list[Found]:
        rows, unique, small, smallest, count = (int(v or 0) for v in row)
        if not rows or small <= checks.max_small_share * rows:
            return []
        left_out = f" ({', '.join(keys)} left out: unique on their own)" if keys else ""
        split = f", split by {', '.join(p.removeprefix(PART) for p in parts)} as its row filter is" if parts else ""
        seen = ", ".join(f"{c} as {shown[c]}" if shown[c].masked else c for c in columns)
        return [
            Found(
                "uniqueness",
                f"roles.{role} sees {where} as {seen}{left_out}{split}: {_share(unique, rows)} rows are unique "
                f"on it and {_share(small, rows)} in classes of fewer than {checks.k} ({count:,} classes, the "
                f"smallest of {smallest}), more than {checks.max_small_share:.0%}: what it sees of a row tells that "
                "row apart; show less of a column, or accept it",
                (role,),
                where,
            )
        ]

    return Probe(decision.department, decision.table, tree, judge, "uniqueness")


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
    shown = _shown(treatment, column, kind)
    fits = exp.EQ(this=exp.Length(this=value.copy()), expression=exp.Literal.number(width))
    tried: list[exp.Expr] = [exp.Count(this=exp.Star())]
    measures: list[exp.Expr] = [exp.Count(this=exp.Star())]
    for position in range(1, width + 1):
        changed = mask(treatment, _changed(value.copy(), position, width), kind)
        tried.append(_when(exp.EQ(this=changed, expression=shown.copy())))
        char = exp.Substring(this=value.copy(), start=exp.Literal.number(position), length=exp.Literal.number(1))
        measures.append(exp.Count(this=exp.Distinct(expressions=[char])))
    dates = sorted(c for c, k in types.items() if k.kind == "date")
    for date in dates:
        at = exp.StrPosition(this=value.copy(), substr=_date_text(date))
        inside = exp.GT(this=at, expression=exp.Literal.number(0))
        measures += [_when(inside), exp.Min(this=at.copy()), exp.Max(this=at.copy())]
        year = exp.DateTrunc(this=raw_column(date), unit=exp.var("YEAR"))  # type: ignore[no-untyped-call]
        measures.append(exp.Count(this=exp.Distinct(expressions=[year])))
    measures.append(_when(_checked(value.copy())) if width == 18 else exp.Literal.number(0))
    values = exp.select(value.copy()).from_(_raw_table(department, table)).where(fits.copy()).limit(SAMPLE)
    sample = exp.select(*tried).from_(values.subquery("raw")).subquery("tried")
    counted = exp.select(*measures).from_(_raw_table(department, table)).where(fits).subquery("counted")
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
        blocks = []
        for i, date in enumerate(dates):
            hits, first, last, years = rest[4 * i : 4 * i + 4]
            if hits >= SHARE * rows and first == last:
                blocks.append(DateBlock(date, first, years))
        check = width == 18 and rest[-1] >= SHARE * rows
        if not hidden:
            return []
        found = []
        for role, decision in holders:
            seen = {b.column: decision.columns.get(b.column, RAW) for b in blocks}
            count, shows = candidates_of(width, hidden, alphabet, blocks, seen, check)
            for block in shows:
                found.append(
                    Found(
                        "identifier",
                        f"roles.{role} sees {where}.{column} as {treatment}, which shows {block.column} whole "
                        f"(characters {block.start} to {block.start + 7}), while it sees {block.column} as "
                        f"{seen[block.column]}: mask those characters too",
                        (role,),
                        where,
                        column,
                    )
                )
            if count < checks.min_candidates:
                dates_seen = "".join(f", {b.column} as {seen[b.column]}" for b in blocks)
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


def identifier_probes(
    decisions: Decisions, key: tuple[str, str], types: Mapping[str, LogicalType], profile: Profile, checks: Checks
) -> list[Probe[Found]]:
    """One probe per masked identifier of the table and mask, with every role shown it so."""
    if profile.lengths is None:
        return []
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
        shortest, longest, distinct = profile.lengths[column]
        if shortest != longest or not 0 < longest <= LONGEST or distinct < IDENTIFIER_SHARE * profile.rows:
            continue
        found.append(identifier_probe(key[0], key[1], column, treatment, roles, types, longest, checks))
    return found


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
    shown = _shown(treatment, column, types[column])
    groups = (
        exp.select(
            exp.alias_(exp.Count(this=exp.Star()), "n"),
            exp.alias_(exp.Count(this=exp.Distinct(expressions=[raw_column(target)])), "d"),
        )
        .from_(_raw_table(department, table))
        .group_by(shown)  # by the expression: Trino groups by no output's name
        .subquery("g")
    )
    n, d = exp.column("n", table="g"), exp.column("d", table="g")
    several = exp.GTE(this=n, expression=exp.Literal.number(2))
    tree = exp.select(
        exp.Sum(this=n.copy()),
        _when(several, n.copy()),
        _when(exp.and_(several.copy(), exp.EQ(this=d, expression=exp.Literal.number(1))), n.copy()),
        _when(several.copy()),
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
                f"{_share(determined, grouped)} rows ({values:,} values shared by two rows or more); "
                f"{department}'s floor keeps {target} from {role}, so {column} says what it hides: put {column} "
                f"under the floor too, or deny it",
                (role,),
                where,
                column,
            )
            for role in roles
        ]

    return Probe(department, table, tree, judge, "dependency")


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
    shown = _shown(form, column, types[column])
    tree = exp.select(exp.Count(this=shown), exp.Count(this=exp.Distinct(expressions=[shown.copy()]))).from_(
        _raw_table(*key)
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
                    f"roles.{first} and roles.{second} both see {where}.{column} {how}, with {_share(distinct, rows)} "
                    f"values distinct: anyone holding both tokens joins the two views on it; show it to one of "
                    "them coarser",
                    (first, second),
                    where,
                    column,
                )
            )
        return found

    return Probe(key[0], key[1], tree, judge, "linkage")


def measure_views(
    decisions: Decisions,
    types: Types,
    primary: Mapping[tuple[str, str], Sequence[str]],
    floors: Mapping[str, Mapping[str, FloorRule]],
    checks: Checks,
    run: Callable[[Sequence[exp.Select]], Sequence[Sequence[Any] | Unmeasured]],
) -> list[Found]:
    """Every measurement of the module, in two rounds of queries that ``run`` answers (one row
    each, in order, or :class:`Unmeasured`): each table's profile, then what the profiles call for."""
    first = [made for key in sorted(types) if (made := profile_probe(decisions, key, types[key])) is not None]
    found: list[Found] = []
    for (probe, _), row in zip(first, run([p.tree for p, _ in first]), strict=True):
        found += [unmeasured(probe, row.reason)] if isinstance(row, Unmeasured) else probe.judge(row)
    profiled = {(p.department, p.table): profile for p, profile in first}
    second: list[Probe[Found]] = []
    for key in sorted(types):
        kinds = types[key]
        profile = profiled.get(key)
        if profile is not None:
            for role, tables in sorted(decisions.items()):
                decision = tables.get(key)
                if row_level(decision):
                    unique = uniqueness_probe(role, decision, kinds, profile, checks)
                    second += [unique] if unique is not None else []
            second += identifier_probes(decisions, key, kinds, profile, checks)
        second += dependency_probes(decisions, key, kinds, floors.get(key[0], {}), checks)
        second += linkage_probes(decisions, key, kinds, primary.get(key, ()), checks)
    for probe, row in zip(second, run([p.tree for p in second]), strict=True):
        found += [unmeasured(probe, row.reason)] if isinstance(row, Unmeasured) else probe.judge(row)
    return found
