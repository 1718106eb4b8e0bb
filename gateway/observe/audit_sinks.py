"""Where the audit trail's sealed records go: a file, written before each answer leaves (group
commit, several processes sharing one chain), or the log."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from catalogue.errors import CitygateError, ConfigError
from gateway.config import AuditConfig
from gateway.observe.audit_chain import TORN, Chain, Filled, tail, timestamp, torn_hash

log = logging.getLogger("citygate.audit")


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

    The wait is bounded (``seconds``, the setting ``audit.write_seconds``): a disk or network
    file system that hangs must not hold every request forever. A waiter whose batch is not
    written in time is refused with :class:`AuditUnavailable`, and tells its sink (``late``),
    which then refuses everything until a write succeeds.
    """

    __slots__ = ("_futures", "_late", "_lock", "done", "failure", "late", "records", "seconds")

    def __init__(self, seconds: float | None = None, late: Callable[[Batch], None] | None = None) -> None:
        self.records: list[dict[str, Any] | Filled] = []
        self.done = threading.Event()
        self.failure: str | None = None
        self.seconds = seconds
        self.late = 0  # waiters refused because the batch was not written in time
        self._late = late
        self._lock = threading.Lock()
        self._futures: dict[asyncio.AbstractEventLoop, tuple[asyncio.Future[bool], asyncio.TimerHandle | None]] = {}

    def settle(self, failure: str | None) -> None:
        """The batch is on disk (``failure`` None) or is not: wake whoever waits."""
        with self._lock:
            self.failure = failure
            self.done.set()
            futures, self._futures = self._futures, {}
        for loop, (future, timer) in futures.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile has no one waiting
                loop.call_soon_threadsafe(_resolve, future, timer)

    def wait(self, timeout: float | None = None) -> None:
        """Block until the batch is written; :class:`AuditUnavailable` if it cannot be, or is
        not within ``timeout`` seconds (the batch's own bound if None)."""
        timeout = self.seconds if timeout is None else timeout
        if not self.done.wait(timeout):
            self._too_late(timeout)
        if self.failure is not None:
            raise AuditUnavailable(self.failure)

    async def written(self) -> None:
        """Wait on the event loop until the batch is written; :class:`AuditUnavailable` if it
        cannot be, or is not within the batch's bound."""
        future = None
        if not self.done.is_set():
            loop = asyncio.get_running_loop()
            with self._lock:
                if not self.done.is_set():
                    waiting = self._futures.get(loop)
                    if waiting is None:  # one timer per batch and loop, not one per request
                        future = loop.create_future()
                        timer = None if self.seconds is None else loop.call_later(self.seconds, _expire, future)
                        waiting = self._futures[loop] = (future, timer)
                    future = waiting[0]
        # a waiter cancelled must not cancel the others' future
        if future is not None and not await asyncio.shield(future) and not self.done.is_set():
            self._too_late(self.seconds)
        if self.failure is not None:
            raise AuditUnavailable(self.failure)

    def _too_late(self, seconds: float | None) -> None:
        with self._lock:
            if self.done.is_set():  # written just now after all
                return
            self.late += 1
        if self._late is not None:
            self._late(self)
        raise AuditUnavailable(f"the audit trail was not written within {seconds} s")


def _resolve(future: asyncio.Future[bool], timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
    if not future.done():
        future.set_result(True)  # the batch holds any failure; each waiter raises its own


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)  # not written in time


_WRITTEN = Batch()
_WRITTEN.settle(None)  # what a sink that writes at once returns


class Sink(Protocol):
    """Where audit records go. ``write`` seals a record onto the chain without blocking and
    returns its batch; the answer leaves only once the batch is written."""

    def write(self, record: dict[str, Any] | Filled) -> Batch: ...

    def trouble(self) -> str | None: ...

    def backlog(self) -> int: ...

    def flushes(self) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


_RETRY = 0.25  # seconds between attempts to write to a trail that could not be written
UNCLEAN = "the gateway before this one did not stop cleanly (killed or crashed)"
# beside the file while a process writes it, as `.open.<pid>`: left behind, it did not stop cleanly
_OPEN = ".open"
WRITE_SECONDS = 5.0  # what `audit.write_seconds` defaults to


