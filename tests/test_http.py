"""The HTTP edge, through the real ASGI application: statuses, error shapes, GraphiQL, health."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.config import AuditConfig, Config
from gateway.execution.gateway import Gateway
from gateway.http.app import GRAPHQL_RESPONSE, create_app
from gateway.observe import audit
from tests.conftest import ADMIN, as_operator, shared_engine


@pytest.fixture(scope="module")
def client(gateway_sqlite: Gateway) -> Iterator[TestClient]:
    with TestClient(create_app(gateway_sqlite)) as test_client:
        yield test_client


def test_post_answers_a_query(client: TestClient) -> None:
    response = client.post("/graphql", json={"query": "{ transport_stations(limit: 2) { name level } }"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    stations = response.json()["data"]["transport_stations"]
    assert [s["name"] for s in stations] == ["莞城汽车客运站", "南城汽车客运站"]


def test_variables_and_operation_name(client: TestClient) -> None:
    document = """
      query A($d: String!) { transport_stations(where: {district: {_eq: $d}}) { station_id } }
      query B { transport_stations_aggregate { aggregate { count } } }
    """
    a = client.post("/graphql", json={"query": document, "variables": {"d": "虎门"}, "operationName": "A"})
    assert a.json() == {"data": {"transport_stations": [{"station_id": 6}, {"station_id": 14}, {"station_id": 22}]}}
    b = client.post("/graphql", json={"query": document, "operationName": "B"})
    assert b.json() == {"data": {"transport_stations_aggregate": {"aggregate": {"count": 24}}}}
    neither = client.post("/graphql", json={"query": document})
    assert neither.json()["errors"][0]["message"] == "the document has several operations; send operationName"


def test_get_with_query_parameter(client: TestClient) -> None:
    response = client.get("/graphql", params={"query": "{ transport_stations_by_pk(station_id: 3) { name } }"})
    assert response.json() == {"data": {"transport_stations_by_pk": {"name": "东城汽车客运站"}}}


def test_unknown_field_says_what_to_change(client: TestClient) -> None:
    response = client.post("/graphql", json={"query": "{ public_security_residents { phon } }"})
    assert response.status_code == 200  # application/json: every well-formed request is 200
    error = response.json()["errors"][0]
    assert error["message"] == 'unknown field "phon" on "public_security_residents"; did you mean "phone"?'
    assert error["locations"] == [{"line": 1, "column": 31}]
    assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "data" not in response.json()


def test_graphql_response_media_type_uses_400_for_refused_requests(client: TestClient) -> None:
    headers = {"accept": GRAPHQL_RESPONSE}
    refused = client.post("/graphql", json={"query": "{ nope }"}, headers=headers)
    assert refused.status_code == 400
    assert refused.headers["content-type"].startswith(GRAPHQL_RESPONSE)
    parse = client.post("/graphql", json={"query": "{ transport_stations { name "}, headers=headers)
    assert parse.status_code == 400 and parse.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    ok = client.post("/graphql", json={"query": "{ transport_stations(limit: 1) { name } }"}, headers=headers)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{not json", "application/json", 400, "the request body is not valid JSON"),
        (b"[1, 2]", "application/json", 400, "the request body must be a JSON object with a `query`"),
        (b'{"variables": {}}', "application/json", 400, "the request has no `query` string"),
        (
            b'{"query": "{ transport_stations { name } }", "variables": [1]}',
            "application/json",
            400,
            "`variables` must be an object",
        ),
        (b"query=x", "application/x-www-form-urlencoded", 415, "send the request as application/json"),
        (  # once a RecursionError, answered 500
            b'{"query": "{ transport_stations { name } }", "variables": {"a": ' + b"[" * 990 + b"]" * 990 + b"}}",
            "application/json",
            400,
            "`variables` nest deeper than 32 levels",
        ),
    ],
)
def test_malformed_requests(client: TestClient, body: bytes, content_type: str, status: int, message: str) -> None:
    response = client.post("/graphql", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert response.json() == {"errors": [{"message": message, "extensions": {"code": "BAD_REQUEST"}}]}


def test_deep_variables_over_get_and_media_types_in_capitals(client: TestClient) -> None:
    query = "{ transport_stations(limit: 1) { name } }"
    deep = client.get("/graphql", params={"query": query, "variables": '{"a": ' + "[" * 3000 + "]" * 3000 + "}"})
    assert deep.status_code == 400 and deep.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    capitals = {"content-type": "Application/JSON"}  # media types are case-insensitive
    shouted = client.post("/graphql", content=json.dumps({"query": query}), headers=capitals)
    assert shouted.status_code == 200 and shouted.json()["data"]["transport_stations"]


def test_strings_no_engine_can_take_are_the_callers_error(client: TestClient) -> None:
    """A NUL ends the statement's text in DuckDB (once an engine error and a log line with
    SQL); a lone surrogate cannot be encoded at all (once an internal error)."""
    query = "query ($n: String!) { transport_stations(where: {name: {_eq: $n}}) { name } }"
    for value, reason in (("a\x00b", "NUL"), ("\ud800", "lone surrogate")):
        params = {"query": query, "variables": json.dumps({"n": value})}
        for response in (client.get("/graphql", params=params), client.post("/graphql", json=params)):
            [error] = response.json()["errors"]
            assert error["extensions"]["code"] == "BAD_USER_INPUT" and reason in error["message"], error
    pattern = '{ transport_stations(where: {name: {_like: "a\\u0000%"}}) { name } }'
    assert client.post("/graphql", json={"query": pattern}).json()["errors"][0]["extensions"]["code"] == (
        "BAD_USER_INPUT"
    )


def test_oversized_body(client: TestClient) -> None:
    query = "{ transport_stations { name } }" + " " * (1 << 20)
    response = client.post("/graphql", json={"query": query})
    assert response.status_code == 413


def test_bad_variable_value(client: TestClient) -> None:
    response = client.post(
        "/graphql",
        json={
            "query": "query ($d: Date!) "
            "{ health_clinic_visits(where: {visit_date: {_eq: $d}}, limit: 1) { visit_id } }",
            "variables": {"d": "30 February"},
        },
    )
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "Date expects YYYY-MM-DD" in error["message"]


def test_compile_errors_carry_path_and_code(client: TestClient) -> None:
    response = client.post("/graphql", json={"query": "{ a: transport_stations(limit: -1) { name } }"})
    error = response.json()["errors"][0]
    assert error["message"] == "`limit` must not be negative"
    assert error["path"] == ["a"] and error["extensions"]["code"] == "BAD_USER_INPUT"
    assert response.json()["data"] == {"a": None}


def test_mutations_are_refused(client: TestClient) -> None:
    response = client.post("/graphql", json={"query": "mutation { x }"})
    assert response.status_code == 400  # a malformed request on either media type (docs/errors.md)
    [error] = response.json()["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert error["message"] == "mutation operations are not supported; citygate is read-only"


def test_introspection_and_typename(client: TestClient) -> None:
    query = (
        '{ __typename __type(name: "health_clinic_visits") { fields { name } } transport_stations(limit: 1) { name } }'
    )
    data = client.post("/graphql", json={"query": query}).json()["data"]
    assert list(data) == ["__typename", "__type", "transport_stations"]
    assert data["__typename"] == "query_root"
    assert {"visit_id", "cost", "resident"} <= {f["name"] for f in data["__type"]["fields"]}


def test_graphiql_for_browsers(client: TestClient) -> None:
    response = client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200 and "graphiql" in response.text.lower()
    assert client.get("/graphql").status_code == 400


def test_health_and_readiness(client: TestClient, gateway_sqlite: Gateway) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    with TestClient(create_app(as_operator(gateway_sqlite))) as operator:
        assert operator.get("/readyz").json() == {"status": "ready"}  # no token, no details
        assert operator.get("/readyz", headers={"authorization": "Bearer " + "x" * 33}).json() == {"status": "ready"}
        detailed = operator.get("/readyz", headers=ADMIN).json()
    assert detailed["departments"] == {
        d: "ok"
        for d in ("public_security", "health", "transport", "market_regulation", "environment", "human_resources")
    }
    assert detailed["routes"] == {"embedded": "ok"} and detailed["engine"] == "embedded"


def test_no_sql_or_trace_reaches_the_client(client: TestClient) -> None:
    hostile = "x' UNION SELECT password FROM users --"
    response = client.post(
        "/graphql",
        json={
            "query": "query ($n: String!) { market_regulation_enterprises(where: {name: {_like: $n}}) { name } }",
            "variables": {"n": hostile},
        },
    )
    assert response.json() == {"data": {"market_regulation_enterprises": []}}


def asgi(app: Any, messages: list[dict[str, Any]], headers: dict[str, str]) -> list[dict[str, Any]]:
    """POST /graphql straight to the ASGI application, the body in ``messages``; what it sends."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


