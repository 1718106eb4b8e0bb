"""Where a root field's statement runs: whole on the one store it reads (the delegated route),
or on the configured engine, which joins across stores.

A statement is delegated when every table it reads lives in one store, ``engine.delegate`` is
``auto`` and none of its departments says ``delegate: false``, and the store can run it exactly
as the engines would:

- it holds nothing the store declares it cannot run as the engines do
  (:attr:`connectors.native.NativeEngine.cannot`), decided before anything is rendered: the
  hash mask and a masked key's order, which need the hash key, never given to a store's
  engine (so it never appears in a store's statement log); a case-insensitive comparison
  (``_ilike``), which each store folds its own way; on SQLite, the partial mask and a
  timestamp's text;
- it reads no column whose values the store's driver returns as no engine does
  (:attr:`connectors.native.NativeEngine.differs`).

With ``engine.fallback: embedded``, a statement whose engine (Trino) does not answer runs on
the embedded engine attached to the same stores instead.

A route the masks are not proven on (it did not answer when they were tried:
:mod:`gateway.execution.proof`) takes no statement until they are: the engine's take the
fallback, or fail with :class:`RouteUnproven` where there is none; a store's own fail as when
it does not answer (the engine is not tried instead, for the reason :meth:`Routes.render`
gives). Meeting one asks the gateway to prove it again (``on_unproven``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlglot import exp

from catalogue.errors import RouteUnproven, StoreUnavailableError
from catalogue.model import Catalogue
from catalogue.sql import departments_in, is_logical
from connectors.base import Engine
from connectors.native import NativeEngine
from connectors.settings import EngineSettings

log = logging.getLogger("citygate")

DELEGATED = "delegated"


@dataclass(frozen=True)
class Route:
    """One way to run a statement: its name (``delegated``, or the engine's), what its text is
    cached under (a delegated statement's text names no store: the store's key does), and the
    engine that runs it."""

    name: str
    key: str
    engine: Engine
    store: str = ""  # the store a delegated statement runs on (connectors.native.store_key)


class Routes:
    """The routes of one gateway: its engine, each store's own, and the fallback if any."""

    def __init__(
        self,
        engine: Engine,
        catalogue: Catalogue,
        native: Mapping[str, NativeEngine] | None = None,
        *,
        delegates: bool = True,
        kept: Iterable[str] = (),
        fallback: EngineSettings | None = None,
    ) -> None:
        """``delegates``: whether statements may run on their store at all (``engine.delegate:
        auto``); ``kept``: the departments whose statements never do (``delegate: false``);
        ``fallback``: the settings of the embedded engine that answers while ``engine`` does
        not (``engine.fallback: embedded``), None for none."""
        self.engine = engine
        self.main = Route(engine.name, engine.name, engine)
        self.native = dict(native or {})  # department -> its store's engine
        self.delegates = delegates
        self.kept = frozenset(kept)
        self.fallback_settings = fallback
        self._kinds = {(t.department, t.name): {c.name: c.type.kind for c in t.columns} for t in catalogue.tables}
        self._fallback: Engine | None = None
        self._lock = threading.Lock()
        self._unproven: dict[str, str] = {}  # route key -> why the masks are not proven there
        self.on_unproven: Callable[[], None] = lambda: None  # the gateway's: try the proof again

    @property
    def unproven(self) -> dict[str, str]:
        """The routes (by key) that take no statement until the masks are proven on them, and why."""
        return dict(self._unproven)

    def set_unproven(self, unproven: Mapping[str, str]) -> None:
        self._unproven = dict(unproven)  # replaced whole: a reader sees one state or the other

    def proven(self, route: Route) -> bool:
        return route.key not in self._unproven

    def require_proven(self, route: Route, departments: Sequence[str]) -> None:
        """Nothing if the masks are proven on ``route``; else the gateway is asked to prove
        them (once the route answers), and a statement reading ``departments`` fails: on a
        store's own route as when the store does not answer, with why it did not when they
        were tried; on the engine with :class:`RouteUnproven` (an
        :class:`EngineUnavailableError`: the engine's statements take the fallback)."""
        why = self._unproven.get(route.key)
        if why is None:
            return
        self.on_unproven()
        if route.store:
            again = "; the masks are tried on its store again once it answers: try again shortly"
            raise StoreUnavailableError(departments[0] if departments else "", why + again)
        raise RouteUnproven(route.name)

    @property
    def delegating(self) -> bool:
        return self.delegates and bool(self.native)

    def pick(self, tree: exp.Expr) -> Route:
        """The route ``tree`` takes: its store's own if the store can run it as the engines
        would (decided from what each store declares it cannot run, before anything is
        rendered), else the engine."""
        native = self._store_of(tree)
        if native is None:
            return self.main
        return Route(DELEGATED, f"{DELEGATED}:{native.key}", native, native.key)

    def render(self, route: Route, tree: exp.Expr) -> str:
        """``tree``'s text on ``route``. Rendering for a store may ask it once (its collation,
        its columns' types): a store that does not answer then is its departments' failure,
        on this route as it would be on the engine's, and not a reason to try the engine,
        which may reach the store another way (its own credentials, its own TLS settings) and
        so answer what the configuration of this route refuses."""
        return route.engine.sql(tree)

    def _store_of(self, tree: exp.Expr) -> NativeEngine | None:
        """The one store that can run ``tree`` as the engines would, if any."""
        if not self.delegates:
            return None
        departments = departments_in(tree)
        engines = {id(self.native.get(d)): self.native.get(d) for d in departments}
        if len(engines) != 1 or None in engines.values():
            return None
        if self.kept.intersection(departments):
            return None
        native = next(iter(engines.values()))
        assert native is not None
        cannot = native.unsupported(tree)
        if cannot is not None:
            log.debug("not delegated: %s", cannot)
            return None
        if native.differs:
            tables = [(t.db, t.name) for t in tree.find_all(exp.Table) if is_logical(t)]
            names = {c.name for c in tree.find_all(exp.Column)}
            for table in tables:
                kinds = self._kinds.get(table, {})
                if any(kinds.get(name) in native.differs for name in names):
                    return None
        return native

    def fallback(self, tree: exp.Expr) -> tuple[Route, str] | None:
        """The embedded engine's route for ``tree`` when the engine does not answer, if the
        configuration asks for one; the engine is made at the first need."""
        engine = self.fallback_engine()
        if engine is None:
            return None
        route = Route(engine.name, engine.name, engine)
        if not self.proven(route):
            self.on_unproven()
            return None
        return route, engine.sql(tree)

    def fallback_engine(self) -> Engine | None:
        """The embedded engine that answers when the engine does not, if the configuration
        asks for one; made at the first need."""
        if self.fallback_settings is None or self.engine.name == "embedded":
            return None
        with self._lock:
            if self._fallback is None:
                from connectors.embedded import EmbeddedEngine

                self._fallback = EmbeddedEngine(self.fallback_settings)
        return self._fallback

    def pings(self) -> dict[str, Callable[[], None]]:
        """How to check each store's own route: ``delegated:<store>`` -> its ping."""
        stores = {id(n): n for n in self.native.values()}.values()
        return {f"{DELEGATED}:{native.key}": native.ping for native in stores}

    def every_ping(self) -> dict[str, Callable[[], None]]:
        """How to check every route, by its key: the engine, each store's own and the fallback."""
        found = {self.main.key: self.engine.ping, **self.pings()}
        fallback = self.fallback_engine()
        if fallback is not None:
            found[fallback.name] = fallback.ping
        return found

    def learn(self, catalogue: Catalogue) -> None:
        """Take the columns of a catalogue that gained departments (they came back)."""
        self._kinds = {(t.department, t.name): {c.name: c.type.kind for c in t.columns} for t in catalogue.tables}

    def close(self) -> None:
        for native in {id(n): n for n in self.native.values()}.values():
            native.close()
        if self._fallback is not None:
            self._fallback.close()
