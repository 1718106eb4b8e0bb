"""Structured logs: JSON lines that carry the id of the request that caused them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from starlette.testclient import TestClient

from datasets.demo import issue_token
from gateway.config import Config, LimitsConfig, RoleLimits
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import MAX_BODY, create_app
from gateway.observe.logs import JsonFormatter
from tests.conftest import free_port, shared_engine, shared_secure_demo, with_store


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


def test_a_request_s_log_lines_carry_its_request_id(gateway_services: Gateway, services_config: Config) -> None:
    broken = with_store(services_config, "health", port=free_port()).with_engine("embedded")
    gateway = Gateway(config=broken, engine=create_engine(broken), model=gateway_services.model)
    handler = Lines()
    logger = logging.getLogger("citygate")
    logger.addHandler(handler)
    try:
        with TestClient(create_app(gateway)) as client:
            query = "{ health_clinic_visits(limit: 1) { visit_id } transport_stations(limit: 1) { name } }"
            response = client.post("/graphql", json={"query": query}, headers={"x-request-id": "req-42"})
            chosen = client.post("/graphql", json={"query": query}, headers={"x-request-id": "bad id\n"})
    finally:
        logger.removeHandler(handler)
        gateway.close()
    failures = [line for line in handler.lines if "root field health_clinic_visits failed" in str(line["message"])]
    assert len(failures) == 2 and failures[0]["level"] == "warning"
    # the gateway's own id, which its audit record carries too; a caller's may be anyone's
    assert [f["request_id"] for f in failures] == [r.headers["x-request-id"] for r in (response, chosen)]
    assert not {"req-42", "bad id\n"} & {str(f["request_id"]) for f in failures}


def test_every_request_leaves_one_access_log_line_without_values_or_tokens(
    sqlite_config: Config, tmp_path: Path
) -> None:
    """Answered, refused for its token, too large, throttled, or not a GraphQL request at all:
    each request is one line at `citygate.access` with its id, role, status, duration and
    route, and no query, variable, header value or token in it."""
    limits = LimitsConfig(roles={"anonymous": RoleLimits(requests_per_minute=2)})
    config = shared_secure_demo(sqlite_config, tmp_path).model_copy(update={"limits": limits})
    gateway = Gateway.start(config, shared_engine(config))
    token = issue_token(tmp_path, "health_analyst", {}, 600)
    secret = "南城-secret-value"
    query = '{ transport_stations(where: {name: {_eq: "SECRET"}}) { name } }'.replace("SECRET", secret)
    handler = Lines()
    logger = logging.getLogger("citygate.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with TestClient(create_app(gateway), client=("198.51.100.7", 40000)) as client:
            sent = [
                client.post("/graphql", json={"query": query}, headers={"authorization": f"Bearer {token}"}),
                client.post("/graphql", json={"query": query}, headers={"authorization": "Bearer bad.token.x"}),
                client.post("/graphql", content=b"x" * (MAX_BODY + 1), headers={"content-type": "application/json"}),
                client.get("/graphql", params={"query": query}),
                # the network's allowance (2: the bad token and the GET) is spent, for guesses too
                client.post("/graphql", json={"query": query}),
                client.get("/readyz"),
                client.post("/admin/cache/clear"),
            ]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        gateway.close()
    assert [r.status_code for r in sent] == [200, 401, 413, 200, 429, 200, 429]
    lines = handler.lines
    assert [line["request_id"] for line in lines] == [r.headers["x-request-id"] for r in sent]
    assert [line["status"] for line in lines] == [200, 401, 413, 200, 429, 200, 429]
    assert [line["route"] for line in lines] == ["/graphql"] * 5 + ["/readyz", "/admin/{action:path}"]
    assert [line["role"] for line in lines[:5]] == ["health_analyst", None, "anonymous", "anonymous", "anonymous"]
    assert lines[1]["codes"] == ["UNAUTHENTICATED"] and lines[4]["codes"] == ["RATE_LIMITED"]
    assert all(line["level"] == "info" and line["logger"] == "citygate.access" for line in lines)
    assert all(isinstance(line["duration_ms"], float) and line["method"] in ("GET", "POST") for line in lines)
    assert all(line["client"] == "198.51.100.7/32" for line in lines)
    text = json.dumps(lines, ensure_ascii=False)
    assert secret not in text and token not in text and "bad.token" not in text


def test_the_console_s_requests_are_logged_by_their_whole_route(sqlite_config: Config) -> None:
    """The console is an application mounted at ``/console``: its routes are logged by their
    whole pattern, as the edge's own are; a path under it that names no route by none."""
    gateway = Gateway.start(sqlite_config, create_engine(sqlite_config))
    handler = Lines()
    logger = logging.getLogger("citygate.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with TestClient(create_app(gateway), follow_redirects=False) as client:
            sent = [
                client.get("/console"),
                client.get("/console/static/console.js"),
                client.get("/console/api/catalogue", params={"search": "secret-search"}),
                client.get("/console/nothing"),
                client.get("/console/"),
            ]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
        gateway.close()
    assert [r.status_code for r in sent] == [200, 200, 200, 404, 307]
    assert sent[4].headers["location"] == "http://testserver/console"  # the page's own address
    lines = handler.lines
    assert [line["request_id"] for line in lines] == [r.headers["x-request-id"] for r in sent]
    routes = [line["route"] for line in lines[:4]]
    assert routes == ["/console", "/console/static/{path:path}", "/console/api/catalogue", None]
    assert lines[2]["outcome"] == "ok"  # audited, as a GraphQL request is
    assert "secret-search" not in json.dumps(lines)
