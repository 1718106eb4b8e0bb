"""catalogue/files.py: a file written whole or not at all."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from catalogue.files import replacing, write_atomic


def test_a_write_that_fails_leaves_the_old_file_and_nothing_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    write_atomic(path, "old\n")
    with pytest.raises(OSError, match="disk full"), replacing(path) as partial:
        partial.write_text("half of the ne")
        raise OSError("disk full")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_reader_sees_one_whole_version_while_writers_race(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    versions = {f"{n}:" + "x" * 50_000 for n in range(8)}
    write_atomic(path, next(iter(versions)))
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    def write(text: str) -> None:
        for _ in range(20):
            write_atomic(path, text, fsync=False)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write, args=(v,)) for v in versions]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert seen <= versions  # never empty, never half, never two mixed
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_secret_is_never_readable_by_others_and_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    secret, public = tmp_path / "admin-token", tmp_path / "jwks.json"
    old = os.umask(0o022)
    try:
        write_atomic(secret, "s3cret", mode=0o600)
        write_atomic(public, "{}")
        public.chmod(0o640)
        write_atomic(public, '{"keys": []}')
    finally:
        os.umask(old)
    assert secret.stat().st_mode & 0o777 == 0o600
    assert public.stat().st_mode & 0o777 == 0o640
    assert public.read_text() == '{"keys": []}'
