"""The audit trail: one record per request whatever happens to it, a hash chain that names the
first record tampered with, and no value read from a store in it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from datasets.datagen import City
from datasets.demo import issue_token
from gateway.cli.main import main
from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.observe import audit
from tests.conftest import free_port, shared_engine, shared_secure_demo, wait_until_serving, with_store

STATIONS = "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { name district } }"
RESIDENTS = "{ public_security_residents(limit: 5, order_by: [{registered_at: asc}]) { id_card name phone } }"


@dataclasses.dataclass
class Trail:
    path: Path
    sent: list[tuple[str, str]]  # (request id, the outcome the record must give)
    gateway: Gateway


@pytest.fixture(scope="module")
def trail(services_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trail]:
    """A mixed run against the demo policies on the services (embedded engine): allowed,
    masked, denied, refused tokens, malformed requests, an engine error, a partial answer, an
    aggregate below k, and a cache hit. The gateway is then closed, which writes the trail."""
    data_dir = tmp_path_factory.mktemp("audit")
    config = shared_secure_demo(services_config.with_engine("embedded"), data_dir)
    gateway = Gateway.start(config, shared_engine(config))
    broken = with_store(config, "health", port=free_port())
    # the same trail; its stores' own engines (the delegated route) made anew, from the broken config
    down = dataclasses.replace(gateway, config=broken, engine=create_engine(broken), native=None)
    analyst = {"authorization": "Bearer " + issue_token(data_dir, "health_analyst", {}, 60)}
    officer = {"authorization": "Bearer " + issue_token(data_dir, "district_officer", {"district": "虎门"}, 60)}
    sent: list[tuple[str, str]] = []

    def post(client: TestClient, outcome: str, status: int, body: Any, **headers: str) -> dict[str, Any]:
        if isinstance(body, str):
            response = client.post("/graphql", content=body, headers={"content-type": "application/json", **headers})
        else:
            response = client.post("/graphql", json=body, headers=headers)
        assert response.status_code == status, response.text
        sent.append((response.headers["x-request-id"], outcome))
        return dict(response.json())

    with TestClient(create_app(gateway)) as client, TestClient(create_app(down)) as failing:
        post(client, "ok", 200, {"query": STATIONS}, **{"x-citygate-purpose": "timetable check"})
        post(client, "ok", 200, {"query": STATIONS})  # the same again: a cache hit
        masked = post(client, "ok", 200, {"query": RESIDENTS}, **analyst)
        assert all("*" in r["id_card"] for r in masked["data"]["public_security_residents"])
        post(client, "refused", 200, {"query": "{ public_security_residents { address } }"}, **analyst)
        post(client, "refused", 200, {"query": "{ public_security_residents { name } }"})  # anonymous
        post(client, "unauthenticated", 401, {"query": STATIONS}, authorization="Bearer not-a-token")
        post(client, "forbidden", 403, {"query": STATIONS}, **analyst, **{"x-citygate-role": "police"})
        post(client, "bad_request", 400, "{not json")
        post(client, "bad_request", 400, {"variables": {}})
        post(client, "ok", 200, {"query": "{ health_clinic_visits_aggregate { aggregate { count } } }"}, **officer)
        post(client, "ok", 200, {"query": "{ public_security_residents(limit: 3) { district } }"}, **officer)
        post(failing, "error", 200, {"query": "{ health_clinic_visits(limit: 1) { visit_id } }"}, **analyst)
        both = "{ health_clinic_visits(limit: 1) { visit_id } " + STATIONS[1:]
        post(failing, "partial", 200, {"query": both}, **analyst)
        post(client, "ok", 200, {"query": "{ __schema { queryType { name } } }"})
    down.engine.close()
    down.routes.close()
    gateway.close()
    assert config.audit is not None and config.audit.path is not None
    yield Trail(config.audit.path, sent, gateway)


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_every_request_has_exactly_one_record(trail: Trail) -> None:
    records = read(trail.path)
    assert [(r["request_id"], r["outcome"]) for r in records] == trail.sent
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    assert audit.verify(trail.path).ok


def test_records_say_who_read_what_and_how(trail: Trail) -> None:
    by_outcome = read(trail.path)
    first, hit, masked, denied = by_outcome[0], by_outcome[1], by_outcome[2], by_outcome[3]
    assert first["purpose"] == "timetable check" and first["role"] == "anonymous" and first["subject"] is None
    assert first["access"] == [
        {
            "department": "transport",
            "table": "stations",
            "access": "allow",
            "columns": {"district": "raw", "name": "raw", "station_id": "raw"},  # ordered by station_id
            "keys": ["station_id"],
        }
    ]
    assert (first["cache"], hit["cache"]) == ({"transport_stations": "miss"}, {"transport_stations": "hit"})
    assert first["rows"] == hit["rows"] == {"transport_stations": 2}
    assert first["operation"]["hash"] == hit["operation"]["hash"] and first["engine"] == "embedded"
    assert masked["subject"] == "demo-health_analyst" and masked["role"] == "health_analyst"
    [residents] = masked["access"]
    assert residents["columns"] == {
        "id_card": "partial(6,4)",
        "name": "partial(1,0)",
        "phone": "nullify",
        "registered_at": "year",  # ordered by
    }
    assert denied["access"] == [
        {"department": "public_security", "table": "residents", "columns": {"address": "denied"}}
    ]
    assert denied["errors"] == ["GRAPHQL_VALIDATION_FAILED"]


def test_row_filters_claims_and_aggregate_only_are_recorded(trail: Trail) -> None:
    records = {r["request_id"]: r for r in read(trail.path)}
    aggregate, filtered = (records[rid] for rid, _ in trail.sent[9:11])
    assert aggregate["access"][0]["access"] == "aggregate_only" and aggregate["role"] == "district_officer"
    assert filtered["claims"] == {"district": "虎门"}
    assert filtered["access"][0]["row_filter"] == "district = :claims.district"
    engine_error, partial = (records[rid] for rid, _ in trail.sent[11:13])
    assert engine_error["errors"] == ["DEPARTMENT_UNAVAILABLE"] and engine_error["rows"] == {}
    assert partial["rows"] == {"transport_stations": 2} and partial["errors"] == ["DEPARTMENT_UNAVAILABLE"]


def test_no_raw_protected_value_reaches_the_trail(trail: Trail, city: City) -> None:
    text = trail.path.read_text(encoding="utf-8")
    residents = city.rows("public_security", "residents")
    for id_card, name, _gender, birth_date, phone, address, *_ in residents:
        assert id_card not in text and phone not in text and address not in text
        assert len(name) < 3 or name not in text
        assert birth_date.isoformat() not in text


@pytest.mark.parametrize("where", ["start", "middle", "prev", "hash"])
def test_changing_one_byte_names_that_record(trail: Trail, tmp_path: Path, where: str) -> None:
    lines = trail.path.read_bytes().splitlines(keepends=True)
    target = 4  # the fifth record
    line = bytearray(lines[target])
    index = {
        "start": 2,
        "middle": len(line) // 2,
        "prev": line.index(b'"prev":"') + 20,
        "hash": len(line) - 10,
    }[where]
    line[index] = ord("0") if line[index] != ord("0") else ord("1")
    lines[target] = bytes(line)
    tampered = tmp_path / "audit.jsonl"
    tampered.write_bytes(b"".join(lines))
    verdict = audit.verify(tampered)
    assert (verdict.broken, verdict.records) == (target + 1, target)


def test_removed_or_invalid_utf8_records_are_named(trail: Trail, tmp_path: Path) -> None:
    lines = trail.path.read_bytes().splitlines(keepends=True)
    removed = tmp_path / "removed.jsonl"
    removed.write_bytes(b"".join(lines[:3] + lines[4:]))
    assert audit.verify(removed).broken == 4  # the record after the gap no longer chains
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_bytes(b"".join([*lines[:6], lines[6][:40] + b"\xff" + lines[6][41:], *lines[7:]]))
    assert (audit.verify(garbled).broken, audit.verify(garbled).reason) == (7, "the line is not valid UTF-8")


def test_audit_cli_verifies_and_queries(trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(trail.path)]) == 0
    assert f"{len(trail.sent)} records, the chain holds" in capsys.readouterr().out
    lines = trail.path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"health_analyst", b"health_analyzt", 1)
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(tampered)]) == 1
    assert "record 3 (line 3) does not hold" in capsys.readouterr().err

    assert main(["audit", "query", str(trail.path), "--role", "health_analyst", "--json"]) == 0
    analyst = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert analyst and {r["role"] for r in analyst} == {"health_analyst"}
    assert main(["audit", "query", str(trail.path), "--column", "public_security.residents.phone", "--json"]) == 0
    phone = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["request_id"] for r in phone] == [trail.sent[2][0]]
    assert main(["audit", "query", str(trail.path), "--department", "transport"]) == 0
    table = capsys.readouterr().out
    assert "transport.stations(district: raw, name: raw, station_id: raw)" in table and "(3 records)" in table
    since = read(trail.path)[5]["time"]
    assert main(["audit", "query", str(trail.path), "--since", since, "--json"]) == 0
    assert all(json.loads(line)["time"] >= since for line in capsys.readouterr().out.splitlines())
    assert main(["audit", "query", str(trail.path), "--since", "yesterday"]) == 2
    assert "--since 'yesterday': give an ISO 8601 time" in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2


def test_the_file_sink_loses_nothing_on_close_and_chains_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "trail" / "audit.jsonl"
    sink = audit.FileSink(path)
    for n in range(20_000):
        sink.write({"n": n})
    sink.close()
    sink.close()  # closing twice is harmless
    again = audit.FileSink(path)
    again.write({"n": 20_000})
    again.close()
    records = read(path)
    assert [r["n"] for r in records] == list(range(20_001))
    assert records[-1]["seq"] == 20_001
    assert audit.verify(path) == audit.Verdict(20_001)


def test_an_unwritable_audit_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match=r"audit.path: cannot write the audit file"):
        audit.FileSink(blocker / "audit.jsonl")


@pytest.mark.slow
def test_a_served_gateway_writes_every_record_before_it_stops(demo_dir: Path) -> None:
    """A real `citygate demo` process: requests, then SIGTERM at once; the trail is complete."""
    import signal
    import subprocess
    import sys
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--data-dir", str(demo_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/graphql"
    try:
        wait_until_serving(port, server, "the demo")

        def ask(n: int) -> str:
            body = json.dumps({"query": f"{{ transport_stations(limit: {n % 7 + 1}) {{ name }} }}"}).encode()
            request = urllib.request.Request(url, body, {"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
                return str(response.headers["x-request-id"])

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(ask, range(200)))
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutdown
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    trail = demo_dir / "audit.jsonl"
    assert audit.verify(trail) == audit.Verdict(200)
    assert sorted(r["request_id"] for r in read(trail)) == sorted(ids)


def demo_token(data_dir: Path, role: str, **payload: Any) -> str:
    """A token of the demo's issuer with ``payload`` over the usual claims (any JSON value)."""
    import time

    from joserfc import jwt
    from joserfc.jwk import RSAKey

    from datasets.demo import DEMO_AUDIENCE, DEMO_ISSUER, ensure_demo_issuer

    key = RSAKey.import_key(ensure_demo_issuer(data_dir)["private_jwk"])
    now = int(time.time())
    claims = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": f"demo-{role}", "roles": [role], "exp": now + 60}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {**claims, **payload}, key)


