"""One error hierarchy for citygate.

Code inside raises these; the edges (CLI, HTTP) turn them into a message and an exit status or
a GraphQL error. ``message`` is safe to show a client: it says what went wrong and what to
check, and never carries SQL, stack traces or credentials. ``detail`` is for the operator's log.
"""

from __future__ import annotations


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


class PolicyRefused(CitygateError):
    """The policies' final check refused a statement: the caller learns no more than that."""

    code = "POLICY_REFUSED"

    def __init__(self) -> None:
        super().__init__("the query was refused by the confidentiality policy")


class ResultTooLarge(CitygateError):
    """The answer would hold more rows than one request may have (``limits.max_rows``)."""

    code = "RESULT_TOO_LARGE"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the answer has more than {limit} rows; ask for fewer with `limit` or `where`")


class StatementTimeout(CitygateError):
    """A statement ran past ``limits.statement_seconds`` while its stores still answered."""

    code = "TIMEOUT"

    def __init__(self, limit: float) -> None:
        super().__init__(f"the query ran longer than {limit:g} s; ask for less, or narrow it with `where`")


class EngineQueryError(CitygateError):
    """The engine refused a statement for a reason other than a store being down."""

    code = "ENGINE_ERROR"
