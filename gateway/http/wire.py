"""uvicorn's HTTP protocol (httptools), writing each response in one system call.

uvicorn writes a response's status line and headers as soon as the application starts it, and
its body when the application sends that: two ``write`` calls, two system calls and two TCP
segments for a small answer. On loopback the writer's system call also runs the receiving
side of TCP, so the writes are a large share of serving a cached answer (the two were a third
of the server's samples under load). Here the connection's transport holds what one turn of
the event loop writes and hands it over at the end of that turn, in one call.

Nothing else changes: the same parser, the same ASGI cycle, the same flow control (a paused
transport still pauses the protocol; held bytes count in the write buffer's size), and a
close or an end of file sends what is held first, an abort drops it.

Two guards uvicorn lacks: a request's headers must arrive within ``header_seconds`` of the
connection (or of the request's first byte, on a kept-alive one), or the connection is closed;
and past ``max_connections`` open connections a new one is answered 503 and closed at once. So
a client holding thousands of connections open with a header trickling in holds none for long,
and none beyond the cap (uvicorn's ``limit_concurrency`` answers 503 only once headers are in).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _Held:
    """A transport that writes at the end of the event loop's turn what the turn gave it."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        self._held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if not held:
            return
        self._held = []
        if self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)  # uvloop: one writev

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held))

    def __getattr__(self, name: str) -> Any:  # everything else: the transport's own
        return getattr(self._transport, name)


log = logging.getLogger("citygate.http")

HEADER_SECONDS = 10.0  # a request's headers arrive within this; nginx's client_header_timeout is 60
MAX_CONNECTIONS = 1000  # open connections; each costs a little memory and a file descriptor
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`_Held` transport, with a header timeout
    and a connection cap (:func:`protocol` makes one with other bounds)."""

    header_seconds = HEADER_SECONDS
    max_connections = MAX_CONNECTIONS
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Held(transport, self.loop))  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections:
            log.warning("a connection was refused: %d are open, the cap", self.max_connections)
            transport.write(_BUSY)
            transport.close()
            return
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_seconds, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol(header_seconds: float = HEADER_SECONDS, max_connections: int = MAX_CONNECTIONS) -> type[OneWriteProtocol]:
    """:class:`OneWriteProtocol` with these bounds (uvicorn takes a class, not an instance).

    >>> protocol(5, 10).header_seconds, protocol(5, 10).max_connections
    (5, 10)
    """
    bounds = {"header_seconds": header_seconds, "max_connections": max_connections}
    return type("BoundedOneWriteProtocol", (OneWriteProtocol,), bounds)


class WorkerProtocol(OneWriteProtocol):
    """The protocol of each `citygate serve --workers N` process, bounded by that worker's own
    configuration (:meth:`bound`, called as the worker builds its gateway).

    uvicorn hands its options to each worker process pickled, and a class pickles by its name:
    one made by :func:`protocol` does not exist in the worker, so the bounds are set there. The
    cap counts the connections of one worker (one process, its own open-file limit).
    """

    @classmethod
    def bound(cls, header_seconds: float, max_connections: int) -> None:
        """Set this process's bounds, before it accepts a connection.

        >>> WorkerProtocol.bound(5, 10); (WorkerProtocol.header_seconds, WorkerProtocol.max_connections)
        (5, 10)
        >>> WorkerProtocol.bound(HEADER_SECONDS, MAX_CONNECTIONS)
        """
        cls.header_seconds = header_seconds
        cls.max_connections = max_connections
