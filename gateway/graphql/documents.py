"""Trusted documents: the GraphQL documents a deployment has registered, named by the SHA-256 of
their text.

The manifest is one JSON object from each document's hash (64 hex digits) to its text, the file
GraphQL Code Generator's client preset writes as ``persisted-documents.json`` (with
``hashAlgorithm: "sha256"``); ``citygate documents register`` adds to it. A client may then send a
registered document by its hash alone, as Apollo's persisted queries do
(``{"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "..."}}}``) or as
``{"documentId": "sha256:..."}``, and the roles the configuration names run nothing else.

>>> document_hash("{ transport_stations { name } }")[:16]
'9be45e15275194f5'
>>> document_id("sha256:" + "ab" * 32) == "ab" * 32
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from graphql import GraphQLError, parse

from catalogue.errors import ConfigError
from catalogue.files import write_atomic
from gateway.config import TrustedDocumentsConfig

_HASH = re.compile(r"^[0-9a-f]{64}$")
REFRESH_SECONDS = 1.0  # how often a serving gateway looks whether the manifest changed


def document_hash(text: str) -> str:
    """The document's name: the SHA-256 of its text (UTF-8), in hex. The audit trail names every
    request's document by it too, so a refused one can be found in the manifest or added to it."""
    return hashlib.sha256(text.encode()).hexdigest()


def document_id(value: object) -> str | None:
    """The hash a request names its document by (``sha256:<hex>`` or bare hex), or None."""
    if not isinstance(value, str):
        return None
    digest = value.removeprefix("sha256:").lower()
    return digest if _HASH.match(digest) else None


def read_manifest(path: Path, missing_ok: bool = False) -> dict[str, str]:
    """The manifest's documents by hash; a file that is not one is a :class:`ConfigError` naming it."""
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise ConfigError(
            f"{path}: the trusted documents' manifest does not exist (make it with `citygate documents register`)"
        ) from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path}: not a trusted documents' manifest: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object from each document's SHA-256 to its text")
    for digest, text in raw.items():
        # A key that is not its document's hash would let the hash a client sends run another text.
        if not isinstance(text, str) or document_hash(text) != digest:
            raise ConfigError(f"{path}: {digest[:80]!r} is not the SHA-256 of its document's text")
    return raw


def write_manifest(path: Path, documents: dict[str, str]) -> None:
    """Write the manifest whole, by rename: a serving gateway never reads half of it."""
    write_atomic(path, json.dumps(documents, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def register(path: Path, texts: Iterable[tuple[str, str]], max_tokens: int) -> list[tuple[str, str, bool]]:
    """Add documents to the manifest at ``path`` (made if missing): (hash, source, whether it
    was new) for each (source, text). Nothing is written unless every document parses."""
    documents = read_manifest(path, missing_ok=True)
    added: list[tuple[str, str, bool]] = []
    for source, text in texts:
        try:
            parse(text, max_tokens=max_tokens)
        except GraphQLError as error:
            raise ConfigError(f"{source}: not a GraphQL document: {error.message}") from None
        digest = document_hash(text)
        added.append((digest, source, digest not in documents))
        documents[digest] = text
    write_manifest(path, documents)
    return added


class TrustedDocuments:
    """A serving gateway's registered documents. The manifest is read again when its file
    changes (looked at once a second at most), so documents registered while the gateway runs
    are trusted without a restart."""

    def __init__(self, config: TrustedDocumentsConfig) -> None:
        self.config = config
        self.documents = read_manifest(config.store)
        self._stamp = self._changed()
        self._looked = time.monotonic()

    def _changed(self) -> tuple[int, int]:
        stat = os.stat(self.config.store)
        return stat.st_mtime_ns, stat.st_size

    def refresh(self) -> bool:
        """Read the manifest again if its file changed; whether it did. A manifest made
        unreadable meanwhile keeps the documents read before (and is logged by the caller)."""
        now = time.monotonic()
        if now - self._looked < REFRESH_SECONDS:
            return False
        self._looked = now
        try:
            stamp = self._changed()
        except OSError:
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.documents = read_manifest(self.config.store)
        return True

    def covers(self, role: str | None) -> bool:
        return self.config.covers(role)
