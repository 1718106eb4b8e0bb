"""Trusted documents: registered documents run, by their text or their hash alone; the roles the
configuration covers run nothing else, and a refusal names the document's hash, as its audit
record does; `citygate documents register` adds documents from files."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from datasets.demo import issue_token
from gateway.config import Config, TrustedDocumentsConfig
from gateway.execution.gateway import Gateway
from gateway.graphql.documents import REFRESH_SECONDS, document_hash, write_manifest
from gateway.http.app import GRAPHQL_RESPONSE, create_app
from gateway.observe import audit
from tests.conftest import REPO, shared_engine, shared_secure_demo

STATIONS = "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { name district } }"
OTHER = "{ transport_stations(limit: 3, order_by: [{station_id: asc}]) { name } }"


@dataclass
class Served:
    client: TestClient
    gateway: Gateway
    data_dir: Path
    manifest: Path

    def post(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        response = self.client.post("/graphql", json=body, headers=headers or {})
        answer: dict[str, Any] = response.json()
        answer["request_id"] = response.headers["x-request-id"]
        return response.status_code, answer

    def analyst(self) -> dict[str, str]:
        return {"authorization": "Bearer " + issue_token(self.data_dir, "health_analyst", {}, 600)}

    def record(self, request_id: str) -> dict[str, Any]:
        assert self.gateway.audit is not None
        self.gateway.audit.flush()
        path = self.data_dir / "audit.jsonl"
        assert audit.verify(path).ok
        [found] = [r for r in audit.records(path) if r["request_id"] == request_id]
        return found


@pytest.fixture
def served(sqlite_config: Config, tmp_path: Path) -> Iterator[Served]:
    """The demo city with its policies; anonymous callers run registered documents only."""
    manifest = tmp_path / "documents.json"
    write_manifest(manifest, {document_hash(STATIONS): STATIONS})
    config = shared_secure_demo(sqlite_config, tmp_path).model_copy(
        update={"trusted_documents": TrustedDocumentsConfig(store=manifest, roles=["anonymous"])}
    )
    gateway = Gateway.start(config, shared_engine(config))
    with TestClient(create_app(gateway)) as client:
        yield Served(client, gateway, tmp_path, manifest)
    gateway.close()


def test_a_registered_document_runs(served: Served) -> None:
    status, answer = served.post({"query": STATIONS})
    assert status == 200 and len(answer["data"]["transport_stations"]) == 2


def test_an_unregistered_document_is_refused_with_its_hash_in_the_error_and_the_record(served: Served) -> None:
    digest = document_hash(OTHER)
    for accept in ("application/json", GRAPHQL_RESPONSE):
        status, answer = served.post({"query": OTHER}, {"accept": accept})
        assert status == 403 and "data" not in answer
        [error] = answer["errors"]
        assert error["extensions"] == {"code": "UNTRUSTED_DOCUMENT", "documentId": f"sha256:{digest}"}
        assert f"sha256:{digest}" in error["message"] and "role anonymous" in error["message"]
        record = served.record(answer["request_id"])
        assert record["operation"]["hash"] == digest
        assert (record["outcome"], record["errors"], record["status"]) == ("refused", ["UNTRUSTED_DOCUMENT"], 403)
        assert record["access"] == [] and record["rows"] == {}  # nothing was read


def test_a_role_not_covered_still_runs_any_document(served: Served) -> None:
    status, answer = served.post({"query": OTHER}, served.analyst())
    assert status == 200 and len(answer["data"]["transport_stations"]) == 3, answer


def test_a_registered_document_runs_by_its_hash_alone(served: Served) -> None:
    _, full = served.post({"query": STATIONS})
    digest = document_hash(STATIONS)
    apollo = {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": digest}}}
    for body in (apollo, {"documentId": f"sha256:{digest}"}):
        status, answer = served.post(body)
        assert status == 200 and answer["data"] == full["data"]
        assert served.record(answer["request_id"])["operation"]["hash"] == digest
    # and by a role the trusted documents do not cover
    status, answer = served.post(apollo, served.analyst())
    assert status == 200 and answer["data"] == full["data"]
    # GET, as Apollo's clients send a persisted query
    response = served.client.get("/graphql", params={"extensions": json.dumps(apollo["extensions"])})
    assert response.status_code == 200 and response.json()["data"] == full["data"]


def test_an_unknown_hash_is_refused_by_name_or_asked_for_its_document(served: Served) -> None:
    digest = "0123456789abcdef" * 4
    status, answer = served.post({"documentId": f"sha256:{digest}"})
    assert status == 403 and answer["errors"][0]["extensions"]["code"] == "UNTRUSTED_DOCUMENT"
    assert digest in answer["errors"][0]["message"]
    record = served.record(answer["request_id"])
    assert record["operation"]["hash"] == digest and record["outcome"] == "refused"
    # A role that may run any document is asked for the text, with the code Apollo's clients know.
    status, answer = served.post({"documentId": f"sha256:{digest}"}, served.analyst())
    assert status == 200 and answer["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def test_a_hash_that_does_not_match_the_query_is_a_bad_request(served: Served) -> None:
    persisted = {"persistedQuery": {"version": 1, "sha256Hash": document_hash(STATIONS)}}
    mismatched = {"query": OTHER, "extensions": persisted}
    status, answer = served.post(mismatched)
    assert status == 400 and answer["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    status, answer = served.post({"documentId": "sha256:not-a-hash"})
    assert status == 400 and "SHA-256" in answer["errors"][0]["message"]


def test_documents_registered_while_serving_are_trusted(served: Served) -> None:
    assert served.post({"query": OTHER})[0] == 403
    write_manifest(served.manifest, {document_hash(d): d for d in (STATIONS, OTHER)})
    time.sleep(REFRESH_SECONDS + 0.1)
    status, answer = served.post({"query": OTHER})
    assert status == 200 and len(answer["data"]["transport_stations"]) == 3, answer


def test_all_roles_covered_without_policies(sqlite_config: Config, tmp_path: Path) -> None:
    manifest = tmp_path / "documents.json"
    write_manifest(manifest, {document_hash(STATIONS): STATIONS})
    config = sqlite_config.model_copy(update={"trusted_documents": TrustedDocumentsConfig(store=manifest)})
    gateway = Gateway.start(config, shared_engine(config))
    try:
        with TestClient(create_app(gateway)) as client:
            assert client.post("/graphql", json={"query": STATIONS}).status_code == 200
            refused = client.post("/graphql", json={"query": OTHER})
            assert refused.status_code == 403 and "this gateway runs only registered" in refused.text
    finally:
        gateway.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "documents", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_the_cli_registers_documents_from_files(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    raw = {
        "include": str(REPO / "configs" / "embedded.yaml"),
        "trusted_documents": {"store": "trusted/documents.json", "roles": ["anonymous"]},
    }
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    stations, other, broken = tmp_path / "stations.graphql", tmp_path / "other.graphql", tmp_path / "broken.graphql"
    stations.write_text(STATIONS, encoding="utf-8")
    other.write_text(OTHER, encoding="utf-8")
    broken.write_text("{ transport_stations { name ", encoding="utf-8")
    manifest = tmp_path / "trusted" / "documents.json"  # beside the config, as configured

    done = cli("register", str(stations), str(other), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert f"sha256:{document_hash(STATIONS)}  {stations}  registered" in done.stdout
    assert json.loads(manifest.read_text()) == {document_hash(STATIONS): STATIONS, document_hash(OTHER): OTHER}
    again = cli("register", str(stations), "--config", str(config))
    assert again.returncode == 0 and "already registered" in again.stdout

    refused = cli("register", str(broken), "--config", str(config))
    assert refused.returncode == 2 and refused.stderr.startswith(f"citygate: error: {broken}: not a GraphQL document")
    assert len(json.loads(manifest.read_text())) == 2  # nothing written

    listed = cli("list", "--config", str(config))
    assert listed.returncode == 0
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == sorted(
        f"sha256:{document_hash(d)}" for d in (STATIONS, OTHER)
    )
