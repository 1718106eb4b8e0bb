"""Each role's privacy budget: the epsilon its noisy answers have spent in the current period.

Periods are fixed windows from the Unix epoch (a ``1d`` budget renews at 00:00 UTC; only a newer
period renews it, so gateways whose clocks differ by a little never renew it for each other). What each
role has spent is kept in the gateway's shared state (:mod:`gateway.state`, ``state.url``), so a
restart renews no budget and every worker and every gateway on one state spends one budget.
Spending checks and spends in one transaction; a state that cannot be reached, or that holds a
spending that cannot be right, refuses the answer (fail closed).

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
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from catalogue.errors import ConfigError, PrivacyBudgetExhausted
from gateway.state import State
from policies.model import PrivacyBudget

log = logging.getLogger("citygate")

# A spending within this much of the budget still fits: sums of epsilons in floating point
# (0.1 + 0.2) must not refuse the answer that spends a budget exactly.
SLACK = 1e-9


class PrivacyBudgets:
    """Thread-safe; ``state``: where spending is kept (None: in memory, for this process only,
    as `citygate policy test` spends); ``clock`` gives the time in seconds (injected in tests)."""

    def __init__(self, state: State | None = None, clock: Callable[[], float] = time.time) -> None:
        self.state = state if state is not None else State.open("sqlite://")
        self.clock = clock

    def _window(self, budget: PrivacyBudget) -> int:
        return math.floor(self.clock() / budget.seconds)

    def left(self, role: str, budget: PrivacyBudget) -> float:
        """What ``role`` may still spend in the current period."""
        return budget.epsilon - self.state.spent(role, self._window(budget))

    def spend(self, role: str, epsilon: float, budget: PrivacyBudget) -> None:
        """Spend ``epsilon`` of ``role``'s budget, or refuse (:class:`PrivacyBudgetExhausted`)
        if that is more than it has left; nothing is spent then. :class:`StateUnavailable`
        (refused too) if the state cannot be reached."""
        current = self._window(budget)
        if not self.state.spend(role, current, epsilon, budget.epsilon + SLACK):
            renews = datetime.fromtimestamp((current + 1) * budget.seconds, UTC)
            raise PrivacyBudgetExhausted(role, budget.epsilon, budget.period, renews)

    def refund(self, role: str, epsilon: float, budget: PrivacyBudget) -> None:
        """Give back what an answer that was never released spent (its statement failed)."""
        self.state.refund(role, self._window(budget), epsilon)


def adopt(path: Path, state: State) -> None:
    """Take over the budgets an earlier version kept in ``path`` (``privacy-budget.json``):
    what each role spent is counted in the shared state (never less than it holds), and the
    file is renamed ``*.adopted``, so an upgrade renews no budget. A file holding what cannot be
    a spending (NaN, a negative number) is a :class:`ConfigError`: the gateway does not start."""
    if not path.exists():
        return
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        spent = {str(role): (int(window), float(epsilon)) for role, (window, epsilon) in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise ConfigError(f"{path}: cannot read the privacy budget ({error.__class__.__name__})") from None
    for role, (_, epsilon) in spent.items():
        if not (math.isfinite(epsilon) and epsilon >= 0):
            raise ConfigError(f"{path}: role {role} has spent {epsilon}, which cannot be a spending; correct it")
    for role, (window, epsilon) in spent.items():
        state.adopt(role, window, epsilon)
    path.rename(path.with_name(path.name + ".adopted"))
    log.warning("privacy budgets taken over from %s into the shared state (%d roles)", path, len(spent))
