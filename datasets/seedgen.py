"""The seed-scale generator: 26.88 million rows in 755 tables, made by DuckDB, bulk-loaded.

Rows are never built in Python. DuckDB computes every value from the row number ``i`` with
``hash(i, salt)`` (deterministic for a DuckDB version, which the load stamp records), writes each
table as a tab-separated file, and the stores load the files with their bulk paths
(PostgreSQL ``COPY``, MariaDB ``LOAD DATA LOCAL INFILE``, see :mod:`datasets.bulk`).
Identifiers are valid by construction: resident ``i``'s ID number and enterprise ``i``'s credit
code are pure functions of ``i`` (check characters computed in SQL, checked in the tests with
:mod:`datasets.ids`), so a linking column is the identifier at ``hash(i, salt) % count``,
always an existing resident or enterprise.

A department is loaded only when its stamp (a digest of exactly what would be written: DDL,
generating SQL, DuckDB version, scale) differs from the one its store holds, so a repeat is
instant and an interrupted load resumes with the departments it had not finished.

    citygate datagen --profile seed-scale            # configs/seed-scale.yaml's stores
    python -m datasets.seedgen config > configs/seed-scale.yaml    # regenerate the config
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import yaml
from sqlglot import exp

from catalogue.errors import CitygateError
from catalogue.model import SharingClass
from catalogue.stores import MariadbStore, PostgresStore
from datasets.datagen import INDUSTRIES, NAME_WORDS, STREETS  # the demo city's words, shared
from datasets.demo_city import DISTRICTS, TableSpec
from datasets.ids import CREDIT_CHARSET, CREDIT_WEIGHTS, ORG_WEIGHTS, RESIDENT_WEIGHTS
from datasets.seed_scale import SeedDepartment, SeedPlan, plan
from gateway.config import Config

# Bump when the files' format or the loaders change in a way the digest cannot see.
FORMAT_VERSION = 2  # 2: MariaDB databases under utf8mb4_nopad_bin
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "configs" / "seed-scale.yaml"

# Birth dates span 1940-01-01 .. 2007-12-31 (24,837 days); 7,919 is prime and does not divide
# 24,837 = 3 * 8,279, so ``i * 7919 mod 24837`` visits every day before any repeats.
_BIRTH_DAYS = 24_837

SURNAMES = ("王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "林", "梁", "欧阳", "司马")
GIVEN = ("伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "杰", "志文", "子轩", "梓涵", "嘉琪")
STATUSES = ("pending", "approved", "rejected", "closed", "active")
CATEGORIES = ("A类", "B类", "C类", "D类", "E类")
CHANNELS = ("窗口", "网上", "自助终端", "移动端", "电话")
TITLE_HEADS = ("年度", "专项", "季度", "日常", "联合", "重点")
TITLE_TAILS = ("检查", "申报", "审核", "备案", "登记", "核查", "评估", "服务")
REMARKS = ("材料齐全", "需补充材料", "已电话回访", "现场核实", "转办处理", "按期办结")
ENTERPRISE_STATUSES = ("active", "active", "active", "active", "active", "revoked", "cancelled")

Progress = Callable[[str], None]


# -- SQL for one table ------------------------------------------------------------------------


def _lit(value: str) -> str:
    return exp.Literal.string(value).sql("duckdb")


def _draw(salt: int, modulus: int) -> str:
    """A deterministic pseudo-random integer in ``[0, modulus)`` for row ``i``."""
    return f"CAST(hash(i, {salt}) % {modulus} AS BIGINT)"


def _choice(salt: int, values: tuple[str, ...]) -> str:
    array = exp.Array(expressions=[exp.Literal.string(v) for v in values]).sql("duckdb")
    return f"({array})[1 + {_draw(salt, len(values))}]"


def _nullable(salt: int, expression: str, one_in: int = 5) -> str:
    return f"CASE WHEN {_draw(salt + 1, one_in)} = 0 THEN NULL ELSE {expression} END"


# Column name -> its value for row ``i`` given the column's salt: one table for every column of
# the plan's pool, so a column means the same thing in every table that has it.
_VALUES: dict[str, Callable[[int], str]] = {
    "status": lambda salt: _choice(salt, STATUSES),
    "district": lambda salt: _choice(salt, DISTRICTS),
    "category": lambda salt: _choice(salt, CATEGORIES),
    "channel": lambda salt: _choice(salt, CHANNELS),
    "reference_no": lambda salt: (
        f"'DG' || CAST(2010 + {_draw(salt, 6)} AS VARCHAR) || lpad(CAST(i + 1 AS VARCHAR), 10, '0')"
    ),
    "title": lambda salt: f"{_choice(salt, TITLE_HEADS)} || {_choice(salt + 2, TITLE_TAILS)}",
    "officer": lambda salt: f"{_choice(salt, SURNAMES)} || {_choice(salt + 2, GIVEN)}",
    "name": lambda salt: f"{_choice(salt, SURNAMES)} || {_choice(salt + 2, GIVEN)}",
    "remarks": lambda salt: _choice(salt, REMARKS),
    "phone": lambda salt: (
        f"{_choice(salt, ('13', '15', '18'))} || lpad(CAST({_draw(salt + 2, 10**9)} AS VARCHAR), 9, '0')"
    ),
    "address": lambda salt: (
        f"{_choice(salt, DISTRICTS)} || {_choice(salt + 2, STREETS)} || "
        f"CAST(1 + {_draw(salt + 4, 299)} AS VARCHAR) || '号'"
    ),
    "amount": lambda salt: f"CAST({_draw(salt, 10**11)} / 100 AS DECIMAL(14,2))",
    "registered_capital": lambda salt: f"CAST({_draw(salt, 10**11)} / 100 AS DECIMAL(14,2))",
    "fee": lambda salt: f"CAST({_draw(salt, 10**6)} / 100 AS DECIMAL(10,2))",
    "score": lambda salt: f"{_draw(salt, 100_000)} / 1000",
    "ratio": lambda salt: f"{_draw(salt, 10_000)} / 10000",
    "latitude": lambda salt: f"22.6 + {_draw(salt, 60_000)} / 100000",
    "longitude": lambda salt: f"113.5 + {_draw(salt, 70_000)} / 100000",
    "quantity": lambda salt: f"CAST({_draw(salt, 1000)} AS INT)",
    "level": lambda salt: f"CAST(1 + {_draw(salt, 5)} AS INT)",
    "priority": lambda salt: f"CAST(1 + {_draw(salt, 3)} AS INT)",
    "duration_minutes": lambda salt: f"CAST(5 + {_draw(salt, 480)} AS INT)",
    "item_count": lambda salt: _draw(salt, 10**7),
    # Booleans as 1/0: PostgreSQL reads them as a boolean, MariaDB's BOOLEAN is a TINYINT(1).
    "approved": lambda salt: f"CAST({_draw(salt, 4)} <> 0 AS INT)",
    "verified": lambda salt: f"CAST({_draw(salt, 4)} <> 0 AS INT)",
    "applied_on": lambda salt: f"DATE '2010-01-01' + CAST({_draw(salt, 2191)} AS INT)",
    "established_on": lambda salt: f"DATE '2010-01-01' + CAST({_draw(salt, 2191)} AS INT)",
    "valid_until": lambda salt: f"DATE '2016-01-01' + CAST({_draw(salt, 3650)} AS INT)",
    "created_at": lambda salt: f"TIMESTAMP '2010-01-01' + to_seconds({_draw(salt, 189_302_400)})",
    "registered_at": lambda salt: f"TIMESTAMP '2010-01-01' + to_seconds({_draw(salt, 189_302_400)})",
    "updated_at": lambda salt: f"TIMESTAMP '2015-01-01' + to_seconds({_draw(salt, 31_536_000)})",
    "year": lambda salt: f"CAST(2010 + {_draw(salt, 6)} AS INT)",
    "industry": lambda salt: _choice(salt, INDUSTRIES),
}
# Columns read from the joined identifier tables (``r``: a resident, ``e``: an enterprise).
_JOINED = {
    "record_id": "i + 1",
    "id_card": "r.id_card",
    "legal_rep_id_card": "r.id_card",
    "credit_code": "e.credit_code",
    "gender": "r.gender",
    "birth_date": "r.birth_date",
}
# The enterprises register's own columns: a company name that repeats its industry.
_ENTERPRISE_VALUES: dict[str, Callable[[int], str]] = {
    "name": lambda salt: (
        f"'东莞市' || {_choice(salt, NAME_WORDS)} || {_choice(salt + 2, NAME_WORDS)}"
        " || left(industry_, 2) || '有限公司'"
    ),
    "status": lambda salt: _choice(salt, ENTERPRISE_STATUSES),
}


def _column_sql(table: TableSpec, column: str, nullable: bool) -> str:
    """The DuckDB expression for one column of row ``i``."""
    if column in _JOINED:
        return _JOINED[column]
    salt = zlib.crc32(f"{table.name}.{column}".encode()) % 1_000_003 * 8
    values = {**_VALUES, **_ENTERPRISE_VALUES} if table.name == "enterprises" else _VALUES
    if column not in values:
        raise ValueError(f"no generator for column {table.department}.{table.name}.{column}")
    value = values[column](salt)
    return _nullable(salt, value) if nullable else value


def table_sql(table: TableSpec, rows: int, residents: int, enterprises: int) -> str:
    """The SELECT that produces ``rows`` rows of ``table``, ordered by its key."""
    names = {c.name for c in table.columns}
    joins = []
    if table.name == "residents":
        joins.append("JOIN residents_ref r ON r.idx = i")
    elif names & {"id_card", "legal_rep_id_card"}:
        joins.append(f"JOIN residents_ref r ON r.idx = {_draw(11, residents)}")
    if table.name == "enterprises":
        joins.append("JOIN enterprises_ref e ON e.idx = i")
    elif "credit_code" in names:
        joins.append(f"JOIN enterprises_ref e ON e.idx = {_draw(13, enterprises)}")
    source = f"range({rows}) t(i)"
    if table.name == "enterprises":
        # The name repeats the industry's first characters, so draw the industry once.
        source = f"(SELECT i, {_column_sql(table, 'industry', False)} AS industry_ FROM {source})"
    projections = []
    for column in table.columns:
        expression = _column_sql(table, column.name, column.nullable)
        if table.name == "enterprises" and column.name == "industry":
            expression = "industry_"
        projections.append(f"{expression} AS {exp.to_identifier(column.name, quoted=True).sql('duckdb')}")
    return f"SELECT {', '.join(projections)} FROM {source} {' '.join(joins)} ORDER BY i"


def reference_sql(residents: int, enterprises: int) -> list[str]:
    """Statements creating ``residents_ref`` and ``enterprises_ref``: identifier ``idx`` -> value.

    Resident ``idx``: birth day ``idx * 7919 mod 24837`` after 1940-01-01 and sequence
    ``(idx // 24837 * 37 + day) mod 1000`` (distinct for a given day while idx < 24.8M; its last
    digit is odd for men), area 441900, ISO 7064 MOD 11-2 check character. Enterprise ``idx``:
    organisation body ``idx * 7919 + 10000019 mod 10^8`` (7919 is prime to 10^8, so distinct)
    with its GB 11714 check, then the GB 32100 MOD 31 check.
    """
    if residents > _BIRTH_DAYS * 1000:
        raise ValueError(f"at most {_BIRTH_DAYS * 1000} distinct residents")
    charset = _lit(CREDIT_CHARSET)
    resident_check = (
        f"CAST(list_sum(list_transform(range(17), k -> (ascii(substr(body, k + 1, 1)) - 48) * "
        f"({list(RESIDENT_WEIGHTS)})[k + 1])) AS BIGINT) % 11"
    )
    org_check = (
        f"11 - CAST(list_sum(list_transform(range(8), k -> (ascii(substr(org, k + 1, 1)) - 48) * "
        f"({list(ORG_WEIGHTS)})[k + 1])) AS BIGINT) % 11"
    )
    credit_check = (
        f"(31 - CAST(list_sum(list_transform(range(17), k -> (strpos({charset}, substr(body, k + 1, 1)) - 1) * "
        f"({list(CREDIT_WEIGHTS)})[k + 1])) AS BIGINT) % 31) % 31"
    )
    return [
        f"""CREATE OR REPLACE TEMP TABLE residents_ref AS
        WITH d AS (SELECT idx, (idx * 7919) % {_BIRTH_DAYS} AS day, idx // {_BIRTH_DAYS} AS q
                   FROM range({residents}) t(idx)),
        s AS (SELECT idx, DATE '1940-01-01' + CAST(day AS INT) AS birth_date, (q * 37 + day) % 1000 AS seq FROM d),
        b AS (SELECT idx, birth_date, seq,
                     '441900' || strftime(birth_date, '%Y%m%d') || lpad(CAST(seq AS VARCHAR), 3, '0') AS body FROM s)
        SELECT idx, body || ('10X98765432')[1 + {resident_check}] AS id_card,
               CASE WHEN seq % 2 = 1 THEN 'M' ELSE 'F' END AS gender, birth_date
        FROM b ORDER BY idx""",
        f"""CREATE OR REPLACE TEMP TABLE enterprises_ref AS
        WITH o AS (SELECT idx, lpad(CAST((idx * 7919 + 10000019) % 100000000 AS VARCHAR), 8, '0') AS org
                   FROM range({enterprises}) t(idx)),
        c AS (SELECT idx, org, {org_check} AS check_value FROM o),
        b AS (SELECT idx, '91441900' || org
                     || CASE check_value WHEN 10 THEN 'X' WHEN 11 THEN '0' ELSE CAST(check_value AS VARCHAR) END AS body
              FROM c)
        SELECT idx, body || ({charset})[1 + {credit_check}] AS credit_code FROM b ORDER BY idx""",
    ]


# -- the generator --------------------------------------------------------------------------


class Generator:
    """A DuckDB connection holding the identifier tables, writing one table file at a time."""

    def __init__(self, seed: SeedPlan, scale: float, threads: int | None = None) -> None:
        self.plan, self.scale = seed, scale
        self.residents = seed.residents.rows(scale)
        self.enterprises = seed.enterprises.rows(scale)
        self._threads = threads
        self._db: duckdb.DuckDBPyConnection | None = None

    @property
    def db(self) -> duckdb.DuckDBPyConnection:
        """The connection, with the identifier tables made on first use (a few seconds for a
        million residents, which checking the stamps of a loaded city does not need)."""
        if self._db is None:
            self._db = duckdb.connect(":memory:", config={"threads": self._threads} if self._threads else {})
            self._db.execute("SET enable_progress_bar = false")  # tqdm reports progress, not DuckDB
            for statement in reference_sql(self.residents, self.enterprises):
                self._db.execute(statement)
        return self._db

    def sql(self, table: TableSpec) -> str:
        return table_sql(table, table.rows(self.scale), self.residents, self.enterprises)

    def write(self, table: TableSpec, path: Path) -> None:
        """Write ``table`` as PostgreSQL's and MariaDB's shared default text format: tab-separated,
        ``\\N`` for null, no quoting (no generated value holds a tab, quote, backslash or newline)."""
        self.db.execute(
            f"COPY ({self.sql(table)}) TO {_lit(str(path))} (FORMAT csv, DELIMITER '\t', HEADER false, NULLSTR '\\N')"
        )

    def rows(self, table: TableSpec) -> list[tuple[Any, ...]]:
        """The rows themselves (tests: the oracle the stores must match)."""
        return self.db.execute(self.sql(table)).fetchall()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def department_digest(department: SeedDepartment, generator: Generator) -> str:
    """What decides a department's contents: reload exactly when this changes.

    The table specs (names, declared types, keys) stand for the DDL and the generating SQL
    for the values; both are cheap to compute, so checking 73 stamps takes no time.
    """
    from datasets.bulk import index_columns

    digest = hashlib.sha256(f"{FORMAT_VERSION}|{duckdb.__version__}|{generator.scale!r}|{department.store}".encode())
    for table in department.tables:
        digest.update(repr((table, index_columns(table))).encode())
        digest.update(generator.sql(table).encode())
    return digest.hexdigest()[:16]


# -- the command ----------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What a run did, for the command's summary and the benchmark."""

    scale: float
    rows: int
    departments: int
    tables: int
    loaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    generate_seconds: float = 0.0  # summed over tables (generation overlaps loading)
    load_seconds: float = 0.0  # summed over tables, both stores
    wall_seconds: float = 0.0
    catalogs_created: list[str] = field(default_factory=list)
    catalog_seconds: float = 0.0
    trino_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "rows": self.rows,
            "departments": self.departments,
            "tables": self.tables,
            "loaded_departments": len(self.loaded),
            "skipped_departments": len(self.skipped),
            "generate_seconds": round(self.generate_seconds, 1),
            "load_seconds": round(self.load_seconds, 1),
            "wall_seconds": round(self.wall_seconds, 1),
            "trino_catalogs_created": len(self.catalogs_created),
            "trino_catalog_seconds": round(self.catalog_seconds, 1),
            **({"trino_error": self.trino_error} if self.trino_error else {}),
        }


