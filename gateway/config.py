"""The deployment configuration: one YAML file, validated by a typed model.

A file names the engine and every department with its own store. String values may take
secrets from the environment as ``${NAME}`` or ``${NAME:-default}``. Every error names the
file, the key and what is allowed:

    configs/x.yaml: departments.health.store.kind: 'oracle' is not one of 'sqlite', 'postgresql', 'mariadb'
"""

from __future__ import annotations

import fnmatch
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalogue.errors import ConfigError
from catalogue.files import read_yaml
from catalogue.model import SharingClass
from catalogue.stores import STORE_KINDS, MariadbStore, PostgresStore, SqliteStore, Store
from connectors.settings import EmbeddedSettings, EngineSettings, Source, TrinoSettings

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnConfig(_Model):
    # The column's meaning where an engine cannot tell it from the store (Trino reads
    # MariaDB's BOOLEAN, a TINYINT(1), as a number); engines cast to it.
    type: str | None = None
    description: str = ""

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        from catalogue.types import UnknownTypeError, logical_type

        if value is not None:
            try:
                logical_type(value)
            except UnknownTypeError:
                raise ValueError(
                    f"unknown type {value!r}; use string, boolean, integer, bigint, double, "
                    "decimal(p,s), date or timestamp"
                ) from None
        return value


class SharingConfig(_Model):
    """A table's columns by sharing class, as the city's catalogue lists them: the named
    columns take their class, every other column the default."""

    # a column the lists do not name: the most restrictive class unless the table says otherwise
    default: SharingClass = SharingClass.CONFIDENTIAL
    published: list[str] = Field(default_factory=list)
    shared: list[str] = Field(default_factory=list)
    exchange: list[str] = Field(default_factory=list)
    reported: list[str] = Field(default_factory=list)
    confidential: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _each_column_once(self) -> SharingConfig:
        seen: dict[str, str] = {}
        for sharing in SharingClass:
            for column in getattr(self, sharing.value):
                if column in seen:
                    raise ValueError(f"column {column!r} is listed as both {seen[column]} and {sharing.value}")
                seen[column] = sharing.value
        return self

    def of(self, column: str) -> SharingClass:
        for sharing in SharingClass:
            if column in getattr(self, sharing.value):
                return sharing
        return self.default


class TableConfig(_Model):
    # Trino does not report primary keys; they identify rows for `_by_pk` and make every
    # ordering total, so the same query pages the same way on every engine.
    primary_key: list[str] = Field(default_factory=list)
    description: str = ""
    sharing: SharingConfig = SharingConfig()
    columns: dict[str, ColumnConfig] = Field(default_factory=dict)


class DepartmentConfig(_Model):
    display_name: str = ""
    owner: str = ""
    store: Store
    trino_catalog: str | None = Field(None, pattern=NAME_PATTERN)
    # How long the gateway may keep this department's rows in its result cache: unset takes
    # `cache.ttl_seconds`; 0 forbids caching anything that reads this department.
    cache_ttl_seconds: float | None = Field(None, ge=0)
    tables: dict[str, TableConfig] = Field(default_factory=dict)
    # the store's tables the gateway serves, as names or patterns (`*`, `report_?`); unset: only
    # the tables named under `tables`, so a table added to the store later is not served unasked
    expose: list[str] | None = None
    # false: this department's statements never run on its store directly (engine.delegate)
    delegate: bool = True

    def exposes(self, table: str) -> bool:
        """Whether this department's table ``table`` is served."""
        if self.expose is None:
            return table in self.tables
        return any(fnmatch.fnmatchcase(table, pattern) for pattern in self.expose)

    def column_types(self) -> dict[str, str]:
        """ "table.column" -> configured logical type."""
        return {
            f"{table}.{column}": spec.type
            for table, table_spec in self.tables.items()
            for column, spec in table_spec.columns.items()
            if spec.type
        }


class ColumnRef(_Model):
    department: str
    table: str
    column: str


