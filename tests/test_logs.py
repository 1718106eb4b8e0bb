"""Structured logs: JSON lines that carry the id of the request that caused them."""

from __future__ import annotations

import json
import logging

from starlette.testclient import TestClient

from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.observe.logs import JsonFormatter
from tests.conftest import free_port, with_store


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
