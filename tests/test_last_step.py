"""The policy rewrite's last step fails closed: a tree that would let a raw value, a hidden
key or a single row of an aggregate-only table out, however it is tampered with, is refused,
and a request it refuses is a policy refusal, not a crash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import sqlglot
from sqlglot import exp

from catalogue.types import LogicalType
from gateway.config import Config
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from tests.conftest import shared_engine
from tests.policy_support import (
    LATE_QUERIES,
    raw_of,
    rewritten,
    with_policies,
)


def test_the_last_step_fails_closed() -> None:
    from policies.decide import TableDecision
    from policies.model import RAW
    from policies.rewrite import Context, PolicyViolation, enforce, verify

    decision = TableDecision("health", "clinic_visits", "allow", {"cost": RAW}, {})
    ctx = Context(
        {("health", "clinic_visits"): decision},
        {("health", "clinic_visits"): {"cost": LogicalType("decimal", 10, 2)}},
        {},
    )
    unknown = exp.select("x").from_(
        exp.Table(this=exp.to_identifier("residents"), db=exp.to_identifier("public_security"))
    )
    with pytest.raises(PolicyViolation, match="no policy decision"):
        enforce(unknown, ctx)
    bare = exp.select("cost").from_(exp.Table(this=exp.to_identifier("clinic_visits"), db=exp.to_identifier("health")))
    with pytest.raises(PolicyViolation, match="read without its policy"):
        verify(bare, ctx)
    leaking = exp.select(exp.alias_(exp.column("__key_id_card", "t"), "o0_0")).from_("n0")
    with pytest.raises(PolicyViolation, match="hidden key"):
        verify(leaking, ctx)
    assert "raw" in enforce(bare, ctx).sql()  # and the rewrite itself passes its own check


def test_a_statement_the_last_step_refuses_is_a_policy_refusal_not_a_crash(secured: Gateway) -> None:
    """A request the policies' final check refuses answered INTERNAL, a crash's code: now a code
    of its own, which a client can tell apart, and still nothing of why."""
    from gateway.execution.budget import RowBudget
    from gateway.execution.prepared import prepare
    from gateway.identity.caller import Identity

    police = Identity("police")
    [compiled] = secured.compile("{ public_security_residents(limit: 1) { name } }", identity=police)
    tree = compiled.tree.copy()
    for table in tree.find_all(exp.Table):  # a table no policy decided on: the rewrite refuses it
        if table.name == "residents":
            table.set("this", exp.to_identifier("residents_archive"))
    view = secured.view(police)
    statement = prepare(replace(compiled, tree=tree), view, {}, secured.routes)
    error, _, _ = secured.runner._run(statement, view, RowBudget(10))
    assert error.code == "POLICY_REFUSED" and error.message == "the query was refused by the confidentiality policy"


def test_the_last_step_fails_closed_on_raw_values_outside_their_masks(analyst: tuple[Gateway, Any]) -> None:
    from policies.model import Treatment as T
    from policies.rewrite import LATE, PolicyViolation, late_mask, verify

    _, ctx = analyst
    tree = rewritten(analyst, LATE_QUERIES["projected"])
    masks = [node for node in tree.walk() if LATE in node.meta]
    assert masks and verify(tree.copy(), ctx)

    def tampered(change: Callable[[exp.Expr], None]) -> exp.Expr:
        copy = tree.copy()
        change(copy)
        return copy

    def residents(copy: exp.Expr) -> exp.Subquery:
        return next(s for s in copy.find_all(exp.Subquery) if s.meta.get("policy") == ("public_security", "residents"))

    def late(copy: exp.Expr, name: str) -> exp.Expr:
        return next(n for n in copy.walk() if LATE in n.meta and n.meta[LATE][1] == name)

    def unmask(copy: exp.Expr) -> None:  # the raw value itself as the output
        node = late(copy, "name")
        node.replace(raw_of(node))

    def weaken(copy: exp.Expr) -> None:  # a mask that shows more than the policy's
        node = late(copy, "name")
        key, name = node.meta[LATE]
        node.replace(late_mask(key, name, T("partial", (2, 0)), LogicalType("string"), raw_of(node)))

    def other(copy: exp.Expr) -> None:  # another column's mask (the year) over the raw name
        node = late(copy, "name")
        key, _ = node.meta[LATE]
        node.replace(late_mask(key, "birth_date", T("year"), LogicalType("date"), raw_of(node)))

    def swap(copy: exp.Expr) -> None:  # the subquery passes another column under the name
        subquery = residents(copy)
        passed = next(p for p in subquery.this.expressions if p.alias == "__raw_name")
        passed.this.set("this", exp.to_identifier("address", quoted=True))

    def carriers(copy: exp.Expr) -> list[exp.Select]:  # the layers a deferred raw value passes
        name = raw_of(late(copy, "name")).name
        return [s for s in copy.find_all(exp.Select) if any(p.alias_or_name == name for p in s.expressions)]

    def reader(copy: exp.Expr) -> exp.Select:  # the layer above, which passes it on with `*`
        select = carriers(copy)[0].parent_select
        assert select is not None and select.is_star
        return select

    def order(copy: exp.Expr) -> None:  # a page ordered by the raw value, before its mask
        reader(copy).order_by(raw_of(late(copy, "name")).copy(), copy=False)

    def where(copy: exp.Expr) -> None:  # a prefix probe on the raw value
        column = raw_of(late(copy, "name")).copy()
        reader(copy).where(exp.Like(this=column, expression=exp.Literal.string("张%")), copy=False)

    def rename(copy: exp.Expr) -> None:  # passed on under a name that is not a raw value's
        passed = next(p for p in carriers(copy)[0].expressions if p.alias.startswith("__raw_"))
        passed.set("alias", exp.to_identifier("o9_0"))

    def star(copy: exp.Expr) -> None:  # the statement's last SELECT passing every raw value on
        arm = late(copy, "name").find_ancestor(exp.Select)
        assert arm is not None
        arm.select(exp.Star(), copy=False)

    def correlated(copy: exp.Expr) -> None:  # a subquery that reads the raw value of its outer row
        carrier = carriers(copy)[0]
        column = next(p for p in carrier.expressions if p.alias.startswith("__raw_"))
        probe = exp.select("1").from_(exp.select("1 AS x").subquery("d")).where(exp.column(column.alias).eq("x"))
        carrier.where(exp.Exists(this=probe), copy=False)

    # Reads of a raw value that do not name it: each engine would resolve them to the value.
    def arm(copy: exp.Expr) -> exp.Select:  # the statement's SELECT that masks the name
        select = late(copy, "name").find_ancestor(exp.Select)
        assert select is not None
        return select

    def cte(copy: exp.Expr) -> str:
        return str(arm(copy).args["from_"].this.name)

    def scalar(copy: exp.Expr) -> None:  # the raw name again, through a scalar subquery
        name = raw_of(late(copy, "name")).name
        late(copy, "name").replace(sqlglot.parse_one(f"(SELECT s.{name} FROM {cte(copy)} AS s LIMIT 1)"))

    def probe(copy: exp.Expr) -> None:  # rows kept by whether a raw identity number is in a list
        reader(copy).where(sqlglot.parse_one("'441900' IN (SELECT q.__raw_o0_1 FROM n0 AS q)"), copy=False)

    def shout(copy: exp.Expr) -> None:  # the same name in capitals: the engines do not tell them apart
        name = raw_of(late(copy, "name")).name
        late(copy, "name").replace(exp.column(exp.to_identifier(name.upper(), quoted=True)))

    def capital_cte(copy: exp.Expr) -> None:  # `FROM N1` is the CTE n1 to an engine, not to sqlglot
        arm(copy).args["from_"].this.set("this", exp.to_identifier(cte(copy).upper()))

    def position(copy: exp.Expr) -> None:
        reader(copy).order_by(exp.Literal.number(2), copy=False)

    def using(copy: exp.Expr) -> None:
        name = raw_of(late(copy, "name")).name
        reader(copy).join(sqlglot.parse_one(f"(SELECT 'x' AS {name}) AS probe"), using=[name], copy=False)

    def row(copy: exp.Expr) -> None:  # DuckDB reads a source's alias as its whole row
        layer = reader(copy)
        layer.select(exp.alias_(exp.column(layer.args["from_"].this.alias), "whole"), copy=False)

    def pattern(copy: exp.Expr) -> None:
        reader(copy).select(exp.Columns(this=exp.Literal.string("__raw_.*")), copy=False)

    def distinct(copy: exp.Expr) -> None:
        reader(copy).distinct(copy=False)

    # Hidden keys: a relationship's raw key (`__k0` on the node) links records and does nothing else.
    def key_out(copy: exp.Expr) -> None:
        late(copy, "name").replace(exp.column("__k0"))

    def key_as_id(copy: exp.Expr) -> None:
        node = next(p for p in arm(copy).expressions if p.alias_or_name == "__id")
        node.replace(exp.alias_(exp.column("__k0"), "__id"))

    def key_order(copy: exp.Expr) -> None:
        reader(copy).order_by(exp.column("__k0"), copy=False)

    # ... followed, not only by name: under another name, in a filter, from a correlated subquery.
    def keyed(copy: exp.Expr) -> exp.Select:  # the visits' layer that passes their key on as __k0
        return next(s for s in copy.find_all(exp.Select) if any(p.alias == "__k0" for p in s.expressions))

    def above(copy: exp.Expr) -> exp.Select:  # the layer above it, which cuts the page
        select = keyed(copy).parent_select
        assert select is not None and select.is_star
        return select

    def key_renamed(copy: exp.Expr) -> None:  # passed on as `ref`, then shown as the visit's id_card
        passed = next(p for p in keyed(copy).expressions if p.alias == "__k0")
        passed.set("alias", exp.to_identifier("ref"))
        shown = next(n for n in copy.walk() if n.meta.get(LATE) == (("health", "clinic_visits"), "id_card"))
        shown.replace(exp.column("ref"))

    def key_probe(copy: exp.Expr) -> None:  # rows kept by a prefix of the raw identity number
        above(copy).where(exp.Like(this=exp.column("__k0"), expression=exp.Literal.string("441900%")), copy=False)

    def key_literal(copy: exp.Expr) -> None:  # rows kept by whether the raw key is one value
        above(copy).where(exp.column("__k0").eq(exp.Literal.string("441900198001010011")), copy=False)

    def key_compared(copy: exp.Expr) -> None:  # two keys compared, but as a value passed on
        above(copy).select(exp.alias_(exp.column("__k0").eq(exp.column("__k0")), "__k9"), copy=False)

    def key_outer(copy: exp.Expr) -> None:  # a correlated subquery probing the outer row's raw key
        probe = sqlglot.parse_one("SELECT 1 FROM (SELECT '4419' AS x) AS d WHERE STARTS_WITH(__k0, d.x)")
        above(copy).where(exp.Exists(this=probe), copy=False)

    def tie_filter(copy: exp.Expr) -> None:  # a tie-break read as a value
        above(copy).where(exp.column("__s1").eq(exp.Literal.number(7)), copy=False)

    def tie_renamed(copy: exp.Expr) -> None:
        passed = next(p for p in keyed(copy).expressions if p.alias == "__s1")
        passed.set("alias", exp.to_identifier("ref"))

    # The policy subquery itself, against the policy.
    def shown(copy: exp.Expr) -> None:  # the raw name given out as the name itself, unmasked
        projection = next(p for p in residents(copy).this.expressions if p.alias == "__raw_name")
        projection.set("alias", exp.to_identifier("name", quoted=True))

    def name_key(copy: exp.Expr) -> None:  # the raw name passed on as a key, which links nothing
        subquery = residents(copy)
        raw = exp.Column(this=exp.to_identifier("name", quoted=True), table=exp.to_identifier("raw"))
        subquery.this.select(exp.alias_(raw, "__key_name", quoted=True), copy=False)

    def unfiltered(copy: exp.Expr) -> None:  # a row filter the policy does not have
        residents(copy).this.where(exp.column("district", "raw").eq("南城"), copy=False)

    for change, message in (
        (shown, "otherwise than its policy does"),
        (unfiltered, "row filter alone"),
        (name_key, "passes on name raw, which no relationship joins on"),
        (unmask, "outside its mask"),
        (weaken, "not the policy's"),
        (other, "not the policy's"),
        (swap, "which no mask of it reads"),
        (order, "outside its mask"),
        (where, "outside its mask"),
        (rename, "outside its mask"),
        (star, "other than its nodes' outputs"),
        (correlated, "source is not known"),
        (scalar, "subquery that is not a table"),
        (probe, "subquery that is not a table"),
        (shout, "outside its mask"),
        (capital_cte, "neither a subquery nor a common table expression"),
        (position, "orders by something that is not a column"),
        (using, "joins other than ON"),
        (row, "whole row"),
        (pattern, "by pattern"),
        (distinct, "has distinct"),
        (key_out, "hidden key would leave"),
        (key_as_id, "other than its nodes' outputs"),
        (key_order, "ordered by a raw key"),
        (key_renamed, "hidden key would pass on as ref"),
        (key_probe, "hidden key is read other than to link records"),
        (key_literal, "hidden key is read other than to link records"),
        (key_compared, "hidden key is read other than to link records"),
        (key_outer, "hidden key is read other than to link records"),
        (tie_filter, "hidden tie is read other than to order rows"),
        (tie_renamed, "hidden tie would pass on as ref"),
    ):
        with pytest.raises(PolicyViolation, match=message):
            verify(tampered(change), ctx)


def test_the_last_step_keeps_an_aggregate_only_table_aggregated(sqlite_config: Config) -> None:
    from policies.rewrite import AGGREGATED, Context, PolicyViolation, enforce, verify

    config = with_policies(sqlite_config)
    gateway = Gateway.start(config, shared_engine(config))
    try:
        identity = Identity("district_officer", {"district": "南城"})
        view = gateway.view(identity)
        assert view.decisions is not None
        ctx = Context(view.decisions, view.types, identity.claims, view.keys)
        query = "{ health_clinic_visits_group_by(by: [hospital]) { keys { hospital } aggregate { sum { cost } } } }"
        [compiled] = gateway.compile(query, identity=identity)
    finally:
        gateway.close()
    tree = enforce(compiled.tree, ctx)
    assert verify(tree.copy(), ctx)

    def parts(copy: exp.Expr) -> tuple[exp.Select, exp.Select, exp.Select]:
        policy = next(s for s in copy.find_all(exp.Subquery) if s.meta.get("policy") == ("health", "clinic_visits"))
        inner, step = policy.this, policy.find_ancestor(exp.Select)
        holder = next(s for s in copy.find_all(exp.Select) if s.meta.get(AGGREGATED))
        assert isinstance(step, exp.Select) and step is not holder
        return inner, step, holder

    def page(copy: exp.Expr) -> None:  # a page of rows before they are aggregated
        parts(copy)[1].limit(5, copy=False)

    def measure_filter(copy: exp.Expr) -> None:  # visits above a cost, which a difference singles out
        parts(copy)[1].where("t1.cost > 19999", copy=False)

    def window(copy: exp.Expr) -> None:  # rows numbered before they are aggregated
        parts(copy)[1].select(sqlglot.parse_one("ROW_NUMBER() OVER (ORDER BY t1.cost) AS __n"), copy=False)

    def renamed(copy: exp.Expr) -> None:  # a column passed on under another's name
        parts(copy)[1].select(exp.alias_(exp.column("cost", "t1"), "hospital2"), copy=False)

    def min_of_group_column(copy: exp.Expr) -> None:  # one row's value of a column groups are cut by
        holder = parts(copy)[2]
        next(holder.find_all(exp.Sum)).replace(exp.Min(this=exp.column("hospital")))

    def grouped_by_measure(copy: exp.Expr) -> None:
        holder = parts(copy)[2]
        holder.set("group", exp.Group(expressions=[exp.column("hospital"), exp.column("cost")]))

    def ungrouped(copy: exp.Expr) -> None:  # a row's cost as an output
        parts(copy)[2].select(exp.alias_(exp.column("cost"), "o0_9"), copy=False)

    def listed(copy: exp.Expr) -> None:  # every row's cost, in one aggregate
        next(parts(copy)[2].find_all(exp.Sum)).replace(exp.ArrayAgg(this=exp.column("cost")))

    def counted_if(copy: exp.Expr) -> None:  # a filter by a measure, inside the aggregate
        condition = exp.If(this=exp.column("cost").eq(exp.Literal.number(1)), true=exp.Literal.number(1))
        next(parts(copy)[2].find_all(exp.Sum)).replace(exp.Sum(this=condition))

    def counted_where(copy: exp.Expr) -> None:  # the same under COUNT, shaped like count(columns:)
        case = exp.Case(ifs=[exp.If(this=exp.column("cost").eq(exp.Literal.number(1)), true=exp.Literal.number(1))])
        next(parts(copy)[2].find_all(exp.Sum)).replace(exp.Count(this=case))

    def keyed(copy: exp.Expr) -> None:  # the patient's key, which would link visits to people
        parts(copy)[0].select(exp.alias_(exp.column("id_card", "raw"), "__key_id_card"), copy=False)

    def two_steps(copy: exp.Expr) -> None:
        step = parts(copy)[1]
        step.replace(exp.select("*").from_(step.copy().subquery("b")))

    def no_step(copy: exp.Expr) -> None:  # the table aggregated straight from its policy subquery
        step = parts(copy)[1]
        assert step.parent is not None
        step.parent.replace(step.args["from_"].this.copy())

    for change, message in (
        (page, "single rows are chosen"),
        (measure_filter, "filtered by cost"),
        (window, "single rows are chosen"),
        (renamed, "gives hospital2"),
        (min_of_group_column, "aggregates hospital by value"),
        (grouped_by_measure, "grouped by cost"),
        (ungrouped, "cost leaves ungrouped"),
        (keyed, "aggregate-only but passes on __key_id_card"),
        (listed, "is aggregated by ARRAY_AGG"),
        (counted_if, "is aggregated by SUM"),
        (counted_where, "is aggregated by COUNT"),
        (two_steps, "read row by row"),
        (no_step, "read row by row"),
    ):
        copy = tree.copy()
        change(copy)
        with pytest.raises(PolicyViolation, match=message):
            verify(copy, ctx)


def test_the_last_step_refuses_a_complement_in_an_aggregate_only_filter(
    analyst: tuple[Gateway, Any],
) -> None:
    """The schema offers no `_neq` there; a tree that has one anyway (a compiler bug) is refused."""
    from policies.rewrite import Context, PolicyViolation, enforce, verify

    gateway, _ = analyst
    officer = Identity("district_officer", {"district": "石龙"})
    view = gateway.view(officer)
    assert view.decisions is not None
    ctx = Context(view.decisions, view.types, {"district": "石龙"}, view.keys)
    query = '{ health_clinic_visits_aggregate(where: {diagnosis_code: {_eq: "J06"}}) { aggregate { count } } }'
    [compiled] = gateway.compile(query, identity=officer)
    tree = enforce(compiled.tree, ctx)
    changes: list[Callable[[exp.Expr], exp.Expr]] = [
        lambda eq: exp.NEQ(this=eq.this, expression=eq.expression),
        lambda eq: exp.Not(this=eq),
    ]
    for change in changes:
        copy = tree.copy()
        equal = next(e for e in copy.find_all(exp.EQ) if e.expression == exp.Literal.string("J06"))
        equal.replace(change(equal.copy()))
        with pytest.raises(PolicyViolation, match="aggregate-only but is filtered by"):
            verify(copy, ctx)
