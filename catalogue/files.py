"""The files a deployment is made of: reading its YAML (its configuration, its policies) with an
error that names the file and what is wrong with it, never a traceback; and writing a file
whole (:func:`write_atomic`, :func:`replacing`), so that no reader ever sees half of one.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.yaml"
>>> _ = path.write_text("a: [1, 2")
>>> try:
...     read_yaml(path, "policy file")
... except ConfigError as error:
...     print(error.message.split(": ", 1)[1])
not valid YAML at line 1, column 9: expected ',' or ']', but got '<stream end>'
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from catalogue.errors import ConfigError


def read_yaml(path: Path, what: str, included_from: Path | None = None) -> tuple[str, Any]:
    """The text of the YAML file at ``path`` (a ``what``: "configuration file", "policy file")
    and what it holds (None when empty), or :class:`ConfigError` naming the file, the line and
    column, and the file that included it."""
    by = f" (included from {included_from})" if included_from is not None else ""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}{by}") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}{by}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text (byte {error.start}){by}") from None
    try:
        return text, _parse(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}{by}") from None


def _parse(text: str) -> Any:
    """libyaml's loader when present: a generated catalogue (configs/seed-scale.yaml, 755
    tables) loads in 0.3 s instead of 2.4 s. A file it refuses is parsed again by the pure
    Python loader, whose error names the position the way users are told it."""
    fast = getattr(yaml, "CSafeLoader", None)
    if fast is not None:
        try:
            return yaml.load(text, Loader=fast)  # noqa: S506 - libyaml's safe loader
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


def write_atomic(path: Path, data: bytes | str, *, fsync: bool = True, mode: int | None = None) -> None:
    """Write ``data`` (text as UTF-8) as the whole of ``path``: a reader sees the old file or
    the new one, never half of either, and a crash leaves one of the two (:func:`replacing`).
    ``mode``: the file's permissions from its first byte (a secret is never readable by
    others, not even for a moment); unset, a new file's are the umask's and a replaced
    file's the ones it had.

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "manifest.json"
    >>> write_atomic(path, "{}\\n")
    >>> write_atomic(path, b'{"a": 1}\\n', mode=0o600)
    >>> path.read_text(), oct(path.stat().st_mode & 0o777), [p.name for p in path.parent.iterdir()]
    ('{"a": 1}\\n', '0o600', ['manifest.json'])
    """
    content = data.encode() if isinstance(data, str) else data
    with replacing(path, fsync=fsync, mode=mode) as partial, partial.open("wb") as file:
        file.write(content)


@contextlib.contextmanager
def replacing(path: Path, *, fsync: bool = True, mode: int | None = None) -> Iterator[Path]:
    """A new file beside ``path`` to write ``path``'s next content into (a SQLite database, a
    copy); when the block ends without an error it replaces ``path`` by rename, else it is
    removed and ``path`` is left as it was. The folder is made if missing. With ``fsync``
    the file's bytes reach the disk before the rename, and the rename before the return: a
    machine that crashes leaves the old file or the new one, not an empty one (a rename can
    reach the disk before the data it names).

    Each writer has a file of its own (``.<name>.<random>.partial``), so two writing at once
    cannot mix their bytes: the last rename wins whole. An error while writing (a full disk)
    is raised as it came, once the new file is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    # O_EXCL: a file of this writer's own; 0666 under the umask, as a plain write makes it,
    # unless the mode is given (then 0600 until it is set) or the file replaced has its own
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666 if mode is None else 0o600)
    os.close(fd)
    try:
        kept = mode if mode is not None else _mode_of(path)
        if kept is not None:
            os.chmod(partial, kept)
        yield partial
        if fsync:
            _fsync(partial, os.O_RDONLY)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _mode_of(path: Path) -> int | None:
    """The permissions of the file at ``path``, or None where there is none yet."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
