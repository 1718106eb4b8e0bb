"""The embedded demo city: SQLite files under a data directory and the config that serves them.

`citygate demo` builds the files on first run and serves them on the embedded engine; it needs
no server and no file outside the installed package.
"""

from __future__ import annotations

import importlib.resources
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from catalogue.errors import CitygateError
from catalogue.files import write_atomic
from catalogue.stores import SqliteStore
from datasets.demo_city import DEPARTMENTS
from gateway.config import AuditConfig, AuthConfig, Config, PoliciesConfig, TokenGuard

EXAMPLE_QUERY = """\
# Clinic visits with the patient's record from the household registry, one request, two departments.
query VisitsInNancheng {
  health_clinic_visits(
    where: {resident: {district: {_eq: "南城"}}, cost: {_gt: "15000"}}
    order_by: [{visit_date: desc}]
    limit: 5
  ) {
    visit_date
    hospital
    diagnosis
    cost
    resident { name district gender }
  }
  health_clinic_visits_group_by(by: [hospital], order_by: [{aggregate: {count: desc}}]) {
    keys { hospital }
    aggregate { count sum { cost } }
  }
}
"""


# What GraphiQL opens with for a caller without a token: anonymous sees published columns only,
# so EXAMPLE_QUERY's health fields would all be underlined as unknown.
ANONYMOUS_EXAMPLE = """\
# You are anonymous: published columns only. Pick a demo role in the bar above (or paste a
# token from `citygate token --role health_analyst`) and this page opens with that role's example.
query Stations {
  transport_stations(order_by: [{station_id: asc}], limit: 5) {
    name
    district
  }
}
"""

# The demo roles the console offers tokens for, with the claims their row filters need.
DEMO_ROLES: dict[str, dict[str, str]] = {
    "health_analyst": {},
    "district_officer": {"district": "南城"},
    "env_inspector": {"department": "environment"},
    "police": {"department": "public_security"},
    "supervisor": {},
    # a resident with rows in every table about people (the Keycloak realm's user `citizen`)
    "citizen": {"id_card": "441900197407169777"},
}


def demo_config(data_dir: Path) -> Config:
    """The demo city on SQLite files in ``data_dir``: the packaged catalogue plus one store each."""
    catalogue = yaml.safe_load((importlib.resources.files("datasets") / "demo-city.yaml").read_text(encoding="utf-8"))
    for department in DEPARTMENTS:
        catalogue["departments"][department.name]["store"] = {
            "kind": "sqlite",
            "path": str(data_dir / f"{department.name}.db"),
        }
    catalogue["engine"] = {"kind": "embedded"}
    return Config.model_validate(catalogue)


def ensure_demo_data(data_dir: Path, scale: float = 1.0) -> bool:
    """Generate the SQLite files unless all are there; True when it generated them."""
    wanted = [data_dir / f"{d.name}.db" for d in DEPARTMENTS]
    if all(path.is_file() for path in wanted):
        return False
    from datasets.datagen import generate
    from datasets.load import load_city

    started = time.monotonic()
    print(f"citygate: building the demo city in {data_dir} (first run) ...", file=sys.stderr)
    city = generate(scale=scale)
    load_city(city, {d.name: SqliteStore(kind="sqlite", path=data_dir / f"{d.name}.db") for d in DEPARTMENTS})
    print(f"citygate: {city.total_rows:,} rows in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return True


DEMO_ISSUER = "citygate-demo"
DEMO_AUDIENCE = "citygate"


def _issuer_file(data_dir: Path) -> Path:
    return data_dir / "demo-issuer.json"


def ensure_demo_issuer(data_dir: Path) -> dict[str, Any]:
    """The demo's own signing key and hash key, made once per data directory (mode 0600).

    Only `citygate demo` and `citygate token` use it; `citygate serve` never issues tokens.
    """
    from joserfc.jwk import RSAKey

    path = _issuer_file(data_dir)
    if path.exists():
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    data_dir.mkdir(parents=True, exist_ok=True)
    key = RSAKey.generate_key(2048, parameters={"kid": f"demo-{secrets.token_hex(4)}", "use": "sig", "alg": "RS256"})
    issuer = {"private_jwk": key.as_dict(private=True), "hash_key": secrets.token_hex(32)}
    write_atomic(path, json.dumps(issuer), mode=0o600)
    write_atomic(data_dir / "demo-jwks.json", json.dumps({"keys": [key.as_dict(private=False)]}))
    return issuer


def admin_token(data_dir: Path) -> str:
    """The demo's admin token (for `/admin/*` and `citygate cache clear`), made once, mode 0600."""
    path = data_dir / "admin-token"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, secrets.token_urlsafe(32), mode=0o600)
    return path.read_text().strip()


def secure_demo(config: Config, data_dir: Path) -> Config:
    """The demo with the demo city's policies and the demo issuer's tokens (no token: anonymous),
    its audit trail in ``data_dir/audit.jsonl`` and its shared state (budgets, rate limits) in
    ``data_dir/state.db``, open metrics and an admin token of its own."""
    issuer = ensure_demo_issuer(data_dir)
    demo_policies = DEMO_POLICIES
    return config.model_copy(
        update={
            "data_dir": data_dir,
            "audit": AuditConfig(sink="file", path=data_dir / "audit.jsonl"),
            "admin": TokenGuard(token=admin_token(data_dir)),
            "policies": PoliciesConfig(
                files=[demo_policies / "central.yaml", demo_policies / "health-floor.yaml"],
                hash_key=issuer["hash_key"],
            ),
            "auth": AuthConfig(
                issuer=DEMO_ISSUER,
                audience=DEMO_AUDIENCE,
                jwks_file=data_dir / "demo-jwks.json",
                anonymous=True,
            ),
        }
    )


DEMO_POLICIES = Path(__file__).resolve().parent.parent / "policies" / "demo"
# Where `make demo` keeps the demo's files: the checkout's own `.citygate/demo`.
CHECKOUT_DATA_DIR = Path(__file__).resolve().parent.parent / ".citygate" / "demo"


def issuer_dir(data_dir: Path, chosen: bool) -> Path:
    """The data directory whose demo issuer `citygate token` signs with: ``data_dir`` if a demo
    has made its issuer there; else, when ``data_dir`` was not chosen (the default, relative to
    the working directory), the checkout's own demo. Never a new issuer, whose tokens no
    running demo would accept. CitygateError: there is none to use.
    """
    if _issuer_file(data_dir).exists():
        return data_dir
    if not chosen and _issuer_file(CHECKOUT_DATA_DIR).exists():
        return CHECKOUT_DATA_DIR
    raise CitygateError(
        f"no demo issuer in {data_dir}: `citygate demo` makes one in its data directory on its first run; "
        "start the demo first, then run `citygate token` from the same directory or pass its --data-dir"
    )


def demo_roles() -> list[str]:
    """The roles the demo's policies define (a token for another role is served nothing)."""
    from policies.model import load_policies

    return sorted(load_policies([DEMO_POLICIES / "central.yaml", DEMO_POLICIES / "health-floor.yaml"]).roles)


def issue_token(data_dir: Path, role: str, claims: dict[str, str], ttl: int) -> str:
    """A token the demo in ``data_dir`` accepts, acting as ``role`` with ``claims``."""
    from joserfc import jwt
    from joserfc.jwk import RSAKey

    issuer = ensure_demo_issuer(data_dir)
    key = RSAKey.import_key(issuer["private_jwk"])
    now = int(time.time())
    payload = {
        **claims,
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": f"demo-{role}",
        "roles": [role],
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    return jwt.encode({"alg": "RS256", "kid": key.kid}, payload, key)
