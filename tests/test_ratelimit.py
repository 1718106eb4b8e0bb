"""Requests per minute, per subject: the request past a caller's limit is refused (429,
`RATE_LIMITED`, `Retry-After`) and audited; other callers go on; after the wait it runs again."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from httpx2 import Response
from starlette.testclient import TestClient

from datasets.demo import issue_token
from gateway.config import Config, LimitsConfig, RoleLimits, ServerConfig
from gateway.execution.gateway import Gateway
from gateway.http.app import Edge, create_app
from gateway.observe import audit
from tests.conftest import shared_engine, shared_secure_demo

STATIONS = {"query": "{ transport_stations(limit: 2, order_by: [{station_id: asc}]) { name } }"}


@dataclass
class Served:
    app: Edge
    gateway: Gateway
    data_dir: Path
    now: list[float]  # the limiter's clock, which a test moves on

    def client(self, address: str = "198.51.100.7") -> TestClient:
        return TestClient(self.app, client=(address, 40000))

    def token(self, role: str) -> dict[str, str]:
        return {"authorization": "Bearer " + issue_token(self.data_dir, role, {}, 600)}

    def record(self, request_id: str) -> dict[str, Any]:
        assert self.gateway.audit is not None
        self.gateway.audit.flush()
        path = self.data_dir / "audit.jsonl"
        [found] = [r for r in audit.records(path) if r.get("request_id") == request_id]
        return found

    def trail(self) -> list[dict[str, Any]]:
        assert self.gateway.audit is not None
        self.gateway.audit.flush()
        return list(audit.records(self.data_dir / "audit.jsonl"))

    def unrecorded(self) -> float | None:
        return self.gateway.metrics.registry.get_sample_value("citygate_audit_unrecorded_refusals_total")


def serve(config: Config, data_dir: Path) -> Iterator[Served]:
    gateway = Gateway.start(config, shared_engine(config))
    app = create_app(gateway)
    now = [1000.0]
    app.limiter.clock = lambda: now[0]
    try:
        yield Served(app, gateway, data_dir, now)
    finally:
        gateway.close()


@pytest.fixture
def served(sqlite_config: Config, tmp_path: Path) -> Iterator[Served]:
    """The demo city with its policies; anonymous callers may send 3 requests a minute, health
    analysts 2."""
    config = shared_secure_demo(sqlite_config, tmp_path)
    limits = LimitsConfig(
        roles={"anonymous": RoleLimits(requests_per_minute=3), "health_analyst": RoleLimits(requests_per_minute=2)}
    )
    yield from serve(config.model_copy(update={"limits": limits}), tmp_path)


def test_the_request_past_the_limit_is_refused_with_retry_after_and_audited(served: Served) -> None:
    with served.client() as client:
        # the same request each time: from the second on it is answered from the hot replies
        for _ in range(3):
            assert client.post("/graphql", json=STATIONS).status_code == 200
        refused = client.post("/graphql", json=STATIONS)
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "20"  # 3 a minute: one more every 20 seconds
    [error] = refused.json()["errors"]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 20}
    assert "role anonymous allows 3 a minute" in error["message"]
    record = served.record(refused.headers["x-request-id"])
    assert (record["outcome"], record["status"], record["errors"]) == ("refused", 429, ["RATE_LIMITED"])
    assert record["role"] == "anonymous" and record["operation"]["hash"] is not None
    assert record["rows"] == {} and record["cache"] == {}  # nothing was read for it


def test_another_subject_is_not_affected(served: Served) -> None:
    analyst, other_analyst = served.token("health_analyst"), served.token("police")
    with served.client() as client, served.client("203.0.113.9") as elsewhere:
        for _ in range(2):
            assert client.post("/graphql", json=STATIONS, headers=analyst).status_code == 200
        assert client.post("/graphql", json=STATIONS, headers=analyst).status_code == 429
        # the same address without a token, another address, and another subject all still run
        assert client.post("/graphql", json=STATIONS).status_code == 200
        assert elsewhere.post("/graphql", json=STATIONS).status_code == 200
        assert client.post("/graphql", json=STATIONS, headers=other_analyst).status_code == 200
        # a token's subject is the caller wherever it connects from
        assert elsewhere.post("/graphql", json=STATIONS, headers=analyst).status_code == 429


def test_after_the_wait_the_caller_runs_again(served: Served) -> None:
    with served.client() as client:
        for _ in range(3):
            assert client.get("/graphql", params=STATIONS).status_code == 200
        refused = client.get("/graphql", params=STATIONS)
        assert refused.status_code == 429
        served.now[0] += int(refused.headers["retry-after"]) - 1
        assert client.get("/graphql", params=STATIONS).status_code == 429  # not yet
        served.now[0] += 1
        assert client.get("/graphql", params=STATIONS).status_code == 200
        served.now[0] += 60  # a minute idle: the whole allowance again
        assert [client.get("/graphql", params=STATIONS).status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.mark.slow
def test_anonymous_callers_are_held_to_600_a_minute_by_default(sqlite_config: Config, tmp_path: Path) -> None:
    for served in serve(shared_secure_demo(sqlite_config, tmp_path), tmp_path):
        with served.client() as client:
            statuses = [client.post("/graphql", json=STATIONS).status_code for _ in range(601)]
        assert statuses[:600] == [200] * 600 and statuses[600] == 429


@pytest.mark.slow
def test_a_limit_of_zero_is_no_limit(sqlite_config: Config, tmp_path: Path) -> None:
    limits = LimitsConfig(roles={"anonymous": RoleLimits(requests_per_minute=0)})
    config = shared_secure_demo(sqlite_config, tmp_path).model_copy(update={"limits": limits})
    for served in serve(config, tmp_path):
        with served.client() as client:
            assert all(client.post("/graphql", json=STATIONS).status_code == 200 for _ in range(700))


def test_refused_tokens_count_against_the_network_and_then_are_not_checked(served: Served) -> None:
    """A flood of bad tokens is throttled like anonymous requests (it was 401 each time, and an
    audit record each, 3,000 in 2 s); past the limit the network is refused before any token it
    sends is checked, a valid one too, until the wait is over. Other networks go on."""
    bad = {"authorization": "Bearer not.a.token"}
    analyst = served.token("health_analyst")
    with served.client() as client, served.client("203.0.113.9") as elsewhere:
        assert client.post("/graphql", json=STATIONS, headers=analyst).status_code == 200  # a hot reply now
        answers = [client.post("/graphql", json=STATIONS, headers=bad) for _ in range(5)]
        assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]
        refused = client.post("/graphql", json=STATIONS, headers=analyst)  # not even the hot reply
        assert refused.status_code == 429 and refused.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert "refused tokens" in refused.json()["errors"][0]["message"]
        assert elsewhere.post("/graphql", json=STATIONS, headers=analyst).status_code == 200
        assert elsewhere.post("/graphql", json=STATIONS).status_code == 200
        served.now[0] += 60  # past the network's wait, and the analyst's own allowance (2 a minute) whole
        assert client.post("/graphql", json=STATIONS, headers=analyst).status_code == 200
    # the network's first refusal of the minute is recorded; the next two are counted, and the
    # count recorded once the minute is over
    record = served.record(answers[3].headers["x-request-id"])
    assert (record["status"], record["errors"], record["role"]) == (429, ["RATE_LIMITED"], None)
    [counted] = [r for r in served.trail() if r.get("event") == "throttled"]
    assert (counted["network"], counted["count"], counted["status"]) == ("198.51.100.7/32", 2, 429)
    assert served.unrecorded() == 2


def test_a_flood_of_bad_tokens_leaves_a_bounded_trail_and_its_count(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """500 requests with a bad token from one network: the three the allowance lets through are
    refused 401 and recorded, and the first 429; the rest of the minute is counted, in the
    metric at once and in one `throttled` record once the minute is over. The access log still
    has a line for each; a known caller's request goes on being recorded whole."""
    bad = {"authorization": "Bearer not.a.token"}
    before = len(served.trail())
    with caplog.at_level("INFO", logger="citygate.access"), served.client() as client:
        statuses = [client.post("/graphql", json=STATIONS, headers=bad).status_code for _ in range(500)]
        assert statuses == [401] * 3 + [429] * 497
        assert len(served.trail()) - before == 4
        assert served.unrecorded() == 496
        served.now[0] += 60  # the minute is over: the next audited request, from anyone, records its count
        assert client.post("/graphql", json=STATIONS, headers=served.token("police")).status_code == 200
    added = served.trail()[before:]
    assert len(added) == 6
    assert [r.get("status") for r in added] == [401, 401, 401, 429, 429, 200]
    counted = added[4]
    assert (counted["event"], counted["network"], counted["count"]) == ("throttled", "198.51.100.7/32", 496)
    assert counted["errors"] == ["RATE_LIMITED"] and "496 more requests from 198.51.100.7/32" in counted["reason"]
    assert audit.verify(served.data_dir / "audit.jsonl").ok
    assert len([r for r in caplog.records if r.name == "citygate.access"]) == 501


