"""GraphQL scalars that keep their meaning: exact decimals, safe big integers, ISO dates.

JSON numbers lose digits past 2^53 and decimal places in floats, so ``BigInt`` and ``Decimal``
travel as strings (as PostGraphile does); ``Date`` and ``Timestamp`` are ISO 8601 strings
(timestamps are local time without a zone, as the stores keep them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from graphql import (
    GraphQLBoolean,
    GraphQLError,
    GraphQLFloat,
    GraphQLInt,
    GraphQLScalarType,
    GraphQLString,
    StringValueNode,
    ValueNode,
)
from graphql.language import IntValueNode
from graphql.language.ast import FloatValueNode

from catalogue.types import Kind, decimal_digits


def _literal(parse: Callable[[Any], Any]) -> Callable[[ValueNode, Any], Any]:
    def parse_literal(node: ValueNode, _variables: Any = None) -> Any:
        # The error names the literal: its location for the client, and the mark of a value
        # error (BAD_USER_INPUT, as for the same value sent as a variable).
        if not isinstance(node, (StringValueNode, IntValueNode, FloatValueNode)):
            raise GraphQLError(f"expected a string, got {node.kind}", node)
        try:
            return parse(node.value)
        except GraphQLError as error:
            raise GraphQLError(error.message, node) from None

    return parse_literal


def _parse_bigint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise GraphQLError(f"BigInt expects an integer or a string of digits, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise GraphQLError(f"BigInt expects an integer or a string of digits, got {value!r}") from None
    if not -(2**63) <= number < 2**63:
        raise GraphQLError(f"BigInt expects a 64-bit integer, got {value!r}")
    return number


def _parse_decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise GraphQLError(f"Decimal expects a number or a numeric string, got {value!r}")
    try:
        parsed = Decimal(str(value))
    except InvalidOperation:
        raise GraphQLError(f"Decimal expects a number or a numeric string, got {value!r}") from None
    if not parsed.is_finite():
        raise GraphQLError(f"Decimal expects a finite number, got {value!r}")
    if decimal_digits(parsed) > 38:  # as engines take a DECIMAL literal (Trino refuses more)
        raise GraphQLError(f"Decimal expects at most 38 digits, got {value!r}")
    return parsed


def _parse_date(value: Any) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise GraphQLError(f"Date expects YYYY-MM-DD, got {value!r}") from None


def _parse_timestamp(value: Any) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise GraphQLError(f"Timestamp expects YYYY-MM-DDTHH:MM:SS, got {value!r}") from None
    if parsed.tzinfo is not None:
        raise GraphQLError("Timestamp values are local time without a zone; drop the offset")
    return parsed


def _iso(value: Any) -> str:
    return str(value.isoformat())


BigInt = GraphQLScalarType(
    "BigInt",
    description="A 64-bit integer, as a string so no digit is lost in JSON.",
    serialize=str,
    parse_value=_parse_bigint,
    parse_literal=_literal(_parse_bigint),
)
DecimalScalar = GraphQLScalarType(
    "Decimal",
    description='An exact decimal number, as a string ("1234.50"); never rounded through a float.',
    serialize=str,
    parse_value=_parse_decimal,
    parse_literal=_literal(_parse_decimal),
)
Date = GraphQLScalarType(
    "Date",
    description='A calendar date, ISO 8601: "2015-06-30".',
    serialize=_iso,
    parse_value=_parse_date,
    parse_literal=_literal(_parse_date),
)
Timestamp = GraphQLScalarType(
    "Timestamp",
    description='A local date and time without zone, ISO 8601: "2015-06-30T08:15:00".',
    serialize=_iso,
    parse_value=_parse_timestamp,
    parse_literal=_literal(_parse_timestamp),
)

SCALARS: dict[Kind, GraphQLScalarType] = {
    "string": GraphQLString,
    "boolean": GraphQLBoolean,
    "integer": GraphQLInt,
    "bigint": BigInt,
    "double": GraphQLFloat,
    "decimal": DecimalScalar,
    "date": Date,
    "timestamp": Timestamp,
}

# How an engine's value becomes JSON: None where Python's own value already is.
OUTPUT: dict[Kind, Callable[[Any], Any] | None] = {
    "string": None,
    "boolean": bool,  # MariaDB's BOOLEAN is a TINYINT(1): its driver returns 0 and 1
    "integer": None,
    "bigint": str,
    "double": float,
    "decimal": str,
    "date": _iso,
    "timestamp": _iso,
}
