"""The deployment configuration: one YAML file, validated by a typed model.

A file names the engine and every department with its own store. String values may take
secrets from the environment as ``${NAME}`` or ``${NAME:-default}``. Every error names the
file, the key and what is allowed:

    configs/x.yaml: departments.health.store.kind: 'oracle' is not one of 'sqlite', 'postgresql', 'mariadb'
"""

from __future__ import annotations

import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from catalogue.errors import ConfigError
from catalogue.files import read_yaml
from catalogue.stores import STORE_KINDS, MariadbStore, PostgresStore, SqliteStore
from connectors.settings import EmbeddedSettings, EngineSettings, Source, TrinoSettings
from gateway.settings.access import (
    ASYMMETRIC,
    Algorithm,
    AuthConfig,
    CorsConfig,
    PoliciesConfig,
    ServerConfig,
    TokenGuard,
    TrustedDocumentsConfig,
)
from gateway.settings.base import NAME_PATTERN
from gateway.settings.base import Model as _Model
from gateway.settings.departments import (
    CatalogueSettings,
    ColumnConfig,
    ColumnRef,
    DepartmentConfig,
    RelationshipConfig,
    ReverseConfig,
    SharingConfig,
    TableConfig,
)
from gateway.settings.limits import ConcurrencyConfig, Limits, LimitsConfig, RoleLimits

__all__ = [  # the models by concern live in gateway/settings/; importers find them all here
    "ASYMMETRIC",
    "NAME_PATTERN",
    "Algorithm",
    "AuditConfig",
    "AuthConfig",
    "CacheConfig",
    "CatalogueSettings",
    "ColumnConfig",
    "ColumnRef",
    "ConcurrencyConfig",
    "Config",
    "CorsConfig",
    "DepartmentConfig",
    "EngineConfig",
    "Limits",
    "LimitsConfig",
    "PoliciesConfig",
    "RelationshipConfig",
    "ReverseConfig",
    "RoleLimits",
    "ServerConfig",
    "SharingConfig",
    "StateConfig",
    "TableConfig",
    "TelemetryConfig",
    "TokenGuard",
    "TrustedDocumentsConfig",
    "load_config",
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EngineConfig(_Model):
    kind: Literal["trino", "embedded"] = "embedded"
    # `auto`: a statement that reads one store runs whole on that store, in its own SQL (the
    # delegated route); `never`: every statement goes to `kind`
    delegate: Literal["auto", "never"] = "auto"
    # `auto` (with `delegate: auto`): a root field whose relationships reach other stores runs as
    # one statement per store and level on the stores themselves, joined by key in the gateway,
    # unless its answer needs the join first (a filter or an ordering through such a
    # relationship); `never`: such a field runs whole on `kind`
    batch_relationships: Literal["auto", "never"] = "auto"
    # keys given to one statement of a relationship followed by key; more are split into batches
    batch_keys: int = Field(1000, ge=1, le=100_000)
    # `embedded`: while Trino does not answer, statements that cannot be delegated run on the
    # embedded engine attached to the same stores; unset: they fail with ENGINE_UNAVAILABLE
    fallback: Literal["embedded"] | None = None
    trino: TrinoSettings = TrinoSettings()
    embedded: EmbeddedSettings = EmbeddedSettings()


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
    # how long a request waits for its record to be written (and flushed); past it the request is
    # refused with 503 `AUDIT_UNAVAILABLE` and so is every request after it, until a write succeeds
    # (a hung disk or network file system must not hold every request forever)
    write_seconds: float = Field(5.0, gt=0, le=300)

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
    server: ServerConfig = ServerConfig()
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

    def catalogue_settings(self) -> CatalogueSettings:
        """What the schema, the views and the proofs read of this configuration: the
        departments' tables and columns, and the relationships."""
        return CatalogueSettings(self.departments, tuple(self.relationships))

    def with_engine(self, kind: Literal["trino", "embedded"]) -> Config:
        return self.model_copy(update={"engine": self.engine.model_copy(update={"kind": kind})})

    def with_delegate(self, mode: Literal["auto", "never"]) -> Config:
        return self.model_copy(update={"engine": self.engine.model_copy(update={"delegate": mode})})

    def with_batching(self, mode: Literal["auto", "never"]) -> Config:
        return self.model_copy(update={"engine": self.engine.model_copy(update={"batch_relationships": mode})})

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
            pool_size=self.limits.concurrency.store_connections,
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
