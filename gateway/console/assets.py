"""GraphiQL and React, pinned by this directory's ``package-lock.json`` and served from the
gateway's own origin.

``npm ci`` (``make install``) fetches exactly the lockfile's tarballs from the npm registry and
refuses any whose SHA-512 is not the lockfile's ``integrity``. At start the gateway checks again
that what is installed is what the lockfile pins (each package's installed version), reads the
few files a browser needs into memory, and serves each under a path that names its package and
version (``/console/assets/graphiql@4.1.2/graphiql.min.js``), so a browser may keep it for good
(``immutable``). The pages name each file with its SHA-384 as subresource integrity, so a
browser runs nothing but what was checked here. Where the files are not installed the page says
how to install them (:attr:`Assets.missing`) rather than wait for scripts that never come.

>>> asset = Asset("react", "18.3.1", "react.production.min.js", b"x", "text/javascript")
>>> asset.path
'/console/assets/react@18.3.1/react.production.min.js'
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PREFIX = "/console/assets"
INSTALL_HINT = "run `make install` in the citygate checkout (or `npm ci` in gateway/console)"

# What a page loads: (npm package, file inside it). React 18 is the last React with UMD builds,
# and graphiql 4 the last GraphiQL whose release carries one (graphiql.min.js takes the React
# and ReactDOM globals); GraphiQL 5 needs a bundler.
FILES = (
    ("react", "umd/react.production.min.js"),
    ("react-dom", "umd/react-dom.production.min.js"),
    ("graphiql", "graphiql.min.js"),
    ("graphiql", "graphiql.min.css"),
)
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}


@dataclass(frozen=True, slots=True)
class Asset:
    package: str
    version: str
    name: str
    body: bytes
    media_type: str

    @property
    def path(self) -> str:
        return f"{PREFIX}/{self.package}@{self.version}/{self.name}"

    @property
    def integrity(self) -> str:
        """Subresource integrity: the browser refuses the file if it is not these bytes."""
        return "sha384-" + base64.b64encode(hashlib.sha384(self.body).digest()).decode()


@dataclass(frozen=True, slots=True)
class Assets:
    """The installed, checked files by their path; or why there are none."""

    files: dict[str, Asset]
    missing: str | None = None

    def of(self, package: str, name: str) -> Asset:
        return next(a for a in self.files.values() if a.package == package and a.name == name)

    @classmethod
    def load(cls, root: Path = HERE) -> Assets:
        """The pinned files under ``root`` (which holds ``package-lock.json`` and, once
        installed, ``node_modules``), each checked against the lockfile's version."""
        try:
            lock = json.loads((root / "package-lock.json").read_text(encoding="utf-8"))["packages"]
        except (OSError, ValueError, KeyError) as error:
            return cls({}, f"{root / 'package-lock.json'} cannot be read ({error.__class__.__name__})")
        files: dict[str, Asset] = {}
        for package, inside in FILES:
            pinned = lock.get(f"node_modules/{package}", {}).get("version")
            installed_dir = root / "node_modules" / package
            try:
                installed = json.loads((installed_dir / "package.json").read_text(encoding="utf-8"))["version"]
                body = (installed_dir / inside).read_bytes()
            except (OSError, ValueError, KeyError):
                return cls({}, f"the console's assets ({package}@{pinned}) are not installed: {INSTALL_HINT}")
            if installed != pinned:
                return cls({}, f"{package} {installed} is installed, the lockfile pins {pinned}: {INSTALL_HINT}")
            name = inside.rsplit("/", 1)[-1]
            asset = Asset(package, pinned, name, body, _TYPES[Path(name).suffix])
            files[asset.path] = asset
        return cls(files)
