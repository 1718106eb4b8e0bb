"""The audit trail: one JSON line per GraphQL request, each sealed with the hash of the one before.

A record says who asked (subject, role, the claims the policies used, a declared purpose), what
was touched (each department, table and column with the treatment it got, the row filters
applied, rows returned per root field) and how it went (engine, cache, duration, outcome,
error codes). It never holds a value read from a store.

Each line is the record's canonical JSON (sorted keys, no spaces) with two more keys: ``prev``,
the previous record's hash, inside the sealed part, and ``hash`` appended last, the SHA-256 of
everything before it. Changing any byte of a line therefore breaks that line's own hash, and
removing or reordering lines breaks the next line's ``prev``: :func:`verify` names the first
record that does not hold.

>>> first, digest = seal(GENESIS, {"seq": 1, "role": "health_analyst"})
>>> second, _ = seal(digest, {"seq": 2, "role": "anonymous"})
>>> check([first.decode(), second.decode()]).ok
True
>>> check([first.decode().replace("health", "wealth"), second.decode()]).broken
1
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from catalogue.errors import CitygateError, ConfigError
from gateway.config import AuditConfig
from gateway.graphql.documents import document_hash

log = logging.getLogger("citygate.audit")

GENESIS = "0" * 64
_GATHER = 0.02  # seconds the writer waits between batches
_SUFFIX = len(',"hash":""}') + 64  # what seal() appends to the canonical record


def seal(prev: str, record: dict[str, Any]) -> tuple[bytes, str]:
    """The record as one sealed line (UTF-8, without newline), and its hash; ``record`` gains
    ``prev``. A value may be an ``orjson.Fragment``: JSON encoded already (sorted keys too)."""
    record["prev"] = prev
    return _closed(orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=str)[:-1])


_SHA256 = hashlib.sha256()  # copied for each record: cheaper than a new one


def _closed(opened: bytes) -> tuple[bytes, str]:
    """A record's canonical JSON, given without its closing brace, sealed: its hash (of the
    whole body) appended as the last key, and the hash."""
    hashed = _SHA256.copy()
    hashed.update(opened)
    hashed.update(b"}")
    digest = hashed.hexdigest()
    return b'%s,"hash":"%s"}' % (opened, digest.encode()), digest


# The fields that differ between two requests answered alike; the rest of their records match.
_PER_REQUEST = ("duration_ms", "prev", "purpose", "request_id", "seq", "time")  # sorted


class Audited(Protocol):
    """What a request's plan tells its record: what it reads, and that account encoded once."""

    access: list[dict[str, Any]]
    audited: tuple[str, Any] | None
    cost: int  # the rows its statements may materialise at worst


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
    once per plan."""
    if plan is not None and plan.audited is not None:
        return plan.audited
    digest = document_hash(query)
    if plan is None:
        return digest, []
    plan.audited = digest, orjson.Fragment(orjson.dumps(plan.access, option=orjson.OPT_SORT_KEYS))
    return plan.audited


def _plain_json(value: Any) -> bool:
    """Whether JSON holds ``value`` as it is: a claim that it cannot (an integer beyond 64 bits,
    a NaN or an infinity, which would be written as null) is kept as its text."""
    if isinstance(value, float):
        return math.isfinite(value)
    return not isinstance(value, int) or isinstance(value, bool) or -(2**63) <= value < 2**64


class Template:
    """An audit record's other fields, encoded once, for requests answered alike (a repeated
    request served from the caches). Sealed, a :class:`Filled` template is the very line
    :func:`seal` makes of the same record: only the per-request values are encoded each time,
    into a bytes format of the rest (its own ``%`` doubled), without the closing brace.
    """

    __slots__ = ("format",)

    def __init__(self, fixed: dict[str, Any]) -> None:
        # Marks no fixed value can hold: a token's `sub` of "\x00time\x00" must not take the
        # place of the time (a fresh random part each time, and each mark found exactly once).
        nonce = secrets.token_hex(16)
        marks = {key: f"\x00{nonce}{key}\x00" for key in _PER_REQUEST}
        body = orjson.dumps({**fixed, **marks}, option=orjson.OPT_SORT_KEYS, default=str)
        parts: list[bytes] = []
        for key in _PER_REQUEST:  # in sorted order, as they appear in the body
            mark = orjson.dumps(marks[key])
            if body.count(mark) != 1:
                raise ValueError(f"the record template lost its {key!r} field")
            before, _, body = body.partition(mark)
            parts.append(before.replace(b"%", b"%%"))
        parts.append(body[:-1].replace(b"%", b"%%"))  # without the closing brace
        # duration_ms, prev, purpose, request_id: JSON already; seq: a number; time: text
        self.format = b"%s".join(parts[:4]) + b"%s" + parts[4] + b"%d" + parts[5] + b'"%s"' + parts[6]

    @classmethod
    def of(cls, record: dict[str, Any]) -> Template:
        """The template of requests answered as ``record``'s was: all but its own values."""
        return cls({k: v for k, v in record.items() if k not in _PER_REQUEST})


