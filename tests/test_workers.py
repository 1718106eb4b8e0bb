"""`citygate serve --workers N`: N processes on one port share one rate limit, one privacy
budget and one audit chain (the state and the trail under the data dir); by default one per
core, at most 8.

The tests that start `citygate serve --workers 2` are slow: `make test` runs them, `make check`
does not."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from datasets.demo import DEMO_AUDIENCE, DEMO_ISSUER, ensure_demo_issuer
from gateway.cli.main import build_parser
from gateway.cli.workers import default_workers
from gateway.config import Config
from gateway.observe import audit
from tests.conftest import REPO, free_port, wait_until_serving
from tests.test_defaults import deployment
from tests.test_noise import TOTAL, policy_file

NOISY = "health_clinic_visits_aggregate"


def test_the_default_is_one_worker_per_core_at_most_eight_and_the_demo_runs_one() -> None:
    assert [default_workers(cores) for cores in (1, 2, 3, 8, 9, 64)] == [1, 2, 3, 8, 8, 8]
    assert default_workers() == min(len(os.sched_getaffinity(0)), 8)  # the cores it may run on, not the machine's
    pinned = subprocess.run(
        [
            "taskset",
            "-c",
            "0",
            sys.executable,
            "-c",
            "from gateway.cli.workers import default_workers as d; print(d())",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=60,
    )
    assert pinned.stdout.strip() == "1"  # a container given one core runs one worker
    parser = build_parser()
    assert parser.parse_args(["serve", "--config", "c.yaml"]).workers == default_workers()
    assert parser.parse_args(["serve", "--config", "c.yaml", "--workers", "3"]).workers == 3
    # the demo is one process (a try-out on a laptop): `citygate demo` serves one worker
    assert parser.parse_args(["demo"]).workers is None


def noisy_deployment(
    root: Path, sqlite_config: Config, budget: float, issuer: Path, **sections: object
) -> tuple[Path, dict[str, str]]:
    """A deployment of the demo city's SQLite files in ``root`` (its own data dir and audit
    trail) under the noise policy (``noisy``: 1.0 of ``budget`` per answer to :data:`TOTAL`;
    ``exact``: the same without noise), its tokens signed by the demo issuer in ``issuer``, with
    ``sections`` added; and a bearer header per role."""
    keys = ensure_demo_issuer(issuer)
    root.mkdir(parents=True, exist_ok=True)
    path = deployment(
        root,
        sqlite_config,
        policies={"files": [str(policy_file(root / "noise.yaml", budget=budget))], "hash_key": keys["hash_key"]},
        auth={"issuer": DEMO_ISSUER, "audience": DEMO_AUDIENCE, "jwks_file": str(issuer / "demo-jwks.json")},
        data_dir=str(root),
        cache={"enabled": False},  # every noisy answer a fresh draw, each spending
        **sections,
    )
    return path, {role: bearer(issuer, role) for role in ("noisy", "exact")}


def bearer(issuer: Path, role: str, subject: str | None = None) -> str:
    """``Bearer <token>`` of the demo issuer in ``issuer`` for ``role`` (as ``subject``: by
    default ``demo-<role>``; the rate limit counts per subject)."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    key = RSAKey.import_key(ensure_demo_issuer(issuer)["private_jwk"])
    now = int(time.time())
    claims = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": subject or f"demo-{role}", "roles": [role]}
    return "Bearer " + jwt.encode({"alg": "RS256", "kid": key.kid}, {**claims, "iat": now, "exp": now + 600}, key)


def post(port: int, query: str, token: str | None = None) -> tuple[int, dict[str, Any], str]:
    """The status, body and request id of one GraphQL request to the gateway on ``port``."""
    body = json.dumps({"query": query}).encode()
    headers = {"content-type": "application/json", **({"authorization": token} if token else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
            return response.status, json.load(response), str(response.headers["x-request-id"])
    except urllib.error.HTTPError as error:
        return error.code, json.load(error), str(error.headers["x-request-id"])


def answered(replies: list[tuple[int, dict[str, Any], str]]) -> int:
    """How many of ``replies`` carry data; the others must be refused for the budget or the rate."""
    refused = {"PRIVACY_BUDGET_EXHAUSTED", "RATE_LIMITED"}
    data = [body for _, body, _ in replies if "errors" not in body]
    assert all(body["data"] for body in data), data
    assert all(body["errors"][0]["extensions"]["code"] in refused for _, body, _ in replies if "errors" in body), (
        replies
    )
    return len(data)


@contextmanager
def served(config: Path, workers: int, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`citygate serve --config config --workers N` on ``port``, stopped with SIGTERM after."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "--port", str(port), "--workers", str(workers)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until_serving(port, server, f"citygate serve (see {log})")
        yield server
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM), log.read_text()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def both_workers_serve(port: int, server: subprocess.Popen[Any]) -> None:
    """Wait until both workers answer: /healthz answers once the first worker serves, the second
    starts its gateway a moment later, and a burst sent before then all goes to the first."""
    workers: set[str] = set()
    deadline = time.monotonic() + 60
    while len(workers) < 2:
        assert server.poll() is None and time.monotonic() < deadline, "the second worker did not start"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            workers.add(str(response.headers["x-request-id"]).split("-")[0])
        time.sleep(0.05)


@pytest.mark.slow
def test_two_workers_spend_one_privacy_budget(tmp_path: Path, sqlite_config: Config) -> None:
    """A budget for 6 noisy answers, 12 asked at once of `serve --workers 2`: 6 answered,
    across both workers (each counting its own would answer all 12)."""
    config, tokens = noisy_deployment(tmp_path, sqlite_config, budget=6.0, issuer=tmp_path)
    port = free_port()
    with served(config, 2, port, tmp_path / "serve.log") as server:
        both_workers_serve(port, server)
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: post(port, TOTAL, tokens["noisy"]), range(12)))
    assert answered(replies) == 6
    assert len({request_id.split("-")[0] for _, _, request_id in replies}) == 2, "both workers answered"
    spent = [r["epsilon"] for r in audit.records(tmp_path / "audit.jsonl") if r.get("epsilon")]
    assert spent == [{NOISY: 1.0}] * 6  # each answer recorded what it spent; the refusals nothing


@pytest.mark.slow
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
        both_workers_serve(port, server)
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


def test_workers_take_the_client_a_trusted_proxy_names(tmp_path: Path, sqlite_config: Config) -> None:
    """Each worker process applies `server.trusted_proxies`: from the proxy (here loopback) the
    caller is the client its X-Forwarded-For names, so one client past the limit (one limit,
    shared by the workers) leaves the others, and the proxy's own requests, answered."""
    config = deployment(
        tmp_path,
        sqlite_config,
        policies="open",
        auth="none",
        limits={"requests_per_minute": 3},
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    port = free_port()

    def ask(client: str | None) -> int:
        body = json.dumps({"query": "{ transport_stations(limit: 1) { name } }"}).encode()
        headers = {"content-type": "application/json", **({"x-forwarded-for": client} if client else {})}
        request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", body, headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    with served(config, 2, port, tmp_path / "serve.log") as server:
        both_workers_serve(port, server)
        assert [ask("198.51.100.7") for _ in range(6)] == [200] * 3 + [429] * 3
        assert [ask("192.0.2.1, 203.0.113.9") for _ in range(3)] == [200] * 3
        assert ask(None) == 200