class FileSink:
    """Appends sealed records to a file, each written (and fsynced, by default) before its
    request's answer leaves; several processes may share one file and one chain.

    The request path appends its record to the open batch and waits for it. A writer thread
    takes the whole batch, and under an exclusive lock on the file seals it onto the chain where
    the file ends (another worker process, or another gateway, may have written since), writes
    it in one call and flushes it once: requests that finish while one batch is on its way to
    the disk share the next write and the next fsync (group commit, as PostgreSQL's commits
    share a WAL flush). :meth:`flushes` counts those writes.

    When a batch cannot be written (disk full, the file deleted or replaced, permissions) its
    bytes are cut off again, so no half line is left, and every request still waiting is
    refused with :class:`AuditUnavailable`; so is every request after it, at once, until the
    writer manages to write a ``resumed`` record saying what happened, every ``_RETRY``
    seconds. A batch not written within ``write_seconds`` (a hung disk or network file system)
    is the same trouble: its waiters are refused, and so is everything after them until a
    write succeeds. A file that was deleted or replaced is opened anew at its path; the chain
    goes on from the last record written, so `audit verify` of the new file shows where it
    begins.

    Each process writing the file leaves ``<file>.open.<pid>`` beside it until it closes the
    trail, naming the process by its pid, its start time and the machine's boot (pids repeat
    after a restart, in a container from 1). A process that starts and finds one whose process
    is gone (killed, crashed) writes an ``unclean_start`` record first: records that one had
    not yet written are missing, and none of their requests was answered. Bytes a crash left
    after the file's last record (a write cut short) are no record: the next write ends their
    line and marks them with a ``torn`` record, numbered after the last record.
    """

    def __init__(self, path: Path, *, fsync: bool = True, write_seconds: float = WRITE_SECONDS) -> None:
        self.path = path
        self._fsync = fsync
        self._seconds = write_seconds
        self._beside = path.with_name(f"{path.name}{_OPEN}.{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = self._open()
            gone = _gone(path)
            for stale in gone:  # before this process's own mark, which may bear the same pid
                with contextlib.suppress(OSError):
                    stale.unlink()
            _mark(self._beside)
        except OSError as error:
            raise ConfigError(f"audit.path: cannot write the audit file {path}: {error.strerror}") from None
        self._chain = Chain()  # where the file ends, as this process last saw it (the writer's)
        self._cond = threading.Condition()  # the open batch and the trouble
        self._batch = self._new()
        self._committing: Batch | None = None
        self._trouble: str | None = None
        self._since = 0.0
        self._refused = 0  # requests refused since the trouble began
        self._event = "resumed"  # the record that ends the trouble
        self._full = False  # the trouble is a full disk
        self._closed = False
        self._flushes = 0
        if gone:  # say so in the trail before any record goes on
            self._trouble, self._since, self._event = UNCLEAN, time.time(), "unclean_start"
            log.warning("audit trail %s: %s; its last records may be missing (none was answered)", path, UNCLEAN)
        self._thread = threading.Thread(target=self._drain, name="citygate-audit", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _new(self) -> Batch:
        return Batch(self._seconds, self._late)

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

    def flushes(self) -> int:
        """Batches written and flushed so far (one write and one fsync each)."""
        return self._flushes

    def flush(self) -> None:
        """Wait until every record taken so far is written (or could not be, or
        ``write_seconds`` passed)."""
        with self._cond:
            batches = [b for b in (self._committing, self._batch) if b is not None and b.records]
        for batch in batches:
            batch.done.wait(self._seconds)

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
                    batch, self._batch = self._batch, self._new()
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
                pending, self._batch = self._batch, self._new()
                self._committing = None
                if self._trouble is None:
                    self._since, self._refused, self._event = time.time(), 0, "resumed"
                self._trouble, self._full = str(trouble), trouble.full
                # requests whose wait ran out were counted as refused then
                self._refused += max(0, len(batch.records) - batch.late) + len(pending.records)
            log.error("the audit trail %s cannot be written, requests are refused until it can: %s", self.path, trouble)
            batch.settle(str(trouble))
            pending.settle(str(trouble))
            return
        with self._cond:
            self._committing = None
        batch.settle(None)

    def _late(self, batch: Batch) -> None:
        """A request waited ``write_seconds`` for ``batch`` in vain: the disk or the file system
        does not answer. Refuse it, what waits for the next batch, and everything after them
        until a write succeeds (the writer, once its write returns, writes ``resumed``)."""
        with self._cond:
            if self._trouble is not None or batch.done.is_set():
                self._refused += 1
                return
            self._trouble = f"the audit file was not written within {self._seconds} s (its disk does not answer)"
            self._since, self._event, self._full = time.time(), "resumed", False
            pending, self._batch = self._batch, self._new()  # may be ``batch``, whose writer waits on another
            self._refused = 1 + len(pending.records) - pending.late  # this request, and what waits on
            trouble = self._trouble
        log.error("the audit trail %s cannot be written, requests are refused until it can: %s", self.path, trouble)
        pending.settle(trouble)

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
            start = b""
            if size != self._size:  # another process wrote since: go on from its last record
                start, self._chain = self._tail(size)
            chain = Chain(self._chain.prev, self._chain.seq)
            data = start + b"\n".join([chain.link(record) for record in records]) + b"\n"
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as error:
                with contextlib.suppress(OSError):  # no half line: the next record starts a line
                    os.ftruncate(self._fd, size)
                self._size = -1  # read the tail again: the next write marks it anew
                raise _Trouble(f"{error.strerror or error}", full=error.errno in _FULL) from None
            self._size = size + len(data)
            self._chain = chain
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        if self._fsync:
            try:
                os.fsync(self._fd)
            except OSError as error:  # written, perhaps not durable: refused, and never cut off
                raise _Trouble(f"fsync: {error.strerror or error}", full=error.errno in _FULL) from None
        self._flushes += 1

    def _tail(self, size: int) -> tuple[bytes, Chain]:
        """What the next write begins with, and the chain it goes on from: after the file's
        last record. Bytes after it that are not a record (a machine crash cut a write short)
        get their line ended and a ``torn`` record naming them, so `audit verify` shows them
        and checks on past them, and no sequence number is used twice."""
        found = tail(self.path, size)
        chain = Chain(found.prev, found.seq)
        start = b"\n" if found.newline else b""
        if found.torn:
            reason = f"{len(found.torn)} bytes after record {found.seq} are not a record: a write a crash cut short"
            log.error("audit trail %s: %s; the chain goes on from record %d", self.path, reason, found.seq)
            mark = {
                "time": time.time(),
                "event": TORN,
                "reason": reason,
                TORN: {"at": found.at, "bytes": len(found.torn), "hash": torn_hash(found.torn)},
            }
            start += chain.link(mark) + b"\n"
        return start, chain

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
        # a write that hangs (a hung disk) must not hold the process's exit forever
        self._thread.join(self._seconds + 2 * _RETRY)
        atexit.unregister(self.close)
        if self._thread.is_alive():  # its file stays open (the writer holds it); the mark stays
            log.error("audit trail %s: the last write did not finish; closed without it", self.path)
            return
        clean = self._trouble is None
        os.close(self._fd)
        if clean:
            with contextlib.suppress(OSError):
                self._beside.unlink()


def _room(directory: Path) -> bool:
    """Whether the file system under ``directory`` has :data:`HEADROOM` free (or cannot say)."""
    try:
        found = os.statvfs(directory)
    except OSError:
        return True
    return found.f_bavail * found.f_frsize >= HEADROOM


def _instance(pid: int) -> str | None:
    """Which process ``pid`` is, as no other process on any boot is: the machine's boot id and
    the process's start time (clock ticks since boot, field 22 of /proc/<pid>/stat). None if
    there is no such process, or no /proc to ask."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return f"{boot} {int(fields[19])}"


def _mark(beside: Path) -> None:
    """This process's mark beside the file: its pid and :func:`_instance`, written whole (a
    process reading it meanwhile finds the last mark or this one, never half of it)."""
    pid = os.getpid()
    text = f"{pid} {_instance(pid) or ''}".strip() + "\n"
    temporary = beside.with_name(f".{beside.name}.new")  # not named as a mark
    temporary.write_text(text, encoding="ascii")
    os.replace(temporary, beside)


def _alive(mark: Path, pid: int) -> bool:
    """Whether the process that left ``mark`` runs still: the pid alone is not enough, since
    pids repeat (a container restarted counts from 1 again, and may give this very process the
    pid of the one before it)."""
    try:
        said = mark.read_text(encoding="ascii").split()
    except FileNotFoundError:
        return True  # closed meanwhile: cleanly
    except (OSError, UnicodeDecodeError):
        said = []
    if len(said) == 3 and said[0] == str(pid):
        return _instance(pid) == f"{said[1]} {said[2]}"
    if pid == os.getpid():  # a mark without an instance, bearing this process's pid: not this one's
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _gone(path: Path) -> list[Path]:
    """The marks beside ``path`` of processes that wrote it and are gone without closing it."""
    gone = []
    for mark in path.parent.glob(f"{path.name}{_OPEN}.*"):
        pid = mark.name.rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(mark, int(pid)):
            gone.append(mark)
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

    def flushes(self) -> int:
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
    return FileSink(config.path, fsync=config.fsync, write_seconds=config.write_seconds)
