"""Running a plan: each root field's statement on its route within its time, side by side
and fairly shared between callers, its rows from the result cache when they are there, a
noisy answer's privacy budget spent before it runs, and the rows shaped into the response.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import operator
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from catalogue.errors import (
    CitygateError,
    EngineQueryError,
    EngineUnavailableError,
    NoiseRequiredError,
    PolicyRefused,
    ResultTooLarge,
    StatementTimeout,
    StoreUnavailableError,
    trace_without_messages,
)
from gateway.config import Limits
from gateway.execution.budget import RowBudget
from gateway.execution.cache import ResultCache
from gateway.execution.fairness import CALLER, Shares, busy
from gateway.execution.plans import MEMO_BYTES, Memo, Plan, Response, count_rows, encode, plan_weight
from gateway.execution.prepared import BATCHED, Batched, Refused, Statement, fallback
from gateway.execution.privacy import PrivacyBudgets
from gateway.execution.routes import Route, Routes
from gateway.execution.statements import SilentAfterRunning, Statements
from gateway.execution.views import View
from gateway.graphql.shape import Joined, shape
from gateway.observe.metrics import Metrics
from gateway.observe.telemetry import Telemetry
from gateway.settings.limits import ConcurrencyConfig
from gateway.state import StateUnavailable
from policies.noise import noisy_rows, spend

log = logging.getLogger("citygate")


@dataclass
class Runner:
    """Where a gateway's plans run, and what they answered last."""

    statements: Statements  # each statement within its time, on its engine
    routes: Routes
    results: ResultCache
    privacy: PrivacyBudgets
    limits: Callable[[str | None], Limits]  # a role's own limits
    redact: Callable[[str], str]  # an engine's text made fit for the log
    engine_name: str
    telemetry: Telemetry = field(default_factory=Telemetry)
    metrics: Metrics = field(default_factory=Metrics)
    # the root fields' threads and each caller's and request's share of them (limits.concurrency)
    concurrency: ConcurrencyConfig = field(default_factory=ConcurrencyConfig)
    # Root fields of requests that have several, side by side (see run_all).
    pool: ThreadPoolExecutor = field(init=False)
    root_fields: Shares = field(init=False)  # per caller, in `pool`
    batch_keys: int = 1000  # engine.batch_keys: keys given to one statement of a batched relationship
    memo_bytes: int = 128 << 20  # cache.plan_bytes: what the last answers, with their plans, may hold
    # Each plan's last answer, beside the plan (which never changes), by the plan's identity: an
    # entry holds its plan (a memo's response names it), so the id is never another plan's while
    # the entry stands. Not a weak mapping: a value that holds its key would keep it for good.
    _memos: LRUCache[int, tuple[Plan, Memo]] = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.pool = ThreadPoolExecutor(self.concurrency.root_field_threads, thread_name_prefix="citygate")
        self.root_fields = Shares(self.concurrency.root_fields_per_caller)
        self._memos = LRUCache(maxsize=self.memo_bytes, getsizeof=_memo_weight)

    def from_cache(self, plan: Plan, claims: dict[str, Any], max_rows: int) -> Response | None:
        """``plan``'s response if every root field's rows are in the result cache (and together
        no more than ``max_rows``), shaped, encoded, and remembered with them; else None."""
        rows, left = [], max_rows
        for statement in plan.statements.values():
            # a route the masks are not proven on answers nothing, cached or not: the full path
            # takes the fallback or says so
            found = (
                self.results.get(statement.route.key, statement.text, statement.release)
                if isinstance(statement, Statement) and self.routes.proven(statement.route)
                else None
            )
            if found is None or len(found) > left:  # over the row limit: the full path says so
                return None
            rows.append(found)
            left -= len(found)
        self.metrics.count_cached(len(rows))
        # The same cached rows as last time (the very objects; cache entries are never changed
        # in place): the same answer, shaped and encoded already. Within one plan the claims
        # are the same too (the plan's key holds them).
        memo = self.memo_of(plan)
        if memo is not None and all(map(operator.is_, memo.rows, rows)):
            return memo.response
        data: dict[str, Any] = {key: plan.static.get(key) for key in plan.keys}
        counts: dict[str, int] = {}
        for (name, statement), found in zip(plan.statements.items(), rows, strict=True):
            assert isinstance(statement, Statement)
            with self.telemetry.stage("shape"):
                data[name] = value = shape(statement.compiled, found, statement.builders)
            counts[name] = count_rows(value)
        body = {"data": data}
        response = Response(
            body,
            plan=plan,
            rows=counts,
            cache=dict.fromkeys(plan.statements, "hit"),
            routes={name: route_name(s) for name, s in plan.statements.items()},
            claims=claims,
            encoded=encode(body),
        )
        if len(response.encoded or b"") <= MEMO_BYTES:
            with self._lock, contextlib.suppress(ValueError):
                self._memos[id(plan)] = (plan, Memo(tuple(rows), response))
        return response

    def memo_of(self, plan: Plan) -> Memo | None:
        """``plan``'s last answer made wholly of cached rows, if it has one."""
        with self._lock:
            entry = self._memos.get(id(plan))
        return entry[1] if entry is not None and entry[0] is plan else None

    def memo_parts(self, plan: Plan) -> list[tuple[str, str, str, Sequence[Any]]]:
        """The cached rows ``plan``'s memo was made of, each with what the result cache keeps it
        under (route key, statement text, release): the memo stands while each is still there."""
        memo = self.memo_of(plan)
        assert memo is not None
        return [
            (statement.route.key, statement.text, statement.release, found)
            for statement, found in zip(plan.statements.values(), memo.rows, strict=True)
            if isinstance(statement, Statement)
        ]

    def run_all(
        self, statements: Mapping[str, Statement | Batched | Refused], view: View, budget: RowBudget, deadline: float
    ) -> dict[str, tuple[Any, str, str]]:
        if len(statements) <= 1:
            return {key: self._run(statement, view, budget) for key, statement in statements.items()}
        # Root fields side by side, each in a thread carrying the request's context (request id,
        # span, caller), but at most root_fields_per_request of one request at a time: a request of
        # many aliases waits behind itself, not others behind it.
        caller = CALLER.get()
        deadline = time.monotonic() + self.limits(view.role).statement_seconds
        waiting = list(statements.items())
        running: dict[Future[tuple[Any, str, str]], str] = {}
        done: dict[str, tuple[Any, str, str]] = {}
        while waiting or running:
            while waiting and len(running) < self.concurrency.root_fields_per_request:
                if not self.root_fields.acquire(caller, 0 if running else max(0.0, deadline - time.monotonic())):
                    if running:  # one of its own ends first
                        break
                    key, _ = waiting.pop(0)
                    done[key] = (busy(), "off", "-")
                    continue
                key, statement = waiting.pop(0)
                future = self.pool.submit(contextvars.copy_context().run, self._run, statement, view, budget)
                future.add_done_callback(lambda _, c=caller: self.root_fields.release(c))  # type: ignore[misc]
                running[future] = key
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    done[running.pop(future)] = future.result()
        return {key: done[key] for key in statements}

    def _refusal(self, refused_field: Refused, view: View) -> CitygateError:
        """What a root field without a statement answers, said in the server log as the
        request's own failure would be (the caller gets only the error)."""
        key, error = refused_field.compiled.key, refused_field.error
        if isinstance(error, NoiseRequiredError):
            log.warning("root field %s for role %s: %s", key, view.role, refused_field.reason)
        elif isinstance(error, PolicyRefused):
            log.error("policy check refused root field %s for role %s: %s", key, view.role, refused_field.reason)
        else:
            log.warning("root field %s failed: %s", key, refused_field.reason)
            self.metrics.engine_errors.labels(engine=self.engine_name, code=error.code, route=refused_field.route).inc()
        return error

    def _run(self, statement: Statement | Batched | Refused, view: View, budget: RowBudget) -> tuple[Any, str, str]:
        """The root field's value (or its error), whether the cache answered it, and the route
        it took. Its rows count against the request's ``budget`` (see :class:`RowBudget`)."""
        if isinstance(statement, Refused):  # nothing runs, nothing is spent
            return self._refusal(statement, view), "off", statement.route
        if isinstance(statement, Batched):
            return self._run_batched(statement, view, budget)
        started = time.perf_counter()
        compiled, route = statement.compiled, statement.route
        engine = route.engine.name
        cached = "off"
        try:
            try:
                rows, cached = self._fetch(route, statement.text, statement, view, budget)
            except EngineUnavailableError:
                other = fallback(statement, self.routes)
                if other is None:
                    raise
                route, text = other
                engine = route.engine.name
                rows, cached = self._fetch(route, text, statement, view, budget)
            self.metrics.count_lookup("result", cached)
            budget.take(len(rows))
        except CitygateError as error:
            detail = self.redact(error.detail or "")
            log.warning("root field %s failed: %s (%s)", compiled.key, error.message, detail)
            self.metrics.engine_errors.labels(engine=engine, code=error.code, route=route.name).inc()
            return error, cached, route.name
        except Exception as error:  # an engine bug must not take the server down or leak a trace
            # where it failed, not what it said: an engine's message may quote the values it read
            # or its key material
            log.error("root field %s failed: %s", compiled.key, self.redact(trace_without_messages(error)))
            self.metrics.engine_errors.labels(engine=engine, code="INTERNAL", route=route.name).inc()
            return CitygateError("internal error while running the query"), cached, route.name
        with self.telemetry.stage("shape"):
            value = shape(compiled, rows, statement.builders)
        elapsed = time.perf_counter() - started
        for department in compiled.departments:
            self.metrics.statement_seconds.labels(department=department, engine=engine, route=route.name).observe(
                elapsed
            )
        log.debug(
            "root field %s: %d rows in %.1f ms on %s (cache %s)",
            compiled.key,
            len(rows),
            elapsed * 1000,
            engine,
            cached,
        )
        return value, cached, route.name

    def _run_batched(self, batched: Batched, view: View, budget: RowBudget) -> tuple[Any, str, str]:
        """A root field cut between stores: the root's part, then each child part given its
        parents' keys (at most ``batch_keys`` to a statement), each on its own store, shaped
        and joined by key as its rows arrive. Every statement's rows, and the objects the
        engine's join would have repeated for parents that share a key, count against the
        request's ``budget``; all the statements together run within the role's statement
        limit, as the one statement on the engine would. The value, whether the cache answered
        every statement, and the route (``batched``)."""
        started = time.perf_counter()
        compiled = batched.compiled
        run = _Parts(batched, self.limits(view.role).statement_seconds)
        try:
            with self.telemetry.stage("batched", parts=len(batched.parts)):
                for index in range(len(batched.parts)):
                    try:
                        self._run_part(run, index, view, budget)
                    except EngineUnavailableError:
                        # a statement still queued when the field's time ran out: the field's
                        # time is what ran out
                        if time.monotonic() < run.deadline:
                            raise
                        raise StatementTimeout(run.seconds) from None
        except CitygateError as error:
            detail = self.redact(error.detail or "")
            log.warning("root field %s failed (part %s): %s (%s)", compiled.key, run.name, error.message, detail)
            self.metrics.engine_errors.labels(engine="delegated", code=error.code, route=BATCHED).inc()
            return error, "off", BATCHED
        except Exception as error:  # an engine bug must not take the server down or leak a trace
            log.error("root field %s failed: %s", compiled.key, self.redact(trace_without_messages(error)))
            self.metrics.engine_errors.labels(engine="delegated", code="INTERNAL", route=BATCHED).inc()
            return CitygateError("internal error while running the query"), "off", BATCHED
        elapsed = time.perf_counter() - started
        for department in compiled.departments:
            self.metrics.statement_seconds.labels(department=department, engine="delegated", route=BATCHED).observe(
                elapsed
            )
        answered = run.answered
        cached = "hit" if answered == {"hit"} else "miss" if "miss" in answered else "off"
        self.metrics.count_lookup("result", cached)
        value = run.joined.value
        return (Partly(value, run.failed) if run.failed else value), cached, BATCHED

    def _run_part(self, run: _Parts, index: int, view: View, budget: RowBudget) -> None:
        """Part ``index`` of ``run``: its statement, once for the root's part, else once per
        batch of its parents' keys; a part whose store does not answer, where its fields may be
        null alone, fails them (and the parts under it) and leaves the rest."""
        part, statement = run.batched.parts[index], run.batched.statements[index]
        run.name = ",".join(statement.compiled.departments)
        if index in run.skipped:  # under a part that failed: no parents, nothing to ask
            run.skip_under(index)
            return
        if part.parent < 0:
            assert isinstance(statement, Statement)  # a root part that fails is the whole's
            rows, cached = self._fetch(statement.route, statement.text, statement, view, budget, seconds=run.left())
            budget.take(len(rows))
            run.joined.add(index, rows)
            run.answered.add(cached)
            return
        keys = run.joined.keys(index)
        try:
            if isinstance(statement, Refused):  # its store failed while its text was made
                raise statement.error
            for start in range(0, len(keys), self.batch_keys):
                batch = keys[start : start + self.batch_keys]
                given = (encode(batch).decode(),)
                rows, cached = self._fetch(statement.route, statement.text, statement, view, budget, given, run.left())
                budget.take(len(rows))
                budget.take(run.joined.add(index, rows, batch))
                run.answered.add(cached)
        except StoreUnavailableError as error:
            if not run.joined.nullable(index):  # a list or an aggregate: null takes its parents
                raise
            log.warning("root field %s: part %s failed: %s", run.batched.compiled.key, run.name, error.message)
            self.metrics.engine_errors.labels(engine="delegated", code=error.code, route=BATCHED).inc()
            run.failed.extend((path, error) for path in run.joined.paths(index))
            run.skip_under(index)
        self.metrics.batched_keys.observe(len(keys))

    def _fetch(
        self,
        route: Route,
        text: str,
        statement: Statement,
        view: View,
        budget: RowBudget,
        params: tuple[str, ...] = (),
        seconds: float | None = None,
    ) -> tuple[Sequence[Any], str]:
        """``statement``'s rows as ``text`` on ``route`` (from the result cache, or run there,
        with ``params`` bound, within ``seconds`` if given, else the role's statement limit),
        and whether the cache answered. Nothing is asked of a route the masks are not proven on
        (:meth:`Routes.require_proven`: an engine's statement takes the fallback)."""
        departments = statement.compiled.departments
        self.routes.require_proven(route, departments)
        statement_seconds = self.limits(view.role).statement_seconds if seconds is None else seconds
        noise = statement.noise

        def run() -> Sequence[Any]:
            # A noisy answer spends its role's budget before it runs, on whichever route, and is
            # kept in the cache with its noise: asked again, the same draw comes back and costs
            # nothing, so repeating a question averages no noise away. A run that fails before
            # anything read the rows (a store or engine unreachable, the gateway busy: on the
            # engine before its fallback, too) gives its spending back; one that fails because of
            # them does not (see _read_nothing).
            cost = spend(r for node in noise.values() for r in node.values())
            if cost:
                self._spend(view, cost)
            try:
                with self.telemetry.stage(
                    "engine", engine=route.engine.name, route=route.name, departments=",".join(departments)
                ):
                    # the whole limit, not what this request has left: a run may be shared with
                    # another request's (the result cache runs one for all who wait on it)
                    rows = self.statements.run(text, departments, budget.rows, statement_seconds, route.engine, params)
            except BaseException as error:
                if cost and _read_nothing(error):
                    assert view.role is not None and view.privacy is not None
                    try:
                        self.privacy.refund(view.role, cost, view.privacy)
                    except StateUnavailable as error:  # the spending stands: fail closed
                        log.error("could not give back epsilon %g of role %s: %s", cost, view.role, error.detail)
                raise
            return noisy_rows(rows, noise) if cost else rows

        # "off": a department forbids caching, or the answer is too big to keep; a statement
        # given keys is kept under its text and its keys (a NUL apart: no text holds one)
        key = text if not params else "\x00".join((text, *params))
        return self.results.fetch(route.key, key, departments, run, statement.release)

    def _spend(self, view: View, cost: float) -> None:
        """Spend ``cost`` of the role's privacy budget, or refuse the answer."""
        if view.role is None or view.privacy is None:  # the policy model requires a budget
            raise PolicyRefused()
        self.privacy.spend(view.role, cost, view.privacy)

    # -- tools -----------------------------------------------------------------------------

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Parts:
    """One run of a batched field: its rows joined so far, what the cache answered, the
    fields that failed alone and the parts under them, and its deadline."""

    def __init__(self, batched: Batched, seconds: float) -> None:
        self.batched = batched
        made = [s.builders if isinstance(s, Statement) else () for s in batched.statements]
        self.joined = Joined(batched.compiled, made)
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.answered: set[str] = set()
        self.failed: list[tuple[list[str | int], CitygateError]] = []
        self.skipped: set[int] = set()
        self.name = "-"  # the departments of the part now running

    def left(self) -> float:
        """The seconds the next statement has: what is left of the field's."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise StatementTimeout(self.seconds)
        return remaining

    def skip_under(self, index: int) -> None:
        self.skipped.update(c for c, p in enumerate(self.batched.parts) if p.parent == index)


@dataclass(frozen=True)
class Partly:
    """A root field's value with some of its fields null for an error of their own: the fields
    of a relationship whose store did not answer (its path, and why)."""

    value: Any
    errors: list[tuple[list[str | int], CitygateError]]


def _memo_weight(entry: tuple[Plan, Memo]) -> int:
    """What a memo keeps in memory: its plan (which it keeps alive, whether or not the plan
    cache still does), the answer encoded, and the response it was made from."""
    plan, memo = entry
    return plan_weight(plan) + 2 * len(memo.response.encoded or b"")


def route_name(statement: Statement | Batched | Refused) -> str:
    if isinstance(statement, Batched):
        return BATCHED
    return statement.route.name if isinstance(statement, Statement) else statement.route


def spent_on(error: BaseException) -> bool:
    """Whether a noisy root field that failed with ``error`` kept what it spent, as the audit
    record says: the failures the rows cause (:func:`_read_nothing`), once the spending was
    made (a refusal of the budget or of the policy spent nothing)."""
    return isinstance(error, (ResultTooLarge, StatementTimeout, EngineQueryError, SilentAfterRunning))


def _read_nothing(error: BaseException) -> bool:
    """Whether a noisy statement's failure says nothing of the rows it would have read, so that
    its spending may be given back. A failure the rows cause tells something for free that the
    noise was paid to hide: more than ``max_rows`` groups passed the noisy selection
    (``RESULT_TOO_LARGE``), the statement ran long (``TIMEOUT``), the engine failed on a value
    (``ENGINE_ERROR``). So only a store or an engine that could not be reached, or a gateway too
    busy to start it, gives it back; a store found silent after the statement ran past its time
    (:class:`~gateway.execution.statements.SilentAfterRunning`), and anything unforeseen, keep
    the spending: fail closed."""
    if isinstance(error, SilentAfterRunning):
        return False
    return isinstance(error, (StoreUnavailableError, EngineUnavailableError))
