"""`citygate serve --workers N`: N processes on one port share one rate limit and one audit
chain (the state and the trail under the data dir)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.observe import audit
from tests.conftest import free_port, wait_until_serving
from tests.test_defaults import deployment

# `citygate serve --workers 2` processes: `make test` runs them, `make check` does not.
pytestmark = pytest.mark.slow


def test_two_workers_share_one_rate_limit_and_one_audit_chain(tmp_path: Path, sqlite_config: Config) -> None:
    config = deployment(
        tmp_path,
        sqlite_config,
        policies="open",
        auth="none",
        limits={"requests_per_minute": 20},
    )
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/graphql"

    def ask(n: int) -> tuple[int, str]:
        body = json.dumps({"query": f"{{ transport_stations(limit: {n % 5 + 1}) {{ name }} }}"}).encode()
        request = urllib.request.Request(url, body, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
                return response.status, str(response.headers["x-request-id"])
        except urllib.error.HTTPError as error:
            return error.code, str(error.headers["x-request-id"])

    try:
        wait_until_serving(port, server, "citygate serve --workers 2")
        # /healthz answers once the first worker serves; the second starts its gateway a moment
        # later, and a burst sent before then all goes to the first
        workers: set[str] = set()
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert server.poll() is None and time.monotonic() < deadline, "the second worker did not start"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                workers.add(str(response.headers["x-request-id"]).split("-")[0])
            time.sleep(0.05)
        started = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(60)))
        took = time.monotonic() - started
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        stderr = server.stderr.read() if server.stderr is not None else ""
        if server.stderr is not None:
            server.stderr.close()
    # one limit across both workers: 20 at once, then one every 3 s (two workers counting
    # apart would let 40 through at once)
    answered = sum(status == 200 for status, _ in answers)
    assert {status for status, _ in answers} == {200, 429}, stderr[-3000:]
    assert 20 <= answered <= 20 + took / 3 + 1, (answered, took)
    trail = tmp_path / ".citygate" / "audit.jsonl"
    assert audit.verify(trail).ok  # one chain, written by both
    records = list(audit.records(trail))
    requests = [r for r in records if "request_id" in r]
    prefixes = {r["request_id"].split("-")[0] for r in requests}
    assert len(prefixes) == 2, "both workers answered"
    # every answered request is recorded; of the 429s (anonymous, refused before anyone is
    # known) each worker records its first and counts the rest, written at its shutdown
    assert {r["request_id"] for r in requests} <= {i for _, i in answers}
    assert sum(r["status"] == 200 for r in requests) == answered
    counted = sum(r["count"] for r in records if r.get("event") == "throttled")
    assert sum(r["status"] == 429 for r in requests) + counted == len(answers) - answered
    assert sum(r["status"] == 429 for r in requests) <= 2


def test_workers_apply_the_configured_header_timeout_and_connection_cap(tmp_path: Path, sqlite_config: Config) -> None:
    """The default `serve` (one worker per core) bounds connections by `limits`, not by the
    built-in 10 s and 1,000: slow-header connections are cut off after `header_seconds`, and
    each worker holds at most `max_connections` (the cap is per worker)."""
    limits = {"header_seconds": 1.0, "max_connections": 5}
    config = deployment(tmp_path, sqlite_config, policies="open", auth="none", limits=limits)
    port = free_port()
    command = ["serve", "--config", str(config), "--port", str(port), "--workers", "2"]
    server = subprocess.Popen([sys.executable, "-m", "gateway.cli", *command], stdout=subprocess.DEVNULL)
    slow: list[socket.socket] = []
    try:
        wait_until_serving(port, server, "citygate serve --workers 2")
        workers: set[str] = set()  # both started, so each connection meets a configured worker
        deadline = time.monotonic() + 60
        while len(workers) < 2:
            assert server.poll() is None and time.monotonic() < deadline, "the second worker did not start"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                workers.add(str(response.headers["x-request-id"]).split("-")[0])
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"POST /graphql HTTP/1.1\r\nHost: citygate\r\nX-Slow: ")  # never finished
            slow.append(sock)
        started = time.monotonic()
        answers = []
        for sock in slow:  # each: a 503 and a close, or a close at the timeout (the default: 10 s)
            try:
                answers.append(sock.recv(1024))
            except TimeoutError:
                answers.append(b"still open after 5 s")
        waited = time.monotonic() - started
    finally:
        for sock in slow:
            sock.close()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert all(a in (b"", *refused) for a in answers), {a[:40] for a in answers}
    assert len(refused) >= 40 - 2 * 5, len(refused)  # at most five held by each of the two
    assert waited < 4.0, waited  # cut off after a second, not held for ten
