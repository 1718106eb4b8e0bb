"""The load generator: wrk (Debian's package) driven by ``bench/post.lua``, and its output parsed.

Why wrk: it is a small C program that keeps 32 connections busy from one core, so on a
2-core machine the server under test keeps most of the other one (locust, in Python, needs a
core of its own to reach a few thousand requests per second; oha is not packaged by Debian
here). Its Lua hooks POST the request body and check every response: a non-2xx status, a
GraphQL ``errors`` member, or a body without the expected row all count as errors.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("post.lua")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_OURS = re.compile(r"^citygate-bench: ([a-z0-9_.]+)=([0-9.]+)$", re.MULTILINE)
_DISTRIBUTION = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+([0-9.]+)(us|ms|s|m)\s*$", re.MULTILINE)


class WrkError(RuntimeError):
    """wrk is missing, failed, or printed something this parser does not understand."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: counts, the time they took, and latency percentiles in milliseconds."""

    connections: int
    threads: int
    requests: int
    duration_s: float
    latency_ms: dict[str, float]  # p50, p90, p95, p99, p99.9, mean, max
    non2xx: int
    graphql_errors: int
    mismatched: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.graphql_errors + self.mismatched + self.socket_errors

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rps": self.rps, "errors": self.errors}


def parse(output: str) -> WrkResult:
    """Read a run's figures from wrk's output with ``bench/post.lua``'s ``citygate-bench:`` lines.

    The script's own lines are preferred (exact counts, the bounded duration, p95 which wrk's
    ``--latency`` table lacks); wrk's header gives the connections and threads, and its own
    ``Non-2xx`` and ``Socket errors`` lines are checked against the script's.
    """
    ours = {name: float(value) for name, value in _OURS.findall(output)}
    shape = re.search(r"(\d+) threads and (\d+) connections", output)
    if shape is None or "responses" not in ours:
        raise WrkError("not the output of wrk with bench/post.lua:\n" + output[-2000:])
    latency = {
        key.removeprefix("latency_").removesuffix("_us"): value / 1000
        for key, value in ours.items()
        if key.startswith("latency_")
    }
    if not latency:  # fall back on wrk's --latency table
        latency = {f"p{p}": float(v) * _UNITS[u] for p, v, u in _DISTRIBUTION.findall(output)}
    non2xx = int(ours.get("non2xx", 0))
    listed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if listed is not None:
        non2xx = max(non2xx, int(listed.group(1)))
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = int(ours.get("socket_errors", 0))
    if sockets is not None:
        socket_errors = max(socket_errors, sum(int(n) for n in sockets.groups()))
    return WrkResult(
        connections=int(shape.group(2)),
        threads=int(shape.group(1)),
        requests=int(ours["responses"]),
        duration_s=ours["duration_us"] / 1e6,
        latency_ms=latency,
        non2xx=non2xx,
        graphql_errors=int(ours.get("graphql_errors", 0)),
        mismatched=int(ours.get("mismatched", 0)),
        socket_errors=socket_errors,
    )


def run(
    url: str,
    bodies: list[str],
    *,
    connections: int,
    threads: int = 2,
    seconds: float = 10.0,
    limit: int = 0,
    expected: str = "",
) -> tuple[WrkResult, str]:
    """Run wrk against ``url`` for ``seconds``, or until ``limit`` responses (split over the
    threads) when ``limit`` is given, ``seconds`` then being the upper bound. Returns the
    parsed result and wrk's raw output."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise WrkError("wrk is not installed: `apt-get install -y wrk` (make bench does it)")
    if limit and limit % threads:
        raise WrkError(f"a limit of {limit} responses does not split evenly over {threads} threads")
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as file:
        file.write("\n".join(bodies) + "\n")
        file.flush()
        # --timeout: a slow answer counts in the latencies, not as a socket error (wrk's default is 2 s)
        command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "60s"]
        command += ["--latency"]
        command += ["-s", str(SCRIPT), url, "--", file.name, str(limit // threads), expected]
        output = _run(command, threads if limit else 0)
    return parse(output), output


def _run(command: list[str], stopping_threads: int) -> str:
    """wrk's output. wrk 4.1 sleeps its whole -d even after every thread stopped at its limit;
    an interrupt ends the sleep, and wrk then reports as usual."""
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        lines, stopped = [], 0
        for line in process.stdout:
            lines.append(line)
            if line.strip() == "citygate-bench: thread stopped":
                stopped += 1
                if stopped == stopping_threads:
                    process.send_signal(signal.SIGINT)
        status = process.wait()
    output = "".join(lines)
    if status != 0:
        raise WrkError(f"wrk exited with status {status}:\n{output[-2000:]}")
    return output
