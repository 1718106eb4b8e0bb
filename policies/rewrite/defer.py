"""Masks of a node's plain outputs move to the statement's last SELECT, after its page is cut."""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import RAW_VALUE, hidden, is_output
from policies.rewrite.context import LATE, Context, late_mask


def defer(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Move each mask that is a node's plain output (``mask(t1.__raw_c) AS o0_1``) to the
    statement's last SELECT, which returns the node's rows (``mask(__raw_o0_1) AS o0_1``).

    Between the two, only layers that pass every column on (``SELECT *``) cut the node's page
    and number its rows, so the mask is computed for the rows of the page rather than for every
    row the page is cut from: a list ordered by a keyed digest reads the whole table, and would
    otherwise mask all of it. :func:`verify` follows the raw value all the way.
    """
    readers: dict[str, list[exp.Column]] = {}
    for column in tree.find_all(exp.Column):
        if not column.table and is_output(column.name):
            readers.setdefault(column.name, []).append(column)
    for masked in [node for node in tree.walk() if LATE in node.meta]:
        output, raw = masked.parent, masked.find(exp.Column)
        if raw is None or not (isinstance(output, exp.Alias) and is_output(output.alias)):
            continue  # a mask that reads nothing (nullify), or not a node's output
        found = readers.get(output.alias, [])
        if len(found) != 1 or not (isinstance(found[0].parent, exp.Select) and found[0].arg_key == "expressions"):
            continue
        key, name = masked.meta[LATE]
        carried = hidden(RAW_VALUE, output.alias)
        later = late_mask(key, name, ctx.decisions[key].columns[name], ctx.types[key][name], exp.column(carried))
        found[0].replace(exp.alias_(later, output.alias, copy=False))
        output.replace(exp.alias_(raw, carried, copy=False))
    return tree
