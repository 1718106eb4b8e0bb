"""GraphQL's error shape: every error a client sees, with a code it can act on, the path of
the field it is about and where that field is in the document. What the message says is safe
to show: it never holds SQL or policy internals (see :mod:`catalogue.errors`).
"""

from __future__ import annotations

import re
from typing import Any

from graphql import (
    BooleanValueNode,
    FloatValueNode,
    GraphQLError,
    IntValueNode,
    Node,
    NullValueNode,
    StringValueNode,
)

from catalogue.errors import CitygateError, PrivacyBudgetExhausted, StoreUnavailableError

UNKNOWN_FIELD = re.compile(r"Cannot query field '([^']+)' on type '([^']+)'\.(?: Did you mean (.+)\?)?")


def friendly(message: str, role: str | None = None, missing: tuple[str, ...] = ()) -> str:
    """graphql-core's unknown-field message, as one that says what to change. With policies,
    it names the caller's role and where to see what that role may read. It reads the same for
    a column the role may not see and one that does not exist: the suggestions come from the
    role's own schema, so nothing in it tells a hidden column from a typo. ``missing``: claims
    the role requires that the token lacks, so the role sees nothing.

    >>> friendly("Cannot query field 'cost' on type 'visits'.", "anon")
    'unknown field "cost" on "visits" for role anon (the catalogue at /console lists what it may read)'
    >>> print(friendly("Cannot query field 'cost' on type 'Query'.", "citizen", ("id_card",)))
    unknown field "cost" on "Query" for role citizen: the token has no claim id_card, which the role requires; ...
    """
    match = UNKNOWN_FIELD.match(message)
    if not match:
        return message
    field_name, type_name, suggestions = match.groups()
    text = f'unknown field "{field_name}" on "{type_name}"'
    if role is not None and missing:
        claims = ", ".join(missing)
        return (
            f"{text} for role {role}: the token has no claim {claims}, which the role requires; "
            "without it the role sees nothing"
        )
    if role is not None:
        text += f" for role {role} (the catalogue at /console lists what it may read)"
    if suggestions:
        options = re.findall(r"'([^']+)'", suggestions)
        text += "; did you mean " + " or ".join(f'"{o}"' for o in options) + "?"
    return text


# A literal its scalar refused (graphql-core reports these on the literal itself). Not an enum
# value: enums are the schema's own words (a column in `by`), which a role may lack.
_LITERALS = (IntValueNode, FloatValueNode, StringValueNode, BooleanValueNode, NullValueNode)


def validation_code(error: GraphQLError) -> str:
    """The code of one validation error: a literal its type refuses (a ``Decimal`` that is no
    number, a date that is no date) is the caller's value, ``BAD_USER_INPUT``, as the same value
    sent as a variable is; anything else is ``GRAPHQL_VALIDATION_FAILED``.

    >>> validation_code(GraphQLError("Decimal expects a number", StringValueNode(value="abc")))
    'BAD_USER_INPUT'
    """
    nodes = error.nodes or []
    if len(nodes) == 1 and isinstance(nodes[0], _LITERALS):
        return "BAD_USER_INPUT"
    return "GRAPHQL_VALIDATION_FAILED"


def location(node: Node) -> dict[str, int]:
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


def field_error(error: CitygateError, path: list[str | int], locations: Any) -> dict[str, Any]:
    """A field's error in GraphQL's shape, with what its caller can act on: the department
    whose store did not answer, or when an exhausted privacy budget renews."""
    extensions: dict[str, Any] = {}
    if isinstance(error, StoreUnavailableError):
        extensions["department"] = error.department
    elif isinstance(error, PrivacyBudgetExhausted):
        extensions["renews"] = error.renews.strftime("%Y-%m-%dT%H:%M:%SZ")
    return graphql_error(error.message, error.code, path=path, locations=locations, **extensions)
