"""The configuration reference (docs/configuration.md), made from the configuration's own models.

Each setting is declared once, in its pydantic model: its name, type, default and bounds come
from the field, and its meaning from the field's ``description`` or, where it has none, the
comment written with it in the source (the lines of comment just above it, or the comment at
the end of its line). `citygate reference config` prints the page; a test fails when the
committed page is not what the models say now.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from annotated_types import Ge, Gt, Le, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from catalogue.files import write_atomic
from gateway.config import Config

_FIELD = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_]*)\s*:")


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """field name -> the comment written with it in the model's source."""
    try:
        lines = inspect.getsource(model).splitlines()
    except (OSError, TypeError):
        return {}
    found: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# ").rstrip())
            continue
        match = _FIELD.match(line)
        if match and match.group(1) in model.model_fields and match.group(1) not in found:
            trailing = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            text = " ".join([*above, trailing]).strip()
            if text:
                found[match.group(1)] = text
        above = []
    return found


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (a model, a union of models, Optional[model])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return _models(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


_NAMES = {"str": "text", "int": "integer", "float": "number", "bool": "true/false", "Path": "path"}


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        text = _type(args[0])
    elif origin is Literal:
        text = " \\| ".join(f"`{a}`" for a in args)
    elif origin in (typing.Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        text = " or ".join(_type(a) for a in parts) + (" (optional)" if len(parts) < len(args) else "")
    elif origin in (list, tuple):
        text = f"list of {_type(args[0])}"
    elif origin is dict:
        text = f"map of {_type(args[0])} to {_type(args[1])}"
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        text = "section"
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        text = " \\| ".join(f"`{m.value}`" for m in annotation)
    elif isinstance(annotation, type):
        text = _NAMES.get(annotation.__name__, annotation.__name__)
    else:
        text = str(annotation)
    return text


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined or isinstance(value, BaseModel):
        return ""
    if hasattr(value, "value"):  # an enum
        value = value.value
    return "" if value in ({}, []) else f"`{value}`"


def _bounds(info: FieldInfo) -> str:
    words = []
    for item in info.metadata:
        if isinstance(item, Ge):
            words.append(f"≥ {item.ge}")
        elif isinstance(item, Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, Le):
            words.append(f"≤ {item.le}")
        elif isinstance(item, MinLen):
            words.append(f"at least {item.min_length} long")
        elif isinstance(item, MaxLen):
            words.append(f"at most {item.max_length} long")
    return "; ".join(words)


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    comments = _comments(model)
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        key = f"{prefix}{info.alias or name}"
        meaning = info.description or comments.get(name, "")
        bounds = _bounds(info)
        if bounds:
            meaning = f"{meaning} ({bounds})" if meaning else bounds
        nested = _models(info.annotation)
        annotation = info.annotation
        if typing.get_origin(annotation) is dict:
            nested = _models(typing.get_args(annotation)[1])
            if nested:
                yield key, _type(annotation), _default(info), meaning
                for inner in nested:
                    yield from _rows(inner, f"{key}.<name>.")
                continue
        if typing.get_origin(annotation) is list and _models(typing.get_args(annotation)[0]):
            yield key, "list", "", meaning
            for inner in _models(typing.get_args(annotation)[0]):
                yield from _rows(inner, f"{key}[].")
            continue
        if len(nested) > 1:  # a union told apart by `kind`
            yield key, "section", "", meaning
            for inner in nested:
                kind = inner.model_fields.get("kind")
                label = typing.get_args(kind.annotation)[0] if kind is not None else inner.__name__
                yield from _rows(inner, f"{key}.({label}) ")
            continue
        if nested:
            own = nested[0].__dict__.get("__doc__") or ""  # its own docstring, not BaseModel's
            yield key, "section", "", meaning or " ".join(inspect.cleandoc(own).split("\n\n")[0].split())
            yield from _rows(nested[0], f"{key}.")
            continue
        yield key, _type(annotation), _default(info), meaning


def config_reference() -> str:
    """docs/configuration.md: every key of a citygate configuration file."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Made by `citygate reference config` from the configuration's models; do not edit by hand. -->",
        "",
        "A configuration is one YAML file (`citygate serve --config FILE`); `include:` merges other",
        "files under it, and `${NAME}` or `${NAME:-default}` takes a value from the environment.",
        "`<name>` stands for a name you choose (a department, a table, a role).",
    ]
    section = None
    for key, kind, default, meaning in _rows(Config, ""):
        top = key.split(".", 1)[0].split("[", 1)[0]
        if top != section:
            section = top
            lines += ["", f"## `{top}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        cell = meaning.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {default} | {cell} |")
    return "\n".join(lines) + "\n"


def write(directory: Path) -> list[Path]:
    """Write docs/configuration.md and docs/errors.md under ``directory``."""
    from catalogue.errors import error_table

    directory.mkdir(parents=True, exist_ok=True)
    pages = {directory / "configuration.md": config_reference(), directory / "errors.md": error_table()}
    for path, text in pages.items():
        write_atomic(path, text)
    return list(pages)
