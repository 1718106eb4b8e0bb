"""One error hierarchy for citygate.

Code inside raises these; the edges (CLI, HTTP) turn them into a message and an exit status or
a GraphQL error. ``message`` is safe to show a client: it says what went wrong and what to
check, and never carries SQL, stack traces or credentials. ``detail`` is for the operator's log.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from datetime import datetime


class CitygateError(Exception):
    """An error with a message for the client and a ``detail`` for the operator's log. The
    detail is kept as the engine said it: whoever logs it redacts it with the engine's own
    ``Engine.redact``, which knows the exact key material it put in the statement, so that a
    caller's long literal is logged as it was and not taken for a key.

    >>> CitygateError("x", detail="cost > 99999999999999999999999999999999999999: out of range").detail
    'cost > 99999999999999999999999999999999999999: out of range'
    """

    code = "INTERNAL"

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class ConfigError(CitygateError):
    """A configuration file is missing, malformed or invalid; the message names file and key."""

    code = "BAD_CONFIG"


class StoreUnavailableError(CitygateError):
    """A department's own store did not answer or refused the gateway."""

    code = "DEPARTMENT_UNAVAILABLE"

    def __init__(self, department: str, message: str, *, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.department = department


class EngineUnavailableError(CitygateError):
    """The query engine itself (Trino, or the embedded engine's set-up) cannot be reached."""

    code = "ENGINE_UNAVAILABLE"


class RouteUnproven(EngineUnavailableError):
    """The engine a statement would run on may answer, but the masks are not proven on it yet
    (it did not answer when they were tried): no statement goes there until they are. The
    caller hears what any engine that cannot serve says, and may try again shortly."""

    def __init__(self, route: str) -> None:
        super().__init__(
            "the engine that runs this query is back, and the masks are being checked on it before it "
            "serves; try again shortly",
            detail=f"masks not proven on route {route}",
        )
        self.route = route


class PolicyRefused(CitygateError):
    """The policies' final check refused a statement: the caller learns no more than that."""

    code = "POLICY_REFUSED"

    def __init__(self) -> None:
        super().__init__("the query was refused by the confidentiality policy")


class NoiseRequiredError(CitygateError):
    """The answer would depend on rows of a table the role reads only with noise, otherwise than
    through a noisy count or sum that spends its privacy budget: a filter, an ordering or an
    EXISTS through it, or its rows unaggregated. Nothing ran and nothing was spent."""

    code = "NOISE_REQUIRED"

    def __init__(self, table: str) -> None:
        super().__init__(
            f"this answer would depend on rows of {table}, which this role reads only as noisy counts and sums "
            "that spend its privacy budget; ask for them through the table's own _aggregate or _group_by field"
        )


class ResultTooLarge(CitygateError):
    """The answer would hold more rows than one request may have (``limits.max_rows``)."""

    code = "RESULT_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer has more than {limit} rows; ask for fewer with `limit` or `where`")