def test_odd_tokens_and_requests_keep_the_trail_whole(sqlite_config: Config, tmp_path: Path) -> None:
    """Found by a red-team review: a claim too large for JSON's integers lost its record (and
    answered a bare 500); a `sub` that spelt a template mark (NULs in it) took the time's
    place in the records of repeated requests, and is now refused like any claim with a NUL; a
    refused role switch named nobody; a GET without a query left no record; a purpose in
    Chinese was garbled."""
    config = shared_secure_demo(sqlite_config, tmp_path)
    gateway = Gateway.start(config, shared_engine(config))
    huge = {"authorization": "Bearer " + demo_token(tmp_path, "district_officer", district=10**40)}
    marked = {"authorization": "Bearer " + demo_token(tmp_path, "police", sub="\x00time\x00")}
    switch = {"authorization": "Bearer " + demo_token(tmp_path, "police"), "x-citygate-role": "supervisor"}
    districts = "{ public_security_residents(limit: 1) { district } }"
    statuses = []
    with TestClient(create_app(gateway)) as client:
        for headers in (huge, *[marked] * 3, switch):
            statuses.append(client.post("/graphql", json={"query": districts}, headers=headers).status_code)
        statuses.append(client.get("/graphql").status_code)
        purpose = {b"x-citygate-purpose": "案件调查 2026".encode(), b"content-type": b"Application/JSON"}
        statuses.append(client.post("/graphql", content=json.dumps({"query": STATIONS}), headers=purpose).status_code)
    gateway.close()
    assert statuses == [200, 401, 401, 401, 403, 400, 200]
    assert config.audit is not None and config.audit.path is not None
    records = read(config.audit.path)
    assert audit.verify(config.audit.path).ok and [r["seq"] for r in records] == list(range(1, 8))
    assert records[0]["claims"] == {"district": str(10**40)} and records[0]["outcome"] == "ok"
    assert [r["outcome"] for r in records[1:4]] == ["unauthenticated"] * 3
    assert all(r["time"].startswith("20") for r in records)
    switched = records[4]
    assert (switched["subject"], switched["role"], switched["outcome"]) == ("demo-police", "supervisor", "forbidden")
    assert records[5]["outcome"] == "bad_request"
    assert records[6]["purpose"] == "案件调查 2026" and records[6]["outcome"] == "ok"


