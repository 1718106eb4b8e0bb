"""From a compiled root field to the statement that runs: the one path from policy to statement.

A root field's compiled tree (:mod:`gateway.graphql.compile`) is rewritten by the role's
policies, given the route it takes (its store's own, or the engine: :mod:`gateway.execution.routes`)
and rendered there, once per plan. The gateway runs exactly that text; ``citygate explain`` and
the console's "view as" print exactly that text: none of them rewrites, routes or renders by
itself, so what a security officer reads is what the store or the engine receives.

A root field the policies refuse (a statement that would show what the role may not see, a
noisy table read without noise) has no statement: it is kept as refused, with what the server
log says of it, and nothing of it ever runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from catalogue.errors import CitygateError, NoiseRequiredError, PolicyRefused
from gateway.execution.cache import release
from gateway.execution.routes import DELEGATED, Route, Routes
from gateway.execution.views import View
from gateway.graphql.compile import Compiled, Part
from gateway.graphql.shape import Builder, builders
from policies.noise import Release
from policies.rewrite import NoiseRequired, PolicyViolation


@dataclass(frozen=True)
class Statement:
    """A root field as it runs: its tree after the role's policies, the route it takes, its
    text there (the only text that runs for it), the noise its counts and sums get (by node
    and position in its rows), what its rows are released as beside the text (the result
    cache keys on both: :func:`gateway.execution.cache.release`), and how its rows are shaped."""

    compiled: Compiled
    rewritten: exp.Expr
    route: Route
    text: str
    noise: dict[int, dict[int, Release]]
    release: str
    builders: tuple[Builder, ...]


@dataclass(frozen=True)
class Refused:
    """A root field that has no statement, and never runs: what its caller is told, and what
    the server log says of it (the policies' reason, which the caller never sees)."""

    compiled: Compiled
    error: CitygateError
    reason: str
    # a policy's refusal stands for this plan; a store that did not answer while its text was
    # made is not the plan's to keep (it is made again at the next request)
    lasting: bool = True
    route: str = "-"  # the route it would have taken, when one was picked


@dataclass(frozen=True)
class Batched:
    """A root field cut where its relationships reach another store
    (:mod:`gateway.graphql.parts`): one statement per part, each on its store's own route,
    the root's first; and the one statement of the whole field, which the role's policies
    admitted first (a part runs only where the whole would), and which explain shows beside
    them as each engine would run it. Its ``route`` is the whole's (the engine's); it reports
    itself as :data:`BATCHED`."""

    whole: Statement
    parts: tuple[Part, ...]
    # one per part, in the same order; a part whose store did not answer while its text was
    # made fails the fields it holds, for this request only (the plan is not kept)
    statements: tuple[Statement | Refused, ...]

    @property
    def lasting(self) -> bool:
        return all(isinstance(s, Statement) for s in self.statements)

    @property
    def compiled(self) -> Compiled:
        return self.whole.compiled

    @property
    def route(self) -> Route:
        return self.whole.route

    @property
    def noise(self) -> dict[int, dict[int, Release]]:
        return {}  # a field with a noisy table is never cut

    def label(self, index: int) -> str:
        """What part ``index`` is, for explain: its store, and which keys it is given (its
        text's one placeholder: the keys of its parents' rows, bound by the driver)."""
        part, statement = self.parts[index], self.statements[index]
        if isinstance(statement, Refused):
            store = f"not run: {statement.error.message}"
        else:
            store = f"on {statement.route.store} ({statement.route.engine.dialect})"
        if part.parent < 0:
            return f"part {index + 1} of {len(self.parts)}, {store}"
        parent = self.compiled.nodes[part.link_node]
        nodes = self.compiled.nodes
        relation = nodes[min(part.tops)].relation
        column = relation.column if relation is not None else "?"
        return (
            f"part {index + 1} of {len(self.parts)}, {store}, given the keys {parent.table.name}.{column} "
            f"of part {part.parent + 1}'s rows as its one parameter"
        )


BATCHED = "batched"  # the route a batched root field reports (audit, metrics, spans)


def prepare(compiled: Compiled, view: View, claims: Mapping[str, Any], routes: Routes) -> Statement | Batched | Refused:
    """``compiled`` as the role of ``view`` (with ``claims``) runs it: rewritten, routed,
    rendered, and cut between stores where it can be (:class:`Batched`); or why it has no
    statement: a policy's refusal, or a store that failed when asked while its text was made
    (a collation, a column's type), for this request only."""
    whole = _prepare(compiled, view, claims, routes)
    if not compiled.parts or not isinstance(whole, Statement) or whole.route is not routes.main:
        return whole
    made: list[Statement | Refused] = []
    for part in compiled.parts:
        statement = _prepare(part.compiled, view, claims, routes)
        if isinstance(statement, Refused) and not statement.lasting and part.parent >= 0:
            made.append(statement)  # its store did not answer: its fields fail, not the field
            continue
        # each part on its own store, or the field runs whole on the engine
        if not isinstance(statement, Statement) or statement.route.name != DELEGATED or statement.noise:
            return whole
        made.append(statement)
    return Batched(whole, compiled.parts, tuple(made))


def _prepare(compiled: Compiled, view: View, claims: Mapping[str, Any], routes: Routes) -> Statement | Refused:
    try:
        rewritten = view.rewrite(compiled.tree, claims)
        noise = compiled.positions(view.releases(rewritten))
    except NoiseRequired as refusal:  # the caller learns which table
        return Refused(compiled, NoiseRequiredError(refusal.table), str(refusal))
    except PolicyViolation as violation:  # fail closed: the caller learns no more
        return Refused(compiled, PolicyRefused(), str(violation))
    route = routes.pick(rewritten)
    try:
        text = routes.render(route, rewritten)
    except CitygateError as error:  # the route's failure, named as the run's would be
        reason = f"{error.message} ({route.engine.redact(error.detail or '')})"
        return Refused(compiled, error.with_traceback(None), reason, lasting=False, route=route.name)
    return Statement(
        compiled,
        rewritten,
        route,
        text,
        noise,
        release(view.role, noise, view.privacy),
        builders(compiled),
    )


def fallback(statement: Statement, routes: Routes) -> tuple[Route, str] | None:
    """The route and text ``statement`` takes when its engine does not answer, if the
    configuration names one (``engine.fallback``): made when needed, never kept."""
    if statement.route is not routes.main:
        return None
    return routes.fallback(statement.rewritten)
