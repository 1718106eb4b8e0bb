"""The deterministic demo-city generator.

Every value comes from one seeded ``random.Random``, table by table in a fixed order, so two
runs with the same seed and scale produce the same rows, and every store loaded from them holds
the same data. Tests use :func:`generate`'s output as the oracle that the engines must match.

>>> city = generate(scale=0.01)
>>> len(city.rows("public_security", "residents"))
100
>>> from datasets.ids import is_valid_resident_id
>>> all(is_valid_resident_id(r[0]) for r in city.rows("public_security", "residents"))
True
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from datasets.demo_city import DISTRICTS, TABLES, table_spec
from datasets.ids import CREDIT_CHARSET, credit_check_char, org_code_check_char, resident_check_char

DEFAULT_SEED = 20151231

Row = tuple[Any, ...]

SURNAMES = (
    "王",
    "李",
    "张",
    "刘",
    "陈",
    "杨",
    "黄",
    "赵",
    "吴",
    "周",
    "徐",
    "孙",
    "马",
    "朱",
    "胡",
    "郭",
    "何",
    "林",
    "罗",
    "梁",
    "叶",
    "钟",
    "莫",
    "邓",
    "欧阳",
    "司马",
    "诸葛",
    "上官",
    "司徒",
    "东方",
)
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红建国志文斌浩宇欣怡子轩梓涵嘉琪"
STREETS = ("东城路", "南城大道", "莞太路", "鸿福路", "运河路", "胜和路", "宏图路", "新城路", "学院路", "沿河路")
HOSPITALS = ("东莞市人民医院", "东莞市中医院", "东华医院", "康华医院", "松山湖中心医院", "东莞市儿童医院")
CLINIC_DEPARTMENTS = ("内科", "外科", "儿科", "妇产科", "眼科", "口腔科", "皮肤科", "急诊科")
DIAGNOSES = (
    ("J06.9", "急性上呼吸道感染"),
    ("I10", "原发性高血压"),
    ("E11.9", "2型糖尿病"),
    ("K29.7", "胃炎"),
    ("M54.5", "腰痛"),
    ("J20.9", "急性支气管炎"),
    ("H10.9", "结膜炎"),
    ("K02.9", "龋病"),
    ("L30.9", "皮炎"),
    ("R50.9", "发热"),
    ("O80", "单胎顺产"),
    ("S93.4", "踝关节扭伤"),
)
BLOOD_TYPES = ("A", "B", "AB", "O")
CHRONIC = ("高血压", "糖尿病", "慢性阻塞性肺病", "冠心病", "哮喘", "慢性肾病")
INDUSTRIES = (
    "制造业",
    "批发和零售业",
    "交通运输业",
    "建筑业",
    "信息技术",
    "住宿和餐饮业",
    "租赁和商务服务",
    "电子设备",
)
NAME_WORDS = ("华", "兴", "盛", "达", "信", "宏", "泰", "丰", "利", "源", "恒", "德", "新", "凯", "瑞", "龙")
STATUSES = ("active", "revoked", "cancelled")
STATUS_WEIGHTS = (85, 10, 5)
POLLUTANTS = (
    ("COD", "mg/L", 50.0),
    ("NH3-N", "mg/L", 8.0),
    ("SO2", "mg/m3", 200.0),
    ("NOx", "mg/m3", 240.0),
    ("PM10", "mg/m3", 30.0),
)
VEHICLE_TYPES = (
    ("货车", (2, 3)),
    ("客车", (19, 53)),
    ("危险品运输车", (2, 3)),
    ("出租车", (5, 5)),
    ("公交车", (30, 80)),
)
PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
PLATE_CHARS = "0123456789ABCDEFGHJKLMNPQRSTUVWXYZ"
STATION_KINDS = ("汽车客运站", "客运总站", "公交枢纽站")


@dataclass
class City:
    """Generated rows per table, in each table spec's column order."""

    scale: float
    seed: int
    tables: dict[tuple[str, str], list[Row]] = field(default_factory=dict)

    def rows(self, department: str, table: str) -> list[Row]:
        return self.tables[(department, table)]

    def dicts(self, department: str, table: str) -> Iterator[dict[str, Any]]:
        """Rows as dicts keyed by column name (for oracles in tests)."""
        names = [c.name for c in table_spec(department, table).columns]
        for row in self.rows(department, table):
            yield dict(zip(names, row, strict=True))

    @property
    def total_rows(self) -> int:
        return sum(len(rows) for rows in self.tables.values())


