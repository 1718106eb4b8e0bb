"""The audit trail: one JSON line per GraphQL request, each sealed with the hash of the one before.

A record says who asked (subject, role, the claims the policies used, a declared purpose), what
was touched (each department, table and column with the treatment it got, the row filters
applied, rows returned per root field) and how it went (engine, cache, duration, outcome,
error codes). It never holds a value read from a store.

This module makes a request's record; :mod:`gateway.observe.audit_chain` seals records into a
chain and checks one (``audit verify``), :mod:`gateway.observe.audit_sinks` writes them. The
trail's names are all reachable from here (``audit.verify``, ``audit.FileSink``, ...).
"""

from __future__ import annotations

import math
import time
from typing import Any, Protocol

import orjson

from gateway.graphql.documents import document_hash
from gateway.observe.audit_chain import (
    GENESIS,
    Chain,
    Filled,
    Template,
    Verdict,
    check,
    records,
    seal,
    timestamp,
    verify,
)
from gateway.observe.audit_sinks import UNCLEAN, AuditUnavailable, Batch, FileSink, LogSink, Sink, open_sink

__all__ = [
    "GENESIS",
    "UNCLEAN",
    "AuditUnavailable",
    "Audited",
    "Batch",
    "Chain",
    "FileSink",
    "Filled",
    "LogSink",
    "Sink",
    "Template",
    "Verdict",
    "check",
    "open_sink",
    "record",
    "recorded",
    "records",
    "seal",
    "timestamp",
    "verify",
]


class Audited(Protocol):
    """What a request's plan tells its record: what it reads, and that account encoded once
    (when the plan was made: a plan never changes)."""

    @property
    def access(self) -> list[dict[str, Any]]: ...
    @property
    def audited(self) -> tuple[str, Any] | None: ...
    @property
    def cost(self) -> int: ...  # the rows its statements may materialise at worst


RECORDED = 200  # characters a record keeps of a caller's header or operation name


def recorded(text: str | None, limit: int = RECORDED) -> str | None:
    """A caller's text as a record keeps it: printable characters only (no control, format or
    line-separating character that could forge or hide a line, no lone surrogate JSON cannot
    hold), at most ``limit`` of them. None for nothing left.

    >>> recorded("案件调查" + chr(0x202E) + chr(0x2028) + chr(0) + " ok"), recorded("x" * 500, 3), recorded(chr(0xD800))
    ('案件调查 ok', 'xxx', None)
    """
    if text is None:
        return None
    cleaned = "".join(c for c in text[: limit * 4] if c.isprintable())[:limit]
    return cleaned or None


def record(
    *,
    request_id: str,
    client_request_id: str | None,
    subject: str | None,
    role: str | None,
    purpose: str | None,
    query: str | None,
    operation_name: str | None,
    plan: Audited | None,
    document: str | None = None,
    claims: dict[str, Any],
    rows: dict[str, int],
    cache: dict[str, str],
    engine: str,
    duration_ms: float,
    routes: dict[str, str] | None = None,
    outcome: str,
    status: int,
    errors: list[str],
    epsilon: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The audit record of a finished request. It names columns and treatments, never values.
    ``document``: the hash a request sent in place of a document it did not send; ``epsilon``:
    what each root field with noisy aggregates spent of the role's privacy budget, if any did."""
    digest, access = _operation(query, plan) if query else (document, [])
    spent = {"epsilon": epsilon} if epsilon else {}
    return {
        "time": time.time(),  # the sink writes it as ISO 8601
        "request_id": request_id,  # the gateway's own, unique
        "client_request_id": client_request_id,  # the caller's X-Request-Id, which any caller may reuse
        "subject": subject,
        "role": role,
        "claims": {k: v if _plain_json(v) else repr(v) for k, v in claims.items()},
        "purpose": purpose,
        "operation": {"hash": digest, "name": operation_name},
        "access": access,
        "cost": plan.cost if plan is not None else None,
        "rows": rows,
        "engine": engine,
        "routes": routes or {},  # response key -> where its statement ran: delegated, or the engine
        "cache": cache,
        "duration_ms": round(duration_ms, 3),
        "outcome": outcome,
        "status": status,
        "errors": errors,
        **spent,
    }


def _operation(query: str, plan: Audited | None) -> tuple[str, Any]:
    """The query's SHA-256 (the name trusted documents know it by, and an error refusing it
    gives) and what the plan reads (the record's ``access``, encoded as the sink encodes it),
    made with the plan."""
    if plan is not None and plan.audited is not None:
        return plan.audited
    digest = document_hash(query)
    if plan is None:
        return digest, []
    return digest, orjson.Fragment(orjson.dumps(plan.access, option=orjson.OPT_SORT_KEYS))


def _plain_json(value: Any) -> bool:
    """Whether JSON holds ``value`` as it is: a claim that it cannot (an integer beyond 64 bits,
    a NaN or an infinity, which would be written as null) is kept as its text."""
    if isinstance(value, float):
        return math.isfinite(value)
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**64
