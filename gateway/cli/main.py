"""The ``citygate`` command line.

Every failure the user can fix ends as one line, ``citygate: error: ...``, naming the file,
key or department to check, and exit status 2; never a stack trace.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from catalogue.errors import CitygateError

if TYPE_CHECKING:
    from gateway.execution.gateway import Gateway
    from gateway.execution.prepared import Statement
    from gateway.execution.views import View
    from gateway.graphql.compile import Compiled

DEFAULT_DATA_DIR = Path(".citygate") / "demo"


def _load(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.config import load_config

    config = load_config(args.config)
    engine = getattr(args, "engine", None)
    return config.with_engine(engine) if engine else config


def datasets() -> Any:
    """The demo city and the data generators (``datasets/``). They use the gateway and live
    apart from it, so the command line reaches them here, and only here, by name."""
    return importlib.import_module("datasets.commands")


def cmd_datagen(args: argparse.Namespace) -> int:
    """Generate the demo city (or --profile seed-scale) and write each department into its own store."""
    if args.profile == "seed-scale":
        return int(datasets().seed_scale(args.config, args.scale))
    config = _load(args) if args.config else None
    return int(
        datasets().datagen(config, Path(args.data_dir).resolve(), args.scale, args.seed, str(args.config), args.force)
    )


def cmd_trino_catalogs(args: argparse.Namespace) -> int:
    """Write one Trino catalog properties file per department."""
    from connectors.trino import write_catalog_files

    for path in write_catalog_files(_load(args).engine_settings(), Path(args.out)):
        print(path)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """Report whether the engine and every department's store answer."""
    from gateway.execution.engines import create_engine

    engine = create_engine(_load(args))
    try:
        health = engine.health()
    finally:
        engine.close()
    print(f"engine {health.engine}: {'ok' if health.reachable else 'unreachable'}")
    if health.problem:
        print(f"  {health.problem}")
    for department, state in health.departments.items():
        print(f"  {department}: {state}")
    return 0 if health.ok else 1


def cmd_introspect(args: argparse.Namespace) -> int:
    """Print each department's tables and column types as the engine sees them."""
    from gateway.execution.engines import create_engine

    engine = create_engine(_load(args))
    try:
        catalogue = engine.introspect(args.department or None)
    finally:
        engine.close()
    print(json.dumps(catalogue.describe(), ensure_ascii=False, indent=2))
    return 0


def _gateway(args: argparse.Namespace, recording: bool = False, prove: bool = True):  # type: ignore[no-untyped-def]
    """The gateway over ``--config``, or over the embedded demo city when there is none;
    ``recording``: it serves requests, so it writes the audit trail (the offline commands do not);
    ``prove=False``: one that starts with masks not proven on every route (`policy check`)."""
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway

    config = _load(args) if getattr(args, "config", None) else datasets().demo(Path(args.data_dir).resolve())
    return Gateway.start(config, create_engine(config), recording=recording, prove=prove)


