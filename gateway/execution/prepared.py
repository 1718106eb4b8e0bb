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
from gateway.execution.routes import Route, Routes
from gateway.execution.views import View
from gateway.graphql.compile import Compiled
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


def prepare(compiled: Compiled, view: View, claims: Mapping[str, Any], routes: Routes) -> Statement | Refused:
    """``compiled`` as the role of ``view`` (with ``claims``) runs it: rewritten, routed,
    rendered; or why it has no statement: a policy's refusal, or a store that failed when
    asked while its text was made (a collation, a column's type), for this request only."""
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
