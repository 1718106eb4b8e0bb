"""The engine a configuration names, given what it reads of that configuration."""

from __future__ import annotations

from connectors import engines
from connectors.base import Engine
from gateway.config import Config


def create_engine(config: Config) -> Engine:
    """The engine of ``config.engine.kind`` over the configured departments."""
    return engines.create_engine(config.engine.kind, config.engine_settings())
