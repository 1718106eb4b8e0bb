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
- **identifier**: for each masked identifier (a fixed-length text column, mostly distinct, or a
  key, or named as another table's identifier: a visit's ``id_card`` repeats and is an ID),
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
  are two roles that both see it raw or hashed, whose views it joins already. Columns none of
  which is such a key can be one together: the rows unique on all the columns two roles both
  see or compute (each in the coarser form, a masked key included) join the views row by row.

Each measurement is a module of its own (:mod:`~policies.disclosure.profiles`: profiles and
uniqueness; :mod:`~policies.disclosure.identifiers`; :mod:`~policies.disclosure.dependency`;
:mod:`~policies.disclosure.linkage`), with what they share in
:mod:`~policies.disclosure.context`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlglot import exp

from policies.disclosure.context import Decisions, Found, Types, Unmeasured, row_level, unmeasured
from policies.disclosure.dependency import dependency_probes
from policies.disclosure.identifiers import identifier_probes, identifying
from policies.disclosure.linkage import composite_probes, joined_once, linkage_probes
from policies.disclosure.profiles import profile_probe, uniqueness_probe
from policies.exposure import Probe
from policies.model import Checks, FloorRule

__all__ = ["Found", "Unmeasured", "measure_views"]


def measure_views(
    decisions: Decisions,
    types: Types,
    primary: Mapping[tuple[str, str], Sequence[str]],
    floors: Mapping[str, Mapping[str, FloorRule]],
    checks: Checks,
    run: Callable[[Sequence[exp.Select]], Sequence[Sequence[Any] | Unmeasured]],
    joins: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[Found]:
    """Every measurement of the module, in two rounds of queries that ``run`` answers (one row
    each, in order, or :class:`Unmeasured`): each table's profile, then what the profiles call for.
    ``joins``: the columns of each table that a relationship joins on (identifiers, as keys are)."""
    first = [made for key in sorted(types) if (made := profile_probe(decisions, key, types[key])) is not None]
    found: list[Found] = []
    for (probe, _), row in zip(first, run([p.tree for p, _ in first]), strict=True):
        found += [unmeasured(probe, row.reason)] if isinstance(row, Unmeasured) else probe.judge(row)
    profiled = {(p.department, p.table): profile for p, profile in first}
    keyed = {key: {*primary.get(key, ()), *(joins or {}).get(key, ())} for key in types}
    identifiers = identifying(profiled, {key: sorted(columns) for key, columns in keyed.items()})
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
            second += identifier_probes(decisions, key, kinds, profile, checks, identifiers.get(key, set()))
        second += dependency_probes(decisions, key, kinds, floors.get(key[0], {}), checks)
        second += linkage_probes(decisions, key, kinds, primary.get(key, ()), checks)
        second += composite_probes(decisions, key, kinds, primary.get(key, ()), checks)
    for probe, row in zip(second, run([p.tree for p in second]), strict=True):
        found += [unmeasured(probe, row.reason)] if isinstance(row, Unmeasured) else probe.judge(row)
    return joined_once(found)
