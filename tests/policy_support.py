"""What the policy tests share: the demo's policy files under a test hash key, a
policy-enforcing gateway on each engine, requests as a role, and the contract's mask formats
written in Python.

The fixtures built from these (``secured``: such a gateway on each engine; ``analyst``: one on
SQLite with health_analyst's rewrite context) are in tests/conftest.py, shared by
tests/test_masks.py, test_late_masks.py, test_last_step.py, test_policy_roles.py,
test_floors.py, test_row_filters.py and test_aggregate_only.py."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import pytest
import yaml
from graphql import GraphQLObjectType
from sqlglot import exp

from gateway.config import Config, PoliciesConfig
from gateway.execution.engines import create_engine
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity

# tests/conftest.py imports this module, so it cannot take REPO from there.
DEMO_POLICIES = Path(__file__).resolve().parent.parent / "policies" / "demo"
KEY = "citygate-test-hash-key-0001"
POLICY_FILES = [DEMO_POLICIES / "central.yaml", DEMO_POLICIES / "health-floor.yaml"]


def with_policies(config: Config, files: list[Path] = POLICY_FILES) -> Config:
    return config.model_copy(update={"policies": PoliciesConfig(files=files, hash_key=KEY)})


ENGINES = ("embedded_sqlite", "embedded_services", "trino", "delegated", "sqlite_delegated")


def engines_slow_on(*slow: str) -> list[Any]:
    """:data:`ENGINES` as a test's parameters, those in ``slow`` marked `slow`: `make test` runs
    the test on every engine, `make check` (the fast layer) on the SQLite ones left, where one
    route shows what the test checks and running it on another costs seconds."""
    return [pytest.param(engine, marks=pytest.mark.slow) if engine in slow else engine for engine in ENGINES]


def engine_config(engine: str, sqlite_config: Config, services_config: Config) -> Config:
    """The configuration of one of :data:`ENGINES`: DuckDB over SQLite, DuckDB over PostgreSQL
    and MariaDB, or Trino, each running every statement; or each store running the statements
    that read it alone (delegated), Trino or DuckDB the others."""
    return {
        "embedded_sqlite": sqlite_config.with_delegate("never"),
        "embedded_services": services_config.with_engine("embedded").with_delegate("never"),
        "trino": services_config.with_delegate("never"),
        "delegated": services_config.with_delegate("auto"),
        "sqlite_delegated": sqlite_config.with_delegate("auto"),
    }[engine]


def secured_gateway(engine: str, sqlite_config: Config, services_config: Config) -> Gateway:
    """A policy-enforcing gateway on one of :data:`ENGINES` (:func:`engine_config`)."""
    config = with_policies(engine_config(engine, sqlite_config, services_config))
    return Gateway.start(config, create_engine(config))


def run(gateway: Gateway, role: str, query: str, **claims: Any) -> dict[str, Any]:
    body = gateway.execute(query, identity=Identity(role, claims)).body
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


def errors(gateway: Gateway, role: str, query: str, **claims: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = gateway.execute(query, identity=Identity(role, claims)).body.get("errors", [])
    return result


def hashed(value: str) -> str:
    return "h:" + hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()[:16]


def partial(value: str, first: int, last: int) -> str:
    if len(value) <= first + last:
        return "*" * len(value)
    return value[:first] + "*" * (len(value) - first - last) + value[len(value) - last :]


def fields_of(gateway: Gateway, role: str, type_name: str) -> set[str] | None:
    """The column fields of a table's type for ``role`` (None: the table is absent)."""
    table = gateway.view(Identity(role)).model.tables.get(type_name)
    return set(table.columns) if table is not None else None


def type_fields(gateway: Gateway, role: str, type_name: str) -> set[str] | None:
    graphql_type = gateway.view(Identity(role)).model.schema.get_type(type_name)
    return set(graphql_type.fields) if isinstance(graphql_type, GraphQLObjectType) else None


def write_policy(path: Path, tables_by_role: dict[str, Any], floors: list[Any] | None = None) -> Path:
    body: dict[str, Any] = {"roles": {role: {"tables": tables} for role, tables in tables_by_role.items()}}
    if floors is not None:
        body["floors"] = floors
    path.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return path


LATE_QUERIES = {
    # masked columns only projected: masked where projected, after the filters and the join
    "projected": """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}}, order_by: [{visit_id: asc}],
        limit: 40) { visit_id id_card resident { id_card name phone } } }""",
    # the same rows, with the masked columns also filtered and ordered by: masked in the subquery
    "filtered": """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}, id_card: {_like: "441900%"},
        resident: {name: {_like: "%*%"}}}, order_by: [{visit_id: asc}], limit: 40)
        { visit_id id_card resident { id_card name phone } } }""",
    "ordered": """{ public_security_residents(where: {name: {_like: "张%"}}, order_by: [{name: desc},
        {id_card: asc}]) { id_card name same: name } }""",
    "aggregated": """{ public_security_residents_aggregate(where: {district: {_eq: "南城"}}) {
        aggregate { count max { name } } nodes { name id_card } } }""",
}


def raw_of(masked: exp.Expr) -> exp.Column:
    """The raw value a deferred mask reads."""
    column = masked.find(exp.Column)
    assert column is not None
    return column


def rewritten(analyst: tuple[Gateway, Any], query: str) -> exp.Expr:
    from policies.rewrite import enforce

    gateway, ctx = analyst
    [compiled] = gateway.compile(query, identity=Identity("health_analyst"))
    return enforce(compiled.tree, ctx)
