"""Each role's privacy budget: the epsilon its noisy answers have spent in the current period.

Periods are fixed windows from the Unix epoch (a ``1d`` budget renews at 00:00 UTC). What each
role has spent is kept in memory and written to ``<data_dir>/privacy-budget.json`` after each
spending, so a restart does not renew a budget; several gateway instances keep one budget each
(a role can spend its budget once per instance), which the operations guide says.

>>> from policies.model import PrivacyBudget
>>> now = [86_400.0 * 3 + 10]
>>> budgets = PrivacyBudgets(clock=lambda: now[0])
>>> budget = PrivacyBudget(epsilon=1.0, period="1d")
>>> budgets.spend("officer", 0.6, budget), budgets.left("officer", budget)
(None, 0.4)
>>> try:
...     budgets.spend("officer", 0.6, budget)
... except PrivacyBudgetExhausted as error:
...     print(error.renews)
1970-01-05 00:00:00+00:00
>>> now[0] += 86_400
>>> budgets.left("officer", budget)
1.0
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from catalogue.errors import ConfigError, PrivacyBudgetExhausted
from policies.model import PrivacyBudget

log = logging.getLogger("citygate")

# A spending within this much of the budget still fits: sums of epsilons in floating point
# (0.1 + 0.2) must not refuse the answer that spends a budget exactly.
SLACK = 1e-9


class PrivacyBudgets:
    """Thread-safe; ``clock`` gives the time in seconds (injected in tests)."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._spent: dict[str, tuple[int, float]] = {}  # role -> (period's window, epsilon spent)
        if path is not None and path.exists():
            self._spent = _read(path)

    def _window(self, budget: PrivacyBudget) -> int:
        return math.floor(self.clock() / budget.seconds)

    def left(self, role: str, budget: PrivacyBudget) -> float:
        """What ``role`` may still spend in the current period."""
        with self._lock:
            window, spent = self._spent.get(role, (-1, 0.0))
            return budget.epsilon - (spent if window == self._window(budget) else 0.0)

    def spend(self, role: str, epsilon: float, budget: PrivacyBudget) -> None:
        """Spend ``epsilon`` of ``role``'s budget, or refuse (:class:`PrivacyBudgetExhausted`)
        if that is more than it has left; nothing is spent then."""
        with self._lock:
            current = self._window(budget)
            window, spent = self._spent.get(role, (current, 0.0))
            if window != current:
                spent = 0.0
            if spent + epsilon > budget.epsilon + SLACK:
                renews = datetime.fromtimestamp((current + 1) * budget.seconds, UTC)
                raise PrivacyBudgetExhausted(role, budget.epsilon, budget.period, renews)
            self._spent[role] = (current, spent + epsilon)
            self._write()

    def refund(self, role: str, epsilon: float, budget: PrivacyBudget) -> None:
        """Give back what an answer that was never released spent (its statement failed)."""
        with self._lock:
            window, spent = self._spent.get(role, (-1, 0.0))
            if window == self._window(budget):
                self._spent[role] = (window, max(spent - epsilon, 0.0))
                self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps({r: list(v) for r, v in self._spent.items()}), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as error:  # the budget still holds in memory; the operator must know
            log.error("cannot write the privacy budget to %s: %s", self.path, error)


def _read(path: Path) -> dict[str, tuple[int, float]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {str(role): (int(window), float(spent)) for role, (window, spent) in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as error:
        # Starting from zero would renew every budget: the gateway does not start instead.
        raise ConfigError(
            f"{path}: cannot read the privacy budget ({error.__class__.__name__}); restore it or remove it "
            "to start every role's budget afresh"
        ) from None
