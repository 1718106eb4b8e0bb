"""What a GraphQL-over-HTTP request sends, read from its JSON body or its query string: the
query, or the hash of a registered document (``documentId``, or Apollo's
``extensions.persistedQuery.sha256Hash``), the variables and the operation name.

>>> parameters({"query": "{ a }", "variables": '{"x": 1}'})
('{ a }', None, {'x': 1}, None)
>>> parameters({"query": "{ a }", "variables": [1]})
'`variables` must be an object'
"""

from __future__ import annotations

import json
from typing import Any

from gateway.graphql.documents import document_id

MAX_DEPTH = 32  # levels of lists and objects in `variables`: a GraphQL input type has few


def _deeper(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels deep (without
    recursion: a value 3,000 levels deep must not exhaust the stack)."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [
            item
            for v in level
            for item in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else ())
            if isinstance(item, dict | list)
        ]
        if not level:
            return False
    return True


def _document_id(params: dict[str, Any]) -> str | None:
    """The hash a request names its document by: ``documentId``, or Apollo's
    ``extensions.persistedQuery.sha256Hash``; None if it names none. ValueError: not a hash."""
    extensions = params.get("extensions")
    if isinstance(extensions, str) and extensions:  # GET ?extensions=... is JSON text
        try:
            extensions = json.loads(extensions)
        except (ValueError, RecursionError):
            raise ValueError("`extensions` is not valid JSON") from None
    persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
    if "documentId" in params:
        sent = params["documentId"]
    elif isinstance(persisted, dict) and "sha256Hash" in persisted:
        sent = persisted["sha256Hash"]
    else:
        return None
    digest = document_id(sent)
    if digest is None:
        raise ValueError("the document id is not a SHA-256 (send sha256:<64 hex digits>)")
    return digest


def _variables(params: dict[str, Any]) -> dict[str, Any] | None:
    """The request's variables; ValueError: what is wrong with them."""
    variables = params.get("variables")
    if isinstance(variables, str) and variables:
        try:
            variables = json.loads(variables)
        except (ValueError, RecursionError):
            raise ValueError("`variables` is not valid JSON") from None
    if variables is not None and not isinstance(variables, dict):
        raise ValueError("`variables` must be an object")
    if variables and _deeper(variables, MAX_DEPTH):
        raise ValueError(f"`variables` nest deeper than {MAX_DEPTH} levels")
    return variables or None


def parameters(params: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any] | None, str | None] | str:
    """The request's query, the hash it names its document by, its variables and operation
    name, or what is wrong with them. A request that names its document by hash may leave
    the query out."""
    query = params.get("query")
    try:
        document = _document_id(params)
        if not (isinstance(query, str) and query.strip()) and not (query is None and document is not None):
            return "the request has no `query` string"
        variables = _variables(params)
    except ValueError as error:
        return str(error)
    operation_name = params.get("operationName")
    if operation_name is not None and not isinstance(operation_name, str):
        return "`operationName` must be a string"
    return query, document, variables, operation_name or None