def ensure_loaded(
    config: Config,
    scale: float = 1.0,
    seed: SeedPlan | None = None,
    progress: Progress | None = None,
    show_bar: bool = True,
) -> LoadReport:
    """Generate and load every department of ``seed`` whose store does not already hold it.

    The stores are the ones ``config`` names for each department; the departments of the plan
    and of the configuration must agree. Each department's database is dropped and recreated
    before it is loaded, so only ``seed_``-style names of the plan are ever touched.
    """
    from tqdm import tqdm

    from datasets import bulk

    seed = seed or plan()
    say = progress or (lambda message: print(f"citygate: {message}", file=sys.stderr))
    missing = [d.name for d in seed.departments if d.name not in config.departments]
    if missing:
        raise CitygateError(
            f"{config.source or 'the configuration'}: departments: the seed-scale profile needs {missing[:3]} "
            f"and {max(0, len(missing) - 3)} more (use configs/seed-scale.yaml)"
        )
    for department in seed.departments:
        store = config.departments[department.name].store
        # Each load drops the department's database: only ever one named after the department.
        if not isinstance(store, (PostgresStore, MariadbStore)) or store.database != department.name:
            raise CitygateError(
                f"departments.{department.name}.store: the seed-scale profile loads PostgreSQL or MariaDB "
                f"database {department.name!r} only (it drops and recreates it)"
            )
    report = LoadReport(scale, seed.total_rows(scale), len(seed.departments), len(seed.tables))
    started = time.monotonic()
    generator = Generator(seed, scale, threads=2)
    try:
        stores = {d.name: config.departments[d.name].store for d in seed.departments}
        stamps = bulk.read_stamps(list(stores.values()))
        todo = []
        for department in seed.departments:
            wanted = department_digest(department, generator)
            if stamps.get(_store_key(stores[department.name])) == wanted:
                report.skipped.append(department.name)
            else:
                todo.append((department, wanted))
        rows = sum(t.rows(scale) for d, _ in todo for t in d.tables)
        if todo:
            say(
                f"seed-scale at scale {scale:g}: {len(report.skipped)} of {len(seed.departments)} departments "
                f"already loaded; generating and loading {len(todo)} ({rows:,} rows)"
            )
            with tqdm(
                total=rows,
                unit="row",
                unit_scale=True,
                desc="seed-scale",
                file=sys.stderr,
                disable=not show_bar,
                mininterval=1.0,
            ) as bar:
                _generate_and_load(generator, todo, stores, bar, report)
        else:
            say(f"seed-scale at scale {scale:g}: all {len(seed.departments)} departments already loaded")
    finally:
        generator.close()
    _ensure_catalogs(config, seed, report, say)
    report.wall_seconds = time.monotonic() - started
    return report


