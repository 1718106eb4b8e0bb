"""What every settings model is: frozen once read, and strict about its keys (an unknown key
is an error that lists the allowed ones, never silently ignored)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"  # a department's, a relationship's name


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
