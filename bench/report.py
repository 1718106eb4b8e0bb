"""The report: ``<stem>.json`` with every figure, ``<stem>.md`` for people, and PNG plots in
``<stem>/`` that the Markdown embeds by relative path.

Every section is optional: a section that failed or was not run is left out of the plots and
named in the Markdown, so a partial run still writes a readable report.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from bench import batched, delegation, durability

PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")


def write(report: dict[str, Any], stem: Path) -> Path:
    """Write ``stem``.json, ``stem``.md and the plots under ``stem``/; return the Markdown's path."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = stem.parent / stem.name
    plots_dir.mkdir(exist_ok=True)
    plots = draw(report, plots_dir)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=_jsonable))
    relative = {name: f"{stem.name}/{path.name}" for name, path in plots.items()}
    markdown_path = stem.with_suffix(".md")
    markdown_path.write_text(markdown(report, relative), encoding="utf-8")
    return markdown_path


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


# -- plots ----------------------------------------------------------------------------------


def draw(report: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Every plot the report's sections allow, by name."""
    plots: dict[str, Path] = {}
    peer = report.get("peer")
    if isinstance(peer, dict) and "by_connections" in peer:
        plots["peer_latency"] = _save(_peer_latency(peer), directory / "peer-latency.png")
        plots["peer_rps"] = _save(_peer_rps(peer), directory / "peer-rps.png")
    load = report.get("load")
    if isinstance(load, dict) and "latency_ms" in load:
        plots["load"] = _save(_load(load), directory / "load.png")
    if report.get("overhead") or report.get("policy"):
        plots["overhead"] = _save(_overhead(report), directory / "overhead.png")
    return plots


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _bars(axes: Any, groups: list[str], series: dict[str, list[float]], log: bool = False) -> None:
    width = 0.8 / max(1, len(series))
    for index, (label, values) in enumerate(series.items()):
        positions = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = axes.bar(positions, values, width, label=label)
        axes.bar_label(bars, labels=[_short(v) for v in values], fontsize=7, padding=1)
    axes.set_xticks(range(len(groups)), groups, fontsize=8)
    if log:
        axes.set_yscale("log")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)


def _short(value: float) -> str:
    """Three significant figures or so, for a bar's label.

    >>> _short(1234.5), _short(12.34), _short(0.456)
    ('1,234', '12.3', '0.46')
    """
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _peer_latency(peer: dict[str, Any]) -> Figure:
    by_connections = peer["by_connections"]
    figure, axes = plt.subplots(1, len(by_connections), figsize=(6 * len(by_connections), 4.2), squeeze=False)
    for ax, (connections, by) in zip(axes[0], by_connections.items(), strict=True):
        labels = [_label(peer, key) for key in by]
        series = {p.removesuffix("_ms"): [by[key][p] for key in by] for p in PERCENTILES}
        _bars(ax, labels, series, log=True)
        ax.set_title(f"latency at {connections} connections (ms, log scale)")
    return figure


def _peer_rps(peer: dict[str, Any]) -> Figure:
    by_connections = peer["by_connections"]
    keys = list(next(iter(by_connections.values())))
    figure, ax = plt.subplots(figsize=(9, 4.2))
    series = {f"{c} connections": [by[key]["rps"] for key in keys] for c, by in by_connections.items()}
    _bars(ax, [_label(peer, key) for key in keys], series, log=True)
    ax.set_title("requests per second, same query (log scale)")
    return figure


def _label(peer: dict[str, Any], key: str) -> str:
    return str(peer.get("targets", {}).get(key, key)).replace(", ", "\n", 1)


def _load(load: dict[str, Any]) -> Figure:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    latency = {k: v for k, v in load["latency_ms"].items() if k.startswith("p")}
    _bars(left, list(latency), {"latency (ms)": list(latency.values())})
    left.set_title(
        f"{load['requests']:,} requests, {load['connections']} connections: "
        f"{load['rps']:,.0f} rps, {load['errors']['total']} errors"
    )
    rss = load["rss_kib"]
    series = load.get("rss_series_kib") or []
    if series:
        right.plot([t for t, _ in series], [kib / 1024 for _, kib in series], marker=".", markersize=3)
        right.set_xlabel("seconds into the run")
        right.set_ylabel("RSS (MiB)")
        right.grid(alpha=0.3)
    else:
        names = [k for k in ("started", "before", "after") if k in rss]
        _bars(right, names, {"RSS (MiB)": [rss[k] / 1024 for k in names]})
    right.set_title(f"gateway RSS: {rss['delta'] / 1024:+.1f} MiB over the run")
    return figure


