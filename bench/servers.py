"""The servers the load sections measure, each a real process on loopback: citygate (``citygate
serve`` over a configuration generated into a temporary directory) and PostGraphile (from
``bench/peer/node_modules``, installed by ``make bench`` with ``npm ci``).

The generated configuration includes ``configs/services.yaml`` and adds the engine and the
result cache; :data:`CACHE_KEY` and :func:`cache_section` are the one place that knows how the
configuration spells the cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from catalogue.errors import ConfigError
from catalogue.stores import PostgresStore
from gateway.config import load_config

REPO = Path(__file__).resolve().parent.parent
SERVICES = REPO / "configs" / "services.yaml"
PEER = REPO / "bench" / "peer"
POSTGRAPHILE = PEER / "node_modules" / ".bin" / "postgraphile"
CACHE_KEY = "cache"  # the result cache's section in a citygate configuration
# citygate as a city runs it: every request leaves an audit record (a file in the run's
# temporary directory). PostGraphile keeps no such trail; the report says so.
AUDIT = True
# What a deployment without policies and tokens must say for `citygate serve` to start it.
OPEN: dict[str, Any] = {"policies": "open", "auth": "none"}
# The limits section that lets anonymous callers send any number of requests a minute.
UNLIMITED: dict[str, Any] = {"roles": {"anonymous": {"requests_per_minute": 0}}}


class ServerError(RuntimeError):
    """A server did not start or answer; the message ends with its log's tail."""


@dataclass(frozen=True)
class Server:
    name: str
    pid: int
    url: str  # the GraphQL endpoint
    log: Path


def _processes() -> dict[int, tuple[int, str, float]]:
    """Every process: its parent, its name and the CPU seconds (user + system) it and its ended
    children have used."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        # state, ppid, ... utime (11), stime (12), cutime and cstime (13, 14): a backend that
        # has ended is counted in its parent's, so a sum over the living loses nothing
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), name, sum(int(f) for f in fields[11:15]) / ticks)
    return found


def cpu_seconds(roots: set[int] | None = None, name: str | None = None) -> float:
    """CPU seconds used so far by the processes ``roots`` and every process under them, or by
    every process called ``name`` (``postgres``: the server and its backends)."""
    processes = _processes()
    if name is not None:
        return sum(used for _, called, used in processes.values() if called == name)
    tree, grown = set(roots or ()), True
    while grown:
        below = {pid for pid, (parent, _, _) in processes.items() if parent in tree} - tree
        tree |= below
        grown = bool(below)
    return sum(processes[pid][2] for pid in tree if pid in processes)


def cache_section(enabled: bool) -> dict[str, Any]:
    """The configuration's result cache section: on for "cached", off for "uncached"."""
    return {CACHE_KEY: {"enabled": enabled}}


def cache_supported() -> str | None:
    """None when citygate's configuration knows the cache section; else why not (its error)."""
    with tempfile.TemporaryDirectory(prefix="citygate-bench-") as tmp:
        try:
            load_config(_write_config(Path(tmp), "embedded", True, "probe"))
        except ConfigError as error:
            return error.message
    return None


def _write_config(
    directory: Path,
    engine: Literal["trino", "embedded"],
    cache: bool | None,
    name: str,
    delegate: Literal["auto", "never"] = "never",
) -> Path:
    """A deployment file that includes the services' configuration; ``cache`` None leaves the
    cache section out (for a gateway that does not know it yet). The engines' figures are the
    engines' own (``delegate: never``) unless ``delegate`` says otherwise."""
    # The sections measure the engines' work, not the policies' (the policy section does that in
    # process): open on purpose, as `citygate serve` asks a deployment to say.
    raw: dict[str, Any] = {"include": str(SERVICES), "engine": {"kind": engine, "delegate": delegate}, **OPEN}
    if cache is not None:  # a gateway that knows the cache section knows the audit section too
        raw.update(cache_section(cache))
        if AUDIT:
            raw["audit"] = {"sink": "file", "path": str(directory / f"{name}-audit.jsonl")}
        # The load comes from one address without a token: a city's many callers, not one.
        raw["limits"] = UNLIMITED
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _cpu_times() -> tuple[int, int]:
    """The machine's busy and total CPU time so far, in clock ticks (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def quiesce(limit: float = 0.1, window: float = 0.5, timeout: float = 60.0) -> float:
    """Wait until the machine's CPUs are busy less than ``limit`` of the time over ``window``
    seconds, for at most ``timeout``; the seconds waited. A server's leftover work (Trino still
    running queries whose clients hung up) would otherwise fall on the next server's turn."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        busy, total = _cpu_times()
        time.sleep(window)
        busy_after, total_after = _cpu_times()
        if total_after > total and (busy_after - busy) / (total_after - total) < limit:
            break
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    """The process's resident set size (VmRSS in /proc/<pid>/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ServerError(f"process {pid} has no VmRSS (has it exited?)")


def post(url: str, body: str, timeout: float = 30.0) -> dict[str, Any]:
    """POST a GraphQL body and return the decoded response (any status)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ServerError(f"the benchmarks send requests to loopback only, not to {url}")
    request = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            result: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as error:
        result = json.loads(error.read() or b"{}")
        result.setdefault("status", error.code)
    return result


