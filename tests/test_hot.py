"""A repeated request is sent its ready reply only while everything the reply was made of
stands: the caller's identity and token, the policies, and the very cached rows. Its audit
record is the one the full path writes, but for the request's own values."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from datasets.demo import admin_token, issue_token
from gateway.config import CacheConfig, Config, PoliciesConfig
from gateway.execution.gateway import Gateway
from gateway.http.app import Edge, create_app
from gateway.observe import audit
from tests.conftest import shared_engine, shared_secure_demo

RESIDENTS = {"query": "{ public_security_residents(limit: 3, order_by: [{registered_at: asc}]) { id_card name } }"}
RECORDS = {"query": "{ health_health_records(limit: 2, order_by: [{record_id: asc}]) { record_id blood_type } }"}
OWN = {"time", "request_id", "purpose", "duration_ms", "seq", "prev", "hash"}  # each request's own


@dataclass
class Served:
    client: TestClient
    app: Edge
    gateway: Gateway
    data_dir: Path
    central: Path  # a copy of the demo's central policy file, which a test may change

    def token(self, role: str, ttl: int = 600, **claims: str) -> dict[str, str]:
        return {"authorization": f"Bearer {issue_token(self.data_dir, role, claims, ttl)}"}

    def post(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json=body, headers=headers or {})
        answer: dict[str, Any] = response.json()
        answer["status"] = response.status_code
        return answer

    def trail(self) -> list[dict[str, Any]]:
        assert self.gateway.audit is not None
        self.gateway.audit.flush()  # the gateway goes on recording
        path = self.data_dir / "audit.jsonl"
        assert audit.verify(path).ok
        return list(audit.records(path))


@pytest.fixture
def served(sqlite_config: Config, tmp_path: Path) -> Iterator[Served]:
    config = shared_secure_demo(sqlite_config, tmp_path)
    assert config.policies is not None and config.auth is not None
    files = [tmp_path / p.name for p in config.policies.files]
    for source, copy in zip(config.policies.files, files, strict=True):
        shutil.copyfile(source, copy)
    config = config.model_copy(
        update={
            "policies": PoliciesConfig(files=files, hash_key=config.policies.hash_key),
            "auth": config.auth.model_copy(update={"leeway_seconds": 0}),
            "cache": CacheConfig(ttl_seconds=60),
        }
    )
    gateway = Gateway.start(config, shared_engine(config))
    app = create_app(gateway)
    with TestClient(app) as client:
        yield Served(client, app, gateway, tmp_path, files[0])
    gateway.close()


def fixed(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in OWN}


def test_a_hot_reply_is_the_full_paths_reply_and_record(served: Served) -> None:
    analyst = served.token("health_analyst")
    answers = [served.post(RESIDENTS, {**analyst, "x-citygate-purpose": f"check {n}"}) for n in range(4)]
    assert len(served.app.hot) == 1  # remembered after the second (the first was not cached yet)
    assert all(a == answers[0] for a in answers) and answers[0]["status"] == 200
    rows = answers[0]["data"]["public_security_residents"]
    assert len(rows) == 3 and all(r["id_card"][6:14] == "********" for r in rows)
    records = served.trail()
    assert [r["cache"]["public_security_residents"] for r in records] == ["miss", "hit", "hit", "hit"]
    assert fixed(records[1]) == fixed(records[2]) == fixed(records[3])  # the full path's, then hot
    assert [r["purpose"] for r in records] == [f"check {n}" for n in range(4)]
    assert len({r["request_id"] for r in records}) == 4 and [r["seq"] for r in records] == [1, 2, 3, 4]
    assert records[3]["subject"] == records[0]["subject"] and records[3]["role"] == "health_analyst"


def test_another_caller_never_gets_a_hot_reply(served: Served) -> None:
    analyst = served.token("health_analyst")
    for _ in range(3):
        masked = served.post(RESIDENTS, analyst)
    police = served.post(RESIDENTS, served.token("police"))
    anonymous = served.post(RESIDENTS)
    assert masked["data"] != police["data"]
    masked_ids = [r["id_card"] for r in masked["data"]["public_security_residents"]]
    raw_ids = [r["id_card"] for r in police["data"]["public_security_residents"]]
    assert all("*" in m for m in masked_ids) and not any("*" in r for r in raw_ids)
    assert anonymous["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    # The same token acting as a role it does not carry is refused, hot entry or not.
    refused = served.post(RESIDENTS, {**analyst, "x-citygate-role": "police"})
    assert refused["status"] == 403


def test_an_expired_token_is_refused_though_its_reply_is_hot(served: Served) -> None:
    # `exp` is whole seconds after a whole-second `iat`: a 5-second token is good for 4 to 5
    # seconds (time for three requests on a busy machine; 1 second could end at once), and
    # over for certain 6.1 seconds after it was made: the tokens' clock is moved on that far
    short = served.token("health_analyst", ttl=5)
    for _ in range(3):
        assert served.post(RESIDENTS, short)["status"] == 200
    assert len(served.app.hot) == 1
    assert served.app.authenticator is not None
    made = time.time()
    served.app.authenticator.clock = lambda: made + 6.1
    expired = served.post(RESIDENTS, short)
    assert expired["status"] == 401 and "data" not in expired
    assert served.trail()[-1]["outcome"] == "unauthenticated"


def test_clearing_the_cache_or_its_expiry_ends_a_hot_reply(served: Served, sqlite_config: Config) -> None:
    analyst = served.token("health_analyst")
    first = [served.post(RESIDENTS, analyst) for _ in range(3)][-1]
    admin = {"authorization": f"Bearer {admin_token(served.data_dir)}"}
    assert served.client.post("/admin/cache/clear?department=public_security", headers=admin).status_code == 200
    assert served.post(RESIDENTS, analyst) == first
    assert served.trail()[-1]["cache"] == {"public_security_residents": "miss"}  # asked the engine again
    # An entry past its time-to-live is gone too, and so is the reply made of it.
    served.gateway.results._ttl["public_security"] = 0.5
    served.gateway.results.clear()
    for _ in range(3):
        served.post(RESIDENTS, analyst)
    time.sleep(0.6)
    served.post(RESIDENTS, analyst)
    assert [r["cache"]["public_security_residents"] for r in served.trail()[-4:]] == ["miss", "hit", "hit", "miss"]


def test_a_policy_reload_ends_a_hot_reply(served: Served) -> None:
    analyst = served.token("health_analyst")
    for _ in range(3):
        answer = served.post(RECORDS, analyst)
    assert {"record_id", "blood_type"} <= set(answer["data"]["health_health_records"][0])
    text = served.central.read_text(encoding="utf-8")
    changed = text.replace("{blood_type: allow, chronic_conditions: allow}", "{chronic_conditions: allow}")
    assert changed != text
    served.central.write_text(changed, encoding="utf-8")
    served.gateway.reload_policies()
    refused = served.post(RECORDS, analyst)
    assert refused["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "blood_type" in refused["errors"][0]["message"]


def test_a_template_seals_the_very_line_a_record_does() -> None:
    record = {
        "access": [{"department": "health", "columns": {"name": "partial(1,0)"}, "keys": ["id"]}],
        "cache": {"health_people": "hit"},
        "claims": {"district": '虎门 "east"'},
        "engine": "embedded",
        "errors": [],
        "operation": {"hash": "ab" * 16, "name": None},
        "outcome": "ok",
        "role": "health_analyst",
        "rows": {"health_people": 3},
        "status": 200,
        "subject": "u-1",
    }
    template = audit.Template(record)
    moments = [time.time() + n * 0.000_123_7 for n in range(300)] + [1795766400.2999999, 1795766400.9995, 1e9]
    for purpose in (None, 'a "quoted"\npurpose with 100%', "统计"):
        for moment in moments:
            full = {**json.loads(json.dumps(record)), "time": moment, "request_id": "r-9"}
            made = audit.Chain(prev="f" * 64, seq=41).link({**full, "purpose": purpose, "duration_ms": 0.123})
            filled = audit.Filled(template, moment, "r-9", purpose, 0.123)
            assert audit.Chain(prev="f" * 64, seq=41).link(filled) == made
    assert audit.check([made.decode()]).broken is not None  # it continues a chain, not a new one
