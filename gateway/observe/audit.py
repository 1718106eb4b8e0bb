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

import asyncio
import atexit
import contextlib
import datetime as dt
import errno
import fcntl
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
    # what the gateway itself recorded of its trail: a restart after an unclean stop, a time it
    # could not write (and refused requests), a file that was deleted or replaced
    events: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.broken is None


def check(lines: Iterable[str]) -> Verdict:
    """Check a chain of sealed lines from its first record."""
    prev = GENESIS
    count = 0
    events: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        unsealed = _unseal(line)
        if isinstance(unsealed, str):
            return Verdict(count, number, unsealed, tuple(events))
        record, digest = unsealed
        if record["prev"] != prev:
            why = "its `prev` is not the hash of the record before it"
            if number == 1:
                why += " (the chain began in another file: this one was rotated, deleted or replaced)"
            return Verdict(count, number, why, tuple(events))
        if "event" in record:
            events.append(_event(number, record))
        prev = digest
        count += 1
    return Verdict(count, events=tuple(events))


def _event(number: int, record: dict[str, Any]) -> str:
    """What a record the gateway wrote of its own trail says, as `audit verify` prints it."""
    said = f"record {number} ({record.get('time')}): {record.get('event')}: {record.get('reason')}"
    if record.get("refused"):
        said += f"; {record['refused']} requests refused, unanswered, since {record.get('since')}"
    return said


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


def _tail(path: Path, size: int | None = None) -> tuple[str, int]:
    """The hash and sequence number a new record continues from (the last sealed line's),
    reading the file's last few KiB (its whole last 64 KiB only for a longer line)."""
    if size is None:
        size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return GENESIS, 0
    with path.open("rb") as file:
        for span in (4096, 65536):
            file.seek(max(0, size - span))
            lines = file.read(span).rstrip(b"\n").rsplit(b"\n", 1)
            if len(lines) == 2 or span >= size:
                break
        last = lines[-1].decode("utf-8", errors="replace")
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


class AuditUnavailable(CitygateError):
    """The trail cannot be written (disk full, file gone, no permission): no answer may leave
    without its record, so the request is refused. The message is safe for a client."""

    code = "AUDIT_UNAVAILABLE"

    def __init__(self, reason: str) -> None:
        super().__init__("the audit trail cannot be written, so nothing is answered; try again shortly", detail=reason)


