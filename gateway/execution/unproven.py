"""Routes the masks are not proven on, and how they are proven once they answer.

A route that did not answer while the masks were tried (:mod:`gateway.execution.proof`) has
never shown that it computes them as the others do; when it answers again it would serve them
unproven. So it takes no statement meanwhile (:meth:`Routes.require_proven`), and the gateway
tries the proof again when the route is next found answering: when a statement would have gone
there (its first use) or a health check runs, whichever comes first. An attempt pings the
unproven routes and, if one answers, runs the whole proof again on a thread of its own; at most
one attempt runs at a time, and at most one starts every :data:`RETRY_SECONDS`, so a route
that stays down costs a ping, not a proof, per request.

A proof that now refuses a mask leaves the routes unproven (logged as an error) and is not tried
again under the same policies: the mask differs on a route that was never serving it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway.execution.probes import Checks
from gateway.execution.proof import Proof
from gateway.execution.routes import Routes

log = logging.getLogger("citygate")

RETRY_SECONDS = 2.0  # between two attempts at proving the routes left unproven


class Unproven:
    """The routes of one gateway that take no statement until the masks are proven on them."""

    def __init__(
        self,
        routes: Routes,
        prove: Callable[[], Proof | None],
        proven: Callable[[], None],
        lock: threading.Lock,
        closed: threading.Event,
    ) -> None:
        """``prove``: the proof under the gateway's policies as they are now (None: no
        policies, nothing to prove); ``proven``: called when routes are proven again (the
        gateway makes its plans again, to send them statements); ``lock``: held while a proof
        runs and its outcome is taken (the gateway's reloads'); ``closed``: set when the gateway
        closes (no attempt starts after)."""
        self.routes = routes
        self.checks = Checks()  # the routes' pings, each bounded in time
        self._prove = prove
        self._proven = proven
        self._lock = lock
        self._state = threading.Lock()
        self._running = False
        self._tried = -RETRY_SECONDS
        self._refused = False  # the proof refused a mask: not tried again under these policies
        self.closed = closed
        routes.on_unproven = self.wanted

    def take(self, proof: Proof) -> None:
        """The routes ``proof`` could not try the masks on, and only those, are unproven: the
        policies' (a start or a reload)."""
        self.routes.set_unproven({u.key: u.why for u in proof.unchecked})
        with self._state:
            self._refused = False
        for unchecked in proof.unchecked:
            log.warning("%s", unchecked.message)

    def add(self, proof: Proof) -> None:
        """Routes ``proof`` could not try the masks of newly read tables on are unproven too."""
        if proof.unchecked:
            self.routes.set_unproven({**self.routes.unproven, **{u.key: u.why for u in proof.unchecked}})
            for unchecked in proof.unchecked:
                log.warning("%s", unchecked.message)

    def wanted(self) -> None:
        """Try to prove the routes left unproven, on a thread of its own, if it is time to."""
        if not self.routes.unproven or self.closed.is_set():
            return
        with self._state:
            now = time.monotonic()
            if self._running or self._refused or now - self._tried < RETRY_SECONDS:
                return
            self._running, self._tried = True, now
        threading.Thread(target=self._attempt, name="citygate-prove", daemon=True).start()

    def _attempt(self) -> None:
        try:
            self.attempt()
        except Exception:  # the next attempt must still come, and the server stay up
            log.exception("proving the masks on the routes left unproven failed")
        finally:
            with self._state:
                self._running = False

    def attempt(self) -> list[str]:
        """Prove the masks again if a route left unproven answers now: the routes proven (each
        answered and no mask was refused). Routes still down stay unproven."""
        pings = self.routes.every_ping()
        states = self.checks.run({key: pings[key] for key in self.routes.unproven if key in pings})
        if not any(state == "ok" for state in states.values()):
            return []
        with self._lock:
            before = self.routes.unproven
            proof = self._prove()
            if proof is None:  # no policies now: nothing to prove
                self.routes.set_unproven({})
                return list(before)
            if proof.refusals:
                with self._state:
                    self._refused = True
                refused = "; ".join(r.message for r in proof.refusals)
                log.error(
                    "routes %s stay unproven: the policies in force are refused there: %s", ", ".join(before), refused
                )
                return []
            down = {u.key: u.why for u in proof.unchecked}
            # a route proven earlier that is down now stays proven: the masks were tried there
            self.routes.set_unproven({key: down.get(key, why) for key, why in before.items() if key in down})
        again = [key for key in before if key not in down]
        if again:
            log.warning("masks proven on %s: statements go there again", ", ".join(again))
            self._proven()
        return again
