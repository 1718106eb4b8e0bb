"""What an engine is given: each department's store and how to read it, the engine's own
settings, and the key the hash mask is made with. The gateway builds these from its
configuration (:meth:`gateway.config.Config.engine_settings`); an engine reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalogue.stores import Store


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrinoSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    user: str = "citygate"
    http_scheme: Literal["http", "https"] = "http"
    # with https, how Trino's certificate is checked: `true` against the system's CAs, a CA
    # file (PEM) against that CA, `false` not at all (then anyone on the path can read the traffic)
    verify: bool | Path = True
    # password authentication: the environment variable that holds `user`'s password (the
    # password itself never goes in the file)
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # JWT authentication: the environment variable that holds the token
    jwt_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # JWT authentication: a file that holds the token, read again whenever it changes
    jwt_file: Path | None = None
    # Register missing department catalogs with CREATE CATALOG (needs Trino's
    # catalog.management=dynamic) instead of expecting catalog files.
    create_missing_catalogs: bool = False
    request_timeout: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _credentials_over_https(self) -> TrinoSettings:
        given = [k for k in ("password_env", "jwt_env", "jwt_file") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one way to authenticate, not {' and '.join(given)}")
        if given and self.http_scheme != "https":
            raise ValueError(f"{given[0]} needs http_scheme: https (Trino takes credentials only over HTTPS)")
        return self


class EmbeddedSettings(_Model):
    # Where the DuckDB scanner extensions are laid out; default: the user's cache directory.
    extension_dir: Path | None = None
    threads: int | None = Field(None, ge=1)  # default: one per core
    # DuckDB's own default is 80 % of the machine's memory: one request could take it all.
    memory_limit: str = Field("2GB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    # Where a query larger than memory_limit may spill, and how much: unset, nothing spills (a
    # query that does not fit fails), rather than DuckDB's default of ./.tmp, up to 90 % of the disk.
    spill_dir: Path | None = None
    max_spill: str = Field("4GB", pattern=r"^\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")


@dataclass(frozen=True)
class Source:
    """One department as an engine reads it."""

    store: Store
    catalog: str  # its Trino catalog
    display_name: str = ""
    # "table.column" -> logical type, where the engine cannot tell it from the store (Trino
    # reads MariaDB's BOOLEAN, a TINYINT(1), as a number): the engine casts to it
    column_types: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineSettings:
    """Everything an engine reads."""

    departments: Mapping[str, Source]
    hash_key: bytes | None = None  # the hash mask's key; None: no policies, so no mask needs it
    trino: TrinoSettings = field(default_factory=TrinoSettings)
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    # connections a store keeps open for statements run on it directly, at most
    # (limits.concurrency.store_connections), and how long a statement waits for one of them
    # when all are busy (PyMySQL and sqlite3; PostgreSQL's pool waits as long as it connects)
    pool_size: int = 16
    pool_wait: float = 10.0