class ReverseConfig(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["array", "object"] = "array"


class RelationshipConfig(_Model):
    """A link from one table's column to another's, usually across departments.

    ``from`` holds the key that points (``health.clinic_visits.id_card``), ``to`` the key it
    points at; ``name`` is the object field on the ``from`` side, ``reverse`` the field on the
    ``to`` side.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    source: str = Field(alias="from", pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    target: str = Field(alias="to", pattern=r"^[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    reverse: ReverseConfig | None = None

    @property
    def source_ref(self) -> ColumnRef:
        department, table, column = self.source.split(".")
        return ColumnRef(department=department, table=table, column=column)

    @property
    def target_ref(self) -> ColumnRef:
        department, table, column = self.target.split(".")
        return ColumnRef(department=department, table=table, column=column)


class EngineConfig(_Model):
    kind: Literal["trino", "embedded"] = "embedded"
    # `auto`: a statement that reads one store runs whole on that store, in its own SQL (the
    # delegated route); `never`: every statement goes to `kind`
    delegate: Literal["auto", "never"] = "auto"
    # `embedded`: while Trino does not answer, statements that cannot be delegated run on the
    # embedded engine attached to the same stores; unset: they fail with ENGINE_UNAVAILABLE
    fallback: Literal["embedded"] | None = None
    trino: TrinoSettings = TrinoSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()


class PoliciesConfig(_Model):
    """Where the confidentiality policies are and the secret the `hash` mask is keyed with."""

    files: list[Path] = Field(min_length=1)
    hash_key: str = Field(min_length=16, description="HMAC key of the hash mask; from the environment")
    check_min_distinct: int = Field(
        50, ge=2, description="`policy check`: a hash or partial mask over fewer distinct values is a code book"
    )
    check_min_candidates: int = Field(
        1000,
        ge=2,
        description="`policy check`: a masked identifier a role's view narrows to fewer raw values is found "
        "(the policy files' `checks.min_candidates` wins)",
    )


Algorithm = Literal["RS256", "ES256", "EdDSA", "HS256"]
ASYMMETRIC: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")


class AuthConfig(_Model):
    """How requests prove who they are: bearer JWTs from the city's identity provider."""

    issuer: str
    audience: str
    jwks_file: Path | None = None
    jwks_url: str | None = None
    # the keys' URL from the provider's OIDC discovery document (its `jwks_uri`), read again with
    # every fetch of the keys: `true` reads `<issuer>/.well-known/openid-configuration` and checks
    # that it names this issuer; a URL reads that document (a provider this gateway reaches by
    # another address than the one its tokens name)
    discovery: bool | str = False
    jwks_cache_seconds: int = Field(300, ge=0)
    # an unknown `kid` fetches the set again at most this often: random kids must not make the
    # gateway hammer the identity provider
    jwks_refresh_seconds: int = Field(10, ge=0)
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ASYMMETRIC))
    hs256_secret: str | None = Field(None, min_length=32)
    leeway_seconds: int = Field(30, ge=0, le=300)
    # a dot path into the token's claims: Keycloak's realm roles are `realm_access.roles`, its
    # roles of the audience's client `resource_access.<client>.roles`
    roles_claim: str = "roles"
    claims_path: str | None = None  # where the attributes policies use live (default: the top level)
    anonymous: bool = False  # requests without a token act as `anonymous` (else 401)

    @field_validator("discovery", mode="before")
    @classmethod
    def _discovery_flag(cls, value: object) -> object:
        # `${CITYGATE_OIDC_DISCOVERY:-true}` arrives as text
        value = {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value
        if isinstance(value, str) and not value.startswith(("https://", "http://")):
            raise ValueError("discovery: give true, false or the discovery document's http(s) URL")
        return value

    @model_validator(mode="after")
    def _keys(self) -> AuthConfig:
        if "HS256" in self.algorithms and not self.hs256_secret:
            raise ValueError("HS256 needs hs256_secret (a shared secret of at least 32 characters)")
        if self.hs256_secret and "HS256" not in self.algorithms:
            raise ValueError("hs256_secret is set but HS256 is not among the algorithms")
        asymmetric = [a for a in self.algorithms if a != "HS256"]
        given = [self.jwks_file is not None, self.jwks_url is not None, bool(self.discovery)]
        if asymmetric and sum(given) != 1:
            raise ValueError("give exactly one of jwks_file, jwks_url and discovery")
        return self

    @property
    def fetches_keys(self) -> bool:
        """Whether the keys come over the network (and are cached, and fetched again)."""
        return self.jwks_url is not None or bool(self.discovery)

    def discovery_url(self) -> str | None:
        """Where the OIDC discovery document is, if the keys are found through one.

        >>> AuthConfig(issuer="https://idp/realms/city", audience="citygate", discovery=True).discovery_url()
        'https://idp/realms/city/.well-known/openid-configuration'
        """
        if isinstance(self.discovery, str):
            return self.discovery
        return f"{self.issuer.rstrip('/')}/.well-known/openid-configuration" if self.discovery else None


class CacheConfig(_Model):
    """The result cache: rows keyed by the route, the final, policy-rewritten SQL and the release."""

    enabled: bool = True
    max_entries: int = Field(10_000, ge=1)
    max_bytes: int = Field(64 << 20, ge=1024)
    ttl_seconds: float = Field(30.0, ge=0)  # per-department `cache_ttl_seconds` overrides it
    # compiled plans (and, as much again, parsed documents) kept per gateway, by their estimated
    # size in memory: a few large requests must not take the gateway's memory
    plan_bytes: int = Field(128 << 20, ge=1 << 20)


class AuditConfig(_Model):
    """Where the audit trail goes: JSON lines, each chained to the one before by its hash."""

    # `off` turns the trail off (YAML reads a bare `off` as false, which means the same here)
    sink: Literal["file", "log", "off"] = "file"
    path: Path | None = None  # the file sink's file; required for `file`
    fsync: bool = True  # fsync each batch before its answers leave: records survive a machine crash too

    @field_validator("sink", mode="before")
    @classmethod
    def _bare_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML 1.1: `sink: off` is `sink: false`

    @model_validator(mode="after")
    def _path(self) -> AuditConfig:
        if self.sink == "file" and self.path is None:
            raise ValueError("the file sink needs a path")
        return self


class StateConfig(_Model):
    """Where the gateway keeps its shared state: each role's privacy budget and each caller's
    rate-limit allowance. Every worker process and every gateway on one state spends one budget
    and counts against one limit."""

    # `sqlite:///<path>` (default: `state.db` under `data_dir`, shared by the worker processes of
    # one machine), or `postgresql://<user>:<password>@<host>:<port>/<database>` (shared by several
    # gateways; `${NAME}` keeps the password out of the file)
    url: str | None = Field(None, pattern=r"^(sqlite:///.+|postgres(ql)?://.+)$")


class TokenGuard(_Model):
    """A bearer token that guards an operator endpoint; unset means the endpoint is open
    (`/metrics`) or off (`/admin/*`)."""

    token: str | None = Field(None, min_length=16)

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `${TOKEN:-}` with TOKEN unset


class RoleLimits(_Model):
    """What one role's requests may ask; a key left out takes the deployment's own (``limits``)."""

    max_depth: int | None = Field(None, ge=1)
    max_root_fields: int | None = Field(None, ge=1)
    max_fields: int | None = Field(None, ge=1)
    max_cost: int | None = Field(None, ge=1)
    statement_seconds: float | None = Field(None, gt=0)
    plan_seconds: float | None = Field(None, gt=0)
    requests_per_minute: int | None = Field(None, ge=0)


# What a caller without a token may ask, unless `limits.roles.anonymous` says otherwise.
_DEFAULTS: dict[str | None, RoleLimits] = {
    "anonymous": RoleLimits(
        max_depth=6,
        max_root_fields=5,
        max_fields=200,
        max_cost=200_000,
        statement_seconds=10,
        plan_seconds=1,
        requests_per_minute=600,
    )
}


@dataclass(frozen=True)
class Limits:
    """One role's limits, every one decided (:meth:`LimitsConfig.of`)."""

    max_depth: int
    max_root_fields: int
    max_fields: int
    max_cost: int
    statement_seconds: float
    plan_seconds: float
    requests_per_minute: int


class LimitsConfig(_Model):
    """What one request may ask of the gateway, so that no request can take all of it."""

    max_tokens: int = Field(20_000, ge=100)  # lexical tokens of a GraphQL document
    max_rows: int = Field(200_000, ge=1)  # rows the statements of one request may return, together
    # a statement's answer is waited for this long from its start; then a store that does not
    # answer a one-row read either is left alone for as long again (requests naming it fail at
    # once), and a query that was merely slow fails by itself
    statement_seconds: float = Field(60.0, gt=0)
    # the work before the engine (parse, validate, compile, the policies' rewrite) past this
    # long refuses the request: each step is bounded by size, and this bounds them by the clock
    plan_seconds: float = Field(2.0, gt=0)
    max_depth: int = Field(12, ge=1)  # nesting of fields, the root field's own level counted
    max_root_fields: int = Field(20, ge=1)  # root fields of one request, aliases counted each
    max_fields: int = Field(2_000, ge=1)  # fields of one request, fragments expanded, aliases each
    # rows the statements of one request may read at worst, estimated before any runs from the
    # query's shape and the catalogue's row counts
    max_cost: int = Field(20_000_000, ge=1)
    requests_per_minute: int = Field(0, ge=0)  # per subject (anonymous: per client network); 0: no limit
    # an anonymous caller (and a refused token, or a wrong admin token) is counted by the network
    # it connects from: its IPv4 address cut to this many bits (24: a /24 counts as one caller)
    ipv4_prefix: int = Field(32, ge=8, le=32)
    # and an IPv6 address to this many: one client commonly holds a whole /64 to rotate through
    ipv6_prefix: int = Field(64, ge=16, le=128)
    # a connection's request headers must arrive within this many seconds, or it is closed
    header_seconds: float = Field(10.0, gt=0)
    # open connections at once; a new one past this is answered 503 and closed
    max_connections: int = Field(1000, ge=1)
    roles: dict[str, RoleLimits] = Field(default_factory=dict)  # per role; `anonymous` has safe defaults

    def of(self, role: str | None) -> Limits:
        """The limits of ``role``: its own where ``roles`` gives them, then (for ``anonymous``)
        the safe defaults, then the deployment's. None: a deployment without policies."""
        found = (self.roles.get(role), _DEFAULTS.get(role)) if role is not None else ()
        chain = [r for r in found if r is not None]

        def decided(name: str) -> Any:
            return next((getattr(r, name) for r in chain if getattr(r, name) is not None), getattr(self, name))

        return Limits(**{name: decided(name) for name in Limits.__dataclass_fields__})


class TrustedDocumentsConfig(_Model):
    """Registered GraphQL documents, and the roles that may run only those.

    ``store`` is a manifest (JSON: the SHA-256 of each document's text -> the text), written by
    ``citygate documents register``. Any caller may send a registered document by its hash
    alone; a caller whose role ``roles`` names (or every caller, with ``all``) may run nothing
    else. Roles are as the policies name them; ``anonymous`` is a caller without a token.
    """

    store: Path
    roles: list[str] | Literal["all"] = "all"

    def covers(self, role: str | None) -> bool:
        """Whether ``role`` (None: a deployment without policies) runs registered documents only."""
        return self.roles == "all" or (role is not None and role in self.roles)


class CorsConfig(_Model):
    """Browser applications on other origins that may call the API (CORS); none by default."""

    # origins as a browser sends them (`https://app.city.internal`); `*` allows any origin and
    # then no credentials (a bearer token in `Authorization` still works: it is not a cookie)
    origins: list[str] = Field(default_factory=list)
    max_age: int = Field(600, ge=0)  # seconds a browser may keep a preflight's answer


class TelemetryConfig(_Model):
    """OpenTelemetry spans around each stage of a request, sent where an exporter says."""

    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = None  # OTLP/HTTP traces endpoint; the exporter's default when unset
    service_name: str = "citygate"


class Config(_Model):
    engine: EngineConfig = EngineConfig()
    # the confidentiality policies; `open` for none at all, on purpose (development only:
    # every column raw to every caller)
    policies: PoliciesConfig | None = None
    # how callers prove who they are; `none` for no tokens, on purpose (development only: every
    # caller is anonymous)
    auth: AuthConfig | None = None
    open_policies: bool = Field(False, exclude=True)  # `policies: open`
    open_auth: bool = Field(False, exclude=True)  # `auth: none`
    # the gateway's own files (its audit trail, unless `audit` says otherwise); relative to the
    # configuration file
    data_dir: Path = Path(".citygate")
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    audit: AuditConfig | None = None
    state: StateConfig = StateConfig()
    metrics: TokenGuard = TokenGuard()
    admin: TokenGuard = TokenGuard()
    telemetry: TelemetryConfig = TelemetryConfig()
    cors: CorsConfig = CorsConfig()
    trusted_documents: TrustedDocumentsConfig | None = None
    departments: dict[str, DepartmentConfig]
    relationships: list[RelationshipConfig] = Field(default_factory=list)
    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _development(cls, raw: Any) -> Any:
        """``policies: open`` and ``auth: none``: their absence, written on purpose."""
        if isinstance(raw, dict):
            raw = dict(raw)
            if raw.get("policies") == "open":
                raw["policies"], raw["open_policies"] = None, True
            if raw.get("auth") == "none":
                raw["auth"], raw["open_auth"] = None, True
        return raw

    def served(self) -> tuple[Config, list[str]]:
        """This configuration as `citygate serve` runs it, and the warnings to print at every
        start; :class:`ConfigError` when it would be open by omission. It fails closed: without
        `policies` every column would go raw to everyone, without `auth` every caller would be
        anonymous, so each must be configured or opened in words (`policies: open`, `auth:
        none`). The audit trail is on unless `audit` turns it off: by default a file under
        `data_dir`."""
        where = f"{self.source}: " if self.source is not None else ""
        if self.policies is None and not self.open_policies:
            raise ConfigError(
                f"{where}policies: missing; without policies every column is served raw to every caller. "
                "Configure policies (files, hash_key), or write `policies: open` for development"
            )
        if self.auth is None and not self.open_auth:
            raise ConfigError(
                f"{where}auth: missing; without it every caller is anonymous. Configure auth (issuer, audience, "
                "jwks_url or jwks_file), or write `auth: none` for development"
            )
        warnings = []
        if self.open_policies:
            warnings.append("policies: open: every column is served raw to every caller (development only)")
        if self.open_auth:
            warnings.append("auth: none: no caller is authenticated; all act as anonymous (development only)")
        if self.audit is not None:
            return self, warnings
        trail = AuditConfig(sink="file", path=self.audit_file())
        return self.model_copy(update={"audit": trail}), warnings

    def audit_file(self) -> Path | None:
        """The audit file requests are recorded in as served: ``audit.path``, the default file
        under ``data_dir`` when ``audit`` is left out, or None (the trail off or on the log)."""
        if self.audit is None:
            return self.data_dir / "audit.jsonl"
        return self.audit.path if self.audit.sink == "file" else None

    def state_url(self) -> str:
        """Where the shared state is: ``state.url``, else an SQLite file under ``data_dir``."""
        return self.state.url or f"sqlite:///{(self.data_dir / 'state.db').absolute()}"

    @model_validator(mode="after")
    def _relationships_name_departments(self) -> Config:
        for index, link in enumerate(self.relationships):
            for end in (link.source_ref, link.target_ref):
                if end.department not in self.departments:
                    raise ValueError(
                        f"relationships.{index}: department {end.department!r} is not configured "
                        f"(configured: {', '.join(self.departments)})"
                    )
        return self

    @field_validator("departments")
    @classmethod
    def _department_names(cls, value: dict[str, DepartmentConfig]) -> dict[str, DepartmentConfig]:
        if not value:
            raise ValueError("at least one department is required")
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"department name {name!r} must match {NAME_PATTERN} (lower case, digits, _)")
        return value

    def catalog_of(self, department: str) -> str:
        """The Trino catalog that serves ``department`` (its own name unless configured)."""
        return self.departments[department].trino_catalog or department

    def with_engine(self, kind: Literal["trino", "embedded"]) -> Config:
        return self.model_copy(update={"engine": self.engine.model_copy(update={"kind": kind})})

    def with_delegate(self, mode: Literal["auto", "never"]) -> Config:
        return self.model_copy(update={"engine": self.engine.model_copy(update={"delegate": mode})})

    def engine_settings(self) -> EngineSettings:
        """What an engine reads of this configuration: the stores, the engines' own settings
        and the hash mask's key."""
        return EngineSettings(
            departments={
                name: Source(
                    store=spec.store,
                    catalog=self.catalog_of(name),
                    display_name=spec.display_name,
                    column_types=spec.column_types(),
                )
                for name, spec in self.departments.items()
            },
            hash_key=self.policies.hash_key.encode() if self.policies is not None else None,
            trino=self.engine.trino,
            embedded=self.engine.embedded,
        )