def _store_key(store: Any) -> tuple[str, str, int, str]:
    return (store.kind, store.host, store.port, store.database)


def _generate_and_load(
    generator: Generator,
    todo: list[tuple[SeedDepartment, str]],
    stores: dict[str, Any],
    bar: Any,
    report: LoadReport,
) -> None:
    """One thread generates files; one thread per store kind loads them, so DuckDB, PostgreSQL
    and MariaDB work at the same time and each file is deleted as soon as it has landed."""
    from datasets import bulk

    lock = threading.Lock()
    status: dict[str, str] = {}

    def show(kind: str, text: str) -> None:
        with lock:
            status[kind] = text
            bar.set_description(" | ".join(f"{k}: {v}" for k, v in sorted(status.items())))

    with tempfile.TemporaryDirectory(prefix="citygate-seed-") as scratch:

        def generate(department: SeedDepartment) -> list[tuple[TableSpec, Path]]:
            files = []
            for table in department.tables:
                show("generating", f"{department.name}.{table.name}")
                path = Path(scratch) / f"{department.name}.{table.name}.tsv"
                began = time.monotonic()
                generator.write(table, path)
                with lock:
                    report.generate_seconds += time.monotonic() - began
                files.append((table, path))
            show("generating", "done" if department is todo[-1][0] else "waiting")
            return files

        def load(department: SeedDepartment, digest: str, files: Future[list[tuple[TableSpec, Path]]]) -> None:
            store = stores[department.name]
            began = time.monotonic()

            def starting(table: TableSpec) -> None:
                show(f"loading {store.kind}", f"{department.name}.{table.name}")

            def landed(table: TableSpec, path: Path) -> None:
                bar.update(table.rows(generator.scale))
                path.unlink(missing_ok=True)

            bulk.load_department(department.name, store, files.result(), digest, starting, landed)
            with lock:
                report.load_seconds += time.monotonic() - began
                report.loaded.append(department.name)

        with (
            ThreadPoolExecutor(1, thread_name_prefix="seed-generate") as generating,
            ThreadPoolExecutor(1, thread_name_prefix="seed-postgresql") as postgres,
            ThreadPoolExecutor(1, thread_name_prefix="seed-mariadb") as mariadb,
        ):
            loads = []
            for department, digest in todo:
                files = generating.submit(generate, department)
                pool = postgres if isinstance(stores[department.name], PostgresStore) else mariadb
                loads.append(pool.submit(load, department, digest, files))
            for future in loads:
                future.result()  # re-raise the first failure


