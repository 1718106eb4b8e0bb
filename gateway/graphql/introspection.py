"""Introspection (``__schema``, ``__type``): the one part of a request that graphql-core's own
executor answers, over the role's own schema, so it shows nothing the role may not query."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    execute_sync,
)

from gateway.graphql.errors import graphql_error
from gateway.graphql.schema import Model


def introspect(
    document: DocumentNode,
    operation: OperationDefinitionNode,
    fields: dict[str, list[FieldNode]],
    variables: Mapping[str, Any] | None,
    errors: list[dict[str, Any]],
    model: Model,
) -> dict[str, Any]:
    """Introspection fields through graphql-core's own executor, on a document holding only
    them, over the role's own schema: it shows nothing the role may not query."""
    selections = tuple(node for nodes in fields.values() for node in nodes)
    only = OperationDefinitionNode(
        operation=OperationType.QUERY,
        name=operation.name,
        variable_definitions=operation.variable_definitions,
        directives=(),
        selection_set=SelectionSetNode(selections=selections),
    )
    definitions = [only, *(d for d in document.definitions if isinstance(d, FragmentDefinitionNode))]
    result = execute_sync(
        model.schema, DocumentNode(definitions=tuple(definitions)), variable_values=dict(variables or {})
    )
    for error in result.errors or []:
        errors.append(graphql_error(error.message, "INTERNAL", path=error.path))
    return dict(result.data or {})
