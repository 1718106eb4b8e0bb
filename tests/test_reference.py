"""The reference pages in docs/ are made from the code, and say what the code does now."""

from __future__ import annotations

import re
from pathlib import Path

from catalogue.errors import ERROR_CODES, error_table
from gateway.reference import config_reference
from tests.conftest import REPO

# Where the source names an error code it answers with.
_RAISED = (
    re.compile(r'\bcode\s*=\s*"([A-Z][A-Z_]+)"'),  # a CitygateError's class attribute, an AuthError's
    re.compile(r'graphql_error\([^\n]*?"([A-Z][A-Z_]+)"'),  # a GraphQL error made in place
    re.compile(r'\bdeny\([^\n]*?"([A-Z][A-Z_]+)"'),  # the edge's refusals (429, 403)
    re.compile(r'\berror\([^\n]*?"([A-Z][A-Z_]+)"'),  # the edge's one error shape (gateway/http/envelope.py)
    re.compile(r'"extensions": \{"code": "([A-Z][A-Z_]+)"'),  # the edge's own error bodies
    re.compile(r'^_NOT_FOUND = "([A-Z][A-Z_]+)"', re.MULTILINE),
    re.compile(r'^\s+return "([A-Z][A-Z_]+)"$', re.MULTILINE),  # a code a function decides (validation_code)
)
_NOT_SENT = {"CLIENT_DISCONNECTED"}  # recorded in the audit trail only: nobody is there to answer


def _raised() -> set[str]:
    found: set[str] = set()
    for package in ("catalogue", "connectors", "policies", "gateway"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for pattern in _RAISED:
                found.update(pattern.findall(text))
    return found - _NOT_SENT


def test_every_error_code_the_gateway_answers_with_is_in_the_table_and_no_other() -> None:
    listed = [e.code for e in ERROR_CODES]
    assert len(listed) == len(set(listed))
    raised = _raised()
    assert "POLICY_REFUSED" in raised and "RATE_LIMITED" in raised  # the scan finds what it must
    assert raised - set(listed) == set(), "codes the source answers with but docs/errors.md does not list"
    assert set(listed) - raised == set(), "codes docs/errors.md lists but nothing answers with"


def test_the_reference_pages_are_current() -> None:
    stale = "is stale: run `citygate reference config --write docs` and commit it"
    docs = REPO / "docs"
    assert (docs / "configuration.md").read_text(encoding="utf-8") == config_reference(), f"configuration.md {stale}"
    assert (docs / "errors.md").read_text(encoding="utf-8") == error_table(), f"errors.md {stale}"


def test_the_configuration_reference_holds_every_setting() -> None:
    page = config_reference()
    for key in (
        "limits.plan_seconds",
        "limits.roles.<name>.max_cost",
        "departments.<name>.store.(postgresql) schema",
        "engine.embedded.memory_limit",
        "relationships[].from",
        "auth.leeway_seconds",
    ):
        assert f"| `{key}` |" in page, key
    assert "Usage Documentation" not in page  # pydantic's own docstring, not ours
    assert Path(REPO / "docs" / "configuration.md").exists()