def _ensure_catalogs(config: Config, seed: SeedPlan, report: LoadReport, say: Progress) -> None:
    """Register the departments' Trino catalogs (CREATE CATALOG) that Trino lacks."""
    from connectors.trino import TrinoEngine

    names = {d.name for d in seed.departments}
    subset = config.model_copy(update={"departments": {k: v for k, v in config.departments.items() if k in names}})
    engine = TrinoEngine(subset.engine_settings())
    began = time.monotonic()
    try:
        report.catalogs_created = engine.ensure_catalogs()
    except CitygateError as error:
        report.trino_error = error.message
        say(f"warning: Trino catalogs not registered ({error.message}); the gateway creates them on start")
    finally:
        engine.close()
    report.catalog_seconds = time.monotonic() - began
    if report.catalogs_created:
        say(f"registered {len(report.catalogs_created)} Trino catalogs in {report.catalog_seconds:.1f} s")


# -- the configuration ----------------------------------------------------------------------


_PG_STORE = {
    "kind": "postgresql",
    "host": "127.0.0.1",
    "port": "${CITYGATE_PG_PORT:-5432}",
    "user": "citygate",
    "password": "${CITYGATE_DB_PASSWORD:-citygate-dev}",
}
_MARIADB_STORE = {**_PG_STORE, "kind": "mariadb", "port": "${CITYGATE_MARIADB_PORT:-3306}"}