def _identity(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from gateway.identity.caller import Identity

    if not getattr(args, "role", None):
        return None
    claims = {}
    for pair in args.claim or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CitygateError(f"--claim {pair!r}: write name=value")
        claims[name] = value
    return Identity(args.role, claims)


def _reloader(gateway: Any) -> Callable[[int, object], None]:
    """The SIGHUP handler: it only asks a thread of its own to read the policy files again.

    A handler runs on the main thread between any two bytecodes, so one that reloaded itself
    could find the gateway's lock held by the very code it interrupted, or by a reload that a
    second signal interrupted: the event loop waited on it for good. Signals that come while a
    reload runs make one more reload after it."""
    wanted = threading.Event()

    def reload_when_asked() -> None:
        while True:
            wanted.wait()
            wanted.clear()
            try:
                gateway.reload_policies()
            except CitygateError as error:
                logging.getLogger("citygate").error("policy reload failed, the old policies stay: %s", error.message)
            except Exception:  # the thread must outlive any failure, or later signals do nothing
                logging.getLogger("citygate").exception("policy reload failed, the old policies stay")

    threading.Thread(target=reload_when_asked, name="citygate-reload", daemon=True).start()
    return lambda signum, frame: wanted.set()


def _serve(args: argparse.Namespace, banner: str, epilogue: str = "", example: str = "", demo: Any = None) -> int:
    import signal

    import uvicorn

    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway
    from gateway.http.app import create_app, server_options
    from gateway.observe import logs

    logs.configure(args.log_format, args.log_level)
    if args.workers is not None and args.workers < 1:
        raise CitygateError("--workers: give 1 or more")
    if (args.workers or 1) > 1:
        return _serve_workers(args, banner + epilogue, example)
    if getattr(args, "config", None):  # a deployment: it fails closed (Config.served)
        config, warnings = _load(args).served()
        for warning in warnings:
            print(f"citygate: warning: {warning}", file=sys.stderr)
        gateway = Gateway.start(config, create_engine(config))
    else:
        gateway = _gateway(args, recording=True)
    for department, why in gateway.unavailable.items():
        print(f"citygate: warning: {department} is left out of the schema: {why}", file=sys.stderr)

    if gateway.policies is not None:
        signal.signal(signal.SIGHUP, _reloader(gateway))
    address = f"http://{args.host}:{args.port}/graphql"
    console = f"http://{args.host}:{args.port}/console"
    print(banner.format(address=address, console=console, engine=gateway.engine.name) + epilogue, file=sys.stderr)
    try:
        app = create_app(gateway, example=example, demo=demo)
        options = server_options(gateway.config.limits)
        uvicorn.run(app, host=args.host, port=args.port, log_config=None, **options)
    finally:
        gateway.close()  # writes the audit records still queued
    return 0


def _serve_workers(args: argparse.Namespace, banner: str, example: str) -> int:
    """``--workers N``: uvicorn's supervisor runs N worker processes on one port, each with its
    own gateway (gateway/cli/workers.py). The configuration is checked here first, so a bad one
    fails once, with its message, before any worker starts."""
    import os

    import uvicorn

    from gateway.cli import workers
    from gateway.http.app import SERVER_OPTIONS

    if getattr(args, "config", None):
        _, warnings = _load(args).served()
        for warning in warnings:
            print(f"citygate: warning: {warning}", file=sys.stderr)
    os.environ[workers.WORKER] = workers.spec(args, example)
    address = f"http://{args.host}:{args.port}/graphql"
    console = f"http://{args.host}:{args.port}/console"
    engine = args.engine or (_load(args).engine.kind if getattr(args, "config", None) else "embedded")
    print(banner.format(address=address, console=console, engine=engine), file=sys.stderr)
    print(f"citygate: {args.workers} worker processes", file=sys.stderr)
    uvicorn.run(
        "gateway.cli.workers:app",
        factory=True,
        workers=args.workers,
        host=args.host,
        port=args.port,
        log_config=None,
        **SERVER_OPTIONS,
    )
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Verify the audit trail's hash chain, or query its records."""
    from gateway.observe import audit

    path = _audit_file(args)
    if args.action == "verify":
        verdict = audit.verify(path)
        for event in verdict.events:  # the gateway's own notes: gaps it knows of, and why
            print(f"{path}: {event}", file=sys.stderr)
        if verdict.ok:
            print(f"{path}: {verdict.records} records, the chain holds")
            return 0
        print(
            f"{path}: record {verdict.broken} (line {verdict.broken}) does not hold: {verdict.reason}; "
            f"the {verdict.records} records before it hold",
            file=sys.stderr,
        )
        return 1
    since = _when(args.since, "--since")
    until = _when(args.until, "--until")
    found = [r for r in audit.records(path) if _matches(r, args, since, until)]
    if args.json:
        for record in found:
            print(json.dumps(record, ensure_ascii=False))
    else:
        print(_audit_table(found))
    return 0


def _audit_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    if args.config:
        config = _load(args)
        path: Path | None = config.audit_file()  # the default under data_dir too, as `serve` writes it
        if path is None:
            assert config.audit is not None
            raise CitygateError(f"{args.config}: audit.sink: {config.audit.sink}: the trail is not written to a file")
        return path
    return Path(args.data_dir) / "audit.jsonl"


def _when(text: str | None, option: str) -> str | None:
    """An ISO 8601 time as the trail writes it (UTC), for comparing with records' `time`."""
    if text is None:
        return None
    import datetime as dt

    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CitygateError(f"{option} {text!r}: give an ISO 8601 time such as 2026-11-27T10:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _matches(record: dict[str, Any], args: argparse.Namespace, since: str | None, until: str | None) -> bool:
    access = record.get("access") or []
    if args.subject and record.get("subject") != args.subject:
        return False
    if args.role and record.get("role") != args.role:
        return False
    if args.department and not any(a.get("department") == args.department for a in access):
        return False
    if args.column:
        table, _, column = args.column.rpartition(".")
        if not any(
            column in (a.get("columns") or {})
            and (not table or table in (a["table"], f"{a['department']}.{a['table']}"))
            for a in access
        ):
            return False
    time_ = str(record.get("time", ""))
    return (since is None or time_ >= since) and (until is None or time_ < until)


def _audit_table(found: list[dict[str, Any]]) -> str:
    header = ("time", "request", "subject", "role", "outcome", "read (column: treatment)", "rows", "cache", "ms")
    rows: list[tuple[str, ...]] = [header]
    for record in found:
        read = "; ".join(
            f"{a['department']}.{a['table']}"
            + (f"[{a['access']}]" if a.get("access") not in (None, "allow") else "")
            + ("(" + ", ".join(f"{c}: {t}" for c, t in a.get("columns", {}).items()) + ")" if a.get("columns") else "")
            for a in record.get("access") or []
        )
        rows.append(
            (
                str(record.get("time", "")),
                str(record.get("request_id", ""))[:12],
                str(record.get("subject") or "-"),
                str(record.get("role") or "-"),
                str(record.get("outcome", "")) + ("/" + ",".join(record["errors"]) if record.get("errors") else ""),
                read or "-",
                str(sum((record.get("rows") or {}).values())),
                ",".join(sorted(set((record.get("cache") or {}).values()))) or "-",
                str(record.get("duration_ms", "")),
            )
        )
    rows = [tuple(_shown(cell) for cell in row) for row in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"({len(found)} records)")
    return "\n".join(lines)


def _shown(text: str) -> str:
    """A recorded text as a terminal may show it: every control, format or line-separating
    character escaped (a token's ``sub`` of ``"\\x1b[2K"`` or a newline must not forge or erase
    table lines), the rest as it is.

    >>> _shown("u-1\\n2026-01-01  forged"), _shown("\\x1b[2Kx"), _shown("案件" + chr(0x202E))
    ('u-1\\\\n2026-01-01  forged', '\\\\x1b[2Kx', '案件\\\\u202e')
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def cmd_cache(args: argparse.Namespace) -> int:
    """Clear a running gateway's result cache (all of it, or what one department's data filled)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    token = args.token or os.environ.get("CITYGATE_ADMIN_TOKEN")
    if not token:
        token = datasets().admin_token(Path(args.data_dir).resolve())
    if not args.url.startswith(("http://", "https://")):
        raise CitygateError(f"--url {args.url!r}: give the gateway's http:// or https:// address")
    url = args.url.rstrip("/") + "/admin/cache/clear"
    if args.department:
        url += "?" + urllib.parse.urlencode({"department": args.department})
    request = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - the operator's own URL
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        raise CitygateError(f"{url}: {error.code}: {error.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, OSError) as error:
        raise CitygateError(f"{url}: cannot reach the gateway ({getattr(error, 'reason', error)})") from None
    print(f"cleared {answer['cleared']} cached answers ({answer['department'] or 'all departments'})")
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    """Print a reference page made from the code (or write both into a directory)."""
    from catalogue.errors import error_table
    from gateway.reference import config_reference, write

    if args.write:
        for path in write(Path(args.write)):
            print(f"wrote {path}")
        return 0
    print(config_reference() if args.page == "config" else error_table(), end="")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    """Check the configured policies, or run policy test cases against the engine."""
    if args.action == "test" and not args.file:
        raise CitygateError("`citygate policy test` needs a file of test cases, e.g. policies/demo/tests.yaml")
    # `check` reports the masks a serving gateway refuses, so it starts without refusing them
    gateway = _gateway(args, prove=args.action != "check")
    try:
        if gateway.policies is None:
            raise CitygateError("the configuration has no policies section")
        if args.action == "check":
            return _policy_check(gateway)
        from gateway.execution.privacy import PrivacyBudgets

        # Test cases spend a budget of their own: a run must not use up the deployment's.
        gateway.privacy = PrivacyBudgets()
        return _policy_test(gateway, Path(args.file))
    finally:
        gateway.close()


def _policy_check(gateway: Gateway) -> int:
    import time

    from gateway.execution.measure import run_all
    from gateway.execution.proof import prove_masks
    from gateway.execution.views import sharing_classes
    from policies.review import Finding, review

    began = time.perf_counter()
    tables = {
        (t.department, t.name): sharing_classes(gateway.config, t.department, t.name, [c.name for c in t.columns])
        for t in gateway.catalogue.tables
    }
    policies = gateway.policies
    settings = gateway.config.policies
    assert policies is not None and settings is not None
    types = {(t.department, t.name): {c.name: c.type for c in t.columns} for t in gateway.catalogue.tables}
    findings = review(
        policies,
        tables,
        types,
        lambda tree: gateway.engine.execute(tree).rows[0],
        settings.check_min_distinct,
        settings.check_min_candidates,
        _relations(gateway),
        primary=_primary_keys(gateway),
        run=lambda trees: run_all(gateway.engine, trees),
    )
    # masks tried on every route: what start-up refuses to serve
    findings += [
        Finding("mask", r.message) for r in prove_masks(gateway.routes, policies, gateway.catalogue, gateway.config)
    ]
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


def _relations(gateway: Gateway) -> dict[tuple[str, str], frozenset[str]]:
    """The relationship fields on each table, as the configuration declares them."""
    names: dict[tuple[str, str], set[str]] = {}
    for link in gateway.config.relationships:
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


def cmd_documents(args: argparse.Namespace) -> int:
    """Register GraphQL documents from files as trusted, or list the registered ones."""
    from gateway.graphql import documents

    config = _load(args)
    if config.trusted_documents is None:
        raise CitygateError(f"{args.config}: trusted_documents: configure `store` (the manifest) to register documents")
    store = config.trusted_documents.store
    if args.action == "register":
        if not args.files:
            raise CitygateError("documents register: name the .graphql files to register")
        texts = []
        for name in args.files:
            try:
                texts.append((name, Path(name).read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as error:
                raise CitygateError(f"{name}: cannot be read: {error}") from None
        for digest, source, new in documents.register(store, texts, config.limits.max_tokens):
            print(f"sha256:{digest}  {source}  {'registered' if new else 'already registered'}")
        return 0
    for digest, text in sorted(documents.read_manifest(store, missing_ok=True).items()):
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        print(f"sha256:{digest}  {first[:80]}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """Print a token that `citygate demo` with the same --data-dir accepts (demo only)."""
    identity = _identity(args)
    assert identity is not None
    chosen = args.data_dir != str(DEFAULT_DATA_DIR)
    data_dir = Path(args.data_dir).resolve()
    print(datasets().demo_token(data_dir, chosen, identity.role, dict(identity.claims), args.ttl))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve the demo city on the embedded engine (built under --data-dir on first run)."""
    banner = (
        "citygate demo: the demo city on the {engine} engine\n"
        "  GraphiQL:  {address}  (open it in a browser; the console, with the catalogue: {console})\n"
        "  POST:      curl -s {address} -H 'content-type: application/json' "
        '-d \'{{"query": "{{ transport_stations(limit: 3) {{ name district }} }}"}}\'\n'
        "Tokens: citygate token --role health_analyst   (roles: anonymous without a token, health_analyst,\n"
        "        district_officer --claim district=南城, env_inspector, police, supervisor,\n"
        "        citizen --claim id_card=441900197407169777); paste it\n"
        "        once in the Token box at the top of GraphiQL or the console\n"
        "        (or pick a demo role in that bar: the demo's pages offer each role's token)\n"
        "GraphiQL opens with a query anonymous can run; as health_analyst, with this one:\n\n"
    )
    demo = datasets().demo_page(Path(args.data_dir).resolve())
    return _serve(args, banner, datasets().EXAMPLE_QUERY, example=datasets().ANONYMOUS_EXAMPLE, demo=demo)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a configured deployment on its engine."""
    return _serve(args, "citygate: serving on the {engine} engine at {address}")


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the GraphQL schema (SDL)."""
    from graphql import print_schema

    gateway = _gateway(args)
    try:
        identity = _identity(args)
        model = gateway.view(identity).model if identity is not None else gateway.model
        print(print_schema(model.schema))
    finally:
        gateway.close()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Print each root field's route, and the SQL it runs there: on its store, in the store's
    dialect, when it is delegated; and on each engine."""
    from gateway.execution.engines import create_engine
    from gateway.execution.prepared import Statement

    query = sys.stdin.read() if args.query == "-" else args.query
    if query.startswith("@"):
        query = Path(query[1:]).read_text(encoding="utf-8")
    try:
        variables = json.loads(args.variables) if args.variables else None
    except ValueError:
        raise CitygateError("--variables is not valid JSON") from None
    gateway = _gateway(args)
    try:
        identity = _identity(args)
        prepared = gateway.prepared(query, variables, identity=identity)
        compiled = [statement.compiled for statement in prepared]
        view = gateway.view(identity)
        cost = gateway.plan(query, variables, identity=identity).cost
        most = gateway.limits(view.role).max_cost
        print(f"-- rows its statements may read at worst: {cost:,} (its role may: {most:,})")
        engines = [gateway.engine]
        other = "embedded" if gateway.engine.name == "trino" else "trino"
        if all(d.store.kind != "sqlite" for d in gateway.config.departments.values()):
            engines.append(create_engine(gateway.config.with_engine(other)))
        for statement in prepared:
            key = statement.compiled.key
            if not isinstance(statement, Statement):
                print(f"-- {key}: not run: {gateway.engine.redact(statement.error.message)}\n")
                continue
            _print_route(key, statement)
            for engine in engines:
                print(f"-- {key} on {engine.name} ({engine.dialect})")
                # The text that runs when the route is this engine's; else the same tree there.
                # The hash key and the tie-break key travel inside the statement; not on a screen.
                runs = statement.route.engine is engine
                print(engine.redact(statement.text if runs else engine.sql(statement.rewritten)) + ";\n")
        _print_decisions(view, compiled)
        if len(engines) == 1:
            print(
                f"-- {other}: not available for this configuration (SQLite stores are read by the embedded engine only)"
            )
    finally:
        gateway.close()
    return 0


def _print_decisions(view: View, compiled: list[Compiled]) -> None:
    """The role's decisions on the tables ``compiled`` reads: what `explain --role` adds."""
    from policies.noise import least_threshold

    if view.decisions is None:
        return
    print(f"-- policy decisions for role {view.role}:")
    for (department, table), decision in sorted(view.decisions.items()):
        if any(department == d for c in compiled for d in c.departments):
            shown = ", ".join(f"{c}: {t}" for c, t in decision.columns.items())
            extra = f"; row filter: {decision.row_filter}" if decision.row_filter else ""
            extra += f"; aggregate only, k={decision.k}" if decision.access == "aggregate_only" else ""
            if decision.access == "aggregate_only" and decision.k_distinct is not None:
                extra += f" distinct {decision.k_distinct}"
            if decision.noise is not None:
                bounds = ", ".join(f"{c} in [{lo:g}, {hi:g}]" for c, (lo, hi) in decision.noise.bounds.items())
                extra += f"; noise epsilon {decision.noise.epsilon:g} per count or sum{'; ' if bounds else ''}"
                extra += bounds
                noise = decision.noise
                threshold = noise.threshold or least_threshold(noise.epsilon, decision.k, noise.delta)
                extra += f"; groups shown from a noisy count of {threshold} (delta {noise.delta:g})"
            print(f"--   {department}.{table} ({decision.access}{extra}): {shown}")


def _print_route(key: str, statement: Statement) -> None:
    """A root field's route, and its store's own SQL (the text that runs) when it is delegated."""
    route = statement.route
    if route.store:
        print(f"-- {key}: route delegated, to {route.store} ({route.engine.dialect})")
        print(route.engine.redact(statement.text) + ";\n")
    else:
        print(f"-- {key}: route {route.name} (it reads more than one store, or needs the engine)")


def _gateway_commands(command: Callable[[str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser]) -> None:
    """The commands that serve, print or query a gateway."""
    from gateway.cli.workers import default_workers

    def serving(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--log-format", choices=("json", "text"), default="json", help="log lines (default json)")
        p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")

    def demo_or_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="a deployment config (default: the embedded demo city)")
        p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")
        p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the demo city's SQLite files")

    p = command("demo", cmd_demo)
    serving(p)
    p.add_argument("--workers", type=int, default=None, help="processes serving the port (default 1)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where the demo city's SQLite files live")

    p = command("serve", cmd_serve)
    serving(p)
    p.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes serving the port, sharing the audit trail and the state (default: one per core, at most 8)",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")

    def as_role(p: argparse.ArgumentParser) -> None:
        p.add_argument("--role", help="as this role sees it (with policies configured)")
        p.add_argument("--claim", action="append", metavar="NAME=VALUE", help="a claim of the role (repeatable)")

    p = command("schema", cmd_schema)
    p.add_argument("action", choices=("print",))
    demo_or_config(p)
    as_role(p)

    p = command("explain", cmd_explain)
    p.add_argument("query", help="the GraphQL query, @FILE, or - for standard input")
    p.add_argument("--variables", help="variables as a JSON object")
    demo_or_config(p)
    as_role(p)

    p = command("policy", cmd_policy)
    p.add_argument("action", choices=("check", "test"))
    p.add_argument("file", nargs="?", help="policy test cases (YAML), for `test`")
    demo_or_config(p)

    p = command("reference", cmd_reference)
    p.add_argument("page", choices=("config", "errors"), help="the configuration reference, or the error codes")
    p.add_argument("--write", metavar="DIR", help="write both pages into DIR (docs/) instead of printing one")

    p = command("token", cmd_token)
    p.add_argument("--role", required=True)
    p.add_argument("--claim", action="append", metavar="NAME=VALUE", help="a claim policies may use (repeatable)")
    p.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid (default 3600)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the demo's data directory")


def _supervision_commands(
    command: Callable[[str, Callable[[argparse.Namespace], int]], argparse.ArgumentParser],
) -> None:
    """The commands a supervisor uses: the audit trail, trusted documents and the cache."""
    p = command("audit", cmd_audit)
    p.add_argument("action", choices=("verify", "query"))
    p.add_argument("file", nargs="?", help="the audit file (default: the config's audit.path, or the demo's)")
    p.add_argument("--config", help="read audit.path from this deployment config")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the demo's data directory")
    p.add_argument("--subject", help="only requests by this subject (the token's sub)")
    p.add_argument("--role", help="only requests acting as this role")
    p.add_argument("--department", help="only requests that read this department")
    p.add_argument("--column", help="only requests that read this column: COLUMN, TABLE.COLUMN or DEPT.TABLE.COLUMN")
    p.add_argument("--since", help="from this time on (ISO 8601; UTC unless it says otherwise)")
    p.add_argument("--until", help="before this time (ISO 8601)")
    p.add_argument("--json", action="store_true", help="print the matching records as JSON lines")

    p = command("documents", cmd_documents)
    p.add_argument("action", choices=("register", "list"))
    p.add_argument("files", nargs="*", metavar="FILE", help="GraphQL documents to register (.graphql files)")
    p.add_argument("--config", required=True, help="the deployment config naming trusted_documents.store")

    p = command("cache", cmd_cache)
    p.add_argument("action", choices=("clear",))
    p.add_argument("--department", help="only answers that read this department")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the running gateway (default: the demo's)")
    p.add_argument("--token", help="the admin token (default: $CITYGATE_ADMIN_TOKEN, else the demo's)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="the demo's data directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citygate", description="A federated GraphQL gateway over a city's departments."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        doc = (handler.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc, description=doc)
        p.set_defaults(handler=handler)
        return p

    p = command("datagen", cmd_datagen)
    p.add_argument("--config", help="write into the stores this config names (default: SQLite files)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help="where SQLite files go without --config")
    p.add_argument("--scale", type=_positive_float, default=1.0, help="multiply the scalable row counts (default 1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the contract's)")
    p.add_argument("--force", action="store_true", help="write stores that hold tables citygate did not write")
    p.add_argument(
        "--profile",
        choices=("demo", "seed-scale"),
        default="demo",
        help="demo: the demo city; seed-scale: 73 departments, 755 tables, 26.88M rows (default config: "
        "configs/seed-scale.yaml)",
    )

    p = command("trino-catalogs", cmd_trino_catalogs)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="directory for the .properties files")

    _gateway_commands(command)
    _supervision_commands(command)
    for name, handler in (("check", cmd_health), ("introspect", cmd_introspect)):
        p = command(name, handler)
        p.add_argument("--config", required=True)
        p.add_argument("--engine", choices=("trino", "embedded"), help="override the config's engine")
        if name == "introspect":
            p.add_argument("department", nargs="*")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "seed", 0) is None:
        args.seed = datasets().DEFAULT_SEED
    try:
        return int(args.handler(args))
    except CitygateError as error:
        print(f"citygate: error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("citygate: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: a line saying so, not a traceback (CITYGATE_DEBUG=1 shows it)
        if os.environ.get("CITYGATE_DEBUG"):
            raise
        print(
            f"citygate: unexpected error ({type(error).__name__}: {error}); run again with CITYGATE_DEBUG=1 "
            "to see where, and report it",
            file=sys.stderr,
        )
        return 70  # EX_SOFTWARE