def test_every_recorded_text_is_checked_bounded_and_the_request_id_is_the_gateways_own(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """Found by a review: a validly signed claim holding a lone surrogate answered a 500 and
    left no record (JSON cannot hold one); a 900 KB operationName went into the trail whole; a
    role header was recorded with U+202E and U+2028 in it; and any caller could take another's
    request id in the trail by sending it as X-Request-Id."""
    config = shared_secure_demo(sqlite_config, tmp_path)
    gateway = Gateway.start(config, shared_engine(config))

    def bearer(role: str, **payload: Any) -> dict[str, str]:
        """A validly signed token whose JSON escapes what UTF-8 cannot encode (a lone surrogate)."""
        import time

        from joserfc import jws
        from joserfc.jwk import RSAKey

        from datasets.demo import DEMO_AUDIENCE, DEMO_ISSUER, ensure_demo_issuer

        key = RSAKey.import_key(ensure_demo_issuer(tmp_path)["private_jwk"])
        claims = {"iss": DEMO_ISSUER, "aud": DEMO_AUDIENCE, "sub": f"demo-{role}", "roles": [role]}
        body = json.dumps({**claims, "exp": int(time.time()) + 60, **payload}).encode()
        return {"authorization": "Bearer " + jws.serialize_compact({"alg": "RS256", "kid": key.kid}, body, key)}

    refused = [
        bearer("police", sub="\ud800"),
        bearer("police", roles=["police\ud800"]),
        bearer("district_officer", district="南城\ud800"),
        bearer("district_officer", district="南" * 300),
    ]
    statuses = []
    with TestClient(create_app(gateway)) as client:
        for headers in refused:
            response = client.post("/graphql", json={"query": STATIONS}, headers=headers)
            statuses.append(response.status_code)
            assert "claim" in response.json()["errors"][0]["message"]
        named = {"query": "query Q " + STATIONS, "operationName": "Q" * 900_000}
        statuses.append(client.post("/graphql", json=named).status_code)
        odd_role = {**bearer("police"), "x-citygate-role": "super\u202evisor\u2028x".encode()}
        statuses.append(client.post("/graphql", json={"query": STATIONS}, headers=odd_role).status_code)  # type: ignore[arg-type]
        shown = []
        for _ in range(3):  # the same id from "two callers", the last a repeated (hot) request
            response = client.post("/graphql", json={"query": STATIONS}, headers={"x-request-id": "dup-1"})
            statuses.append(response.status_code)
            shown.append(response.headers["x-request-id"])
        odd_id = {b"x-request-id": "r\u202e1 2".encode(), b"content-type": b"application/json"}
        response = client.post("/graphql", content=json.dumps({"query": STATIONS}), headers=odd_id)
        statuses.append(response.status_code)
    gateway.close()
    # the unknown operationName is a malformed request: 400 on either media type (docs/errors.md)
    assert statuses == [401, 401, 401, 401, 400, 403, 200, 200, 200, 200]
    assert config.audit is not None and config.audit.path is not None
    records = read(config.audit.path)
    assert audit.verify(config.audit.path).ok and len(records) == len(statuses)
    assert [r["outcome"] for r in records[:4]] == ["unauthenticated"] * 4
    assert records[4]["operation"]["name"] == "Q" * 200
    assert records[5]["role"] == "supervisorx" and records[5]["outcome"] == "forbidden"
    duplicates = records[6:9]
    assert shown == [r["request_id"] for r in duplicates]  # the gateway's own, never the caller's
    assert [r["client_request_id"] for r in duplicates] == ["dup-1"] * 3
    ids = [r["request_id"] for r in records]
    assert len(set(ids)) == len(ids) and "dup-1" not in ids
    assert records[9]["client_request_id"] == "r1 2" and response.headers["x-request-id"] == records[9]["request_id"]
    assert all(r["client_request_id"] is None for r in records[:6])


def test_a_record_says_where_each_root_field_ran(trail: Trail) -> None:
    first = read(trail.path)[0]
    assert first["routes"] == {"transport_stations": "delegated"}  # one PostgreSQL database: its own SQL


# -- the operator's commands (issue 33) -----------------------------------------------------------


def test_audit_cli_reads_the_default_trail_of_a_config(
    sqlite_config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config that leaves `audit` out is recorded under its data dir: `audit verify` and
    `audit query --config` read that file."""
    from tests.test_defaults import deployment

    config = deployment(tmp_path, sqlite_config, policies="open", auth="none")
    sink = audit.FileSink(tmp_path / ".citygate" / "audit.jsonl")
    sink.write({"request_id": "r-1", "role": "anonymous", "subject": None}).wait(5)
    sink.close()
    assert main(["audit", "verify", "--config", str(config)]) == 0
    assert "1 records, the chain holds" in capsys.readouterr().out
    assert main(["audit", "query", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["request_id"] == "r-1"


@pytest.mark.parametrize("written", ["off", '"off"', "false"])
def test_audit_sink_off_as_written_turns_the_trail_off_with_a_warning(
    sqlite_config: Config, tmp_path: Path, written: str, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.config import load_config
    from tests.test_defaults import deployment

    path = deployment(tmp_path, sqlite_config, policies="open", auth="none")
    path.write_text(path.read_text(encoding="utf-8") + f"audit:\n  sink: {written}\n", encoding="utf-8")
    config, _ = load_config(path).served()
    assert config.audit is not None and config.audit.sink == "off"
    gateway = Gateway.start(config, shared_engine(config))
    gateway.close()
    assert gateway.audit is None
    assert any("the audit trail is off" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_offline_commands_neither_warn_of_nor_open_the_trail(
    sqlite_config: Config, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_defaults import deployment

    config = deployment(tmp_path, sqlite_config, policies="open", auth="none")
    assert main(["schema", "print", "--config", str(config)]) == 0
    assert "type query_root" in capsys.readouterr().out
    assert not any("audit trail is off" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / ".citygate" / "audit.jsonl").exists()


def test_audit_query_escapes_control_characters_in_what_it_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token's `sub` holding a newline, an escape sequence and a bidi override cannot forge
    or erase table lines."""
    path = tmp_path / "audit.jsonl"
    sink = audit.FileSink(path)
    forged = "u-1\n2026-01-01T00:00:00.000Z  r-forged  admin  ok\x1b[2K\x1b[1A" + chr(0x202E)
    sink.write({"request_id": "r-1", "role": "analyst\r", "subject": forged, "outcome": "ok"}).wait(5)
    sink.close()
    assert main(["audit", "query", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and chr(0x202E) not in out
    assert len(out.splitlines()) == 4  # header, rule, one record, the count
    assert "u-1\\n2026-01-01" in out and "\\x1b[2K" in out and "analyst\\r" in out


def test_audit_query_json_escapes_control_and_format_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--json` escapes what JSON's own escaping leaves raw (a bidi override, a C1 control such
    as CSI, U+2028, DEL) as \\uXXXX; Chinese stays readable, and each line reads back as the
    record it printed."""
    path = tmp_path / "audit.jsonl"
    sink = audit.FileSink(path)
    sub = "u-1" + chr(0x202E) + "\x9b2K" + chr(0x2028) + "\x7f" + chr(0x200B) + "\x1b"
    sink.write({"request_id": "r-1", "role": "analyst", "subject": sub, "purpose": "案件调查"}).wait(5)
    sink.close()
    assert main(["audit", "query", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    [line] = out.splitlines()
    assert all(c.isprintable() for c in line)
    assert "\\u202e" in line and "\\u009b" in line and "\\u2028" in line and "\\u007f" in line
    assert "案件调查" in line  # not \\u6848...
    record = json.loads(line)
    assert record["subject"] == sub and record["purpose"] == "案件调查"
