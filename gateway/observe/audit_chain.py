"""The audit trail's chain: each record one JSON line, sealed with the hash of the one before.

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

import datetime as dt
import functools
import hashlib
import json
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from catalogue.errors import ConfigError

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
    # could not write (and refused requests), a file that was deleted or replaced, a torn line
    events: tuple[str, ...] = ()
    torn: tuple[int, ...] = ()  # lines a crash cut short, each marked by the record after it

    @property
    def ok(self) -> bool:
        return self.broken is None


TORN = "torn"  # the event of the record that marks bytes a crash left that are not a record


def check(lines: Iterable[str]) -> Verdict:
    """Check a chain of sealed lines from its first record."""
    return _check(line.encode() for line in lines)


def _check(lines: Iterable[bytes]) -> Verdict:
    """Check a chain of sealed lines (bytes, with or without their newline) from its first record.

    A line that does not hold breaks the chain, unless the record after it is the gateway's own
    ``torn`` mark naming exactly those bytes (a write a crash cut short, marked by the next
    gateway to write the file): then the line is reported, and the chain is checked on past it
    from the record before it, as the gateway went on from there."""
    prev = GENESIS
    count = 0
    events: list[str] = []
    torn: list[int] = []
    bad: list[tuple[int, bytes, str]] = []  # lines that do not hold, since the last that does
    for number, raw in enumerate(lines, start=1):
        line = raw.removesuffix(b"\n")
        unsealed = _unseal_bytes(line)
        if isinstance(unsealed, str):
            bad.append((number, line, unsealed))
            continue
        record, digest = unsealed
        if bad:
            if not _marks(record, prev, bad):
                first, _, why = bad[0]
                return Verdict(count, first, why, tuple(events), tuple(torn))
            torn.extend(n for n, _, _ in bad)
            events.append(_tear(number, record, bad))
            bad = []
        elif record["prev"] != prev:
            why = "its `prev` is not the hash of the record before it"
            if number == 1:
                why += " (the chain began in another file: this one was rotated, deleted or replaced)"
            return Verdict(count, number, why, tuple(events), tuple(torn))
        elif "event" in record:
            events.append(_event(number, record))
        prev = digest
        count += 1
    if bad:
        first, _, why = bad[0]
        why += "; the file ends there: perhaps a write a crash cut short, marked as torn at the next write"
        return Verdict(count, first, why, tuple(events), tuple(torn))
    return Verdict(count, events=tuple(events), torn=tuple(torn))


def _unseal_bytes(line: bytes) -> tuple[dict[str, Any], str] | str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "the line is not valid UTF-8"
    return _unseal(text)


def torn_hash(torn: bytes) -> str:
    """What a ``torn`` mark names the bytes after the last record by: the SHA-256 of the lines
    they make (without the last newline, as `audit verify` reads them)."""
    return hashlib.sha256(torn.removesuffix(b"\n")).hexdigest()


def _marks(record: dict[str, Any], prev: str, bad: list[tuple[int, bytes, str]]) -> bool:
    """Whether ``record`` is the gateway's mark of exactly the lines ``bad``, chained onto the
    record before them."""
    mark = record.get(TORN)
    if record.get("event") != TORN or not isinstance(mark, dict) or record["prev"] != prev:
        return False
    return bool(mark.get("hash") == torn_hash(b"\n".join(line for _, line, _ in bad)))


def _tear(number: int, record: dict[str, Any], bad: list[tuple[int, bytes, str]]) -> str:
    first, last = bad[0][0], bad[-1][0]
    lines = f"line {first}" if first == last else f"lines {first}-{last}"
    size = record[TORN].get("bytes")
    return (
        f"{lines}: torn: {size} bytes that are not a record (a write a crash cut short); "
        f"line {number} ({record.get('time')}) marks them and the chain goes on past them"
    )


def _event(number: int, record: dict[str, Any]) -> str:
    """What a record the gateway wrote of its own trail says, as `audit verify` prints it."""
    said = f"line {number} ({record.get('time')}): {record.get('event')}: {record.get('reason')}"
    if record.get("refused"):
        said += f"; {record['refused']} requests refused, unanswered, since {record.get('since')}"
    return said


def verify(path: Path) -> Verdict:
    """Check the audit file at ``path``; a missing file is a :class:`ConfigError`."""
    try:
        with path.open("rb") as lines:
            return _check(lines)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such audit file") from None


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


@dataclass(frozen=True)
class Tail:
    """Where a file's chain ends: its last record's hash and sequence number, and what follows
    that record which is not one (bytes a crash left mid-write), if anything."""

    prev: str = GENESIS
    seq: int = 0
    torn: bytes = b""  # after the last record and its newline
    at: int = 0  # where ``torn`` begins in the file
    newline: bool = False  # the file does not end with a newline: the next write starts one


def tail(path: Path, size: int | None = None) -> Tail:
    """Where a new record continues the file's chain: after its last sealed record, reading its
    last few KiB (more only if its last lines do not hold). A torn last line, or any bytes after
    the last record that are not one, are no record: numbering goes on from the record before
    them, never from 0 again."""
    if size is None:
        size = path.stat().st_size if path.exists() else 0
    if size == 0:
        return Tail()
    with path.open("rb") as file:
        span = 4096
        while True:
            start = max(0, size - span)
            file.seek(start)
            data = file.read(size - start)
            found = _last_record(data, start == 0)
            if found is not None or start == 0:
                break
            span *= 16
    newline = not data.endswith(b"\n")
    if found is None:  # not one record in the file
        return Tail(torn=data, at=0, newline=newline)
    end, unsealed = found  # ``end``: just past the record, in ``data``
    record, digest = unsealed
    seq = record.get("seq")
    torn = data[end + 1 :]
    return Tail(digest, seq if isinstance(seq, int) else 0, torn, start + min(end + 1, len(data)), newline)


def _last_record(data: bytes, whole: bool) -> tuple[int, tuple[dict[str, Any], str]] | None:
    """The end (in ``data``) of the last line in ``data`` that is a sealed record, and the
    record; None if none is (the first line counts only if ``data`` begins the file)."""
    end = len(data)
    while True:
        begin = data.rfind(b"\n", 0, end) + 1
        if begin == 0 and not whole:
            return None  # the first line may begin before ``data``
        unsealed = _unseal_bytes(data[begin:end])
        if not isinstance(unsealed, str):
            return end, unsealed
        if begin == 0:
            return None
        end = begin - 1


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