class Batch:
    """Records that go to the trail in one write and one flush (group commit). A request
    waits for its batch, on its thread (:meth:`wait`) or on its event loop (:meth:`written`):
    every request of a batch shares one future per event loop, resolved by one wake-up.
    """

    __slots__ = ("_futures", "_lock", "done", "failure", "records")

    def __init__(self) -> None:
        self.records: list[dict[str, Any] | Filled] = []
        self.done = threading.Event()
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._futures: dict[asyncio.AbstractEventLoop, asyncio.Future[None]] = {}

    def settle(self, failure: str | None) -> None:
        """The batch is on disk (``failure`` None) or is not: wake whoever waits."""
        with self._lock:
            self.failure = failure
            self.done.set()
            futures, self._futures = self._futures, {}
        for loop, future in futures.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile has no one waiting
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the batch is written; :class:`AuditUnavailable` if it cannot be."""
        if not self.done.wait(timeout):
            raise AuditUnavailable(f"the audit trail was not written within {timeout} s")
        if self.failure is not None:
            raise AuditUnavailable(self.failure)

    async def written(self) -> None:
        """Wait on the event loop until the batch is written; :class:`AuditUnavailable` if it
        cannot be."""
        future = None
        if not self.done.is_set():
            loop = asyncio.get_running_loop()
            with self._lock:
                if not self.done.is_set():
                    future = self._futures.get(loop)
                    if future is None:
                        future = self._futures[loop] = loop.create_future()
        if future is not None:
            await asyncio.shield(future)  # a waiter cancelled must not cancel the others' future
        if self.failure is not None:
            raise AuditUnavailable(self.failure)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)  # the batch holds any failure; each waiter raises its own


_WRITTEN = Batch()
_WRITTEN.settle(None)  # what a sink that writes at once returns


class Sink(Protocol):
    """Where audit records go. ``write`` seals a record onto the chain without blocking and
    returns its batch; the answer leaves only once the batch is written."""

    def write(self, record: dict[str, Any] | Filled) -> Batch: ...

    def trouble(self) -> str | None: ...

    def backlog(self) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


_RETRY = 0.25  # seconds between attempts to write to a trail that could not be written
UNCLEAN = "the gateway before this one did not stop cleanly (killed or crashed)"
_OPEN = ".open"  # beside the file while a gateway writes it: left behind, the gateway did not stop cleanly


class FileSink:
    """Appends sealed records to a file, each written (and fsynced, by default) before its
    request's answer leaves; several processes may share one file and one chain.

    The request path appends its record to the open batch and waits for it. A writer thread
    takes the whole batch, and under an exclusive lock on the file seals it onto the chain where
    the file ends (another worker process, or another gateway, may have written since), writes
    it in one call and flushes it once: requests that finish while one batch is on its way to
    the disk share the next write and the next fsync (group commit, as PostgreSQL's commits
    share a WAL flush).

    When a batch cannot be written (disk full, the file deleted or replaced, permissions) its
    bytes are cut off again, so no half line is left, and every request still waiting is
    refused with :class:`AuditUnavailable`; so is every request after it, at once, until the
    writer manages to write a ``resumed`` record saying what happened, every ``_RETRY``
    seconds. A file that was deleted or replaced is opened anew at its path; the chain goes on
    from the last record written, so `audit verify` of the new file shows where it begins.

    Each process writing the file leaves ``<file>.open.<pid>`` beside it until it closes the
    trail. A process that starts and finds one whose process is gone (killed, crashed) writes
    an ``unclean_start`` record first: records that one had not yet written are missing, and
    none of their requests was answered.
    """

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self._fsync = fsync
        self._beside = path.with_name(f"{path.name}{_OPEN}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = self._open()
            gone = _gone(path)
            self._beside.write_text(str(os.getpid()), encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"audit.path: cannot write the audit file {path}: {error.strerror}") from None
        self._chain = Chain()  # where the file ends, as this process last saw it (the writer's)
        self._cond = threading.Condition()  # the open batch and the trouble
        self._batch = Batch()
        self._committing: Batch | None = None
        self._trouble: str | None = None
        self._since = 0.0
        self._refused = 0  # requests refused since the trouble began
        self._event = "resumed"  # the record that ends the trouble
        self._full = False  # the trouble is a full disk
        self._closed = False
        if gone:  # say so in the trail before any record goes on
            self._trouble, self._since, self._event = UNCLEAN, time.time(), "unclean_start"
            log.warning("audit trail %s: %s; its last records may be missing (none was answered)", path, UNCLEAN)
            for stale in gone:
                with contextlib.suppress(OSError):
                    stale.unlink()
        self._thread = threading.Thread(target=self._drain, name="citygate-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _open(self) -> int:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        stat = os.fstat(fd)
        self._identity = (stat.st_dev, stat.st_ino)
        self._size = -1  # unknown: the tail is read under the lock
        return fd

    def write(self, record: dict[str, Any] | Filled) -> Batch:
        with self._cond:
            if self._trouble is not None:
                self._refused += 1
                raise AuditUnavailable(self._trouble)
            if self._closed:  # the answer must not leave unaudited: the caller refuses it
                request = record.request_id if isinstance(record, Filled) else record.get("request_id")
                raise CitygateError(f"audit record of request {request} after the trail was closed")
            batch = self._batch
            batch.records.append(record)
            if len(batch.records) == 1:
                self._cond.notify()
            return batch

    def trouble(self) -> str | None:
        """Why the trail cannot be written now, or None while it can."""
        return self._trouble

    def backlog(self) -> int:
        return len(self._batch.records)

    def flush(self) -> None:
        """Wait until every record taken so far is written (or could not be)."""
        with self._cond:
            batches = [b for b in (self._committing, self._batch) if b is not None and b.records]
        for batch in batches:
            batch.done.wait()

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._batch.records and not self._closed and self._trouble is None:
                    self._cond.wait()
                if self._trouble is not None:
                    if self._closed:
                        return
                    self._cond.wait(_RETRY if self._refused or self._event != "unclean_start" else 0)
                    batch = None
                else:
                    batch, self._batch = self._batch, Batch()
                    if not batch.records:  # closed, and nothing left
                        return
                    self._committing = batch
            if batch is None:
                self._resume()
            else:
                self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        try:
            self._append(batch.records)
        except _Trouble as trouble:
            with self._cond:
                pending, self._batch = self._batch, Batch()
                self._committing = None
                self._trouble, self._since, self._event = str(trouble), time.time(), "resumed"
                self._full = trouble.full
                self._refused = len(batch.records) + len(pending.records)
            log.error("the audit trail %s cannot be written, requests are refused until it can: %s", self.path, trouble)
            batch.settle(str(trouble))
            pending.settle(str(trouble))
            return
        with self._cond:
            self._committing = None
        batch.settle(None)

    def _resume(self) -> None:
        """Try to write the record that says what happened; serving resumes once it is on disk
        (after a full disk, once there is room for more than that record: no flapping)."""
        if self._full and not _room(self.path.parent):
            return
        with self._cond:
            reason, refused, event = self._trouble, self._refused, self._event
        marker: dict[str, Any] = {"time": time.time(), "event": event, "reason": reason, "refused": refused}
        if event == "resumed":
            marker["since"] = timestamp(self._since)
        try:
            self._append([marker])
        except _Trouble:
            return
        with self._cond:
            self._trouble = None
            self._cond.notify_all()
        if event == "resumed":
            log.warning("the audit trail %s is written again; %d requests were refused meanwhile", self.path, refused)

    def _append(self, records: list[dict[str, Any] | Filled]) -> None:
        """Seal ``records`` onto the chain where the file ends and write them, whole, then
        flush them; or raise _Trouble. The file is locked while sealing and writing (other
        processes wait), not while flushing: another process's batch may go on meanwhile, and
        one fsync then often covers both."""
        problem = self._moved()
        if problem is not None:
            raise _Trouble(problem)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError as error:
            raise _Trouble(f"the audit file cannot be locked: {error.strerror}") from None
        try:
            size = os.fstat(self._fd).st_size
            torn = False
            if size != self._size:  # another process wrote since: go on from its last record
                self._chain = Chain(*_tail(self.path, size))
                self._size = size
                torn = size > 0 and not _ends_line(self.path, size)
            chain = Chain(self._chain.prev, self._chain.seq)
            data = b"\n".join([chain.link(record) for record in records]) + b"\n"
            if torn:  # a line torn by a machine crash stays on its own line: `verify` names it
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as error:
                with contextlib.suppress(OSError):  # no half line: the next record starts a line
                    os.ftruncate(self._fd, self._size)
                raise _Trouble(f"{error.strerror or error}", full=error.errno in _FULL) from None
            self._size += len(data)
            self._chain = chain
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if self._fsync:
            try:
                os.fsync(self._fd)
            except OSError as error:  # written, perhaps not durable: refused, and never cut off
                raise _Trouble(f"fsync: {error.strerror or error}", full=error.errno in _FULL) from None

    def _moved(self) -> str | None:
        """Why the path no longer names the open file (deleted, moved, replaced), having opened
        the path anew; None if it still does. A file that cannot be opened is the trouble."""
        try:
            stat = os.stat(self.path)
            if (stat.st_dev, stat.st_ino) == self._identity:
                return None
            what = "was replaced by another file"
        except FileNotFoundError:
            what = "was deleted or moved away"
        except OSError as error:
            return f"the audit file cannot be read: {error.strerror}"
        if self._trouble is None:  # the first sign: refuse what waits, reopen on the next try
            return f"the audit file {what} while the gateway wrote it"
        try:
            fd = self._open()
        except OSError as error:
            return f"the audit file {what} and cannot be opened anew: {error.strerror}"
        os.close(self._fd)
        self._fd = fd
        # An empty file goes on from the last record this process wrote, never from a fresh
        # chain; one another process has begun already, from its last record.
        self._size = 0 if os.fstat(fd).st_size == 0 else -1
        return None

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join()
        clean = self._trouble is None
        os.close(self._fd)
        if clean:
            with contextlib.suppress(OSError):
                self._beside.unlink()
        atexit.unregister(self.close)


def _room(directory: Path) -> bool:
    """Whether the file system under ``directory`` has :data:`HEADROOM` free (or cannot say)."""
    try:
        found = os.statvfs(directory)
    except OSError:
        return True
    return found.f_bavail * found.f_frsize >= HEADROOM


def _ends_line(path: Path, size: int) -> bool:
    with path.open("rb") as file:
        file.seek(size - 1)
        return file.read(1) == b"\n"


def _gone(path: Path) -> list[Path]:
    """The marks beside ``path`` of processes that wrote it and are gone without closing it."""
    gone = []
    for mark in path.parent.glob(f"{path.name}{_OPEN}.*"):
        pid = mark.name.rsplit(".", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            gone.append(mark)
        except PermissionError:  # alive, another user's
            pass
    return gone


class _Trouble(Exception):
    """Why a batch could not be written; ``full``: for want of space."""

    def __init__(self, reason: str, *, full: bool = False) -> None:
        super().__init__(reason)
        self.full = full


_FULL = (errno.ENOSPC, errno.EDQUOT)
HEADROOM = 256 << 10  # bytes free before a trail that filled its disk is written again


class LogSink:
    """Sealed records as log lines on the ``citygate.audit`` logger, for a log pipeline to ship."""

    def __init__(self) -> None:
        self._chain = Chain()
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any] | Filled) -> Batch:
        with self._lock:
            line = self._chain.link(record)
        log.info("%s", line.decode())
        return _WRITTEN  # handed to the log pipeline before the answer leaves

    def trouble(self) -> str | None:
        return None

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