def test_a_flood_still_open_at_shutdown_leaves_its_count(sqlite_config: Config, tmp_path: Path) -> None:
    limits = LimitsConfig(roles={"anonymous": RoleLimits(requests_per_minute=1)})
    config = shared_secure_demo(sqlite_config, tmp_path).model_copy(update={"limits": limits})
    for served in serve(config, tmp_path):
        with served.client() as client:  # the client's lifespan ends with the block: a shutdown
            assert [client.post("/graphql", json=STATIONS).status_code for _ in range(10)] == [200] + [429] * 9
        trail = served.trail()
        assert [r.get("status") for r in trail] == [200, 429, 429]
        assert (trail[-1]["event"], trail[-1]["count"]) == ("throttled", 8)


def test_admin_token_guesses_are_throttled_before_the_token_is_compared(served: Served) -> None:
    from datasets.demo import admin_token

    right = {"authorization": "Bearer " + admin_token(served.data_dir)}
    wrong = {"authorization": "Bearer " + "x" * 32}
    with served.client() as client:
        statuses = [client.post("/admin/cache/clear", headers=wrong).status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        blocked = client.post("/admin/cache/clear", headers=right)  # not even compared
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert blocked.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        assert client.get("/console/api/roles", headers=right).status_code == 429
        served.now[0] += int(blocked.headers["retry-after"])
        assert client.post("/admin/cache/clear", headers=right).status_code == 200


@pytest.mark.parametrize(
    ("ipv4_prefix", "first", "same", "other"),
    [
        (32, "198.51.100.7", "198.51.100.7", "198.51.100.8"),
        (24, "198.51.100.7", "198.51.100.200", "198.51.101.7"),
        (32, "2001:db8:1:2::7", "2001:db8:1:2:ffff:1:2:3", "2001:db8:1:3::7"),  # IPv6: a /64 is one caller
    ],
)
def test_anonymous_callers_are_counted_by_network_prefix(
    sqlite_config: Config, tmp_path: Path, ipv4_prefix: int, first: str, same: str, other: str
) -> None:
    limits = LimitsConfig(roles={"anonymous": RoleLimits(requests_per_minute=3)}, ipv4_prefix=ipv4_prefix)
    config = shared_secure_demo(sqlite_config, tmp_path).model_copy(update={"limits": limits})
    for served in serve(config, tmp_path):
        with served.client(first) as one, served.client(same) as neighbour, served.client(other) as stranger:
            assert [one.post("/graphql", json=STATIONS).status_code for _ in range(3)] == [200] * 3
            assert neighbour.post("/graphql", json=STATIONS).status_code == 429
            assert stranger.post("/graphql", json=STATIONS).status_code == 200


def test_a_guarded_scrape_refuses_wrong_tokens_in_the_common_shape_and_counts_them(served: Served) -> None:
    from gateway.config import TokenGuard

    scrape = "a-scrape-token-of-the-test-0123"
    served.app.operator.metrics = TokenGuard(token=scrape)  # the edge's operator reads `metrics` when made
    with served.client() as client:
        assert client.get("/metrics", headers={"authorization": f"Bearer {scrape}"}).status_code == 200
        wrong = [client.get("/metrics", headers={"authorization": "Bearer " + "z" * 32}) for _ in range(4)]
        assert [r.status_code for r in wrong] == [401, 401, 401, 429]
        assert wrong[0].json() == {
            "errors": [{"message": "a valid scrape token is required", "extensions": {"code": "UNAUTHENTICATED"}}]
        }
        assert client.get("/metrics", headers={"authorization": f"Bearer {scrape}"}).status_code == 429


PROXY = "10.0.0.2"  # a trusted proxy's address (the fixture's `server.trusted_proxies`)


@pytest.fixture
def proxied(sqlite_config: Config, tmp_path: Path) -> Iterator[Served]:
    """:func:`served` behind two trusted proxies (10.0.0.0/30): anonymous callers may send 3
    requests a minute."""
    config = shared_secure_demo(sqlite_config, tmp_path)
    limits = LimitsConfig(roles={"anonymous": RoleLimits(requests_per_minute=3)})
    server = ServerConfig(trusted_proxies=["10.0.0.0/30"])
    yield from serve(config.model_copy(update={"limits": limits, "server": server}), tmp_path)


def via(proxy: TestClient, forwarded_for: str, authorization: str | None = None) -> Response:
    """A GraphQL request through ``proxy`` for the client ``forwarded_for`` names."""
    headers = {"x-forwarded-for": forwarded_for, **({"authorization": authorization} if authorization else {})}
    return proxy.post("/graphql", json=STATIONS, headers=headers)


def test_behind_a_trusted_proxy_one_client_guessing_tokens_is_refused_alone(
    proxied: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """Every request comes from the proxy's address: counted by it, one client's bad tokens
    refused everyone, valid tokens too. The client the proxy names is the caller: for the
    network refused, the throttle's record and the access log."""
    bad = "Bearer not.a.token"
    police = proxied.token("police")["authorization"]
    with caplog.at_level("INFO", logger="citygate.access"), proxied.client(PROXY) as proxy:
        answers = [via(proxy, "198.51.100.7", bad) for _ in range(5)]
        assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]
        assert "refused tokens" in answers[3].json()["errors"][0]["message"]
        # the guesser is refused even with a valid token, and through a second trusted proxy
        assert via(proxy, "198.51.100.7", police).status_code == 429
        assert via(proxy, "198.51.100.7, 10.0.0.1").status_code == 429
        # another client of the same proxy is answered, with a token and without
        assert via(proxy, "203.0.113.9", police).status_code == 200
        assert via(proxy, "203.0.113.9").status_code == 200
        assert via(proxy, "192.0.2.1, 10.0.0.1").status_code == 200
        proxied.now[0] += 60  # the minute is over: the next audited request records the flood's count
        assert via(proxy, "203.0.113.9").status_code == 200
    [counted] = [r for r in proxied.trail() if r.get("event") == "throttled"]
    assert (counted["network"], counted["count"]) == ("198.51.100.7/32", 3)
    clients = [r.fields["client"] for r in caplog.records if r.name == "citygate.access"]  # type: ignore[attr-defined]
    assert clients == ["198.51.100.7/32"] * 7 + ["203.0.113.9/32"] * 2 + ["192.0.2.1/32", "203.0.113.9/32"]


def test_from_an_untrusted_address_the_forwarded_header_is_ignored(proxied: Served) -> None:
    """A client that connects itself cannot name its own address: its guesses count against
    the address it connects from, whatever its X-Forwarded-For says, and refuse no one else."""
    with proxied.client("203.0.113.9") as direct, proxied.client(PROXY) as proxy:
        statuses = [via(direct, "198.51.100.7", "Bearer not.a.token").status_code for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        assert via(direct, "192.0.2.99").status_code == 429  # another made-up address: still itself
        assert via(proxy, "198.51.100.7").status_code == 200
        assert via(proxy, "203.0.113.9").status_code == 429


def test_a_spoofed_left_most_address_is_not_the_client(proxied: Served) -> None:
    """The proxy appends the address it saw connect; what lies left of it the client wrote. A
    guesser that writes a new address there each time is still counted as itself, and one that
    writes another client's does not get that client refused."""
    with proxied.client(PROXY) as proxy:
        statuses = [via(proxy, f"192.0.2.{n}, 198.51.100.7", "Bearer not.a.token").status_code for n in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        assert via(proxy, "192.0.2.1").status_code == 200
        # naming another client does not get the guesser out, nor a client naming it in
        assert via(proxy, "198.51.100.8, 198.51.100.7").status_code == 429
        assert via(proxy, "198.51.100.7, 198.51.100.8").status_code == 200