def generate(scale: float = 1.0, seed: int = DEFAULT_SEED) -> City:
    """Generate the whole demo city. Tables are made in dependency order from one RNG."""
    if scale <= 0:
        raise ValueError("scale must be positive")
    rng = random.Random(seed)
    city = City(scale=scale, seed=seed)
    counts = {(t.department, t.name): t.rows(scale) for t in TABLES}

    residents = _residents(rng, counts[("public_security", "residents")])
    city.tables[("public_security", "residents")] = residents
    id_cards = [r[0] for r in residents]

    enterprises = _enterprises(rng, counts[("market_regulation", "enterprises")], id_cards)
    city.tables[("market_regulation", "enterprises")] = enterprises
    credit_codes = [e[0] for e in enterprises]

    city.tables[("health", "clinic_visits")] = _clinic_visits(rng, counts[("health", "clinic_visits")], id_cards)
    city.tables[("health", "health_records")] = _health_records(rng, counts[("health", "health_records")], id_cards)
    sites = _monitored_sites(rng, counts[("environment", "monitored_sites")], enterprises)
    city.tables[("environment", "monitored_sites")] = sites
    city.tables[("environment", "emission_readings")] = _readings(
        rng, counts[("environment", "emission_readings")], [s[0] for s in sites]
    )
    city.tables[("transport", "vehicles")] = _vehicles(rng, counts[("transport", "vehicles")], credit_codes)
    city.tables[("transport", "stations")] = _stations(rng, counts[("transport", "stations")])
    city.tables[("human_resources", "social_insurance")] = _social_insurance(
        rng, counts[("human_resources", "social_insurance")], id_cards, credit_codes
    )
    return city


def _date(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randrange((end - start).days + 1))


def _timestamp(rng: random.Random, start: dt.date, end: dt.date) -> dt.datetime:
    day = _date(rng, start, end)
    return dt.datetime(day.year, day.month, day.day) + dt.timedelta(seconds=rng.randrange(86_400))


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    """A decimal with exactly two places, drawn in cents so no float ever rounds it."""
    return Decimal(rng.randrange(low * 100, high * 100)).scaleb(-2)


def _resident_id(rng: random.Random, birth: dt.date, gender: str) -> str:
    sequence = rng.randrange(0, 50) * 2 + (1 if gender == "M" else 0)  # last digit: odd for men
    body = f"441900{birth:%Y%m%d}{rng.randrange(10)}{sequence:02d}"
    return body + resident_check_char(body)


def _residents(rng: random.Random, count: int) -> list[Row]:
    rows: list[Row] = []
    seen: set[str] = set()
    while len(rows) < count:
        gender = rng.choice("MF")
        birth = _date(rng, dt.date(1940, 1, 1), dt.date(2007, 12, 31))
        id_card = _resident_id(rng, birth, gender)
        if id_card in seen:
            continue
        seen.add(id_card)
        given = "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2))))
        district = rng.choice(DISTRICTS)
        address = f"{district}{rng.choice(STREETS)}{rng.randrange(1, 300)}号"
        phone = rng.choice(("13", "15", "18")) + f"{rng.randrange(10**9):09d}"
        registered = _timestamp(rng, dt.date(2000, 1, 1), dt.date(2015, 12, 31))
        rows.append((id_card, rng.choice(SURNAMES) + given, gender, birth, phone, address, district, registered))
    return rows


def _credit_code(rng: random.Random) -> str:
    org_body = f"{rng.randrange(10**8):08d}"
    body = "91441900" + org_body + org_code_check_char(org_body)
    assert all(c in CREDIT_CHARSET for c in body)
    return body + credit_check_char(body)


