"""The rows one request may still return, shared by its root fields."""

from __future__ import annotations

import threading

from catalogue.errors import ResultTooLarge


class RowBudget:
    """The rows one request may still return (``limits.max_rows``), shared by its root fields.

    A statement reads at most the limit (the engines stop there: a run may serve several
    requests at once), and its rows are then taken from what this request has left; root
    fields run side by side, so together they may read up to the limit each, but the request's
    answer holds at most the limit in all."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.left = rows
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        """Count ``count`` rows against the budget; :class:`ResultTooLarge` once it is spent."""
        with self._lock:
            if count > self.left:
                raise ResultTooLarge(self.rows)
            self.left -= count
