"""What a security officer sees "as" a role: the role's schema, the decided treatment of every
column of every table with the rule that decided it, the SQL each root field of a query becomes,
and the query's answer as that role.

The SQL is the statement that runs, on its route, with its key material replaced by ``<key>``
(:meth:`connectors.base.Engine.redact`): the hash mask's key and the tie-break key derived from
it are inside the text wherever a statement hashes or orders by a masked key, and the page that
shows it is no place for them.
"""

from __future__ import annotations

from typing import Any

from graphql import print_schema

from catalogue.errors import CitygateError, PolicyRefused
from gateway.execution.gateway import Gateway
from gateway.execution.prepared import BATCHED, Batched, Statement
from gateway.execution.views import View
from gateway.identity.caller import Identity


def decisions(gateway: Gateway, view: View) -> list[dict[str, Any]]:
    """Every table's decision for the view's role, each column with its treatment and why."""
    out = []
    for table in gateway.catalogue.tables:
        decision = view.decisions.get((table.department, table.name)) if view.decisions is not None else None
        classes = gateway.catalogue_settings.sharing_classes(
            table.department, table.name, [c.name for c in table.columns]
        )
        columns = []
        for column in table.columns:
            sharing = classes.get(column.name)
            columns.append(
                {
                    "name": column.name,
                    "type": str(column.type),
                    "sharing": sharing.value if sharing is not None else None,
                    "treatment": str(decision.columns[column.name]) if decision is not None else "raw",
                    "rule": decision.reasons.get(column.name, "") if decision is not None else "no policies configured",
                }
            )
        out.append(
            {
                "department": table.department,
                "table": table.name,
                "visible": decision.visible if decision is not None else True,
                "access": decision.access if decision is not None else "allow",
                "k": decision.k if decision is not None and decision.access == "aggregate_only" else None,
                "group_by": sorted(decision.group_by) if decision is not None and decision.group_by else None,
                "row_filter": decision.row_filter if decision is not None else None,
                "columns": columns,
            }
        )
    return out


def explain(gateway: Gateway, view: View, query: str, variables: dict[str, Any] | None, identity: Identity) -> Any:
    """Each root field's route and the statement that runs there (the plan's own text, the one
    the store or the engine receives), key material redacted; or the reasons the query does not
    compile."""
    try:
        prepared = gateway.prepared(query, variables, identity=identity)
    except CitygateError as error:
        return {"error": error.message}
    statements: list[dict[str, Any]] = []
    for statement in prepared:
        if isinstance(statement, Batched):  # one statement per store and level, as each runs
            for index, part in enumerate(statement.statements):
                engine = part.route.engine if isinstance(part, Statement) else gateway.engine
                label = f"-- {statement.label(index)}"
                text = f"{label}\n{engine.redact(part.text)}" if isinstance(part, Statement) else label
                statements.append(
                    {
                        "field": statement.compiled.key,
                        "engine": engine.name,
                        "dialect": engine.dialect,
                        "route": BATCHED,
                        "sql": text,
                    }
                )
            continue
        if isinstance(statement, Statement):
            engine = statement.route.engine
            route, sql = statement.route.name, engine.redact(statement.text)
        else:
            engine, route = gateway.engine, "-"
            if isinstance(statement.error, PolicyRefused):  # the server log says why, as for the query itself
                sql = "-- refused by the confidentiality policy: nothing would run"
            else:
                sql = f"-- not run: {engine.redact(statement.error.message)}"
        statements.append(
            {
                "field": statement.compiled.key,
                "engine": engine.name,
                "dialect": engine.dialect,
                "route": route,
                "sql": sql,
            }
        )
    return statements


def view_as(
    gateway: Gateway, role: str, claims: dict[str, Any], query: str | None, variables: dict[str, Any] | None
) -> tuple[dict[str, Any], Any]:
    """The page's content for ``role`` with ``claims``, and the query's response (for the trail)."""
    identity = Identity(role, claims, subject=None)
    view = gateway.view(identity)
    page: dict[str, Any] = {
        "role": role,
        "claims": claims,
        "claims_read": list(view.claim_names),
        "policy_version": gateway.policy_version,
        "schema": print_schema(view.model.schema),
        "tables": decisions(gateway, view),
    }
    response = None
    if query:
        page["explain"] = explain(gateway, view, query, variables, identity)
        response = gateway.execute(query, variables, None, identity)
        page["answer"] = response.body
    return page, response
