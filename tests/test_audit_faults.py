"""The audit trail under real faults: a full disk (a tiny tmpfs), a file deleted or replaced
while served, a gateway killed with SIGKILL under load. No answer leaves without its record;
what the trail could not record is refused (503 ``AUDIT_UNAVAILABLE``) and the gap is written
in the trail itself once it can be written again."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from datasets.demo import secure_demo
from gateway.cli.main import main
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


@dataclass
class Disk:
    """A file system of its own on a loop device: where it is mounted, and the device's count of
    writes that reached it (what an fsync sends, and a write left in the page cache does not)."""

    mount: Path
    stat: Path

    def writes(self) -> int:
        return int(self.stat.read_text().split()[4])  # /sys/block/<dev>/stat: write I/Os completed


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Disk]:
    """A 16 MiB ext4 on a loop device, its journal committed only when asked (commit=300: no
    write reaches the device unless flushed), unfrozen and unmounted afterwards."""
    image, mount = tmp_path / "ext4.img", tmp_path / "ext4"
    mount.mkdir()
    with image.open("wb") as file:
        file.truncate(16 << 20)
    for command in (["mkfs.ext4", "-q", str(image)], ["mount", "-o", "loop,commit=300", str(image), str(mount)]):
        done = subprocess.run(command, check=False, capture_output=True)
        if done.returncode != 0:
            pytest.fail(f"{command[0]}: {done.stderr.decode()} (the fault tests run as root, with loop devices)")
    try:
        found = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(mount)], check=True, capture_output=True, text=True
        )
        yield Disk(mount, Path("/sys/block") / Path(found.stdout.strip()).name / "stat")
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], check=False, capture_output=True)
        subprocess.run(["umount", str(mount)], check=False)


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


def test_a_full_disk_refuses_cuts_no_line_and_resumes_by_itself(tiny: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "citygate.audit")
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
    said = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "citygate.audit"]
    cannot = f"the audit trail {path} cannot be written, requests are refused until it can: No space left on device"
    assert (logging.ERROR, cannot) in said  # the operator learns which file, and why
    assert any(level == logging.WARNING and f"the audit trail {path} is written again" in m for level, m in said)


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
            replies = [client.post("/graphql", json=STATIONS) for _ in range(40)]
            statuses = [reply.status_code for reply in replies]
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
    by_status: dict[int, set[str]] = {200: set(), 503: set()}
    for reply in [*replies, refused, answered]:
        by_status[reply.status_code].add(reply.headers["x-request-id"])
    assert len(by_status[200]) >= 2 and len(by_status[503]) >= 2
    assert by_status[200] <= ids, "answered without a record"
    assert not by_status[503] & ids, "refused, yet recorded as if answered"


def lines(path: Path) -> list[dict[str, object] | None]:
    """Each line of ``path`` as JSON, or None for one that is not (a torn line)."""
    found: list[dict[str, object] | None] = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        try:
            found.append(json.loads(line))
        except ValueError:
            found.append(None)
    return found


@pytest.mark.parametrize("tear", ["half a line", "zeroed blocks"])
def test_a_torn_last_line_is_marked_numbered_after_and_verified_past(
    tmp_path: Path, tear: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A machine crash mid-write leaves half a record (or, with delayed allocation, blocks of
    zeros) at the end of the file. The next start goes on numbering after the last whole
    record, ends the torn line and marks it; `audit verify` names exactly that line and checks
    everything after it."""
    path = tmp_path / "audit.jsonl"
    sink = audit.FileSink(path)
    for n in range(3):
        sink.write({"n": n}).wait(5)
    sink.close()
    last = path.read_bytes().splitlines()[-1]
    torn = last[: len(last) // 2] if tear == "half a line" else b"\0" * 5000  # more than tail's first read
    with path.open("ab") as file:
        file.write(torn)
    before = audit.verify(path)
    assert (before.broken, before.records) == (
        4,
        3,
    ) and "the file ends there: perhaps a write a crash cut short" in before.reason
    again = audit.FileSink(path)
    try:
        for n in range(3, 6):
            again.write({"n": n}).wait(5)
    finally:
        again.close()
    found = lines(path)
    seqs = [r["seq"] for r in found if r is not None]
    assert seqs == [1, 2, 3, 4, 5, 6, 7]  # never a number twice
    assert found[3] is None and len(found) == 8  # the torn line, ended, and nothing else lost
    mark = found[4]
    assert mark is not None and mark["event"] == "torn" and mark["torn"]["bytes"] == len(torn)  # type: ignore[index]
    assert [r["n"] for r in found[5:] if r is not None] == [3, 4, 5]
    verdict = audit.verify(path)
    assert verdict.ok and verdict.records == 7 and verdict.torn == (4,)
    [event] = verdict.events
    assert event.startswith(f"line 4: torn: {len(torn)} bytes that are not a record") and "line 5" in event
    assert main(["audit", "verify", str(path)]) == 0
    printed = capsys.readouterr()
    assert f"{path}: {event}" in printed.err and "7 records, the chain holds" in printed.out
    # checked past the tear: an edit after it is still found
    edited = path.read_bytes().replace(b'"n":4', b'"n":9')
    path.write_bytes(edited)
    assert (audit.verify(path).broken, audit.verify(path).records) == (7, 5)


def instance(pid: int) -> tuple[str, int]:
    """The boot id and the start time (field 22 of /proc/<pid>/stat) of process ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_bytes()
    boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    return boot, int(stat[stat.rindex(b")") + 2 :].split()[19])


@pytest.mark.parametrize(
    "who", ["this process's pid, another start", "a live pid, another start", "a live pid, its own start"]
)
def test_a_mark_left_by_a_process_whose_pid_is_reused_is_an_unclean_start(tmp_path: Path, who: str) -> None:
    """After a container restart pids repeat (1, 7, 8...): a mark left by the killed gateway
    may bear the pid of a process alive now, even this one. The mark names the process's start
    and the machine's boot too, so the new start still sees the old one is gone."""
    path = tmp_path / "audit.jsonl"
    sink = audit.FileSink(path)
    sink.write({"n": 0}).wait(5)
    sink.close()
    other = None if who.startswith("this") else subprocess.Popen(["sleep", "60"])
    try:
        pid = os.getpid() if other is None else other.pid
        boot, start = instance(pid)
        if "another start" in who:
            start -= 1  # the process that left the mark started earlier: it is not this one
        (tmp_path / f"audit.jsonl.open.{pid}").write_text(f"{pid} {boot} {start}\n", encoding="ascii")
        again = audit.FileSink(path)
        try:
            until(lambda: again.trouble() is None)
            again.write({"n": 1}).wait(5)
        finally:
            again.close()
    finally:
        if other is not None:
            other.kill()
            other.wait()
    verdict = audit.verify(path)
    assert verdict.ok
    if "another start" in who:
        [event] = verdict.events
        assert "line 2" in event and "unclean_start" in event
        assert not (tmp_path / f"audit.jsonl.open.{pid}").exists()  # nor this process's own, closed cleanly
    else:  # the process that left it runs still: it writes the file too
        assert verdict.events == () and (tmp_path / f"audit.jsonl.open.{pid}").exists()


def test_the_trail_is_fsynced_by_default(ext4: Disk) -> None:
    """A record reaches the disk itself before its wait ends, by default: the device counts a
    write. Without fsync it stays in the page cache (the control: the count does not move)."""
    assert AuditConfig(sink="file", path=ext4.mount / "a.jsonl").fsync is True
    for fsync, name in ((True, "durable.jsonl"), (False, "cached.jsonl")):
        settings = {"path": ext4.mount / name} | ({} if fsync else {"fsync": False})
        sink = audit.open_sink(AuditConfig(sink="file", **settings))
        assert isinstance(sink, audit.FileSink)
        try:
            sink.write({"n": 0}).wait(5)
            os.sync()  # everything so far on the device, the journal too
            before = ext4.writes()
            sink.write({"n": 1}).wait(5)
            after = ext4.writes()
        finally:
            sink.close()
        assert (after > before) is fsync, f"fsync {fsync}: {before} -> {after} writes"


def test_a_write_that_hangs_is_refused_within_write_seconds_and_serving_resumes(
    sqlite_config: Config, ext4: Disk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The trail's file system stops answering (frozen, as a hung NFS server would): the
    request waiting for its record is refused after `audit.write_seconds`, so is every one
    after it at once, `/readyz` says so, and serving resumes when the disk answers again."""
    caplog.set_level(logging.WARNING, "citygate.audit")
    trail = ext4.mount / "audit.jsonl"
    config = with_admin(secure_demo(sqlite_config, tmp_path))
    config = config.model_copy(update={"audit": AuditConfig(sink="file", path=trail, write_seconds=0.5)})
    gateway = Gateway.start(config, create_engine(config))
    try:
        with TestClient(create_app(gateway)) as client:
            first = client.post("/graphql", json=STATIONS)
            assert first.status_code == 200
            subprocess.run(["fsfreeze", "-f", str(ext4.mount)], check=True)
            try:
                began = time.monotonic()
                late = client.post("/graphql", json=STATIONS)
                waited = time.monotonic() - began
                assert late.status_code == 503 and 0.5 <= waited < 3, waited
                assert late.json()["errors"][0]["extensions"] == {"code": "AUDIT_UNAVAILABLE"}
                began = time.monotonic()
                at_once = client.post("/graphql", json=STATIONS)
                assert at_once.status_code == 503 and time.monotonic() - began < 0.5
                ready = client.get("/readyz", headers=ADMIN)
                assert ready.status_code == 503 and ready.json()["audit"] == "unavailable"
                assert "citygate_audit_up 0.0" in client.get("/metrics").text
            finally:
                subprocess.run(["fsfreeze", "-u", str(ext4.mount)], check=True)
            until(lambda: client.get("/readyz").status_code == 200)
            answered = client.post("/graphql", json=STATIONS)
            assert answered.status_code == 200
    finally:
        gateway.close()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "citygate.audit"]
    assert f"the audit trail {trail} cannot be written, requests are refused until it can: " in said[0]
    assert "not written within 0.5 s" in said[0]
    verdict = audit.verify(trail)
    assert (
        verdict.ok
        and len(verdict.events) == 1
        and "resumed: the audit file was not written within 0.5 s" in verdict.events[0]
    )
    ids = {r.get("request_id") for r in read(trail)}
    assert {first.headers["x-request-id"], answered.headers["x-request-id"]} <= ids
    assert at_once.headers["x-request-id"] not in ids  # refused before its record was taken
    # the late request's record was written once the disk answered: in the trail, though refused


def test_concurrent_requests_share_one_write_and_one_flush(sqlite_config: Config, ext4: Disk, tmp_path: Path) -> None:
    """Group commit: requests that finish while a batch is on its way to the disk share the next
    write and fsync. The disk is held (frozen) while 64 requests from 16 connections wait for
    their records, so the test does not depend on how fast the disk is: released, they take a
    few flushes, not 64, and every one is answered. (Without group commit: 64 flushes.)"""
    trail = ext4.mount / "audit.jsonl"
    config = secure_demo(sqlite_config, tmp_path)
    config = config.model_copy(update={"audit": AuditConfig(sink="file", path=trail, write_seconds=60)})
    gateway = Gateway.start(config, create_engine(config))
    audit_sink = gateway.audit
    assert audit_sink is not None
    try:
        with TestClient(create_app(gateway)) as client, ThreadPoolExecutor(64) as pool:
            assert client.post("/graphql", json=STATIONS).status_code == 200
            before = audit_sink.flushes()
            subprocess.run(["fsfreeze", "-f", str(ext4.mount)], check=True)
            try:
                answers = [pool.submit(client.post, "/graphql", json=STATIONS) for _ in range(64)]
                # sealed and waiting: all but the first batch's (a record or a few), which the
                # writer took and holds on the frozen disk
                until(lambda: audit_sink.backlog() >= 56, seconds=60)
            finally:
                subprocess.run(["fsfreeze", "-u", str(ext4.mount)], check=True)
            statuses = [answer.result().status_code for answer in answers]
            metrics = client.get("/metrics").text
    finally:
        gateway.close()
    assert statuses == [200] * 64
    flushes = audit_sink.flushes() - before
    assert f"citygate_audit_flushes_total {float(audit_sink.flushes())}" in metrics
    records = len(read(trail))
    assert records == 65 and 0 < flushes <= 10, (flushes, records)


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