def load_config(path: str | Path) -> Config:
    """Read, expand and validate a configuration file, or raise :class:`ConfigError`."""
    path = Path(path)
    _, raw = read_yaml(path, "configuration file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with keys 'engine' and 'departments'")
    raw = _with_includes(raw, path, seen=(path.resolve(),))
    expanded = _expand_env(raw, path, ())
    try:
        config = Config.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError(_describe(path, error)) from None
    return _resolve_paths(config.model_copy(update={"source": path}), path.parent)


def _with_includes(raw: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Merge the files named by ``include`` under this one: this file's keys win, mappings merge."""
    includes = raw.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include: expected a file name or a list of file names")
    merged: dict[str, Any] = {}
    for name in includes:
        included = (path.parent / name).resolve()
        if included in seen:
            raise ConfigError(f"{path}: include: {name} includes itself")
        _, data = read_yaml(included, "configuration file", included_from=path)
        data = data or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{included}: expected a mapping (included from {path})")
        merged = _merge(merged, _with_includes(data, included, (*seen, included)))
    return _merge(merged, raw)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = value
    return result


def _expand_env(value: Any, path: Path, key: tuple[str, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, path, (*key, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, path, (*key, str(i))) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{path}: {'.'.join(key)}: environment variable {name} is not set (set it, or write ${{{name}:-default}})"
        )

    return _ENV_REF.sub(substitute, value)


def _resolve_paths(config: Config, base: Path) -> Config:
    def resolved(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    departments = {}
    for name, department in config.departments.items():
        store = department.store
        if isinstance(store, SqliteStore):
            store = store.model_copy(update={"path": resolved(store.path)})
        elif store.tls.ca is not None:
            store = store.model_copy(update={"tls": store.tls.model_copy(update={"ca": resolved(store.tls.ca)})})
        departments[name] = department.model_copy(update={"store": store})
    update: dict[str, Any] = {"departments": departments}
    trino = config.engine.trino
    trino_paths = {
        key: resolved(value) for key in ("verify", "jwt_file") if isinstance(value := getattr(trino, key), Path)
    }
    if trino_paths:
        update["engine"] = config.engine.model_copy(update={"trino": trino.model_copy(update=trino_paths)})
    if config.policies is not None:
        files = [f if f.is_absolute() else (base / f).resolve() for f in config.policies.files]
        update["policies"] = config.policies.model_copy(update={"files": files})
    if config.auth is not None and config.auth.jwks_file is not None and not config.auth.jwks_file.is_absolute():
        update["auth"] = config.auth.model_copy(update={"jwks_file": (base / config.auth.jwks_file).resolve()})
    if not config.data_dir.is_absolute():
        update["data_dir"] = (base / config.data_dir).resolve()
    if config.audit is not None and config.audit.path is not None and not config.audit.path.is_absolute():
        update["audit"] = config.audit.model_copy(update={"path": (base / config.audit.path).resolve()})
    documents = config.trusted_documents
    if documents is not None and not documents.store.is_absolute():
        update["trusted_documents"] = documents.model_copy(update={"store": (base / documents.store).resolve()})
    return config.model_copy(update=update)


def _describe(path: Path, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"] if not _is_union_tag(p))
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(item["loc"][:-1])
            message = "unknown key" + (f"; allowed keys: {', '.join(allowed)}" if allowed else "")
        elif kind == "missing":
            message = "required key is missing"
        elif kind in ("union_tag_invalid", "union_tag_not_found"):
            message = f"'kind' must be one of {', '.join(repr(k) for k in STORE_KINDS)}"
            if kind == "union_tag_invalid":
                message = f"{item['input'].get('kind')!r} is not one of {', '.join(repr(k) for k in STORE_KINDS)}"
                loc = f"{loc}.kind"
        elif kind == "literal_error":
            message = f"{item['input']!r} is not allowed; expected {item['ctx']['expected']}"
        else:
            message = item["msg"].removeprefix("Value error, ")
            message = message[0].lower() + message[1:]
            if (
                "input" in item
                and not isinstance(item["input"], (dict, list))
                and not loc.endswith(("password", "key", "token", "secret"))
            ):
                message += f" (got {item['input']!r})"
        lines.append(f"{path}: {loc or '(top level)'}: {message}")
    return "\n".join(lines)


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and part in STORE_KINDS


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Walk the model along ``loc`` to list the keys allowed where an unknown one was found."""
    model: Any = Config
    keyed = False  # the next part is a user-chosen key (a department, table or column name)
    for part in loc:
        if isinstance(part, int):
            continue
        if keyed:
            keyed = False
        elif part in _STORE_MODELS:
            model = _STORE_MODELS[part]
        elif (model, part) in _MAPPINGS:
            model, keyed = _MAPPINGS[(model, part)], True
        elif isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields:
            annotation = model.model_fields[part].annotation
            members: list[Any] = [a for a in typing.get_args(annotation) if isinstance(a, type)] or [annotation]
            model = RelationshipConfig if part == "relationships" else members[0]
        else:
            return []
    if keyed or not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [f.alias or name for name, f in model.model_fields.items() if not (model is Config and name == "source")]


# Mappings keyed by names the user chooses: (model, key) -> the model of each value.
_MAPPINGS: dict[tuple[type[BaseModel], str], type[BaseModel]] = {
    (Config, "departments"): DepartmentConfig,
    (DepartmentConfig, "tables"): TableConfig,
    (TableConfig, "columns"): ColumnConfig,
}

_STORE_MODELS: dict[str, type[BaseModel]] = {
    "sqlite": SqliteStore,
    "postgresql": PostgresStore,
    "mariadb": MariadbStore,
}
