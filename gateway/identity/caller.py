"""Who asks: what a request acts as once its token is verified (:mod:`gateway.identity.tokens`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Identity:
    """Who asks: the one role a request acts as, the claims its policies may use, and the
    token's subject for the audit trail."""

    role: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    subject: str | None = None
