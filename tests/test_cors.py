"""Browser applications on other origins: allowed only where `cors.origins` names them, and
then for real in Debian's chromium (a page on one loopback port calling the gateway on another)."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import sync_playwright
from starlette.testclient import TestClient

from gateway.config import Config
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from tests.conftest import free_port, shared_engine, uvicorn_thread
from tests.test_console_browser import CHROMIUM, FLAGS

QUERY = "{ transport_stations(limit: 1) { name } }"


def cors(config: Config, *origins: str) -> Config:
    return config.model_copy(update={"cors": config.cors.model_copy(update={"origins": list(origins)})})


def test_cors_is_off_by_default_and_answers_only_the_origins_configured(sqlite_config: Config) -> None:
    allowed, other = "https://app.city.example", "https://evil.example"
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type",
    }
    for config, expected in ((sqlite_config, None), (cors(sqlite_config, allowed), allowed)):
        gateway = Gateway.start(config, shared_engine(config))
        try:
            with TestClient(create_app(gateway)) as client:
                answered = client.post("/graphql", json={"query": QUERY}, headers={"origin": allowed})
                assert answered.status_code == 200 and answered.json()["data"]["transport_stations"]
                assert answered.headers.get("access-control-allow-origin") == expected
                asked = client.options("/graphql", headers={"origin": allowed, **preflight})
                refused = client.options("/graphql", headers={"origin": other, **preflight})
                stranger = client.post("/graphql", json={"query": QUERY}, headers={"origin": other})
        finally:
            gateway.close()
        assert "access-control-allow-origin" not in stranger.headers
        if expected is None:
            assert "access-control-allow-origin" not in asked.headers  # nothing says another origin may
        else:
            assert asked.status_code == 200 and asked.headers["access-control-allow-origin"] == allowed
            assert "authorization" in asked.headers["access-control-allow-headers"].lower()
            assert "x-request-id" in answered.headers["access-control-expose-headers"].lower()
            assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers


@dataclass
class Site:
    origin: str
    server: http.server.ThreadingHTTPServer


@pytest.fixture
def sites() -> Iterator[list[Site]]:
    """Two pages' origins on loopback (each serves an empty page)."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>an application</title>"
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    made = []
    for _ in range(2):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Page)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        made.append(Site(f"http://127.0.0.1:{server.server_address[1]}", server))
    yield made
    for site in made:
        site.server.shutdown()
        site.server.server_close()


@pytest.mark.services  # Chromium
def test_a_page_on_an_allowed_origin_calls_the_api_in_chromium_and_another_cannot(
    sqlite_config: Config, sites: list[Site]
) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"no chromium at {CHROMIUM}: install it with `make browser` (apt-get install chromium)", False)
    allowed, other = sites
    config = cors(sqlite_config, allowed.origin)
    gateway = Gateway.start(config, shared_engine(config))
    call = """async ([url, query]) => {
        try {
            const response = await fetch(url, {method: "POST", headers: {"content-type": "application/json",
                "authorization": "Bearer not-checked-here"}, body: JSON.stringify({query})});
            return {status: response.status, id: response.headers.get("x-request-id"), body: await response.json()};
        } catch (error) { return {blocked: String(error)}; }
    }"""
    try:
        with uvicorn_thread(create_app(gateway)) as port, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                answers = []
                for site in (allowed, other):
                    page = browser.new_page()
                    page.goto(site.origin)
                    answers.append(page.evaluate(call, [f"http://127.0.0.1:{port}/graphql", QUERY]))
                    page.close()
            finally:
                browser.close()
    finally:
        gateway.close()
    served, blocked = answers
    # The open demo config has no auth: the token is ignored, the answer is the data.
    assert served["status"] == 200 and served["body"]["data"]["transport_stations"] and served["id"]
    assert "blocked" in blocked and "Failed to fetch" in blocked["blocked"]


def test_cors_never_opens_the_operator_s_endpoints(sqlite_config: Config) -> None:
    """`origins: ["*"]` lets any page call the API, but no page may drive the admin endpoints,
    "view as role" or the scrape with an operator's token pasted into it."""
    origin = "https://evil.example"
    preflight = {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization",
    }
    gateway = Gateway.start(cors(sqlite_config, "*"), shared_engine(sqlite_config))
    try:
        with TestClient(create_app(gateway)) as client:
            assert client.options("/graphql", headers=preflight).headers["access-control-allow-origin"] == "*"
            for path in ("/admin/cache/clear", "/admin/policies/reload", "/console/api/view-as", "/console/api/roles"):
                asked = client.options(path, headers=preflight)
                assert "access-control-allow-origin" not in asked.headers, path
                sent = client.post(path, headers={"origin": origin})
                assert "access-control-allow-origin" not in sent.headers, path
            assert "access-control-allow-origin" not in client.get("/metrics", headers={"origin": origin}).headers
    finally:
        gateway.close()