@contextlib.contextmanager
def citygate(
    engine: Literal["trino", "embedded"],
    cache: bool | None,
    workdir: Path,
    name: str | None = None,
    delegate: Literal["auto", "never"] = "never",
) -> Iterator[Server]:
    """``citygate serve`` in its own process over the services, with the result cache on, off,
    or (None) as the configuration's default; statements delegated to their store or not."""
    label = name or f"citygate-{engine}-{'default' if cache is None else 'cached' if cache else 'uncached'}"
    with serve(_write_config(workdir, engine, cache, label, delegate), workdir, label) as server:
        yield server


@contextlib.contextmanager
def serve(config: Path, workdir: Path, label: str) -> Iterator[Server]:
    """``citygate serve --config config`` in its own process, on a free loopback port."""
    port = free_port()
    installed = Path(sys.executable).with_name("citygate")  # the console script `make install` made
    program = [str(installed)] if installed.exists() else [sys.executable, "-m", "gateway.cli"]
    command = [*program, "serve", "--config", str(config), "--port", str(port)]
    with _process(label, command, workdir, f"http://127.0.0.1:{port}/healthz", timeout=180) as pid:
        yield Server(label, pid, f"http://127.0.0.1:{port}/graphql", workdir / f"{label}.log")


@contextlib.contextmanager
def ceiling(workdir: Path, answer: dict[str, Any]) -> Iterator[Server]:
    """``bench/ceiling.py`` under uvicorn, answering every POST with ``answer`` encoded as
    citygate encodes it."""
    body = workdir / "ceiling-answer.json"
    body.write_text(json.dumps(answer, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.ceiling:app", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--log-level", "warning", "--no-access-log", "--no-proxy-headers", "--no-server-header"]
    command += ["--http", "gateway.http.wire:OneWriteProtocol"]  # citygate's own SERVER_OPTIONS
    env = {**os.environ, "CITYGATE_BENCH_BODY": str(body)}
    with _process("ceiling", command, workdir, f"http://127.0.0.1:{port}/healthz", timeout=60, env=env) as pid:
        yield Server("ceiling", pid, f"http://127.0.0.1:{port}/graphql", workdir / "ceiling.log")


@contextlib.contextmanager
def postgraphile(workdir: Path, department: str = "health") -> Iterator[Server]:
    """PostGraphile 4 on loopback over the department's PostgreSQL database, as configured in
    ``configs/services.yaml``: no query log, no GraphiQL, no mutations."""
    if shutil.which("node") is None:
        raise ServerError("node is not installed (make bench installs Debian's nodejs when it is missing)")
    if not POSTGRAPHILE.exists():
        raise ServerError(f"{POSTGRAPHILE} is missing: run `npm ci` in {PEER} (make bench does)")
    store = load_config(SERVICES).departments[department].store
    if not isinstance(store, PostgresStore):
        raise ServerError(f"{department} is not a PostgreSQL department in {SERVICES}")
    port = free_port()
    # the password goes through the environment (PGPASSWORD), not the command line
    connection = f"postgres://{store.user}@{store.host}:{store.port}/{store.database}"
    command = [str(POSTGRAPHILE), "-c", connection, "-s", store.schema_, "-n", "127.0.0.1", "-p", str(port)]
    command += ["--disable-query-log", "--disable-graphiql", "--disable-default-mutations"]
    env = {**os.environ, "PGPASSWORD": store.password}
    url = f"http://127.0.0.1:{port}/graphql"
    with _process("postgraphile", command, workdir, url, timeout=60, env=env, probe_post=True) as pid:
        yield Server("postgraphile", pid, url, workdir / "postgraphile.log")


@contextlib.contextmanager
def _process(
    name: str,
    command: list[str],
    workdir: Path,
    ready_url: str,
    timeout: float,
    env: dict[str, str] | None = None,
    probe_post: bool = False,
) -> Iterator[int]:
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=env
        )
    try:
        _wait_ready(name, process, ready_url, timeout, log, probe_post)
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(
    name: str, process: subprocess.Popen[bytes], url: str, timeout: float, log: Path, probe_post: bool
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{name} exited with status {process.returncode}:\n{_tail(log)}")
        try:
            if probe_post:
                post(url, json.dumps({"query": "{ __typename }"}), timeout=2)
            else:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback
                    pass
            return
        except (OSError, ValueError):
            time.sleep(0.2)
    raise ServerError(f"{name} did not answer {url} within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
