"""What a role gets of one column: a treatment, and the words a policy file writes it in.

A treatment is ``allow`` (raw), ``deny`` or a mask: ``partial(first,last)``, ``hash``,
``nullify``, ``year``, ``bucket(width)``, ``redact``, or ``sql: <expression over the column>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_TREATMENT = re.compile(r"^(allow|deny|hash|nullify|year|redact|partial\((\d+),\s*(\d+)\)|bucket\((\d+(?:\.\d+)?)\))$")


@dataclass(frozen=True, slots=True)
class Treatment:
    """What a role gets of one column: ``raw``, ``deny``, or a mask with its parameters."""

    kind: str  # raw, deny, partial, hash, nullify, year, bucket, redact, sql
    params: tuple[Any, ...] = ()

    @property
    def visible(self) -> bool:
        return self.kind != "deny"

    @property
    def masked(self) -> bool:
        return self.kind not in ("raw", "deny")

    def __str__(self) -> str:
        if self.kind == "partial":
            return f"partial({self.params[0]},{self.params[1]})"
        if self.kind == "bucket":
            return f"bucket({self.params[0]})"
        if self.kind == "sql":
            return f"sql({self.params[0]})"
        return self.kind


RAW = Treatment("raw")
DENY = Treatment("deny")


def parse_treatment(value: Any) -> Treatment:
    """``"partial(6,4)"`` -> Treatment("partial", (6, 4)); ``{"sql": "..."}`` -> a custom mask.

    >>> parse_treatment("partial(6,4)")
    Treatment(kind='partial', params=(6, 4))
    >>> parse_treatment("allow")
    Treatment(kind='raw', params=())
    """
    if isinstance(value, dict) and set(value) == {"sql"} and isinstance(value["sql"], str):
        return Treatment("sql", (value["sql"],))  # its expression is checked where policies load
    match = _TREATMENT.match(str(value).strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError(
            f"{value!r} is not a treatment; use allow, deny, partial(first,last), hash, nullify, year, "
            "bucket(width), redact, or {sql: <expression>}"
        )
    word = match.group(1)
    if word == "allow":
        return RAW
    if word.startswith("partial"):
        first, last = int(match.group(2)), int(match.group(3))
        if max(first, last) > 1000:
            raise ValueError(f"partial({first},{last}) keeps more than 1000 characters at an end")
        return Treatment("partial", (first, last))
    if word.startswith("bucket"):
        width = float(match.group(4))
        if width <= 0:
            raise ValueError("bucket width must be positive")
        return Treatment("bucket", (int(width) if width.is_integer() else width,))
    return Treatment(word)
