"""The server citygate runs (uvicorn with gateway/wire.py's protocol) on a real loopback socket:
each response leaves in one write, whole, in order, and nothing is held back."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.execution.gateway import Gateway
from gateway.http.app import SERVER_OPTIONS, create_app, server_options
from gateway.http.wire import OneWriteProtocol
from tests.conftest import uvicorn_thread

QUERY = json.dumps({"query": "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { station_id } }"})


class Counted:
    """A connection's real transport, with the writes reaching it counted."""

    def __init__(self, transport: asyncio.Transport, writes: list[int]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(len(data))
        self._transport.write(data)

    def writelines(self, lines: list[bytes]) -> None:
        self._writes.append(sum(map(len, lines)))
        self._transport.writelines(lines)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


WRITES: list[int] = []


class CountingProtocol(OneWriteProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(Counted(transport, WRITES))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(gateway_sqlite: Gateway) -> Iterator[int]:
    """citygate's edge under uvicorn with the options `citygate serve` uses, on loopback."""
    # A keep-alive far longer than a test's patience: a response held back would otherwise
    # still arrive when uvicorn closes the idle connection after its default 5 seconds.
    options = {**SERVER_OPTIONS, "http": CountingProtocol, "timeout_keep_alive": 600}
    with uvicorn_thread(create_app(gateway_sqlite), log_level="warning", **options) as port:
        yield port


Answer = tuple[bytes, dict[str, str], bytes]  # status line, headers, body


def exchange(port: int, raw: bytes, responses: int, *, bodiless: bool = False) -> list[Answer]:
    """Send ``raw`` in one piece; read ``responses`` HTTP responses (each with Content-Length,
    and no body if ``bodiless``: answers to HEAD)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        buffer, parsed = b"", list[Answer]()
        while len(parsed) < responses:
            while b"\r\n\r\n" not in buffer:
                chunk = sock.recv(65536)
                assert chunk, f"the server closed the connection after {len(parsed)} responses"
                buffer += chunk
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            status, *lines = head.split(b"\r\n")
            headers = {k.decode().lower(): v.decode() for k, v in (line.split(b": ", 1) for line in lines)}
            length = 0 if bodiless else int(headers.get("content-length", "0"))
            while len(buffer) < length:
                chunk = sock.recv(65536)
                assert chunk, "the server closed the connection inside a body"
                buffer += chunk
            parsed.append((status, headers, buffer[:length]))
            buffer = buffer[length:]
        return parsed


def post(request_id: str, *, close: bool = False) -> bytes:
    body = QUERY.encode()
    connection = b"Connection: close\r\n" if close else b""
    return (
        b"POST /graphql HTTP/1.1\r\nHost: citygate\r\nContent-Type: application/json\r\n"
        b"X-Request-Id: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (request_id.encode(), len(body), connection, body)
    )


def test_a_response_leaves_in_one_write(server: int) -> None:
    WRITES.clear()
    [(status, headers, body)] = exchange(server, post("one-write"), 1)
    assert status == b"HTTP/1.1 200 OK" and headers["x-request-id"] not in ("", "one-write")
    assert json.loads(body)["data"]["transport_stations"]
    # uvicorn alone writes the head and the body separately: two writes
    assert [len(status) + 2 + sum(len(k) + len(v) + 4 for k, v in headers.items()) + 2 + len(body)] == WRITES


def test_pipelined_requests_are_answered_whole_and_in_order(server: int) -> None:
    raw = post("first") + b"GET /healthz HTTP/1.1\r\nHost: citygate\r\n\r\n" + post("third")
    answers = exchange(server, raw, 3)
    assert [a[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 3
    ids = [a[1].get("x-request-id") for a in answers]  # the gateway's own, on every response
    assert all(ids) and len(set(ids)) == 3
    assert json.loads(answers[0][2]) == json.loads(answers[2][2])
    assert json.loads(answers[1][2])["status"] == "ok"


def test_a_head_response_with_no_body_is_not_held_back(server: int) -> None:
    [(status, headers, body)] = exchange(server, b"HEAD /healthz HTTP/1.1\r\nHost: citygate\r\n\r\n", 1, bodiless=True)
    assert status == b"HTTP/1.1 200 OK" and body == b""
    assert int(headers["content-length"]) > 0  # the length a GET would have, with no body


def test_a_closing_response_is_sent_whole_before_the_close(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as sock:
        sock.sendall(post("closing", close=True))
        received = b""
        while chunk := sock.recv(65536):  # until the server closes
            received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    assert b"connection: close" in head.lower()
    assert json.loads(body)["data"]["transport_stations"]


def test_slow_headers_are_cut_off_and_connections_past_the_cap_refused(gateway_sqlite: Gateway) -> None:
    """A client trickling headers over hundreds of connections (slowloris) holds none of them
    past `limits.header_seconds`, and none past `limits.max_connections` at all; a real
    client is served throughout and afterwards."""
    limits = gateway_sqlite.config.limits.model_copy(update={"header_seconds": 1.0, "max_connections": 100})
    with uvicorn_thread(create_app(gateway_sqlite), log_level="error", **server_options(limits)) as port:
        slow: list[socket.socket] = []
        try:
            for _ in range(300):
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"POST /graphql HTTP/1.1\r\nHost: citygate\r\nX-Slow: ")  # never finished
                slow.append(sock)
            started = time.monotonic()
            answers = [sock.recv(1024) for sock in slow]  # each: a 503 and a close, or a close at the timeout
            waited = time.monotonic() - started
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
            assert len(refused) >= 200 and all(a in (b"", *refused) for a in answers)
            assert waited < 3.0  # cut off after a second, not held
            [(status, _, body)] = exchange(port, post("after"), 1)
            assert status == b"HTTP/1.1 200 OK" and json.loads(body)["data"]["transport_stations"]
        finally:
            for sock in slow:
                sock.close()