class Filled:
    """One request's record: a template and the values that are its own (the sink adds the
    chain's ``prev`` and ``seq``, and writes ``time`` as text)."""

    __slots__ = ("duration_ms", "purpose", "request_id", "template", "time")

    def __init__(self, template: Template, time: float, request_id: str, purpose: str | None, duration_ms: float):
        self.template = template
        self.time = time
        self.request_id = request_id
        self.purpose = purpose
        self.duration_ms = duration_ms


def _seal_filled(prev: str, seq: int, filled: Filled) -> tuple[bytes, str]:
    """What ``seal(prev, record)`` makes of the filled template's record numbered ``seq``."""
    purpose = b"null" if filled.purpose is None else orjson.dumps(filled.purpose)
    opened = filled.template.format % (
        orjson.dumps(filled.duration_ms),
        b'"%s"' % prev.encode(),
        purpose,
        orjson.dumps(filled.request_id),
        seq,
        _time_text(filled.time),
    )
    return _closed(opened)


def _unseal(line: str) -> tuple[dict[str, Any], str] | str:
    """The record and its hash, or why the line does not hold."""
    if len(line) <= _SUFFIX or not line.endswith('"}') or line[-_SUFFIX:-66] != ',"hash":"':
        return "the line is not a sealed record"
    body, digest = line[:-_SUFFIX] + "}", line[-66:-2]
    if hashlib.sha256(body.encode()).hexdigest() != digest:
        return "its hash does not match its content"
    try:
        record = json.loads(body)
    except ValueError:
        return "the line is not valid JSON"
    if not isinstance(record, dict) or not isinstance(record.get("prev"), str):
        return "the record has no `prev` hash"
    return record, digest


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking a chain: how many records hold, and the first that does not."""

    records: int
    broken: int | None = None  # 1-based line number of the first record that does not hold
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken is None


def check(lines: Iterable[str]) -> Verdict:
    """Check a chain of sealed lines from its first record."""
    prev = GENESIS
    count = 0
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        unsealed = _unseal(line)
        if isinstance(unsealed, str):
            return Verdict(count, number, unsealed)
        record, digest = unsealed
        if record["prev"] != prev:
            return Verdict(count, number, "its `prev` is not the hash of the record before it")
        prev = digest
        count += 1
    return Verdict(count)


def verify(path: Path) -> Verdict:
    """Check the audit file at ``path``; a missing file is a :class:`ConfigError`."""
    try:
        with path.open(encoding="utf-8", newline="\n") as lines:
            return check(lines)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such audit file") from None
    except UnicodeDecodeError as error:
        return _undecodable(path, error)


def _undecodable(path: Path, error: UnicodeDecodeError) -> Verdict:
    """Name the line holding bytes that are not UTF-8 (a tampered or truncated file)."""
    data = path.read_bytes()
    line = data.count(b"\n", 0, error.start) + 1
    prefix = b"".join(data.splitlines(keepends=True)[: line - 1]).decode("utf-8")
    return Verdict(check(prefix.splitlines()).records, line, "the line is not valid UTF-8")


def records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of an audit file, seals removed; lines that do not hold are skipped."""
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                unsealed = _unseal(line.rstrip("\n"))
                if not isinstance(unsealed, str):
                    yield unsealed[0]
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such audit file") from None


def _tail(path: Path) -> tuple[str, int]:
    """The hash and sequence number a new record continues from (the last sealed line's)."""
    if not path.exists() or path.stat().st_size == 0:
        return GENESIS, 0
    with path.open("rb") as file:
        file.seek(0, os.SEEK_END)
        size = file.tell()
        file.seek(max(0, size - 65536))
        last = file.read().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")
    unsealed = _unseal(last)
    if isinstance(unsealed, str):
        # Go on from the broken line's own bytes: `audit verify` will name it, and what
        # follows is still chained.
        log.error("audit file %s ends with a record that does not hold (%s)", path, unsealed)
        return hashlib.sha256(last.encode()).hexdigest(), 0
    record, digest = unsealed
    seq = record.get("seq")
    return digest, seq if isinstance(seq, int) else 0