def _overhead(report: dict[str, Any]) -> Figure:
    names: list[str] = []
    values: list[float] = []
    for row in report.get("overhead", []):
        for key, label in (
            ("p50_ratio_in_process", "in process"),
            ("p50_ratio_uncached_plan", "no plan cache"),
            ("p50_ratio_over_http", "over HTTP"),
        ):
            names.append(f"{row['engine']}: gateway {label} / direct SQL")
            values.append(row[key])
    for row in report.get("policy", []):
        names.append(f"{row['engine']}, {row.get('query', 'query')}: with policy / without")
        values.append(row["p50_ratio"])
    figure, ax = plt.subplots(figsize=(9, 0.45 * len(names) + 1.2))
    bars = ax.barh(range(len(names)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.2f}×" for v in values], fontsize=8, padding=2)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.1)  # room for the labels right of the longest bar
    ax.axvline(1.0, color="grey", linewidth=1)
    ax.set_title("p50 ratios, measured interleaved in the same run (1.0 = no overhead)")
    ax.grid(axis="x", alpha=0.3)
    return figure


# -- Markdown -------------------------------------------------------------------------------


def markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    """The report for people; ``plots`` maps a plot's name to its path relative to the report."""
    lines = [f"# citygate benchmarks, {report.get('date', '?')}", ""]
    lines += [f"Machine: {report.get('machine', '?')}; {report.get('load_average', '')}", ""]
    lines += _checks(report)
    lines += _peer(report.get("peer"), plots)
    lines += _load_section(report.get("load"), plots)
    lines += delegation.markdown(report.get("delegation"))
    lines += batched.markdown(report.get("batched"))
    lines += durability.markdown(report.get("durability"))
    lines += _overhead_section(report, plots)
    lines += _shaping(report.get("shaping"))
    lines += _statements(report.get("statements"))
    lines += _hostile(report.get("hostile"))
    lines += _seed(report.get("seed"))
    failures = report.get("failures") or {}
    if failures:
        lines += ["## Sections that did not finish", ""]
        lines += [f"- **{name}**: {why}" for name, why in failures.items()]
        lines.append("")
    return "\n".join(lines)


def _met(met: Any, row: dict[str, Any] | None = None) -> str:
    if met is None and row is not None and "p50_ratio_ci95" in row:
        return "within noise"
    return "-" if met is None else "met" if met else "**missed**"


def _interval(row: dict[str, Any]) -> str:
    """`` [low, high]``, the ratio's 95 % interval, where the section measured one."""
    if "p50_ratio_ci95" not in row:
        return ""
    low, high = row["p50_ratio_ci95"]
    return f" [{low:.3f}, {high:.3f}]"


def _checks(report: dict[str, Any]) -> list[str]:
    rows = []
    for section in ("peer", "load", "delegation", "batched", "durability"):
        for check in (report.get(section) or {}).get("checks", []):
            rows.append(
                f"| {section} | {check['name']} | {_value(check['value'])} | {check['target']} | {_met(check['met'])} |"
            )
    for row in report.get("overhead", []):
        rows.append(
            f"| overhead | {row['engine']}: gateway p50 / direct SQL p50 | "
            f"{row['p50_ratio_in_process']:.3f} | {row['target']} | {_met(row['met'])} |"
        )
    for row in report.get("policy", []):
        rows.append(
            f"| policy | {row['engine']}, {row.get('query', 'query')}: with policy p50 / without "
            f"| {row['p50_ratio']:.3f}{_interval(row)} "
            f"| {row['target']} | {_met(row['met'], row)} |"
        )
    shaping = report.get("shaping")
    if shaping:
        rows.append(
            f"| shaping | strawberry µs per field / citygate's | {shaping['ratio']:.1f} "
            f"| {shaping['target']} | {_met(shaping['met'])} |"
        )
    statements = report.get("statements")
    if statements:
        counts = ", ".join(str(v) for v in statements["statements_per_request"].values())
        rows.append(
            f"| statements | per request, depth 1 to 4 | {counts} | {statements['target']} "
            f"| {_met(statements['met'])} |"
        )
    for row in (report.get("hostile") or {}).get("rows", []):
        rows.append(
            f"| hostile | victim p50 under attack / idle: {row['attack']} | {row['ratio']:.2f} "
            f"| {row['target']} | {_met(row['met'])} |"
        )
    if not rows:
        return []
    return ["## Targets", "", "| section | figure | measured | target | |", "|---|---|---:|---|---|", *rows, ""]


def _value(value: Any) -> str:
    if isinstance(value, float):
        return _short(value) if value >= 1 else f"{value:.3f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _peer(peer: Any, plots: dict[str, str]) -> list[str]:
    if not isinstance(peer, dict) or "by_connections" not in peer:
        return []
    lines = [
        "## Peer side by side: PostGraphile and citygate, the same query on the same database",
        "",
        f"Load generator: {peer['load_generator']}. Rows compared before timing: {peer['rows_compared']} "
        f"(the same rows from every server). citygate's result cache: {peer['cache_config']}; "
        f"audit trail: {peer.get('audit', 'off')}.",
        "",
    ]
    for connections, by in peer["by_connections"].items():
        reference = by.get("postgraphile")
        lines += [
            f"### {connections} connections",
            "",
            "| server | requests/s | p50 ms | p95 ms | p99 ms | rps / PostGraphile | p50 / PostGraphile "
            "| rounds | requests | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key, figure in by.items():
            name = peer.get("targets", {}).get(key, key)
            if not figure["requests"]:  # nothing came back within the rounds: no latency to show
                lines.append(f"| {name} | 0 | - | - | - | - | - | {figure['rounds']} | 0 | {figure['errors']} |")
                continue
            answered = reference and reference["requests"]
            rps_ratio = f"{figure['rps'] / reference['rps']:.2f}" if answered else "-"
            p50_ratio = f"{figure['p50_ms'] / reference['p50_ms']:.2f}" if answered else "-"
            lines.append(
                f"| {name} | {figure['rps']:,.0f} | {figure['p50_ms']:.2f} | {figure['p95_ms']:.2f} "
                f"| {figure['p99_ms']:.2f} | {rps_ratio} | {p50_ratio} "
                f"| {figure['rounds']} | {figure['requests']:,} | {figure['errors']} |"
            )
        lines.append("")
    for name in ("peer_latency", "peer_rps"):
        if name in plots:
            lines += [f"![{name.replace('_', ' ')}]({plots[name]})", ""]
    return lines


def _load_section(load: Any, plots: dict[str, str]) -> list[str]:
    if not isinstance(load, dict) or "latency_ms" not in load:
        return []
    latency, rss, errors = load["latency_ms"], load["rss_kib"], load["errors"]
    lines = [
        "## Load: a bounded run against the citygate server",
        "",
        f"Server: {load['server']}. Load generator: {load['load_generator']}.",
        "",
        "| requests | seconds | requests/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors "
        "| RSS before MiB | RSS after MiB | RSS delta MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {load['requests']:,} | {load['seconds']:.1f} | {load['rps']:,.0f} | {latency['p50']:.2f} "
        f"| {latency['p95']:.2f} | {latency['p99']:.2f} | {latency.get('p99.9', float('nan')):.2f} "
        f"| {errors['total']} | {rss['before'] / 1024:.1f} | {rss['after'] / 1024:.1f} | {rss['delta'] / 1024:+.1f} |",
        "",
        f"Errors by kind: non-2xx {errors['non2xx']}, GraphQL errors {errors['graphql_errors']}, "
        f"unexpected body {errors['mismatched']}, socket {errors['socket_errors']} (every response checked). "
        f"RSS at start-up {rss.get('started', 0) / 1024:.1f} MiB; 'before' is after a warm-up of "
        f"{load.get('warm_up', {}).get('requests', 0):,} requests. "
        + (
            f"Over the run's second half RSS moved {load['rss_second_half_delta_kib'] / 1024:+.1f} MiB "
            f"({len(load.get('rss_series_kib', []))} samples, one a second)."
            if load.get("rss_second_half_delta_kib") is not None
            else ""
        ),
        "",
    ]
    if "load" in plots:
        lines += [f"![load run]({plots['load']})", ""]
    return lines


def _overhead_section(report: dict[str, Any], plots: dict[str, str]) -> list[str]:
    lines: list[str] = []
    overhead = report.get("overhead") or []
    if overhead:
        lines += [
            "## Gateway overhead against the same SQL sent straight to the engine",
            "",
            "| engine | direct SQL p50 / p95 ms | gateway p50 / p95 ms | no plan cache p50 / p95 ms "
            "| over HTTP p50 / p95 ms | p50 ratio (no plan cache, HTTP) | runs | target |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in overhead:
            d, g, u, h = (
                row[k] for k in ("direct_sql", "gateway_in_process", "gateway_uncached_plan", "gateway_over_http")
            )
            lines.append(
                f"| {row['engine']} | {d['p50_ms']:.2f} / {d['p95_ms']:.2f} | {g['p50_ms']:.2f} / {g['p95_ms']:.2f} "
                f"| {u['p50_ms']:.2f} / {u['p95_ms']:.2f} | {h['p50_ms']:.2f} / {h['p95_ms']:.2f} "
                f"| {row['p50_ratio_in_process']:.3f} ({row['p50_ratio_uncached_plan']:.3f}, "
                f"{row['p50_ratio_over_http']:.3f}) | {d['runs']} | {row['target']} {_met(row['met'])} |"
            )
        lines.append("")
    policy = report.get("policy") or []
    if policy:
        lines += [
            "## Policy overhead: the same queries without policies and as health_analyst",
            "",
            "The ratio's 95 % interval is a paired bootstrap over the interleaved runs: *met* means "
            "the whole interval is within the target, *within noise* that it spans the target.",
            "",
            "| engine | query | without p50 / p95 ms | with p50 / p95 ms | p50 ratio [95 % interval] | runs | target |",
            "|---|---|---:|---:|---:|---:|---|",
        ]
        for row in policy:
            w, p = row["without_policy"], row["with_policy"]
            lines.append(
                f"| {row['engine']} | {row.get('query', '')} | {w['p50_ms']:.2f} / {w['p95_ms']:.2f} "
                f"| {p['p50_ms']:.2f} / {p['p95_ms']:.2f} "
                f"| {row['p50_ratio']:.3f}{_interval(row)} | {w['runs']} | {row['target']} {_met(row['met'], row)} |"
            )
        lines.append("")
    if "overhead" in plots:
        lines += [f"![overhead ratios]({plots['overhead']})", ""]
    return lines


def _shaping(shaping: Any) -> list[str]:
    if not isinstance(shaping, dict):
        return []
    return [
        "## Response shaping per field",
        "",
        "| | µs per field (p50) | p50 / p95 ms per response | runs |",
        "|---|---:|---:|---:|",
        f"| citygate templates | {shaping['citygate_us_per_field']:.3f} | {shaping['citygate']['p50_ms']:.2f} / "
        f"{shaping['citygate']['p95_ms']:.2f} | {shaping['citygate']['runs']} |",
        f"| strawberry default resolvers | {shaping['strawberry_us_per_field']:.3f} "
        f"| {shaping['strawberry']['p50_ms']:.2f} / {shaping['strawberry']['p95_ms']:.2f} "
        f"| {shaping['strawberry']['runs']} |",
        "",
        f"citygate is **{shaping['ratio']:.1f}×** cheaper per field ({shaping['fields_per_response']:,} fields "
        f"per response; target {shaping['target']}: {_met(shaping['met'])}).",
        "",
    ]


def _statements(statements: Any) -> list[str]:
    if not isinstance(statements, dict):
        return []
    counts = statements["statements_per_request"]
    return [
        "## Engine statements per request by nesting depth",
        "",
        "| " + " | ".join(counts) + " |",
        "|" + "---:|" * len(counts),
        "| " + " | ".join(str(v) for v in counts.values()) + " |",
        "",
    ]


def _hostile(hostile: Any) -> list[str]:
    if not isinstance(hostile, dict) or not hostile.get("rows"):
        return []
    lines = [
        "## One caller cannot starve another",
        "",
        "A victim asks two root fields of two stores while one attacker sends its request from several threads.",
        "",
        "| attack | attacker threads | victim p50 idle ms | victim p50 under attack ms | ratio | runs | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in hostile["rows"]:
        lines.append(
            f"| {row['attack']} | {row['threads']} | {row['idle_p50_ms']:.2f} | {row['attack_p50_ms']:.2f} "
            f"| {row['ratio']:.2f} | {row['runs']} | {row['target']} {_met(row['met'])} |"
        )
    return [*lines, ""]


def _seed(seed: Any) -> list[str]:
    if seed is None:
        return []
    lines = ["## Seed scale", ""]
    if isinstance(seed, dict) and "missing" in seed:
        return [*lines, f"Not run: {seed['missing']}", ""]
    if isinstance(seed, dict) and isinstance(seed.get("markdown"), str):
        return [*lines, seed["markdown"], ""]
    text = json.dumps(seed, indent=2, ensure_ascii=False, default=_jsonable)
    return [*lines, "```json", text[:6000], "```", ""]
