"""GraphQL's error shape: every error a client sees, with a code it can act on, the path of
the field it is about and where that field is in the document. What the message says is safe
to show: it never holds SQL or policy internals (see :mod:`catalogue.errors`).
"""

from __future__ import annotations

import re
from typing import Any

from graphql import FieldNode

UNKNOWN_FIELD = re.compile(r"Cannot query field '([^']+)' on type '([^']+)'\.(?: Did you mean (.+)\?)?")


def friendly(message: str) -> str:
    """graphql-core's unknown-field message, as one that says what to change."""
    match = UNKNOWN_FIELD.match(message)
    if not match:
        return message
    field_name, type_name, suggestions = match.groups()
    text = f'unknown field "{field_name}" on "{type_name}"'
    if suggestions:
        options = re.findall(r"'([^']+)'", suggestions)
        text += "; did you mean " + " or ".join(f'"{o}"' for o in options) + "?"
    return text


def location(node: FieldNode) -> dict[str, int]:
    loc = node.loc
    if loc is None:
        return {"line": 1, "column": 1}
    return {"line": loc.start_token.line, "column": loc.start_token.column}


def graphql_error(
    message: str, code: str, *, path: Any = None, locations: Any = None, **extensions: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message}
    if locations:
        error["locations"] = [
            loc if isinstance(loc, dict) else {"line": loc.line, "column": loc.column} for loc in locations
        ]
    if path:
        error["path"] = list(path)
    error["extensions"] = {"code": code, **extensions}
    return error