def config_data(
    seed: SeedPlan, postgres: dict[str, Any] | None = None, mariadb: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The configuration of ``seed`` as plain data: every department with its store, every
    table's key and sharing classes, every linking column as a relationship."""
    departments: dict[str, Any] = {}
    for department in seed.departments:
        base = (postgres or _PG_STORE) if department.store == "postgresql" else (mariadb or _MARIADB_STORE)
        tables: dict[str, Any] = {}
        for table in department.tables:
            spec: dict[str, Any] = {"primary_key": list(table.primary_key)}
            sharing: dict[str, Any] = {"default": "shared"}
            for sharing_class in SharingClass:
                if sharing_class is SharingClass.SHARED:
                    continue
                named = [c.name for c in table.columns if c.sharing is sharing_class]
                if named:
                    sharing[sharing_class.value] = named
            spec["sharing"] = sharing
            booleans = [c.name for c in table.columns if c.declared == "BOOLEAN"]
            if booleans and department.store == "mariadb":
                # MariaDB stores BOOLEAN as TINYINT(1); Trino's MariaDB connector reads a number.
                spec["columns"] = {name: {"type": "boolean"} for name in booleans}
            tables[table.name] = spec
        departments[department.name] = {
            "display_name": department.display_name,
            "owner": department.display_name,
            "store": {**base, "database": department.name},
            "tables": tables,
        }
    relationships = [
        {
            "name": link.name,
            "from": ".".join(link.source),
            "to": ".".join(link.target),
            "reverse": {"name": link.reverse_name, "kind": "array"},
        }
        for link in seed.links()
    ]
    return {
        "engine": {
            "kind": "trino",
            # as configs/services.yaml reaches Trino: HTTPS, the user citygate, its password
            "trino": {
                "host": "localhost",
                "port": "${CITYGATE_TRINO_HTTPS_PORT:-8443}",
                "user": "citygate",
                "http_scheme": "https",
                "verify": "${CITYGATE_STATE_DIR:-../.citygate/services}/tls/ca.pem",
                "password_env": "CITYGATE_DB_PASSWORD",
                "create_missing_catalogs": True,
            },
        },
        "departments": departments,
        "relationships": relationships,
    }


CONFIG_HEADER = """\
# The seed-scale city: 73 departments, 755 tables, 26,880,000 rows, the size of the
# resource catalogue Dongguan reported in 2015, on the local services (`make services`):
# departments alternate between PostgreSQL and MariaDB, Trino has one catalog per department
# (created on first use), and `--engine embedded` attaches the same 73 stores to DuckDB.
#
#   citygate datagen --profile seed-scale      # generate and load (skipped when loaded)
#   citygate serve --config configs/seed-scale.yaml [--engine embedded]
#
# Generated from datasets/seed_scale.py; do not edit, regenerate it:
#   python -m datasets.seedgen config > configs/seed-scale.yaml
"""


def config_text(seed: SeedPlan | None = None) -> str:
    """The YAML of :func:`config_data`, deterministic (what ``configs/seed-scale.yaml`` holds)."""
    data = config_data(seed or plan())
    # One line per table and per relationship keeps 755 tables readable (about 1,600 lines).
    for department in data["departments"].values():
        department["tables"] = {name: _Flow(spec) for name, spec in department["tables"].items()}
    data["relationships"] = [_Flow(link) for link in data["relationships"]]
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=240, default_flow_style=None)
    return CONFIG_HEADER + "\n" + body


class _Flow(dict[str, Any]):
    """A mapping written on one line."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


def seed_config(
    seed: SeedPlan, postgres: dict[str, Any], mariadb: dict[str, Any], trino: dict[str, Any] | None = None
) -> Config:
    """A validated configuration of ``seed`` on the given stores (no environment lookups)."""
    data = config_data(seed, postgres, mariadb)
    data["engine"]["trino"] = trino or {**data["engine"]["trino"], "port": 8443}
    return Config.model_validate(data)


def datagen(config_path: str | None, scale: float) -> int:
    """``citygate datagen --profile seed-scale``: load what is missing, print a summary."""
    from gateway.config import load_config

    config = load_config(config_path or DEFAULT_CONFIG)
    report = ensure_loaded(config, scale)
    summary = report.as_dict()
    print(
        f"citygate: seed-scale: {summary['rows']:,} rows in {summary['tables']} tables of "
        f"{summary['departments']} departments; loaded {summary['loaded_departments']}, "
        f"already there {summary['skipped_departments']} ({summary['wall_seconds']} s)",
        file=sys.stderr,
    )
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["config"]:
        print("usage: python -m datasets.seedgen config > configs/seed-scale.yaml", file=sys.stderr)
        return 2
    sys.stdout.write(config_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
