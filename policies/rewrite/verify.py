"""The last step: fail closed if anything would leave against the policy."""

from __future__ import annotations

from sqlglot import exp

from catalogue.names import ARM, is_hidden, is_join_key, is_link, is_output
from policies.rewrite.aggregated import verify_aggregated
from policies.rewrite.context import POLICY, RAW_TABLE, Context, PolicyViolation, is_policy_table
from policies.rewrite.flows import verify_flows


def verify(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Fail closed: every table read through its policy, aggregate-only data only aggregated,
    no hidden raw key in any output, every passed-on raw value read only by its mask, and every
    relationship key and tie-break only linking or ordering records."""
    for table in tree.find_all(exp.Table):
        if is_policy_table(table):
            raise PolicyViolation(f"{table.db}.{table.name} is read without its policy")
        if table.meta.get(RAW_TABLE) and not (
            isinstance(table.parent, exp.From)
            and isinstance(table.parent.parent, exp.Select)
            and isinstance(table.parent.parent.parent, exp.Subquery)
            and table.parent.parent.parent.meta.get(POLICY)
        ):
            raise PolicyViolation(f"raw {table.db}.{table.name} outside its policy subquery")
    for subquery in tree.find_all(exp.Subquery):
        key = subquery.meta.get(POLICY)
        if key and ctx.decisions[key].access == "aggregate_only":
            verify_aggregated(subquery, key, ctx)
    _verify_names(tree)
    verify_flows(tree, ctx)
    return tree


def _verify_names(tree: exp.Expr) -> None:
    """No output reads a hidden key, tie-break or sort value; each arm of the statement's UNION
    returns only its node tag, parent, row number and outputs; no raw key orders rows.

    By name, as the compiler names them; :func:`_verify_flows` follows the values themselves,
    whatever they are named."""
    for alias in tree.find_all(exp.Alias):
        if is_output(alias.alias.lower()) and any(is_hidden(c.name.lower()) for c in alias.find_all(exp.Column)):
            raise PolicyViolation("a hidden key would leave in the response")
    for union in tree.find_all(exp.SetOperation):  # UNION, and INTERSECT or EXCEPT, which it never builds
        for arm in (union.left, union.right):
            if isinstance(arm, exp.Select) and not all(_arm_output(p) for p in arm.expressions):
                raise PolicyViolation("the statement would return something other than its nodes' outputs")
    for order in tree.find_all(exp.Order):
        for term in order.expressions:
            column = term.this if isinstance(term, exp.Ordered) else term
            if isinstance(column, exp.Column) and is_join_key(column.name.lower()):
                raise PolicyViolation("rows would be ordered by a raw key")


def _arm_output(projection: exp.Expr) -> bool:
    """One output of a UNION arm: an output (``o0_1``), the node's tag, parent or row number as
    a literal, a null or the column of the same name, or a link: a null or a node's key."""
    name = projection.alias_or_name.lower()
    if is_output(name):
        return True
    value = projection.this if isinstance(projection, exp.Alias) else projection
    if is_link(name):  # a node's raw key, for the gateway to join another store's rows on
        return isinstance(value, exp.Null) or (isinstance(value, exp.Column) and is_join_key(value.name.lower()))
    return name in ARM and (
        isinstance(value, exp.Literal | exp.Null) or (isinstance(value, exp.Column) and value.name.lower() == name)
    )
