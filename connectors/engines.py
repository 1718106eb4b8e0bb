"""The engine a deployment names, made from its settings."""

from __future__ import annotations

from typing import Literal

from connectors.base import Engine
from connectors.embedded import EmbeddedEngine
from connectors.settings import EngineSettings
from connectors.trino import TrinoEngine

ENGINES: dict[str, type[Engine]] = {"embedded": EmbeddedEngine, "trino": TrinoEngine}


def create_engine(kind: Literal["trino", "embedded"], settings: EngineSettings) -> Engine:
    """An engine of ``kind`` over the departments of ``settings``."""
    return ENGINES[kind](settings)
