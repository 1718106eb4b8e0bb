"""The seed-scale city: the size of the resource catalogue Dongguan reported in 2015.

73 departments, 755 tables (10 or 11 each, 5 to 20 columns of mixed types) and 26,880,000
rows in all, linked across departments by the two unified identifiers: every ``id_card``
points at a resident of ``seed_public_security.residents`` and every ``credit_code`` at an
enterprise of ``seed_market_regulation.enterprises``. Departments alternate between the
PostgreSQL and the MariaDB service. Every name starts with ``seed_`` so that nothing here can
meet the demo city's six departments.

This module is the plan only, data without behaviour; it is pure and cheap, so tests check
its counts without generating a row. ``gateway/seedgen.py`` fills it.

>>> city = plan()
>>> len(city.departments), len(city.tables), city.total_rows()
(73, 755, 26880000)
>>> city.department("seed_public_security").tables[0].name
'residents'
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from catalogue.model import SharingClass
from datasets.demo_city import C, ColumnSpec, E, P, R, S, TableSpec  # sharing classes, abbreviated

PREFIX = "seed_"
TOTAL_ROWS = 26_880_000
RESIDENTS = 1_000_000
ENTERPRISES = 100_000
TABLE_COUNT = 755
MIN_COLUMNS, MAX_COLUMNS = 5, 20


# (name without the prefix, display name). The first holds the residents, the second the
# enterprises; the others are the city's remaining bureaus, offices and service centres.
DEPARTMENT_NAMES = (
    ("public_security", "公安局"),
    ("market_regulation", "市场监督管理局"),
    ("civil_affairs", "民政局"),
    ("justice", "司法局"),
    ("finance", "财政局"),
    ("human_resources", "人力资源和社会保障局"),
    ("natural_resources", "自然资源局"),
    ("ecology_environment", "生态环境局"),
    ("housing_construction", "住房和城乡建设局"),
    ("transport", "交通运输局"),
    ("water_affairs", "水务局"),
    ("agriculture", "农业农村局"),
    ("commerce", "商务局"),
    ("culture_tourism", "文化广电旅游体育局"),
    ("health", "卫生健康局"),
    ("veterans_affairs", "退役军人事务局"),
    ("emergency_management", "应急管理局"),
    ("audit", "审计局"),
    ("statistics", "统计局"),
    ("medical_security", "医疗保障局"),
    ("urban_management", "城市管理和综合执法局"),
    ("forestry", "林业局"),
    ("data_administration", "政务服务数据管理局"),
    ("taxation", "税务局"),
    ("education", "教育局"),
    ("science_technology", "科学技术局"),
    ("industry_it", "工业和信息化局"),
    ("development_reform", "发展和改革局"),
    ("state_assets", "国有资产监督管理局"),
    ("petitions", "信访局"),
    ("archives", "档案馆"),
    ("meteorology", "气象局"),
    ("earthquake", "地震局"),
    ("customs", "海关"),
    ("maritime", "海事局"),
    ("postal", "邮政管理局"),
    ("tobacco", "烟草专卖局"),
    ("housing_fund", "住房公积金管理中心"),
    ("social_insurance_fund", "社会保险基金管理中心"),
    ("power_supply", "供电局"),
    ("fire_rescue", "消防救援支队"),
    ("traffic_police", "公安交通警察支队"),
    ("entry_exit", "出入境管理支队"),
    ("disabled_persons", "残疾人联合会"),
    ("trade_union", "总工会"),
    ("womens_federation", "妇女联合会"),
    ("youth_league", "共青团市委"),
    ("red_cross", "红十字会"),
    ("science_association", "科学技术协会"),
    ("commerce_federation", "工商业联合会"),
    ("overseas_chinese", "侨务局"),
    ("ethnic_religious", "民族宗教事务局"),
    ("foreign_affairs", "外事局"),
    ("grain_reserves", "粮食和物资储备局"),
    ("government_affairs", "机关事务管理局"),
    ("civil_air_defence", "人民防空办公室"),
    ("real_estate_registry", "不动产登记中心"),
    ("rail_transit", "轨道交通局"),
    ("intellectual_property", "知识产权局"),
    ("financial_affairs", "金融工作局"),
    ("investment_promotion", "投资促进局"),
    ("songshan_lake", "松山湖管委会"),
    ("binhaiwan", "滨海湾新区管委会"),
    ("intermediate_court", "中级人民法院"),
    ("procuratorate", "人民检察院"),
    ("survey_team", "国家统计局调查队"),
    ("public_resources", "公共资源交易中心"),
    ("hospital_authority", "医院管理中心"),
    ("disease_control", "疾病预防控制中心"),
    ("blood_centre", "中心血站"),
    ("employment_service", "公共就业服务中心"),
    ("legal_aid", "法律援助处"),
    ("supply_marketing", "供销合作社"),
)

# (table name, what its rows link to): "person" rows carry `id_card`, "enterprise" rows
# `credit_code`, "both" rows both, "none" rows neither (a department's own reference data).
ARCHETYPES = (
    ("applications", "person"),
    ("certificates", "person"),
    ("subsidies", "person"),
    ("benefit_payments", "person"),
    ("appointments", "person"),
    ("complaints", "person"),
    ("service_records", "person"),
    ("qualifications", "person"),
    ("household_visits", "person"),
    ("training_records", "person"),
    ("licences", "enterprise"),
    ("inspections", "enterprise"),
    ("penalties", "enterprise"),
    ("permits", "enterprise"),
    ("tax_filings", "enterprise"),
    ("annual_reports", "enterprise"),
    ("contracts", "enterprise"),
    ("credit_ratings", "enterprise"),
    ("safety_checks", "enterprise"),
    ("employment_records", "both"),
    ("legal_cases", "both"),
    ("project_staff", "both"),
    ("facilities", "none"),
    ("service_points", "none"),
    ("monthly_statistics", "none"),
    ("notices", "none"),
    ("budget_items", "none"),
)

# Columns any table may carry beyond its key and links: every logical type, some nullable.
# (name, declared type, sharing class, nullable)
POOL: tuple[tuple[str, str, SharingClass, bool], ...] = (
    ("status", "VARCHAR(16)", S, False),
    ("district", "VARCHAR(8)", P, False),
    ("category", "VARCHAR(16)", S, False),
    ("reference_no", "VARCHAR(20)", S, False),
    ("title", "VARCHAR(64)", S, False),
    ("officer", "VARCHAR(16)", S, False),
    ("channel", "VARCHAR(16)", P, False),
    ("remarks", "VARCHAR(128)", S, True),
    ("phone", "VARCHAR(11)", C, False),
    ("address", "VARCHAR(64)", E, False),
    ("amount", "DECIMAL(14,2)", R, False),
    ("fee", "DECIMAL(10,2)", S, True),
    ("score", "DOUBLE", S, False),
    ("ratio", "DOUBLE", S, True),
    ("latitude", "DOUBLE", P, False),
    ("longitude", "DOUBLE", P, False),
    ("quantity", "INT", S, False),
    ("level", "INT", S, False),
    ("priority", "INT", S, False),
    ("duration_minutes", "INT", S, True),
    ("item_count", "BIGINT", S, False),
    ("approved", "BOOLEAN", S, False),
    ("verified", "BOOLEAN", S, True),
    ("applied_on", "DATE", S, False),
    ("valid_until", "DATE", S, True),
    ("created_at", "TIMESTAMP", S, False),
    ("updated_at", "TIMESTAMP", S, True),
    ("year", "INT", P, False),
)


def residents_table(prefix: str = PREFIX) -> TableSpec:
    """Everyone the city registers; ``id_card`` is GB 11643, gender and birth date agree with it."""
    return TableSpec(
        f"{prefix}public_security",
        "residents",
        (
            ColumnSpec("id_card", "VARCHAR(18)", C),
            ColumnSpec("name", "VARCHAR(16)", S),
            ColumnSpec("gender", "VARCHAR(1)", S),
            ColumnSpec("birth_date", "DATE", E),
            ColumnSpec("phone", "VARCHAR(11)", C),
            ColumnSpec("address", "VARCHAR(64)", E),
            ColumnSpec("district", "VARCHAR(8)", P),
            ColumnSpec("registered_at", "TIMESTAMP", S),
        ),
        ("id_card",),
        RESIDENTS,
    )


def enterprises_table(prefix: str = PREFIX) -> TableSpec:
    """Every registered enterprise; ``credit_code`` is GB 32100, its representative a resident."""
    return TableSpec(
        f"{prefix}market_regulation",
        "enterprises",
        (
            ColumnSpec("credit_code", "VARCHAR(18)", P),
            ColumnSpec("name", "VARCHAR(48)", P),
            ColumnSpec("legal_rep_id_card", "VARCHAR(18)", C),
            ColumnSpec("industry", "VARCHAR(16)", P),
            ColumnSpec("registered_capital", "DECIMAL(14,2)", S),
            ColumnSpec("established_on", "DATE", P),
            ColumnSpec("district", "VARCHAR(8)", P),
            ColumnSpec("status", "VARCHAR(16)", P),
        ),
        ("credit_code",),
        ENTERPRISES,
    )


@dataclass(frozen=True, slots=True)
class SeedDepartment:
    name: str
    display_name: str
    store: str  # "postgresql" or "mariadb" on the local services
    tables: tuple[TableSpec, ...]


@dataclass(frozen=True, slots=True)
class Link:
    """A column that holds a unified identifier, and the key it points at."""

    source: tuple[str, str, str]  # department, table, column
    name: str  # the object field on the source table
    target: tuple[str, str, str]

    @property
    def reverse_name(self) -> str:
        """The array field on the target: the source table's root name, unique per target."""
        department, table, _ = self.source
        return f"{department}_{table}"