@dataclass
class Chain:
    """Where a trail stands: the last record's hash and sequence number."""

    prev: str = GENESIS
    seq: int = 0

    def link(self, record: dict[str, Any] | Filled) -> bytes:
        """``record`` numbered, stamped and sealed onto the chain, as one line (no newline)."""
        seq = self.seq + 1  # taken only once the record is sealed: a failure leaves no gap
        if isinstance(record, Filled):
            line, prev = _seal_filled(self.prev, seq, record)
        else:
            line, prev = seal(self.prev, _stamped(record, seq))
        self.seq, self.prev = seq, prev
        return line


class Sink(Protocol):
    """Where audit records go. ``write`` must not block the request that calls it."""

    def write(self, record: dict[str, Any] | Filled) -> None: ...

    def backlog(self) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Appends sealed records to a file; ``close`` writes what is still buffered.

    The request path seals its record onto the chain (so the chain follows the order requests
    finished) and appends the line to a buffer: a few microseconds, no I/O. A writer thread
    takes the buffer every few milliseconds and writes it in one call, then flushes it; with
    ``fsync`` each batch also survives a machine crash. The thread does no Python work worth
    the name: sealing there made it hold the interpreter lock for whole batches while the
    event loop waited.
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._chain = Chain(*_tail(path))
            self._file = path.open("ab")
        except OSError as error:
            raise ConfigError(f"audit.path: cannot write the audit file {path}: {error.strerror}") from None
        self.path = path
        self._fsync = fsync
        self._lock = threading.Lock()  # the chain and the buffer
        self._writing = threading.Lock()  # one batch at a time, in order
        self._lines: list[bytes] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="citygate-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def write(self, record: dict[str, Any] | Filled) -> None:
        with self._lock:
            if self._closed.is_set():  # the answer must not leave unaudited: the caller refuses it
                request = record.request_id if isinstance(record, Filled) else record.get("request_id")
                raise CitygateError(f"audit record of request {request} after the trail was closed")
            self._lines.append(self._chain.link(record))

    def backlog(self) -> int:
        return len(self._lines)

    def _drain(self) -> None:
        # Let records gather: one write per batch, and the request path keeps the lock.
        while not self._closed.wait(_GATHER):
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Write what is buffered now (the writer does so every few milliseconds)."""
        with self._writing:
            with self._lock:
                lines, self._lines = self._lines, []
            if not lines or self._file.closed:
                return
            lines.append(b"")
            try:
                self._file.write(b"\n".join(lines))
                self._file.flush()
                if self._fsync:
                    os.fsync(self._file.fileno())
            except OSError:
                log.exception("could not write %d audit records to %s", len(lines) - 1, self.path)

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
        self._thread.join()
        with self._writing:
            self._file.close()
        atexit.unregister(self.close)


class LogSink:
    """Sealed records as log lines on the ``citygate.audit`` logger, for a log pipeline to ship."""

    def __init__(self) -> None:
        self._chain = Chain()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any] | Filled) -> None:
        with self._lock:
            line = self._chain.link(record)
        log.info("%s", line.decode())

    def backlog(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def open_sink(config: AuditConfig | None) -> Sink | None:
    """The sink a configuration names, or None when the trail is off."""
    if config is None or config.sink == "off":
        return None
    if config.sink == "log":
        return LogSink()
    assert config.path is not None  # the model requires it for the file sink
    return FileSink(config.path, fsync=config.fsync)


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def timestamp(moment: float) -> str:
    """A Unix time as the trail writes it: ISO 8601, UTC, milliseconds. Requests hand in the
    float (cheap); the sink formats it, reusing the second's text for every record in it.

    >>> timestamp(1795766400.25)
    '2026-11-27T08:00:00.250Z'
    """
    millisecond = int(moment * 1000)
    return f"{_second(millisecond // 1000)}.{millisecond % 1000:03d}Z"


_last_time: list[Any] = [-1, b""]  # the last millisecond written, and its text


def _time_text(moment: float) -> bytes:
    """``timestamp(moment)`` as bytes, reused within a millisecond."""
    millisecond = int(moment * 1000)
    if millisecond != _last_time[0]:
        _last_time[:] = [millisecond, timestamp(moment).encode()]
    text: bytes = _last_time[1]
    return text


def _stamped(record: dict[str, Any], seq: int) -> dict[str, Any]:
    """The record with its sequence number and its time as text (the record is the sink's now)."""
    moment = record.get("time")
    if isinstance(moment, float):
        record["time"] = timestamp(moment)
    record["seq"] = seq
    return record
