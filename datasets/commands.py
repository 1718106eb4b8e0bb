"""What the ``citygate`` command line asks of the demo city and the data generators.

They use the gateway and live apart from it: the command line reaches this module, and only
this one, by name when a command needs it (:func:`gateway.cli.common.datasets`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from catalogue.errors import CitygateError
from catalogue.stores import SqliteStore, Store
from datasets.datagen import DEFAULT_SEED, generate
from datasets.demo import (
    ANONYMOUS_EXAMPLE,
    DEMO_ROLES,
    EXAMPLE_QUERY,
    admin_token,
    demo_config,
    demo_roles,
    ensure_demo_data,
    issue_token,
    issuer_dir,
    secure_demo,
)
from datasets.demo_city import TABLES
from datasets.load import load_city
from datasets.seedgen import datagen as seed_scale
from gateway.config import Config
from gateway.console.pages import DemoPage

__all__ = [
    "ANONYMOUS_EXAMPLE",
    "DEFAULT_SEED",
    "EXAMPLE_QUERY",
    "admin_token",
    "datagen",
    "demo",
    "demo_page",
    "demo_token",
    "issue_token",
    "seed_scale",
]


def demo_page(data_dir: Path, ttl: int = 86_400) -> DemoPage:
    """What `citygate demo`'s pages offer: a token for each demo role (a day long) and the
    example each role can run (the default, anonymous's, is the page's own example)."""
    tokens = {role: issue_token(data_dir, role, claims, ttl) for role, claims in DEMO_ROLES.items()}
    return DemoPage(tokens=tokens, examples={"health_analyst": EXAMPLE_QUERY})


def demo_token(data_dir: Path, chosen: bool, role: str, claims: dict[str, str], ttl: int) -> str:
    """`citygate token`: a token the running demo accepts, signed by the issuer it made
    (:func:`issuer_dir`), for a role its policies define."""
    roles = demo_roles()
    if role not in roles:  # a warning: a copy of the policies (the walkthrough's) may add it
        print(
            f"citygate: warning: --role {role!r}: the demo's policies define no such role, so `citygate demo` "
            f"serves its token nothing (roles: {', '.join(roles)})",
            file=sys.stderr,
        )
    found = issuer_dir(data_dir, chosen)
    if found != data_dir:
        print(f"citygate: signing with the demo issuer in {found}", file=sys.stderr)
    return issue_token(found, role, claims, ttl)


def demo(data_dir: Path) -> Config:
    """The secured demo city in ``data_dir``, built there on first use."""
    ensure_demo_data(data_dir)
    return secure_demo(demo_config(data_dir), data_dir)


def datagen(
    config: Config | None, data_dir: Path, scale: float, seed: int, source: str = "", force: bool = False
) -> int:
    """Generate the demo city and write each department into its store: those ``config`` names
    (``source``: its file, for errors), else SQLite files in ``data_dir``."""
    departments = sorted({t.department for t in TABLES})
    targets: dict[str, Store]
    if config is not None:
        targets = {name: d.store for name, d in config.departments.items()}
    else:
        targets = {d: SqliteStore(kind="sqlite", path=data_dir / f"{d}.db") for d in departments}
    unknown = [d for d in departments if d not in targets]
    if unknown:
        raise CitygateError(f"{source}: departments: the demo city needs departments {sorted(unknown)}")

    started = time.monotonic()
    print(f"generating the demo city at scale {scale} (seed {seed}) ...", file=sys.stderr)
    city = generate(scale=scale, seed=seed)
    print(f"generated {city.total_rows:,} rows in {time.monotonic() - started:.1f} s", file=sys.stderr)
    load_city(city, targets, force)
    print(
        f"loaded {city.total_rows:,} rows into {len(targets)} stores in {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return 0
