"""A PostgreSQL server of a test's own: initdb in a temporary directory, a free port, run as
the `postgres` user with the binaries the services use. For tests that stop and start the
server, or write tables of their own: the shared services are never touched."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import free_port
from tools.services import pg_bin


class Postgres:
    """A PostgreSQL server of the test's own, run as the `postgres` user."""

    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            pytest.fail("no PostgreSQL binaries: run `make services` (it installs them)")
        self.bin = bindir
        self.root = Path(tempfile.mkdtemp(prefix="citygate-state-pg-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.port = free_port()
        self.data = self.root / "data"
        self.pg(["initdb", "-D", str(self.data), "-U", "citygate", "--auth=trust", "-E", "UTF8"])
        self.url = f"postgresql://citygate@127.0.0.1:{self.port}/postgres"

    def pg(self, command: list[str]) -> None:
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(self.bin / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0:
            pytest.fail(f"{command[0]} failed: {done.stderr[-2000:]}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg(
            ["pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "-t", "60", "start"]
        )

    def stop(self) -> None:
        self.pg(["pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def remove(self) -> None:
        """Stop the server if it runs, and remove its files."""
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