@dataclass(frozen=True, slots=True)
class SeedPlan:
    departments: tuple[SeedDepartment, ...]
    residents: TableSpec
    enterprises: TableSpec

    @property
    def tables(self) -> tuple[TableSpec, ...]:
        return tuple(t for d in self.departments for t in d.tables)

    def department(self, name: str) -> SeedDepartment:
        for department in self.departments:
            if department.name == name:
                return department
        raise KeyError(f"no department {name!r} in the seed-scale plan")

    def total_rows(self, scale: float = 1.0) -> int:
        return sum(t.rows(scale) for t in self.tables)

    def links(self) -> tuple[Link, ...]:
        """Every linking column, in table order."""
        resident_key = (self.residents.department, self.residents.name, "id_card")
        enterprise_key = (self.enterprises.department, self.enterprises.name, "credit_code")
        found = []
        for table in self.tables:
            names = {c.name for c in table.columns}
            if "legal_rep_id_card" in names:
                found.append(
                    Link((table.department, table.name, "legal_rep_id_card"), "legal_representative", resident_key)
                )
            if "id_card" in names and table != self.residents:
                found.append(Link((table.department, table.name, "id_card"), "resident", resident_key))
            if "credit_code" in names and table != self.enterprises:
                found.append(Link((table.department, table.name, "credit_code"), "enterprise", enterprise_key))
        return tuple(found)

    def only(self, names: tuple[str, ...]) -> SeedPlan:
        """The same plan restricted to some departments (tests load a few, not 73)."""
        return SeedPlan(tuple(d for d in self.departments if d.name in names), self.residents, self.enterprises)


