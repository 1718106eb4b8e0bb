"""Queries generated from each demo role's own schema (hypothesis-graphql): every argument
position gets nulls, empty lists, duplicates, negative and huge numbers, odd strings. Each is
answered or refused precisely: never a 5xx, never an ``INTERNAL`` error."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import graphql
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis_graphql import queries
from starlette.testclient import TestClient

from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.http.app import create_app
from gateway.identity.caller import Identity
from tests.policy_support import with_policies

# Generated queries by the hundred on every role: `make test` runs them, `make check` does not.
pytestmark = pytest.mark.slow

ROLES: dict[str, dict[str, Any]] = {
    "anonymous": {},
    "health_analyst": {},
    "district_officer": {"district": "南城"},
    "env_inspector": {},
    "police": {},
    "supervisor": {},
}
EXAMPLES = 15  # per role: up to half a second each, so the file runs in well under a minute


def _string(values: st.SearchStrategy[str]) -> st.SearchStrategy[graphql.ValueNode]:
    return values.map(lambda v: graphql.StringValueNode(value=v))


_HUGE = st.sampled_from(["9" * 38, "-" + "9" * 38, "9" * 39, "1e400", "0.000000000000000000000000000000000001", "-0"])
_NUMBER = st.integers(-(2**70), 2**70)
# The citygate scalars, as values and as the nonsense a caller may send instead.
SCALARS: dict[str, st.SearchStrategy[graphql.ValueNode]] = {
    "BigInt": _NUMBER.map(lambda n: graphql.IntValueNode(value=str(n))) | _string(_NUMBER.map(str) | st.text()),
    "Decimal": _string(st.decimals(allow_nan=False, allow_infinity=False).map(str) | _HUGE | st.text())
    | _NUMBER.map(lambda n: graphql.IntValueNode(value=str(n))),
    "Date": _string(st.dates().map(str) | st.text()),
    "Timestamp": _string(st.datetimes().map(lambda d: d.isoformat()) | st.text()),
}


@pytest.fixture(scope="module")
def fuzzed(sqlite_config: Config) -> Iterator[Gateway]:
    config = with_policies(sqlite_config)
    gateway = Gateway.start(config, create_engine(config))
    yield gateway
    gateway.close()


def _problems(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in body.get("errors", []) if e.get("extensions", {}).get("code") in (None, "INTERNAL")]


@pytest.mark.parametrize("role", sorted(ROLES))
def test_generated_queries_are_answered_or_refused_precisely(fuzzed: Gateway, role: str) -> None:
    identity = Identity(role, ROLES[role])
    schema = fuzzed.view(identity).model.schema

    @seed(17)
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(query=queries(schema, custom_scalars=SCALARS))
    def answered(query: object) -> None:
        assert isinstance(query, str)
        body = fuzzed.execute(query, identity=identity).body
        assert not _problems(body), (query, body)

    answered()


def test_generated_queries_over_http_never_get_a_5xx(fuzzed: Gateway) -> None:
    """The anonymous caller through the whole edge: the status as well as the body."""
    schema = fuzzed.view(Identity("anonymous")).model.schema
    with TestClient(create_app(fuzzed), raise_server_exceptions=False) as client:

        @seed(17)
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None)
        @given(query=queries(schema, custom_scalars=SCALARS))
        def answered(query: object) -> None:
            response = client.post("/graphql", json={"query": query})
            assert response.status_code < 500, (query, response.text)
            assert not _problems(response.json()), (query, response.text)

        answered()
