"""The first step: every table the statement reads has a decision, or nothing runs."""

from __future__ import annotations

from sqlglot import exp

from policies.rewrite.context import Context, PolicyViolation, is_policy_table


def qualify(tree: exp.Expr, ctx: Context) -> exp.Expr:
    """Check every table the tree reads has a decision: deny what the policy does not know."""
    for table in tree.find_all(exp.Table):
        if is_policy_table(table) and (table.db, table.name) not in ctx.decisions:
            raise PolicyViolation(f"no policy decision for {table.db}.{table.name}")
    return tree
