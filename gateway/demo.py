"""The embedded demo city: SQLite files under a data directory and the config that serves them.

`citygate demo` builds the files on first run and serves them on the embedded engine; it needs
no server and no file outside the installed package.
"""

from __future__ import annotations

import importlib.resources
import sys
import time
from pathlib import Path

import yaml

from catalogue.demo_city import DEPARTMENTS, TABLES
from gateway.config import Config

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
    resident { name district birth_date }
  }
  health_clinic_visits_group_by(by: [hospital], order_by: [{aggregate: {count: desc}}]) {
    keys { hospital }
    aggregate { count sum { cost } }
  }
}
"""


def demo_config(data_dir: Path) -> Config:
    """The demo city on SQLite files in ``data_dir``: the packaged catalogue plus one store each."""
    catalogue = yaml.safe_load((importlib.resources.files("gateway") / "demo-city.yaml").read_text(encoding="utf-8"))
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
    from tqdm import tqdm

    from connectors import stores
    from gateway.config import SqliteStore
    from gateway.datagen import generate

    started = time.monotonic()
    print(f"citygate: building the demo city in {data_dir} (first run) ...", file=sys.stderr)
    city = generate(scale=scale)
    with tqdm(total=city.total_rows, unit="row", unit_scale=True, desc="loading", file=sys.stderr) as bar:
        for department in DEPARTMENTS:
            store = SqliteStore(kind="sqlite", path=data_dir / f"{department.name}.db")
            tables = [(t, city.rows(t.department, t.name)) for t in TABLES if t.department == department.name]
            bar.set_description(f"loading {department.name}")
            stores.load(department.name, store, tables, bar.update)
    print(f"citygate: {city.total_rows:,} rows in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return True
