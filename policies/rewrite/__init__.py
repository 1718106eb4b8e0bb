"""Enforcement: the compiled tree, rewritten so that each table reference reads only what the
caller's role may see, before any engine sees it.

The steps are pure functions over the tree, applied in order (like sqlglot's optimizer RULES):

    qualify -> row filters and masks (one policy subquery per table) -> aggregate thresholds
    -> noisy reads spend -> verify

Each reference to ``department.table`` becomes a subquery over the raw table that computes every
visible column's mask from the raw column, side by side, and applies the role's row filter with
the caller's claims as literals. The user's filters, orderings, groupings and aggregates outside
it therefore see masked values. Relationship joins and tie-breaks read hidden raw keys
(``__key_<column>``) that exist only inside the engine, so a masked or hashed key still links
records without being shown. A masked column the query only projects is masked where it is
projected, from the raw value the subquery passes on (``__raw_<column>``), so that the mask is
computed for the rows the query keeps rather than for every row of the table; a node's plain
output is masked in the statement's last SELECT, after its page is cut. The last step fails
closed if anything would leave unmasked: it follows every passed-on raw value through the
statement's scopes and admits it only as a pass-through or as the input of its own mask, and
follows hidden keys and tie-breaks the same way, admitting them only where they link or order
records.

Each step is a module of its own: :mod:`~policies.rewrite.qualify`,
:mod:`~policies.rewrite.protect`, :mod:`~policies.rewrite.defer`,
:mod:`~policies.rewrite.thresholds` and :mod:`~policies.rewrite.verify`, with what they share
in :mod:`~policies.rewrite.context` and the names the compiler gives its columns in
:mod:`catalogue.names`.
"""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import AGGREGATED, KEY, TIE
from policies.rewrite.context import LATE, Context, NoiseRequired, PolicyViolation, Step, late_mask
from policies.rewrite.defer import defer
from policies.rewrite.protect import protect
from policies.rewrite.qualify import qualify
from policies.rewrite.releases import releases, spends
from policies.rewrite.thresholds import thresholds
from policies.rewrite.verify import verify

__all__ = [
    "AGGREGATED",
    "KEY",
    "LATE",
    "RULES",
    "TIE",
    "Context",
    "NoiseRequired",
    "PolicyViolation",
    "defer",
    "enforce",
    "late_mask",
    "protect",
    "qualify",
    "releases",
    "spends",
    "thresholds",
    "verify",
]

RULES: tuple[Step, ...] = (qualify, protect, defer, thresholds, spends, verify)


def enforce(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """The tree as the role may run it. The compiled tree is left untouched."""
    result = tree.copy()
    for rule in RULES:
        result = rule(result, ctx)
    return result
