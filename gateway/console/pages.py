"""The console's pages: GraphiQL and the console itself, made from ``static/`` once at start.

Every script and stylesheet a page names is the gateway's own (``/console/assets/...``, checked
against the lockfile, with subresource integrity; ``/console/static/...``). Values a page needs
(the endpoint, the example query) travel as JSON in a ``<script type="application/json">``
block with every ``<`` escaped, so no text in them can end the block.

>>> _json_block({"query": "</script><b>"}).count("</script>")  # only the block's own end
1
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from typing import Any

from gateway.console.assets import HERE, Assets

STATIC = HERE / "static"
STATIC_PREFIX = "/console/static"
GRAPHIQL_JS, CONSOLE_JS = f"{STATIC_PREFIX}/graphiql.js", f"{STATIC_PREFIX}/console.js"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


def _json_block(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
    return f'<script type="application/json" id="citygate-config">{text}</script>'


def _script(src: str, integrity: str | None = None) -> str:
    checked = f' integrity="{integrity}" crossorigin="anonymous"' if integrity else ""
    return f'<script src="{html.escape(src)}"{checked}></script>'


def _stylesheet(href: str, integrity: str | None = None) -> str:
    checked = f' integrity="{integrity}" crossorigin="anonymous"' if integrity else ""
    return f'<link rel="stylesheet" href="{html.escape(href)}"{checked}>'


@dataclass(frozen=True)
class DemoPage:
    """What the demo's pages offer (`citygate demo` only, never a deployment): a token per demo
    role, picked from a list instead of pasted, and the example GraphiQL opens with for a role
    (the default ``example`` is one an anonymous caller can run)."""

    tokens: dict[str, str]
    examples: dict[str, str]


@dataclass(frozen=True)
class Pages:
    """The rendered pages and the console's own static files, by path."""

    graphiql: str
    console: str
    static: dict[str, tuple[bytes, str]]  # path -> (body, media type)

    @classmethod
    def make(cls, assets: Assets, example: str = "", demo: DemoPage | None = None) -> Pages:
        static = {
            f"{STATIC_PREFIX}/{path.name}": (path.read_bytes(), _TYPES[path.suffix])
            for path in sorted(STATIC.iterdir())
            if path.suffix in _TYPES
        }
        template = (STATIC / "page.html").read_text(encoding="utf-8")
        own_css = _stylesheet(f"{STATIC_PREFIX}/console.css")
        config: dict[str, Any] = {"endpoint": "/graphql", "example": example, "missing": assets.missing}
        if demo is not None:
            config["demo"] = {"tokens": demo.tokens, "examples": demo.examples}
        if assets.missing is None:
            css, react, dom, graphiql = (
                assets.of("graphiql", "graphiql.min.css"),
                assets.of("react", "react.production.min.js"),
                assets.of("react-dom", "react-dom.production.min.js"),
                assets.of("graphiql", "graphiql.min.js"),
            )
            head = _stylesheet(css.path, css.integrity) + own_css
            scripts = "".join(_script(a.path, a.integrity) for a in (react, dom, graphiql))
        else:
            head, scripts = own_css, ""
        graphiql_page = _fill(
            template,
            title="GraphiQL · citygate",
            head=head,
            page="graphiql",
            body='<div id="graphiql" class="graphiql-host"><p class="loading">Loading GraphiQL…</p></div>',
            scripts=_json_block(config) + scripts + _script(f"{STATIC_PREFIX}/common.js") + _script(GRAPHIQL_JS),
        )
        console_page = _fill(
            template,
            title="Console · citygate",
            head=own_css,
            page="console",
            body=(STATIC / "console-body.html").read_text(encoding="utf-8"),
            scripts=_json_block(config) + _script(f"{STATIC_PREFIX}/common.js") + _script(CONSOLE_JS),
        )
        return cls(graphiql_page, console_page, static)


def _fill(template: str, **parts: str) -> str:
    for name, value in parts.items():
        template = template.replace("{{" + name + "}}", value)
    return template
