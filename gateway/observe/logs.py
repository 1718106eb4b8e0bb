"""Structured logs: one JSON object per line, carrying the id of the request being served.

The HTTP edge sets :data:`REQUEST_ID` for each request; the context travels into the worker
threads that run it, so every line a request causes can be joined with its audit record.

>>> import logging
>>> record = logging.LogRecord("citygate", logging.WARNING, __file__, 1, "department %s is down", ("health",), None)
>>> token = REQUEST_ID.set("r-1")
>>> line = orjson.loads(JsonFormatter().format(record))
>>> REQUEST_ID.reset(token)
>>> line["level"], line["logger"], line["message"], line["request_id"]
('warning', 'citygate', 'department health is down', 'r-1')
"""

from __future__ import annotations

import contextvars
import datetime as dt
import functools
import logging
import sys

import orjson

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("citygate_request_id", default=None)


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _time(created: float) -> str:
    """``created`` as ISO 8601 in UTC with milliseconds, the second's text made once (every
    request writes an access line: this is on the hot path).

    >>> _time(1795766400.25) == dt.datetime.fromtimestamp(1795766400.25, dt.UTC).isoformat(timespec="milliseconds")
    True
    """
    whole = int(created)
    return f"{_second(whole)}.{int((created - whole) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": _time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, "fields", None)  # a line's own fields (the access log's)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:  # for the operator's log only; clients never see it
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(fmt: str = "json", level: str = "info") -> None:
    """Send citygate's and uvicorn's logs to standard error as JSON lines (or plain text)."""
    # What no line here shows, and each record would otherwise look up (the caller's frame
    # above all): the logging HOWTO's "Optimization" section.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("citygate").setLevel(level.upper())
    # The audit trail's log sink writes at INFO and must not be filtered out by the level.
    logging.getLogger("citygate.audit").setLevel(logging.INFO)