def _enterprises(rng: random.Random, count: int, id_cards: list[str]) -> list[Row]:
    rows: list[Row] = []
    seen: set[str] = set()
    while len(rows) < count:
        code = _credit_code(rng)
        if code in seen:
            continue
        seen.add(code)
        industry = rng.choice(INDUSTRIES)
        name = f"东莞市{rng.choice(NAME_WORDS)}{rng.choice(NAME_WORDS)}{industry[:2]}有限公司"
        rows.append(
            (
                code,
                name,
                rng.choice(id_cards),
                industry,
                _money(rng, 10_000, 50_000_000),
                _date(rng, dt.date(1990, 1, 1), dt.date(2015, 12, 31)),
                rng.choice(DISTRICTS),
                rng.choices(STATUSES, STATUS_WEIGHTS)[0],
            )
        )
    return rows


def _clinic_visits(rng: random.Random, count: int, id_cards: list[str]) -> list[Row]:
    rows: list[Row] = []
    for visit_id in range(1, count + 1):
        code, diagnosis = rng.choice(DIAGNOSES)
        rows.append(
            (
                visit_id,
                rng.choice(id_cards),
                rng.choice(HOSPITALS),
                rng.choice(CLINIC_DEPARTMENTS),
                code,
                diagnosis,
                _date(rng, dt.date(2014, 1, 1), dt.date(2015, 12, 31)),
                _money(rng, 20, 20_000),
            )
        )
    return rows


def _health_records(rng: random.Random, count: int, id_cards: list[str]) -> list[Row]:
    # One record per resident, in resident order; at scales where counts differ, the first ones.
    return [
        (
            record_id,
            id_card,
            rng.choice(BLOOD_TYPES),
            rng.choice(CHRONIC) if rng.random() < 0.3 else None,
            _timestamp(rng, dt.date(2010, 1, 1), dt.date(2015, 12, 31)),
        )
        for record_id, id_card in enumerate(id_cards[:count], start=1)
    ]


def _monitored_sites(rng: random.Random, count: int, enterprises: list[Row]) -> list[Row]:
    rows: list[Row] = []
    for site_id in range(1, count + 1):
        enterprise = rng.choice(enterprises)
        rows.append((site_id, enterprise[0], f"{enterprise[1]}{site_id}号排放口", enterprise[6]))
    return rows


def _readings(rng: random.Random, count: int, site_ids: list[int]) -> list[Row]:
    rows: list[Row] = []
    for reading_id in range(1, count + 1):
        pollutant, unit, limit = rng.choice(POLLUTANTS)
        # Three decimals: every engine and store prints and compares the same double.
        value = round(rng.uniform(0.0, limit * 1.3), 3)
        measured = _timestamp(rng, dt.date(2015, 1, 1), dt.date(2015, 12, 31))
        rows.append((reading_id, rng.choice(site_ids), pollutant, value, unit, measured, value > limit))
    return rows


def _vehicles(rng: random.Random, count: int, credit_codes: list[str]) -> list[Row]:
    rows: list[Row] = []
    seen: set[str] = set()
    while len(rows) < count:
        plate = "粤S" + rng.choice(PLATE_LETTERS) + "".join(rng.choice(PLATE_CHARS) for _ in range(5))
        if plate in seen:
            continue
        seen.add(plate)
        kind, (low, high) = rng.choice(VEHICLE_TYPES)
        rows.append(
            (
                plate,
                rng.choice(credit_codes),
                kind,
                rng.randint(low, high),
                _date(rng, dt.date(2005, 1, 1), dt.date(2015, 12, 31)),
            )
        )
    return rows


def _stations(rng: random.Random, count: int) -> list[Row]:
    return [
        (
            station_id,
            f"{_station_district(station_id)}{STATION_KINDS[(station_id - 1) // len(DISTRICTS) % 3]}",
            rng.randint(1, 3),
            _station_district(station_id),
        )
        for station_id in range(1, count + 1)
    ]


def _social_insurance(rng: random.Random, count: int, id_cards: list[str], credit_codes: list[str]) -> list[Row]:
    insured = rng.sample(id_cards, min(count, len(id_cards)))
    return [
        (
            id_card,
            rng.choice(credit_codes),
            _money(rng, 1_510, 40_000),
            rng.randint(1, 240),
            _date(rng, dt.date(2015, 1, 1), dt.date(2015, 12, 31)),
        )
        for id_card in insured
    ]


def _station_district(station_id: int) -> str:
    return DISTRICTS[(station_id - 1) % len(DISTRICTS)]
