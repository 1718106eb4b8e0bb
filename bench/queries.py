"""The GraphQL requests the benchmarks send, in one place."""

from __future__ import annotations

import datetime as dt
import json

# 10 rows at most (8 match) of one department, filtered on two columns, in key order.
SELECTIVE = """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}, visit_date: {_eq: "2015-06-30"}},
  order_by: [{visit_id: asc}], limit: 10) { visit_id hospital department_name diagnosis visit_date cost } }"""

# The same request with the day as a variable: one plan, a different answer for each day.
BY_DAY = """query VisitsOfDay($day: Date!) {
  health_clinic_visits(where: {hospital: {_eq: "东华医院"}, visit_date: {_eq: $day}},
    order_by: [{visit_id: asc}], limit: 10) { visit_id hospital department_name diagnosis visit_date cost } }"""

_ROOT = "market_regulation_enterprises(limit: 50, order_by: [{credit_code: asc}])"
NESTED = [
    f"{{ {_ROOT} {{ name }} }}",
    f"{{ {_ROOT} {{ name legal_representative {{ name }} }} }}",
    f"{{ {_ROOT} {{ name legal_representative {{ name clinic_visits {{ visit_date }} }} }} }}",
    f"{{ {_ROOT} {{ name legal_representative {{ name clinic_visits {{ visit_date "
    f"resident {{ health_record {{ blood_type }} }} }} }} }} }}",
]

POLICY_QUERY = """{ health_clinic_visits(where: {hospital: {_eq: "东华医院"}, visit_date: {_eq: "2015-06-30"}},
  order_by: [{visit_id: asc}], limit: 10) { visit_id id_card diagnosis cost resident { name birth_date } } }"""

# The policy bench's queries, run without policies and as health_analyst: a selective query
# whose masks fall on ten rows and a relationship, and a list whose key is masked, so that its
# rows order by the key's keyed digest, computed for every resident.
POLICY_QUERIES = {
    "visits and residents": POLICY_QUERY,
    "residents list": "{ public_security_residents(limit: 10) { id_card name birth_date } }",
}


def days_of_2015() -> list[str]:
    """One request body per day of 2015 for :data:`BY_DAY`, each a line of JSON.

    >>> len(days_of_2015()), json.loads(days_of_2015()[0])["variables"]
    (365, {'day': '2015-01-01'})
    """
    first = dt.date(2015, 1, 1)
    return [
        json.dumps({"query": BY_DAY, "variables": {"day": (first + dt.timedelta(days=n)).isoformat()}})
        for n in range(365)
    ]