def plan(prefix: str = PREFIX) -> SeedPlan:
    """The whole seed-scale city, the same on every call (every choice has a fixed seed).

    ``prefix`` renames the departments only (tests load a few under their own names); the
    tables, columns and counts stay the same.
    """
    residents, enterprises = residents_table(prefix), enterprises_table(prefix)
    rng = random.Random("citygate seed-scale")
    shapes: list[tuple[str, str, str]] = []  # department, table, link
    layout = []
    for index, (slug, display) in enumerate(DEPARTMENT_NAMES):
        name = prefix + slug
        # 73 is prime, so index * 29 mod 73 visits every residue once: exactly 25
        # departments (those under 25) get an eleventh table, 73 * 10 + 25 = 755.
        count = 11 if (index * 29) % 73 < TABLE_COUNT - 10 * len(DEPARTMENT_NAMES) else 10
        masters = tuple(t for t in (residents, enterprises) if t.department == name)
        shapes.extend((name, table, link) for table, link in rng.sample(ARCHETYPES, count - len(masters)))
        layout.append((name, display, "postgresql" if index % 2 == 0 else "mariadb", masters))
    sizes = _sizes(len(shapes), TOTAL_ROWS - RESIDENTS - ENTERPRISES, rng)
    tables: dict[str, list[TableSpec]] = {}
    for (department, table, link), rows in zip(shapes, sizes, strict=True):
        tables.setdefault(department, []).append(_table(department, department.removeprefix(prefix), table, link, rows))
    return SeedPlan(
        tuple(
            SeedDepartment(name, display, store, (*masters, *tables[name])) for name, display, store, masters in layout
        ),
        residents,
        enterprises,
    )


def _table(department: str, slug: str, name: str, link: str, rows: int) -> TableSpec:
    """A table of 5 to 20 columns: its key, its links, then a sample of the pool."""
    rng = random.Random(f"{slug}.{name}")
    columns = [ColumnSpec("record_id", "BIGINT", S)]
    if link in ("person", "both"):
        columns.append(ColumnSpec("id_card", "VARCHAR(18)", C))
    if link in ("enterprise", "both"):
        columns.append(ColumnSpec("credit_code", "VARCHAR(18)", S))
    width = rng.randint(MIN_COLUMNS, MAX_COLUMNS)
    extra = rng.sample(POOL, width - len(columns))
    columns.extend(ColumnSpec(n, t, s, nullable) for n, t, s, nullable in sorted(extra, key=POOL.index))
    return TableSpec(department, name, tuple(columns), ("record_id",), rows)


def _sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """Skewed sizes summing to ``total``: Zipf-like, a few big fact tables and many small
    ones, ranked in a shuffled order so big tables fall in any department."""
    weights = [1 / rank for rank in range(1, count + 1)]
    rng.shuffle(weights)
    scale = total / sum(weights)
    sizes = [int(w * scale) for w in weights]
    sizes[weights.index(max(weights))] += total - sum(sizes)
    return sizes
