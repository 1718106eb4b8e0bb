"""``citygate audit``, ``documents`` and ``cache``: the commands a supervisor uses."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from catalogue.errors import CitygateError
from gateway.cli.common import DEFAULT_DATA_DIR, Command, config_of, datasets


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
            print(_json_line(record))
    else:
        print(_audit_table(found))
    return 0


def _audit_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    if args.config:
        config = config_of(args)
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


_UNSHOWN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})  # control, format, surrogate, line and paragraph separators


def _json_line(record: dict[str, Any]) -> str:
    """A record as one JSON line a terminal may show: every control, format or line-separating
    character as ``\\uXXXX`` (JSON's own escaping leaves U+202E, the C1 controls and U+2028
    raw, which reorder or rewrite what a terminal shows), the rest as it is, Chinese too.

    >>> print(_json_line({"sub": "案件" + chr(0x202E) + chr(0x9B) + chr(0x2028) + chr(0xE0001)}))
    {"sub": "案件\\u202e\\u009b\\u2028\\udb40\\udc01"}
    """
    import unicodedata

    line = json.dumps(record, ensure_ascii=False)
    if line.isprintable():
        return line
    # such characters stand only inside JSON strings (its syntax is ASCII), where an escape
    # means the same character
    return "".join(c if c.isprintable() or unicodedata.category(c) not in _UNSHOWN else _escaped(c) for c in line)


def _escaped(c: str) -> str:
    """``c`` as JSON escapes it; past U+FFFF, as its UTF-16 surrogate pair."""
    code = ord(c)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


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


def cmd_documents(args: argparse.Namespace) -> int:
    """Register GraphQL documents from files as trusted, or list the registered ones."""
    from gateway.graphql import documents

    config = config_of(args)
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


def register(command: Command) -> None:
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
