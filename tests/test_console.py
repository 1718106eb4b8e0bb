"""The console's API, through the real ASGI application over the demo city's policies: the
catalogue as each role sees it, its audit records, "view as role" for the administrator, the
pinned assets, and no key material on any screen (the console's or `citygate explain`'s)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from catalogue.sql import tie_key
from datasets.commands import ANONYMOUS_EXAMPLE, demo_page
from datasets.demo import admin_token, issue_token
from gateway.config import Config
from gateway.console.assets import Assets
from gateway.console.pages import Pages
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.observe import audit
from tests.conftest import shared_engine, shared_secure_demo
from tests.test_cli import run

# Ordering by name breaks ties on the resident's ID number, which a supervisor sees hashed: the
# statement holds both the hash key's blocks and the tie-break key.
SUPERVISED = "{ public_security_residents(limit: 2, order_by: [{name: asc}]) { id_card name } }"


@dataclass
class Demo:
    client: TestClient
    gateway: Gateway
    data_dir: Path

    def token(self, role: str, **claims: str) -> dict[str, str]:
        return {"authorization": "Bearer " + issue_token(self.data_dir, role, claims, 300)}

    def catalogue(self, headers: dict[str, str] | None = None, **params: str) -> dict[str, Any]:
        response = self.client.get("/console/api/catalogue", params=params, headers=headers or {})
        assert response.status_code == 200, response.text
        found: dict[str, Any] = response.json()
        return found

    def records(self) -> list[dict[str, Any]]:
        assert self.gateway.audit is not None
        self.gateway.audit.flush()
        return list(audit.records(self.data_dir / "audit.jsonl"))


@pytest.fixture(scope="module")
def demo(sqlite_config: Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    data_dir = tmp_path_factory.mktemp("console")
    config = shared_secure_demo(sqlite_config, data_dir)
    gateway = Gateway.start(config, shared_engine(config))
    with TestClient(create_app(gateway, example="{ transport_stations { name } }")) as client:
        yield Demo(client, gateway, data_dir)
    gateway.close()


def resources(catalogue: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{d['name']}.{r['name']}": r for d in catalogue["departments"] for r in d["resources"]}


def treatments(resource: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["treatment"] for c in resource["columns"]}


def test_a_roles_catalogue_omits_what_it_cannot_see(demo: Demo) -> None:
    anonymous = resources(demo.catalogue())
    assert "health.health_records" not in anonymous  # no published column: absent from its schema too
    assert "human_resources.social_insurance" not in anonymous
    assert set(treatments(anonymous["health.clinic_visits"]).values()) == {"raw", "denied"}

    inspector = demo.catalogue(demo.token("env_inspector"))
    assert "public_security" not in {d["name"] for d in inspector["departments"]}  # residents absent
    assert "public_security.residents" not in resources(inspector)
    assert treatments(resources(inspector)["market_regulation.enterprises"])["legal_rep_id_card"] == "hash"

    analyst = resources(demo.catalogue(demo.token("health_analyst")))
    assert "human_resources.social_insurance" not in analyst
    assert {"health.clinic_visits", "health.health_records", "public_security.residents"} <= set(analyst)


def test_a_filtered_table_shows_no_row_estimate(demo: Demo) -> None:
    """The estimate counts the whole table: a district officer who may read one district's
    residents is not told how many the city has (it was shown 10,000)."""
    officer = resources(demo.catalogue(demo.token("district_officer", district="南城")))
    residents = officer["public_security.residents"]
    assert residents["row_filter"] is True and residents["rows_estimate"] is None
    analyst = resources(demo.catalogue(demo.token("health_analyst")))["public_security.residents"]
    assert analyst["row_filter"] is False and analyst["rows_estimate"] == 10000  # unfiltered: the count


def test_each_role_sees_its_own_treatment_of_every_column(demo: Demo) -> None:
    analyst = resources(demo.catalogue(demo.token("health_analyst")))
    residents = analyst["public_security.residents"]
    assert treatments(residents) == {
        "id_card": "partial(6,4)",
        "name": "partial(1,0)",
        "gender": "raw",
        "birth_date": "denied",
        "phone": "nullify",
        "address": "denied",
        "district": "raw",
        "registered_at": "year",
    }
    assert treatments(analyst["health.clinic_visits"])["diagnosis"] == "raw"
    sharing = {c["name"]: c["sharing_label"] for c in residents["columns"]}
    assert sharing["id_card"] == "confidential (保密)" and sharing["district"] == "published (发布)"
    assert residents["primary_key"] == ["id_card"] and residents["rows_estimate"] == 10000
    assert {"name": "clinic_visits", "kind": "array", "column": "id_card", "target": "health_clinic_visits"} in (
        residents["relationships"]
    )

    officer = demo.catalogue(demo.token("district_officer", district="南城"))
    found = resources(officer)
    assert treatments(found["public_security.residents"])["phone"] == "partial(3,4)"
    assert found["public_security.residents"]["row_filter"] is True  # that rows are filtered, not how
    visits = found["health.clinic_visits"]
    assert visits["access"] == "aggregate_only" and visits["k"] == 5
    assert treatments(visits) == {
        "visit_id": "denied",
        "id_card": "denied",
        "hospital": "aggregate only (k=5)",
        "department_name": "aggregate only (k=5)",
        "diagnosis_code": "aggregate only (k=5)",
        "diagnosis": "denied",
        "visit_date": "aggregate only (k=5)",
        "cost": "aggregate only (k=5)",
    }
    assert "_group_by(by: [hospital])" in visits["sample_query"]
    # The sample query is one the role may run, as it is.
    sample = demo.client.post(
        "/graphql", json={"query": visits["sample_query"]}, headers=demo.token("district_officer", district="南城")
    )
    assert "errors" not in sample.json(), sample.text


def test_search_by_name_description_and_department(demo: Demo) -> None:
    headers = demo.token("supervisor")
    by_description = resources(demo.catalogue(headers, search="门诊"))
    assert list(by_description) == ["health.clinic_visits"]
    by_department = demo.catalogue(headers, search="卫生健康局")
    assert set(resources(by_department)) == {"health.clinic_visits", "health.health_records"}
    by_column = resources(demo.catalogue(headers, search="plate"))
    assert list(by_column) == ["transport.vehicles"]
    only = demo.catalogue(headers, department="environment")
    assert [d["name"] for d in only["departments"]] == ["environment"]
    assert only["departments"][0]["status"] == "up" and only["departments"][0]["store"] == "sqlite"
    assert demo.catalogue(headers, search="no such thing")["departments"] == []


def test_a_catalogue_read_leaves_an_audit_record(demo: Demo) -> None:
    response = demo.client.get(
        "/console/api/catalogue",
        params={"search": "stations"},
        headers={**demo.token("health_analyst"), "x-request-id": "catalogue-read-1"},
    )
    assert response.status_code == 200
    bad = demo.client.get("/console/api/catalogue", headers={"authorization": "Bearer not-a-token"})
    assert bad.status_code == 401
    records = demo.records()
    mine = [r for r in records if r.get("client_request_id") == "catalogue-read-1"]
    assert len(mine) == 1
    record = mine[0]
    assert record["role"] == "health_analyst" and record["outcome"] == "ok" and record["status"] == 200
    assert record["operation"]["name"] == "console: catalogue" and record["search"] == "stations"
    assert record["access"] == [{"access": "catalogue", "department": "transport", "table": "stations"}]
    assert any(r["status"] == 401 and r["operation"]["name"] == "console: catalogue" for r in records)
    assert audit.verify(demo.data_dir / "audit.jsonl").ok


def test_view_as_role_is_for_the_administrator_and_shows_no_key_material(demo: Demo) -> None:
    asked = {"role": "supervisor", "query": SUPERVISED}
    assert demo.client.post("/console/api/view-as", json=asked).status_code == 401
    assert demo.client.get("/console/api/roles", headers=demo.token("supervisor")).status_code == 401
    admin = {"authorization": "Bearer " + admin_token(demo.data_dir)}
    roles = demo.client.get("/console/api/roles", headers=admin).json()["roles"]
    assert {"name": "district_officer", "claims": ["district"]} in roles

    response = demo.client.post("/console/api/view-as", json=asked, headers=admin)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["answer"]["data"]["public_security_residents"][0]["id_card"].startswith("h:")
    residents = next(t for t in page["tables"] if t["table"] == "residents")
    id_card = next(c for c in residents["columns"] if c["name"] == "id_card")
    assert id_card == {
        "name": "id_card",
        "type": "string",
        "sharing": "confidential",
        "treatment": "hash",
        "rule": "supervisor's default for confidential columns",
    }
    assert "type public_security_residents {" in page["schema"]
    sql = page["explain"][0]["sql"]
    assert "<key>" in sql and "ORDER BY" in sql
    hash_key = demo.gateway.config.policies.hash_key  # type: ignore[union-attr]
    text = response.text
    for secret in (hash_key, hash_key.encode().hex(), tie_key(hash_key.encode())):
        assert secret not in text

    officer = demo.client.post(
        "/console/api/view-as",
        json={
            "role": "district_officer",
            "claims": {"district": "南城"},
            "query": "{ public_security_residents(limit: 3) { district } }",
        },
        headers={**admin, "x-request-id": "view-as-1"},
    ).json()
    visits = next(t for t in officer["tables"] if t["table"] == "clinic_visits")
    assert visits["access"] == "aggregate_only" and visits["k"] == 5 and "hospital" in visits["group_by"]
    assert {c["name"]: c["rule"] for c in visits["columns"]}["diagnosis"] == (
        "health.clinic_visits grants only the columns it lists"
    )
    residents = next(t for t in officer["tables"] if t["table"] == "residents")
    assert residents["row_filter"] == "district = :claims.district"
    assert {r["district"] for r in officer["answer"]["data"]["public_security_residents"]} == {"南城"}
    assert "'南城'" in officer["explain"][0]["sql"]
    record = next(r for r in demo.records() if r.get("client_request_id") == "view-as-1")
    assert record["subject"] == "console-admin" and record["role"] == "district_officer"
    assert record["claims"] == {"district": "南城"} and record["rows"] == {"public_security_residents": 3}

    wrong = demo.client.post("/console/api/view-as", json={"role": "nobody"}, headers=admin)
    assert wrong.status_code == 400 and "`role` must be one of" in wrong.text


def test_graphiql_and_its_assets_come_from_the_gateway(demo: Demo) -> None:
    page = demo.client.get("/graphql", headers={"accept": "text/html"}).text
    assert "https://" not in page and "http://" not in page  # nothing from another origin
    lock = json.loads((Path(__file__).resolve().parent.parent / "gateway/console/package-lock.json").read_text())
    version = lock["packages"]["node_modules/graphiql"]["version"]
    path = f"/console/assets/graphiql@{version}/graphiql.min.js"
    assert f'src="{path}" integrity="sha384-' in page
    assert "{ transport_stations { name } }" in page  # the example GraphiQL opens with
    asset = demo.client.get(path)
    assert asset.status_code == 200 and asset.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert asset.headers["content-type"].startswith("text/javascript")
    assert demo.client.get("/console/assets/graphiql@0.0.1/graphiql.min.js").status_code == 404
    assert demo.client.get("/console/static/console.js").headers["cache-control"] == "no-cache"
    assert demo.client.get("/", follow_redirects=False).headers["location"] == "/console"
    assert "资源目录" in demo.client.get("/console").text


def test_without_its_assets_the_page_says_how_to_install_them(tmp_path: Path) -> None:
    (tmp_path / "package-lock.json").write_text(
        json.dumps({"packages": {"node_modules/react": {"version": "18.3.1"}}}), encoding="utf-8"
    )
    assets = Assets.load(tmp_path)
    assert assets.files == {} and assets.missing is not None and "make install" in assets.missing
    page = Pages.make(assets).graphiql
    assert "make install" in page and "/console/assets/" not in page


@pytest.mark.slow
def test_explain_prints_no_key_material(demo_dir: Path) -> None:
    result = run("explain", "--data-dir", str(demo_dir), "--role", "supervisor", SUPERVISED)
    assert result.returncode == 0, result.stderr
    hash_key = json.loads((demo_dir / "demo-issuer.json").read_text())["hash_key"]
    assert "<key>" in result.stdout
    for secret in (hash_key, hash_key.encode().hex(), tie_key(hash_key.encode())):
        assert secret not in result.stdout


def _page_config(html: str) -> dict[str, Any]:
    start = html.index('<script type="application/json" id="citygate-config">') + len(
        '<script type="application/json" id="citygate-config">'
    )
    config: dict[str, Any] = json.loads(html[start : html.index("</script>", start)])
    return config


def test_the_demos_pages_offer_each_roles_token_and_an_example_it_can_run(demo: Demo) -> None:
    """GraphiQL once opened as anonymous with an example whose six health fields anonymous
    may not ask for. The demo's example now runs as anonymous, and its pages offer a token per
    demo role with the example that role opens with."""

    page = demo_page(demo.data_dir, ttl=300)
    assert set(page.tokens) == {
        "health_analyst",
        "district_officer",
        "env_inspector",
        "police",
        "supervisor",
        "citizen",
    }
    with TestClient(create_app(demo.gateway, example=ANONYMOUS_EXAMPLE, demo=page)) as client:
        html = client.get("/graphql", headers={"accept": "text/html"}).text
        config = _page_config(html)
        assert config["demo"]["tokens"] == page.tokens and config["example"] == ANONYMOUS_EXAMPLE
        assert _page_config(client.get("/console").text)["demo"]["tokens"] == page.tokens
        anonymous = client.post("/graphql", json={"query": ANONYMOUS_EXAMPLE}).json()
        assert "errors" not in anonymous and len(anonymous["data"]["transport_stations"]) == 5
        for role, token in page.tokens.items():
            example = config["demo"]["examples"].get(role, ANONYMOUS_EXAMPLE)
            answer = client.post("/graphql", json={"query": example}, headers={"authorization": f"Bearer {token}"})
            assert answer.status_code == 200 and "errors" not in answer.json(), (role, answer.json())
    # A deployment's pages (no demo) carry no token.
    assert "demo" not in _page_config(demo.client.get("/graphql", headers={"accept": "text/html"}).text)