JSON = {"content-type": "application/json"}


def test_a_body_in_several_chunks_is_read_whole(gateway_sqlite: Gateway) -> None:
    body = json.dumps({"query": "{ transport_stations(limit: 1) { name } }"}).encode()
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    start, answer = asgi(create_app(gateway_sqlite), messages, JSON)
    assert start["status"] == 200 and (b"x-request-id" in dict(start["headers"]))
    assert json.loads(answer["body"]) == {"data": {"transport_stations": [{"name": "莞城汽车客运站"}]}}


def test_a_body_growing_past_the_limit_is_413_without_a_content_length(gateway_sqlite: Gateway) -> None:
    chunk = b" " * (256 * 1024)
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for _ in range(5)]
    start, answer = asgi(create_app(gateway_sqlite), messages, JSON)
    assert start["status"] == 413 and b"larger than 1 MiB" in answer["body"]


def test_a_client_that_hangs_up_is_audited_and_not_answered(sqlite_config: Config, tmp_path: Path) -> None:
    config = sqlite_config.model_copy(update={"audit": AuditConfig(sink="file", path=tmp_path / "audit.jsonl")})
    gateway = Gateway.start(config, shared_engine(config))
    try:
        first = {"type": "http.request", "body": b'{"query": "{ transport_', "more_body": True}
        assert asgi(create_app(gateway), [first, {"type": "http.disconnect"}], JSON) == []
        gateway.flush()
        [record] = audit.records(tmp_path / "audit.jsonl")
        assert (record["outcome"], record["errors"]) == ("bad_request", ["CLIENT_DISCONNECTED"])
    finally:
        gateway.close()


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "²"])
def test_a_content_length_that_is_not_a_number_is_400(gateway_sqlite: Gateway, length: str) -> None:
    body = b'{"query": "{ transport_stations(limit: 1) { name } }"}'
    headers = {**JSON, "content-length": length}
    start, answer = asgi(create_app(gateway_sqlite), [{"type": "http.request", "body": body}], headers)
    assert start["status"] == 400
    assert json.loads(answer["body"])["errors"][0]["message"] == "the Content-Length header is not a number"
