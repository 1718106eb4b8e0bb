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
"""

from __future__ import annotations

import asyncio
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


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a :class:`_Held` transport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Held(transport, self.loop))  # type: ignore[arg-type]
