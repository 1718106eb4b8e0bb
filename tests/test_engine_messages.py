"""What engines and stores say about a failed statement never carries a stored value out of the
gateway: not to the client, not to the log (issue 28, finding 4).

A custom mask whose cast failed on an identity number made every engine quote it: PostgreSQL
`value "441900199604273847" is out of range for type integer`, DuckDB `Could not convert string
'…' to INT32`, Trino `Cannot cast '…' to INT`. The client saw only ENGINE_ERROR, but the
gateway's log got the message whole, on every route. A custom mask and a row filter may no longer
cast text to a number (policies/masks.py), and whatever else makes a statement fail, its
message is reduced to its class (and the department) where the engine's exception is caught:
that is what these tests hold, on every engine and store, with a cast that fails."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from sqlglot import exp

from catalogue.errors import CitygateError
from catalogue.sql import logical_table
from connectors.base import Engine
from connectors.native import native_engines
from gateway.config import Config

# Every identity number of the demo city starts with the city's code; four digits more are
# already more of one than any message may carry.
STORED = re.compile(r"441900\d{4,}")

# (engine, department, table): the failing cast on each route's own store of identity numbers
ROUTES = [
    ("embedded_sqlite", "public_security", "residents"),
    ("embedded_services", "public_security", "residents"),
    ("embedded_services", "human_resources", "social_insurance"),
    ("trino", "public_security", "residents"),
    ("trino", "human_resources", "social_insurance"),
    ("delegated", "public_security", "residents"),
]


@pytest.fixture
def route_engine(
    request: pytest.FixtureRequest, sqlite_config: Config, services_config: Config
) -> Iterator[tuple[str, Engine]]:
    name, department, _ = request.param
    if name == "delegated":
        [native] = native_engines(services_config.engine_settings(), 5.0, [department])
        yield department, native
        native.close()
        return
    fixture = {"embedded_sqlite": "embedded_sqlite", "embedded_services": "embedded_services", "trino": "trino_engine"}
    yield department, request.getfixturevalue(fixture[name])


@pytest.mark.parametrize("route_engine", ROUTES, indirect=True, ids=[f"{r[0]}-{r[2]}" for r in ROUTES])
def test_a_failing_cast_of_an_identity_number_leaves_no_value_in_the_error(
    route_engine: tuple[str, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    department, engine = route_engine
    table = "residents" if department == "public_security" else "social_insurance"
    # a cast every engine refuses for an identity number: too large for INTEGER, or ends in X
    cast = exp.cast(exp.column("id_card"), exp.DataType.build("INT"))
    statement = exp.select(exp.alias_(cast, "n")).from_(logical_table(department, table))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CitygateError) as failed:
        engine.execute(statement)
    error = failed.value
    said = f"{error.code} {error.message} {error.detail}"
    assert not STORED.search(said), said
    assert error.detail, "the error keeps its class for the operator's log"
    assert not STORED.search("\n".join(record.getMessage() for record in caplog.records))
