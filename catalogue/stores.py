"""Where each department keeps its data: the settings of its own store, as the configuration
gives them and as every engine and loader reads them.

>>> PostgresStore(kind="postgresql", database="health", user="citygate").schema_
'public'
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TlsMode = Literal["disable", "require", "verify-ca", "verify-full"]


class Tls(_Model):
    """TLS to the store, the same on every route: the embedded engine, Trino's catalogs, the
    delegated route and the loaders. Unset: no TLS.

    Each driver spells the modes its own way; :meth:`libpq` and :meth:`pymysql` give the words
    of the Python drivers, and each engine module those of its own.

    >>> Tls(mode="verify-full", ca="/etc/city/ca.pem").libpq()
    {'sslmode': 'verify-full', 'sslrootcert': '/etc/city/ca.pem'}
    >>> Tls(mode="require").pymysql()
    {'ssl': {'check_hostname': False, 'verify_mode': False}}
    """

    # `disable`: no TLS; `require`: TLS, the certificate unchecked; `verify-ca`: signed by
    # `ca`; `verify-full`: signed by `ca` and issued for the store's `host`
    mode: TlsMode = "disable"
    # the CA certificate (PEM) that signed the store's certificate; required by verify-ca and
    # verify-full. Trino reads it too, at the same path on its own machines
    ca: Path | None = None

    @model_validator(mode="after")
    def _ca_when_verifying(self) -> Tls:
        verifies = self.mode in ("verify-ca", "verify-full")
        if verifies and self.ca is None:
            raise ValueError(f"mode {self.mode} needs ca, the CA certificate that signed the store's certificate")
        if not verifies and self.ca is not None:
            raise ValueError(f"ca is set but mode {self.mode} does not check the certificate; use verify-full")
        return self

    @property
    def verifies(self) -> bool:
        return self.mode in ("verify-ca", "verify-full")

    def libpq(self) -> dict[str, str]:
        """libpq's keywords (psycopg, DuckDB's postgres scanner): the modes are libpq's own."""
        words: dict[str, str] = {"sslmode": self.mode}
        if self.ca is not None:
            words["sslrootcert"] = str(self.ca)
        return words

    def pymysql(self) -> dict[str, Any]:
        """PyMySQL's keyword arguments for the same mode."""
        if self.mode == "disable":
            return {"ssl_disabled": True}
        if self.mode == "require":
            return {"ssl": {"check_hostname": False, "verify_mode": False}}
        return {"ssl_ca": str(self.ca), "ssl_verify_cert": True, "ssl_verify_identity": self.mode == "verify-full"}


class SqliteStore(_Model):
    kind: Literal["sqlite"]
    path: Path


class PostgresStore(_Model):
    kind: Literal["postgresql"]
    host: str = "127.0.0.1"
    port: int = Field(5432, ge=1, le=65535)
    database: str
    schema_: str = Field("public", alias="schema")
    user: str
    password: str = ""
    tls: Tls = Tls()


class MariadbStore(_Model):
    kind: Literal["mariadb"]
    host: str = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    database: str
    user: str
    password: str = ""
    tls: Tls = Tls()


Store = Annotated[SqliteStore | PostgresStore | MariadbStore, Field(discriminator="kind")]
STORE_KINDS = ("sqlite", "postgresql", "mariadb")
