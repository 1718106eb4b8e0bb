"""A victim's p50, idle and under each attack, side by side (`make bench`, section `hostile`).

One gateway, ``citygate serve`` in its own process on the embedded engine over the services
(health's store behind a relay that adds 0.2 s, a slow department), with the result cache off
and the rate limit off, so that every attack reaches the work it aims at. The attacker is wrk,
sending one request over several connections from 127.0.0.1 as fast as the gateway answers;
the victim asks two root fields of two stores, one request at a time, from 127.0.0.2: another
client address, so another caller to the gateway's fair shares. Target: under every attack, the
victim's p50 within twice its idle p50.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from bench import servers
from bench.wrk import SCRIPT, parse
from gateway.config import load_config
from tools.relay import Relay

VICTIM = "{ transport_stations(limit: 2) { name } market_regulation_enterprises(limit: 2) { name } }"
NESTED = (
    "{ environment_monitored_sites { site_id readings { reading_id site { site_id readings { reading_id "
    "site { site_id readings(limit: 1) { reading_id } } } } } } }"
)
ATTACKS: dict[str, tuple[str, int]] = {  # name -> (the attacker's request, connections sending it)
    "8 root fields each over a slow store": (
        "{ " + " ".join(f"a{i}: health_clinic_visits(limit: 1) {{ visit_id }}" for i in range(8)) + " }",
        6,
    ),
    "159-byte nesting (refused by its estimate)": (NESTED, 6),
    "1,000 aliases (refused by shape)": (
        "{ " + " ".join(f"a{i}: transport_stations(limit: 1) {{ name }}" for i in range(1000)) + " }",
        4,
    ),
    "1,500 identical root fields (refused before validation)": (
        "{ " + " ".join("transport_stations(limit: 1) { name }" for _ in range(1500)) + " }",
        4,
    ),
    "a LIKE pattern of many wildcards (matched in linear time), flooded": (
        '{ environment_monitored_sites_aggregate(where: {site_name: {_like: "%_%_%_%_%_%_%_X"}}) '
        "{ aggregate { count } } }",
        6,
    ),
}


@contextlib.contextmanager
def _gateway(workdir: Path) -> Iterator[servers.Server]:
    relay_to = load_config(servers.SERVICES).departments["health"].store
    slow = Relay(relay_to.port, delay=0.2)  # type: ignore[union-attr]
    raw = {
        "include": str(servers.SERVICES),
        **servers.OPEN,
        "engine": {"kind": "embedded"},
        "departments": {"health": {"store": {"port": slow.port}}},
        **servers.cache_section(False),
        "limits": {"statement_seconds": 10, "requests_per_minute": 0},
    }
    config = workdir / "hostile.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        with servers.serve(config, workdir, "citygate-hostile") as server:
            yield server
    finally:
        slow.close()


class _Victim:
    """One keep-alive connection from 127.0.0.2, asking the victim's query."""

    def __init__(self, url: str) -> None:
        port = int(url.removeprefix("http://127.0.0.1:").split("/", maxsplit=1)[0])
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=("127.0.0.2", 0))
        self.body = json.dumps({"query": VICTIM})

    def ask(self) -> None:
        try:
            self.connection.request("POST", "/graphql", self.body, {"content-type": "application/json"})
            response = self.connection.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected):  # the server closed an idle one
            self.connection.close()
            self.connection.request("POST", "/graphql", self.body, {"content-type": "application/json"})
            response = self.connection.getresponse()
        answer = json.loads(response.read())
        if response.status != 200 or "errors" in answer:
            raise RuntimeError(f"the victim's request failed ({response.status}): {answer}")

    def p50(self, runs: int) -> float:
        took = []
        for _ in range(runs):
            started = time.perf_counter()
            self.ask()
            took.append(time.perf_counter() - started)
        return statistics.median(took) * 1000


@contextlib.contextmanager
def _attack(url: str, query: str, connections: int, workdir: Path) -> Iterator[dict[str, float]]:
    """wrk sending ``query`` over ``connections`` until the block ends; then what it counted."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed: `apt-get install -y wrk` (make bench does it)")
    bodies = workdir / "attack.jsonl"
    bodies.write_text(json.dumps({"query": query}) + "\n", encoding="utf-8")
    command = [wrk, "-t1", f"-c{connections}", "-d600s", "--timeout", "60s", "-s", str(SCRIPT), url, "--"]
    command += [str(bodies), "0", ""]
    counted: dict[str, float] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        try:
            yield counted
        finally:
            process.send_signal(signal.SIGINT)  # wrk reports what it did so far, then exits
            output, _ = process.communicate(timeout=60)
    result = parse(output)
    counted["rps"] = result.rps


def _drained(url: str, timeout: float = 60.0) -> None:
    """Wait until the attacker's own backlog is done: wrk hangs up, but what the gateway had
    admitted runs on, and the attacker's next request waits behind it (its fair share)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        servers.post(url, json.dumps({"query": "{ transport_stations(limit: 1) { name } }"}), timeout=timeout)
        if time.monotonic() - started < 0.2:
            return
        time.sleep(0.5)


def run(runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="citygate-hostile-") as tmp, _gateway(Path(tmp)) as server:
        victim = _Victim(server.url)
        victim.ask()  # stores attached, plan made
        for name, (query, connections) in ATTACKS.items():
            progress(f"hostile: idle, then {name}")
            servers.quiesce()
            idle = victim.p50(runs)
            with _attack(server.url, query, connections, Path(tmp)) as counted:
                time.sleep(2.0)
                under = victim.p50(runs)
            _drained(server.url)
            ratio = under / idle
            rows.append(
                {
                    "attack": name,
                    "threads": connections,
                    "attack_rps": counted["rps"],
                    "idle_p50_ms": idle,
                    "attack_p50_ms": under,
                    "ratio": ratio,
                    "runs": runs,
                    "target": "<= 2",
                    "met": ratio <= 2,
                }
            )
    return {"rows": rows}
