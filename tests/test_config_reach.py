"""The whole configuration is held where things are put together; every other module takes the
settings it reads (docs/development.md, "Settings go down as parts"; issue 31)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Where the parts are put together from one Config: the gateway, the edge's constructor, the
# commands (each loads the file it is given) and the engine a configuration names; and the
# reference page, which describes the Config model itself.
COMPOSITION = {
    "gateway/cli/common.py",
    "gateway/cli/main.py",
    "gateway/cli/policy.py",
    "gateway/cli/serving.py",
    "gateway/cli/stores.py",
    "gateway/cli/supervision.py",
    "gateway/cli/workers.py",
    "gateway/execution/engines.py",
    "gateway/execution/gateway.py",
    "gateway/http/app.py",
    "gateway/reference.py",
}
_MAKERS = {"Config", "load_config", "config_of"}  # a name that is, or returns, the whole Config
_MODULES = ("gateway.config", "gateway.cli.common")  # where they come from
_HOLDERS = {"gateway", "routes"}  # objects whose `.config` is the whole Config


def _holds_whole_config(tree: ast.AST, own_class_holds: bool) -> bool:
    for node in ast.walk(tree):
        imported = node.names if isinstance(node, ast.ImportFrom) and node.module in _MODULES else ()
        if any(alias.name in _MAKERS for alias in imported):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "config":
            holder = ast.unparse(node.value).rsplit(".", 1)[-1]
            if holder in _HOLDERS or (holder == "self" and own_class_holds):
                return True
    return False


def reaching() -> set[str]:
    """The modules of gateway/, connectors/ and policies/ that import the whole Config (or what
    returns one) or read it off a gateway."""
    found = set()
    for package in ("gateway", "connectors", "policies"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            if name == "gateway/config.py" or "node_modules" in name:
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            # `self.config` is the whole Config only in the classes that are given one
            own = any(
                isinstance(node, ast.AnnAssign)
                and ast.unparse(node.target) == "config"
                and "Config" in ast.unparse(node.annotation)
                for node in ast.walk(tree)
            )
            if _holds_whole_config(tree, own):
                found.add(name)
    return found


def test_only_where_the_parts_are_put_together_holds_the_whole_config() -> None:
    """A module that starts taking the whole Config fails here: give it the settings it reads.
    One that stops taking it fails too, so the list stays the truth."""
    assert reaching() == COMPOSITION
