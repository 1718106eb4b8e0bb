"""What engines and stores say about a failed statement never carries a stored value out of the
gateway: not to the client, not to the log (issue 28, finding 4).

A custom mask whose cast fails on an identity number made every engine quote it: PostgreSQL
`value "441900199604273847" is out of range for type integer`, DuckDB `Could not convert string
'…' to INT32`, Trino `Cannot cast '…' to INT`. The client saw only ENGINE_ERROR, but the
gateway's log got the message whole, on every route. Now a message about a statement is reduced
to its class (and the department) where the engine's exception is caught."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from datasets.datagen import City
from gateway.config import Config
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from tests.test_policies import ENGINES, engine_config, with_policies, write_policy

# Every identity number of the demo city starts with the city's code; four digits more are
# already more of one than any message may carry.
STORED = re.compile(r"441900\d{4,}")
CAST = {"sql": "CAST(value AS INTEGER)"}
QUERIES = {
    "public_security_residents": "{ public_security_residents(limit: 3) { id_card name } }",
    "human_resources_social_insurance": "{ human_resources_social_insurance(limit: 3) { id_card months_paid } }",
}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_failing_cast_on_a_protected_column_writes_no_stored_value(
    engine: str,
    sqlite_config: Config,
    services_config: Config,
    city: City,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = {
        "public_security.residents": {"columns": {"id_card": CAST, "name": "allow"}},
        "human_resources.social_insurance": {"columns": {"id_card": CAST, "months_paid": "allow"}},
    }
    policy = write_policy(tmp_path / "cast.yaml", {"caster": rules})
    config = with_policies(engine_config(engine, sqlite_config, services_config), [policy])
    config = config.model_copy(update={"data_dir": tmp_path})
    caplog.set_level(logging.DEBUG)
    gateway = Gateway.start(config, create_engine(config))
    try:
        failed = 0
        for key, query in QUERIES.items():
            body = gateway.execute(query, identity=Identity("caster")).body
            assert not STORED.search(repr(body)), body
            for error in body.get("errors", []):
                assert error["extensions"]["code"] == "ENGINE_ERROR", error
                assert error["path"] == [key]
                failed += 1
    finally:
        gateway.close()
    # PostgreSQL, DuckDB and Trino refuse the cast; SQLite and MariaDB cast what they can
    assert failed >= 1
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "failed" in logged  # the failure is logged, by its class
    assert not STORED.search(logged), STORED.findall(logged)[:3]
