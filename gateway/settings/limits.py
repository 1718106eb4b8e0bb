"""What one request may ask of the gateway, per role, and how much of the gateway runs at once
and may be held by one caller (its threads, its connections, each caller's fair share)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field

from gateway.settings.base import Model


class RoleLimits(Model):
    """What one role's requests may ask; a key left out takes the deployment's own (``limits``)."""

    max_depth: int | None = Field(None, ge=1)
    max_root_fields: int | None = Field(None, ge=1)
    max_fields: int | None = Field(None, ge=1)
    max_cost: int | None = Field(None, ge=1)
    statement_seconds: float | None = Field(None, gt=0)
    plan_seconds: float | None = Field(None, gt=0)
    requests_per_minute: int | None = Field(None, ge=0)


# What a caller without a token may ask, unless `limits.roles.anonymous` says otherwise.
_DEFAULTS: dict[str | None, RoleLimits] = {
    "anonymous": RoleLimits(
        max_depth=6,
        max_root_fields=5,
        max_fields=200,
        max_cost=200_000,
        statement_seconds=10,
        plan_seconds=1,
        requests_per_minute=600,
    )
}


@dataclass(frozen=True)
class Limits:
    """One role's limits, every one decided (:meth:`LimitsConfig.of`)."""

    max_depth: int
    max_root_fields: int
    max_fields: int
    max_cost: int
    statement_seconds: float
    plan_seconds: float
    requests_per_minute: int


class ConcurrencyConfig(Model):
    """How much of the gateway runs side by side, and how much of it one caller may hold: a caller
    flooding the gateway waits behind itself while everyone else's work finds threads free. A
    caller is a token's subject, or, without a token, the role and the client's address."""

    requests_per_caller: int = Field(
        4,
        ge=1,
        le=1024,
        description="a caller's requests in the works at once, fewer while other callers are present; "
        "the rest wait their turn at the edge, holding no thread",
    )
    root_fields_per_request: int = Field(
        4, ge=1, le=1024, description="root fields of one request that run side by side; the rest wait behind them"
    )
    root_fields_per_caller: int = Field(
        8,
        ge=1,
        le=1024,
        description="root fields of all of one caller's requests that run side by side, on `root_field_threads`",
    )
    root_field_threads: int = Field(
        32, ge=1, le=1024, description="threads that run the root fields of requests that have several"
    )
    statements_per_caller: int = Field(
        8,
        ge=1,
        le=1024,
        description="a caller's statements on the engine at once, fewer while other callers' statements run "
        "on its CPUs; a statement that gets no turn within its time is answered busy",
    )
    statement_threads: int = Field(
        32,
        ge=1,
        le=1024,
        description="threads statements run on (each waits for its answer); a statement still queued "
        "when its time is up is dropped unrun",
    )
    store_connections: int = Field(
        16,
        ge=1,
        le=1024,
        description="connections each store keeps open for statements run on it directly (the delegated "
        "route), at most; a statement that finds them all busy for 10 s (PostgreSQL: 5 s) is answered busy",
    )
    console_estimates: int = Field(8, ge=1, le=256, description="row count estimates the console reads side by side")


class LimitsConfig(Model):
    """What one request may ask of the gateway, so that no request can take all of it."""

    max_tokens: int = Field(20_000, ge=100)  # lexical tokens of a GraphQL document
    max_rows: int = Field(200_000, ge=1)  # rows the statements of one request may return, together
    # a statement's answer is waited for this long from its start; then a store that does not
    # answer a one-row read either is left alone for as long again (requests naming it fail at
    # once), and a query that was merely slow fails by itself
    statement_seconds: float = Field(60.0, gt=0)
    # the work before the engine (parse, validate, compile, the policies' rewrite) past this
    # long refuses the request: each step is bounded by size, and this bounds them by the clock
    plan_seconds: float = Field(2.0, gt=0)
    max_depth: int = Field(12, ge=1)  # nesting of fields, the root field's own level counted
    max_root_fields: int = Field(20, ge=1)  # root fields of one request, aliases counted each
    max_fields: int = Field(2_000, ge=1)  # fields of one request, fragments expanded, aliases each
    # rows the statements of one request may read at worst, estimated before any runs from the
    # query's shape and the catalogue's row counts
    max_cost: int = Field(20_000_000, ge=1)
    requests_per_minute: int = Field(0, ge=0)  # per subject (anonymous: per client network); 0: no limit
    # an anonymous caller (and a refused token, or a wrong admin token) is counted by the network
    # it connects from: its IPv4 address cut to this many bits (24: a /24 counts as one caller)
    ipv4_prefix: int = Field(32, ge=8, le=32)
    # and an IPv6 address to this many: one client commonly holds a whole /64 to rotate through
    ipv6_prefix: int = Field(64, ge=16, le=128)
    # a connection's request headers must arrive within this many seconds, or it is closed
    header_seconds: float = Field(10.0, gt=0)
    # open connections at once, per worker process; a new one past this is answered 503 and closed
    max_connections: int = Field(1000, ge=1)
    roles: dict[str, RoleLimits] = Field(default_factory=dict)  # per role; `anonymous` has safe defaults
    concurrency: ConcurrencyConfig = ConcurrencyConfig()

    def of(self, role: str | None) -> Limits:
        """The limits of ``role``: its own where ``roles`` gives them, then (for ``anonymous``)
        the safe defaults, then the deployment's. None: a deployment without policies."""
        found = (self.roles.get(role), _DEFAULTS.get(role)) if role is not None else ()
        chain = [r for r in found if r is not None]

        def decided(name: str) -> Any:
            return next((getattr(r, name) for r in chain if getattr(r, name) is not None), getattr(self, name))

        return Limits(**{name: decided(name) for name in Limits.__dataclass_fields__})
