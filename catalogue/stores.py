"""Where each department keeps its data: the settings of its own store, as the configuration
gives them and as every engine and loader reads them.

>>> PostgresStore(kind="postgresql", database="health", user="citygate").schema_
'public'
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


class MariadbStore(_Model):
    kind: Literal["mariadb"]
    host: str = "127.0.0.1"
    port: int = Field(3306, ge=1, le=65535)
    database: str
    user: str
    password: str = ""


Store = Annotated[SqliteStore | PostgresStore | MariadbStore, Field(discriminator="kind")]
STORE_KINDS = ("sqlite", "postgresql", "mariadb")
