"""``citygate policy check`` and ``policy test``: what the configured policies disclose, and
whether they answer as their test cases say."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalogue.errors import CitygateError
from gateway.cli.common import Command, demo_or_config, gateway_of

if TYPE_CHECKING:
    from collections.abc import Iterable

    from gateway.config import PoliciesConfig, RelationshipConfig
    from gateway.execution.gateway import Gateway


def cmd_policy(args: argparse.Namespace) -> int:
    """Check the configured policies, or run policy test cases against the engine."""
    if args.action == "test" and not args.file:
        raise CitygateError("`citygate policy test` needs a file of test cases, e.g. policies/demo/tests.yaml")
    # `check` reports the masks a serving gateway refuses, so it starts without refusing them
    gateway = gateway_of(args, prove=args.action != "check")
    try:
        if gateway.policies is None:
            raise CitygateError("the configuration has no policies section")
        if args.action == "check":
            assert gateway.config.policies is not None
            return _policy_check(gateway, gateway.config.policies)
        from gateway.execution.privacy import PrivacyBudgets

        # Test cases spend a budget of their own: a run must not use up the deployment's.
        gateway.privacy = PrivacyBudgets()
        return _policy_test(gateway, Path(args.file))
    finally:
        gateway.close()


def _policy_check(gateway: Gateway, settings: PoliciesConfig) -> int:
    """``settings``: the thresholds of the disclosure review (``policies.check_*``)."""
    import time

    from gateway.execution.measure import run_all
    from gateway.execution.proof import prove_masks
    from policies.review import Finding, review

    began = time.perf_counter()
    catalogue = gateway.catalogue_settings
    tables = {
        (t.department, t.name): catalogue.sharing_classes(t.department, t.name, [c.name for c in t.columns])
        for t in gateway.catalogue.tables
    }
    policies = gateway.policies
    assert policies is not None
    types = {(t.department, t.name): {c.name: c.type for c in t.columns} for t in gateway.catalogue.tables}
    findings = review(
        policies,
        tables,
        types,
        lambda tree: gateway.engine.execute(tree).rows[0],
        settings.check_min_distinct,
        settings.check_min_candidates,
        _relations(catalogue.relationships),
        primary=_primary_keys(gateway),
        run=lambda trees: run_all(gateway.engine, trees),
        joins=join_keys(catalogue.relationships),
    )
    # masks tried on every route: what start-up refuses to serve; a route that did not answer
    # is a finding too, as nothing says its masks mean what they do elsewhere
    proof = prove_masks(gateway.routes, policies, gateway.catalogue, catalogue)
    findings += [Finding("mask", r.message) for r in proof.refusals]
    findings += [Finding("mask", u.message) for u in proof.unchecked]
    print(f"policies {policies.version}: roles {', '.join(sorted(policies.roles))}; {len(tables)} tables")
    open_ = [f for f in findings if not f.accepted]
    accepted = [f for f in findings if f.accepted]
    for finding in sorted(open_, key=lambda f: f.kind):  # stable: each kind in the check's order
        print(f"  {finding.kind}: {finding.message}")
    if accepted:
        print("accepted (checks.accept):")
        for finding in accepted:
            print(f"  {finding.kind}: {finding.message}\n    because: {finding.accepted}")
    seconds = time.perf_counter() - began
    summary = "no findings" if not open_ else f"{len(open_)} finding(s)"
    print(f"{summary}, {len(accepted)} accepted; measured in {seconds:.1f} s")
    return 1 if open_ else 0


def _primary_keys(gateway: Gateway) -> dict[tuple[str, str], tuple[str, ...]]:
    """Each table's primary key: the configuration's, else the store's (Trino reports none)."""
    return {(t.department, t.name): t.primary_key for t in gateway.model.tables.values()}


def join_keys(relationships: Iterable[RelationshipConfig]) -> dict[tuple[str, str], tuple[str, ...]]:
    """The columns of each table that a relationship joins on, at either end: identifiers,
    however often a value repeats (a visit's ``id_card``)."""
    columns: dict[tuple[str, str], set[str]] = {}
    for link in relationships:
        for ref in (link.source_ref, link.target_ref):
            columns.setdefault((ref.department, ref.table), set()).add(ref.column)
    return {key: tuple(sorted(value)) for key, value in columns.items()}


def _relations(relationships: Iterable[RelationshipConfig]) -> dict[tuple[str, str], frozenset[str]]:
    """The relationship fields on each table, as the configuration declares them."""
    names: dict[tuple[str, str], set[str]] = {}
    for link in relationships:
        names.setdefault((link.source_ref.department, link.source_ref.table), set()).add(link.name)
        if link.reverse is not None:
            names.setdefault((link.target_ref.department, link.target_ref.table), set()).add(link.reverse.name)
    return {key: frozenset(value) for key, value in names.items()}


def _policy_test(gateway: Gateway, path: Path) -> int:
    import yaml

    from gateway.identity.caller import Identity

    try:
        cases = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CitygateError(f"{path}: cannot read the policy tests ({error.__class__.__name__})") from None
    if not isinstance(cases, list):
        raise CitygateError(f"{path}: expected a list of test cases")
    failed = 0
    for index, case in enumerate(cases):
        if not isinstance(case, dict) or "role" not in case or "query" not in case:
            raise CitygateError(f"{path}: case {index}: needs role and query")
        identity = Identity(str(case["role"]), {k: v for k, v in (case.get("claims") or {}).items()})
        body = gateway.execute(case["query"], case.get("variables"), identity=identity).body
        if "expect_error" in case:
            codes = [e.get("extensions", {}).get("code") for e in body.get("errors", [])]
            ok = case["expect_error"] in codes
            got = f"errors {codes}" if codes else f"data {json.dumps(body.get('data'), ensure_ascii=False)}"
        else:
            tolerance = float(case.get("tolerance", 0))
            ok = "errors" not in body and _near(body.get("data"), case.get("expect"), tolerance)
            got = json.dumps(body, ensure_ascii=False)
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {case.get('name', f'case {index}')}")
        if not ok:
            print(f"       got {got[:400]}")
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


def _near(got: Any, want: Any, tolerance: float) -> bool:
    """Whether ``got`` is ``want``, each number within ``tolerance`` of it (a noisy count or
    sum; a sum comes as a string). Keys, lists and other values must be equal.

    >>> _near({"count": 101, "sum": {"cost": "99.5"}}, {"count": 100, "sum": {"cost": "100"}}, 2)
    True
    >>> _near([{"count": 104}], [{"count": 100}], 2), _near({"a": 1}, {"b": 1}, 2)
    (False, False)
    """
    if isinstance(want, dict):
        return (
            isinstance(got, dict) and got.keys() == want.keys() and all(_near(got[k], want[k], tolerance) for k in want)
        )
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_near, got, want, [tolerance] * len(want)))
    if tolerance and not isinstance(want, bool) and not isinstance(got, bool):
        try:
            return abs(float(got) - float(want)) <= tolerance
        except (TypeError, ValueError):
            pass
    return bool(got == want)


def register(command: Command) -> None:
    """`policy check` and `policy test`."""
    p = command("policy", cmd_policy)
    p.add_argument("action", choices=("check", "test"))
    p.add_argument("file", nargs="?", help="policy test cases (YAML), for `test`")
    demo_or_config(p)