class PrivacyBudgetExhausted(CitygateError):
    """A noisy answer would spend more of its role's privacy budget than the period has left."""

    code = "PRIVACY_BUDGET_EXHAUSTED"

    def __init__(self, role: str, epsilon: float, period: str, renews: datetime) -> None:
        super().__init__(
            f"role {role} has spent its privacy budget (epsilon {epsilon:g} per {period}); "
            f"it renews at {renews.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        )
        self.renews = renews


class StatementTimeout(CitygateError):
    """A statement ran past ``limits.statement_seconds`` while its stores still answered."""

    code = "TIMEOUT"

    def __init__(self, limit: float) -> None:
        super().__init__(f"the query ran longer than {limit:g} s; ask for less, or narrow it with `where`")


class EngineQueryError(CitygateError):
    """The engine refused a statement for a reason other than a store being down."""

    code = "ENGINE_ERROR"


# What a store's or engine's message may quote of the data: text in quotes (PostgreSQL's `value
# "441900…" is out of range`, MariaDB's `Incorrect integer value: '…'`, DuckDB's `Could not
# convert string '…'`) and long runs of digits (an identity number, a phone number, unquoted).
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`")
_DIGITS = re.compile(r"\d{5,}")


def error_class(error: BaseException) -> str:
    """What kind of failure an engine's or a driver's exception is, without its message: its
    class, and the code the driver gives it (SQLSTATE, Trino's error name, SQLite's error
    name, MariaDB's error number). A message about a statement can quote the values it was
    reading (`value "441900199604273847" is out of range`): the message never leaves the
    connector, only this.

    >>> error_class(ValueError("value '441900199604273847' is out of range"))
    'ValueError'
    >>> error_class(ConnectionError(1264, "Out of range value for column 'v'"))
    'ConnectionError 1264'
    """
    parts = [type(error).__name__]
    for attribute in ("sqlstate", "error_name", "sqlite_errorname"):
        value = getattr(error, attribute, None)
        if isinstance(value, str) and value:
            parts.append(value)
    if len(parts) == 1 and error.args and isinstance(error.args[0], int):  # PyMySQL's error number
        parts.append(str(error.args[0]))
    return " ".join(parts)


def without_values(text: str) -> str:
    """A store's or engine's message with what could be a stored value cut out: quoted text
    and runs of five digits or more. For messages about reaching a store (its address and
    user are in the client's message already); a message about a statement keeps only its
    class (:func:`error_class`).

    >>> without_values('ERROR: value "441900199604273847" is out of range for type integer')
    'ERROR: value "…" is out of range for type integer'
    >>> without_values("Connection to 127.0.0.1:5432 refused")
    'Connection to 127.0.0.1:5432 refused'
    """
    quoted = _QUOTED.sub(lambda m: m.group(0)[0] + "…" + m.group(0)[-1], text)
    return _DIGITS.sub("#", quoted)


def trace_without_messages(error: BaseException) -> str:
    """A traceback for the log with each exception's message left out: an unexpected error
    can carry an engine's message, and so a stored value or key material; where it was raised
    is what an operator needs, and the exceptions' classes.

    >>> stored = "441900199604273847"
    >>> try:
    ...     raise ValueError(f"value {stored} is out of range")
    ... except ValueError as error:
    ...     text = trace_without_messages(error)
    >>> "441900199604273847" in text, text.splitlines()[-1]
    (False, 'ValueError')
    """
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    chain: list[BaseException] = []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    for number, exception in enumerate(reversed(chain)):
        if number:
            lines.append("During handling of the above exception, another exception occurred:")
        lines.append("Traceback (most recent call last):")
        lines.extend(line.rstrip("\n") for line in traceback.format_list(traceback.extract_tb(exception.__traceback__)))
        lines.append(error_class(exception))
    return "\n".join(lines)


@dataclass(frozen=True)
class ErrorCode:
    """One error code a client can meet: where, with which HTTP status, why, and whether the
    same request sent again can succeed."""

    code: str
    scope: str  # "request": the whole request is refused; "field": one root field is null with it
    status: str  # the HTTP status; "200/400": 200 with application/json, 400 with graphql-response+json
    cause: str
    retry: str


# Every code the gateway answers with (``extensions.code``), in the order a request meets them;
# docs/errors.md is made from this table (`citygate reference errors`), and a test checks that
# every code the source raises is in it.
ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode(
        "BAD_REQUEST",
        "request",
        "400 (404, 413, 415)",
        "the HTTP request is malformed: bad JSON, no query, an unknown or missing `operationName`, a mutation "
        "or subscription; a body over 1 MiB is 413, a body that is not `application/json` is 415; an operator "
        "endpoint that names no department, admin action or console file is 404",
        "no: fix the request",
    ),
    ErrorCode(
        "UNAUTHENTICATED",
        "request",
        "401",
        "no token where one is required, or a token that is expired, "
        "for another audience or issuer, badly signed, or with a claim that cannot be used",
        "no: get a new token",
    ),
    ErrorCode(
        "FORBIDDEN",
        "request",
        "403",
        "`X-Citygate-Role` names a role the token does not carry",
        "no: ask as one of the token's roles",
    ),
    ErrorCode(
        "UNAVAILABLE",
        "request",
        "503",
        "the identity provider's keys cannot be fetched",
        "yes, once the identity provider answers",
    ),
    ErrorCode(
        "AUDIT_UNAVAILABLE",
        "request",
        "503",
        "the request's audit record cannot be written (disk full, the file deleted, no permission), "
        "and no answer leaves unrecorded; `/readyz` is 503 meanwhile",
        "yes, after `Retry-After`: serving resumes by itself once the trail can be written",
    ),
    ErrorCode(
        "STATE_UNAVAILABLE",
        "request or field",
        "503 (request); 200 (a noisy aggregate's field)",
        "the gateway's shared state (`state.url`: privacy budgets, rate limits) cannot be reached, "
        "or holds a value that cannot be right; nothing is let through unlimited or unbudgeted",
        "yes, once the state database answers",
    ),
    ErrorCode(
        "RATE_LIMITED",
        "request",
        "429",
        "the caller sent more than its requests per minute (`extensions.retryAfter`, and a `Retry-After` header)",
        "yes, after `Retry-After` seconds",
    ),
    ErrorCode(
        "UNTRUSTED_DOCUMENT",
        "request",
        "403",
        "trusted documents are on for the caller's role and the "
        "document is not registered (`extensions.documentId` names its hash)",
        "no: register the document",
    ),
    ErrorCode(
        "PERSISTED_QUERY_NOT_FOUND",
        "request",
        "200/400",
        "a request named a document by its hash only, and the gateway does not know it",
        "yes, with the document's text",
    ),
    ErrorCode(
        "GRAPHQL_PARSE_FAILED",
        "request",
        "200/400",
        "the document is not GraphQL, or has more tokens than `limits.max_tokens`",
        "no: fix the document",
    ),
    ErrorCode(
        "GRAPHQL_VALIDATION_FAILED",
        "request",
        "200/400",
        "the document asks for a field, argument or type the caller's role does not have (a denied column "
        "is absent from the role's schema: the message names the role, and the catalogue at `/console` lists "
        "what it may read)",
        "no: ask only for what the role's schema has",
    ),
    ErrorCode(
        "BAD_USER_INPUT",
        "request or field",
        "200/400",
        "a value the query gives, written in the document or sent as a variable, is outside its type or range "
        "(a `Decimal` that is no number, a date that is no date), or a pattern breaks the pattern rule",
        "no: fix the value",
    ),
    ErrorCode(
        "COST_LIMIT",
        "request or field",
        "200/400",
        "the query is over its role's limits before it runs: "
        "depth, root fields, fields, filter conditions, estimated rows (`extensions.estimate`, unless a "
        "table it reads is row-filtered for the role; `limit`), "
        "or the time to prepare it (`limits.plan_seconds`)",
        "no: ask for less as the message says (a preparation past its time: yes, later)",
    ),
    ErrorCode(
        "POLICY_REFUSED",
        "field",
        "200",
        "the policies' final check refused the statement; nothing ran",
        "no: the role may not read this",
    ),
    ErrorCode(
        "NOISE_REQUIRED",
        "field",
        "200",
        "the answer would depend on rows of a table the role reads only as noisy aggregates, other than "
        "through a noisy count or sum that spends its privacy budget (a filter, ordering or `EXISTS` through "
        "it, or its rows); nothing ran and nothing was spent",
        "no: ask through the table's own `_aggregate` or `_group_by`",
    ),
    ErrorCode(
        "RESULT_TOO_LARGE",
        "field",
        "200",
        "the answer would hold more than `limits.max_rows` rows",
        "no: ask for fewer with `limit` or `where`",
    ),
    ErrorCode(
        "PRIVACY_BUDGET_EXHAUSTED",
        "field",
        "200",
        "a noisy aggregate would spend more of the role's privacy budget than its period has left "
        "(`extensions.renews` says when it renews); an answer the cache holds is still returned",
        "yes, after `extensions.renews`; or ask what was answered before",
    ),
    ErrorCode(
        "TIMEOUT",
        "field",
        "200",
        "the statement ran past `limits.statement_seconds` and was cancelled; its stores still answered",
        "perhaps: narrow the query, or try when the gateway is less busy",
    ),
    ErrorCode(
        "DEPARTMENT_UNAVAILABLE",
        "field",
        "200",
        "a department's store did not answer or refused the "
        "gateway (`extensions.department` names it); the other root fields still answer",
        "yes, once the department's store is back",
    ),
    ErrorCode(
        "ENGINE_UNAVAILABLE",
        "field",
        "200",
        "the query engine cannot be reached, or the caller's own "
        "queries took all its share of the gateway for all their time, or it answers again and the "
        "masks are not yet proven on it (and no proven engine can run the query meanwhile)",
        "yes, later",
    ),
    ErrorCode(
        "ENGINE_ERROR",
        "field",
        "200",
        "the engine refused the statement for another reason (a value it cannot cast, memory beyond its limit)",
        "rarely: the log has the engine's words",
    ),
    ErrorCode(
        "BAD_CONFIG",
        "operator",
        "CLI exit 2; `/admin/policies/reload` 422",
        "a configuration or policy file is missing or invalid; the message names the file and the key",
        "no: fix the file",
    ),
    ErrorCode(
        "INTERNAL",
        "request or field",
        "500 or 200",
        "a bug in citygate; the log has the trace, the client only this code",
        "no: report it",
    ),
)


def error_table() -> str:
    """docs/errors.md: every error code, as :data:`ERROR_CODES` states it."""
    lines = [
        "# Error codes",
        "",
        "<!-- Made by `citygate reference errors` from catalogue/errors.py; do not edit by hand. -->",
        "",
        "Every error carries `extensions.code`. A request-level error refuses the whole request",
        "(no `data`); a field-level error makes one root field null while the others answer",
        '(GraphQL\'s partial results). "200/400": 200 with `Accept: application/json`, 400 with',
        "`Accept: application/graphql-response+json`.",
        "",
        "| code | scope | HTTP status | cause | does a retry help? |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{e.code}` | {e.scope} | {e.status} | {e.cause} | {e.retry} |" for e in ERROR_CODES]
    return "\n".join(lines) + "\n"
