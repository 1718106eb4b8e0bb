"""The audit trail under real faults: a full disk (a tiny tmpfs), a file deleted or replaced
while served, a gateway killed with SIGKILL under load. No answer leaves without its record;
what the trail could not record is refused (503 ``AUDIT_UNAVAILABLE``) and the gap is written
in the trail itself once it can be written again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from datasets.demo import secure_demo
from gateway.config import AuditConfig, Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.observe import audit
from tests.conftest import ADMIN, free_port, wait_until_serving, with_admin

STATIONS = {"query": "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { name } }"}


def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s")
        time.sleep(0.02)


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own, unmounted afterwards."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=False, capture_output=True
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the fault tests run as root): {done.stderr.decode()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """A file taking every byte left on ``directory``'s file system."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:  # no space left
        pass
    finally:
        os.close(fd)
    return filler


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_full_disk_refuses_cuts_no_line_and_resumes_by_itself(tiny: Path) -> None:
    path = tiny / "audit.jsonl"
    sink = audit.FileSink(path)
    try:
        sink.write({"n": 0}).wait(5)
        filler = fill(tiny)
        with pytest.raises(audit.AuditUnavailable):
            for n in range(1, 1000):
                sink.write({"n": n, "pad": "x" * 500}).wait(5)
        assert sink.trouble() is not None and "space" in str(sink.trouble())
        with pytest.raises(audit.AuditUnavailable):  # refused at once while the disk is full
            sink.write({"n": -1})
        assert path.read_bytes().endswith(b"\n")  # what could not be written was cut off whole
        assert audit.verify(path).ok
        filler.unlink()
        until(lambda: sink.trouble() is None)
        sink.write({"n": "after"}).wait(5)
    finally:
        sink.close()
    verdict = audit.verify(path)
    records = read(path)
    markers = [r for r in records if "event" in r]  # a short one may fit where a batch did not
    assert verdict.ok and verdict.records == len(records) and records[-1]["n"] == "after"
    assert verdict.events and all("resumed: No space left" in e and "requests refused" in e for e in verdict.events)
    assert [r.get("seq") for r in records] == list(range(1, len(records) + 1))  # no number twice
    assert sum(int(str(m["refused"])) for m in markers) >= 2


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_deleted_or_replaced_file_is_noticed_and_the_gap_shows(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit.jsonl"
    sink = audit.FileSink(path)
    try:
        for n in range(3):
            sink.write({"n": n}).wait(5)
        if how == "deleted":
            path.unlink()
        else:
            other = tmp_path / "forged.jsonl"
            other.write_text("")
            os.replace(other, path)
        with pytest.raises(audit.AuditUnavailable, match="trail cannot be written"):
            sink.write({"n": 3}).wait(5)
        until(lambda: sink.trouble() is None)
        sink.write({"n": 4}).wait(5)
    finally:
        sink.close()
    records = read(path)
    assert records[0]["event"] == "resumed" and how in str(records[0]["reason"])
    assert [r["seq"] for r in records] == [4, 5] and records[1]["n"] == 4
    verdict = audit.verify(path)  # the new file does not begin a chain: `verify` says so
    assert verdict.broken == 1 and "began in another file" in verdict.reason


KEEP_OPEN = """
import sys, time
from pathlib import Path
from gateway.observe import audit
sink = audit.FileSink(Path(sys.argv[1]))
for n in range(5):
    sink.write({"n": n}).wait(5)
print("written", flush=True)
time.sleep(60)
"""


def test_processes_share_one_file_and_one_chain_and_a_kill_leaves_a_visible_mark(tmp_path: Path) -> None:
    """Another process writes the file (a worker, another gateway on the same data dir): both
    go on with one chain. Once it is killed, the next process to open the trail says so."""
    path = tmp_path / "audit.jsonl"
    writer = subprocess.Popen([sys.executable, "-c", KEEP_OPEN, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
        beside = audit.FileSink(path)  # the other process is alive: no mark
        try:
            beside.write({"n": 5}).wait(5)
            assert beside.trouble() is None
        finally:
            beside.close()
    finally:
        writer.kill()
        writer.wait(10)
        if writer.stdout is not None:
            writer.stdout.close()
    assert audit.verify(path) == audit.Verdict(6)
    sink = audit.FileSink(path)
    try:
        until(lambda: sink.trouble() is None)
        sink.write({"n": 6}).wait(5)
    finally:
        sink.close()
    verdict = audit.verify(path)
    assert verdict.ok and verdict.records == 8
    [event] = verdict.events
    assert "line 7" in event and "unclean_start" in event and "did not stop cleanly" in event
    assert [r["seq"] for r in read(path)] == list(range(1, 9))
    again = audit.FileSink(path)  # after a clean stop, no mark
    again.close()
    assert audit.verify(path).records == 8 and not list(tmp_path.glob("audit.jsonl.open.*"))


def test_a_full_disk_answers_503_until_the_trail_can_be_written(sqlite_config: Config, tiny: Path) -> None:
    config = with_admin(secure_demo(sqlite_config, tiny.parent))  # /readyz's details are the operator's
    config = config.model_copy(update={"audit": AuditConfig(sink="file", path=tiny / "audit.jsonl")})
    gateway = Gateway.start(config, create_engine(config))
    try:
        with TestClient(create_app(gateway)) as client:
            assert client.post("/graphql", json=STATIONS).status_code == 200
            filler = fill(tiny)
            statuses = [client.post("/graphql", json=STATIONS).status_code for _ in range(40)]
            assert statuses[-1] == 503 and set(statuses) <= {200, 503}
            refused = client.post("/graphql", json=STATIONS)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["errors"][0]["extensions"] == {"code": "AUDIT_UNAVAILABLE"}
            assert "no space" not in refused.text.lower()  # the reason is the operator's, in the log
            assert client.get("/readyz").json() == {"status": "unavailable"}  # anonymous: no more than that
            ready = client.get("/readyz", headers=ADMIN)
            assert ready.status_code == 503 and ready.json()["audit"] == "unavailable"
            metrics = client.get("/metrics").text
            assert "citygate_audit_up 0.0" in metrics
            assert "citygate_audit_refused_requests_total" in metrics
            filler.unlink()
            until(lambda: client.get("/readyz").status_code == 200)
            assert "citygate_audit_up 1.0" in client.get("/metrics").text
            answered = client.post("/graphql", json=STATIONS)
            assert answered.status_code == 200
    finally:
        gateway.close()
    trail = tiny / "audit.jsonl"
    verdict = audit.verify(trail)
    # a resumed record is short: it may fit where a batch did not, and the trail fail again
    assert verdict.ok and verdict.events and all("resumed: No space left" in e for e in verdict.events)
    ids = {r.get("request_id") for r in read(trail)}
    assert answered.headers["x-request-id"] in ids and refused.headers["x-request-id"] not in ids


@pytest.mark.slow
def test_sigkill_under_load_leaves_no_answered_request_unrecorded(demo_dir: Path) -> None:
    """A `citygate demo` process under 8 connections, killed with SIGKILL mid-load: every
    request it answered is in the trail, and the next start marks the unclean stop."""
    port = free_port()
    command = [sys.executable, "-m", "gateway.cli", "demo", "--data-dir", str(demo_dir), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answered: list[str] = []
    stop = threading.Event()
    url = f"http://127.0.0.1:{port}/graphql"

    def load(worker: int) -> None:
        n = worker
        while not stop.is_set():
            n += 8
            body = json.dumps({"query": f"{{ transport_stations(limit: {n % 9 + 1}) {{ name }} }}"}).encode()
            request = urllib.request.Request(url, body, {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
                    response.read()
                    answered.append(str(response.headers["x-request-id"]))
            except (urllib.error.URLError, ConnectionError, OSError):
                return

    try:
        wait_until_serving(port, server, "the demo")
        threads = [threading.Thread(target=load, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        until(lambda: len(answered) >= 150, 60)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        stop.set()
        for thread in threads:
            thread.join(20)
    finally:
        stop.set()
        if server.poll() is None:
            server.kill()
            server.wait()
    trail = demo_dir / "audit.jsonl"
    recorded = {r.get("request_id") for r in read(trail)}
    missing = [i for i in answered if i not in recorded]
    assert not missing, f"{len(missing)} of {len(answered)} answered requests have no record"
    assert audit.verify(trail).ok
    restarted = audit.FileSink(trail)
    try:
        until(lambda: restarted.trouble() is None)
    finally:
        restarted.close()
    verdict = audit.verify(trail)
    assert verdict.ok and "unclean_start" in verdict.events[-1]
