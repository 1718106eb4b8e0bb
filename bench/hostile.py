"""A victim's p50, idle and under each attack, side by side (`make bench`, section `hostile`).

One gateway on the embedded engine over the services, in this process. The victim asks two root
fields of two stores, as caller ``victim``; each attack is one caller (``attacker``) sending its
request from several threads at once for the length of the measurement. Target: under every
attack, the victim's p50 within twice its idle p50.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tools.relay import Relay

REPO = Path(__file__).resolve().parent.parent
VICTIM = "{ transport_stations(limit: 2) { name } market_regulation_enterprises(limit: 2) { name } }"
NESTED = (
    "{ environment_monitored_sites { site_id readings { reading_id site { site_id readings { reading_id "
    "site { site_id readings(limit: 1) { reading_id } } } } } } }"
)
ATTACKS: dict[str, tuple[str, int]] = {  # name -> (the attacker's request, threads sending it)
    "8 root fields each over a slow store": (
        "{ " + " ".join(f"a{i}: health_clinic_visits(limit: 1) {{ visit_id }}" for i in range(8)) + " }",
        6,
    ),
    "159-byte nesting (refused by its estimate)": (NESTED, 6),
    "1,000 aliases (refused by shape)": (
        "{ " + " ".join(f"a{i}: transport_stations(limit: 1) {{ name }}" for i in range(1000)) + " }",
        4,
    ),
    "exponential LIKE pattern": (
        '{ environment_monitored_sites_aggregate(where: {site_name: {_like: "%_%_%_%_%_%_%_X"}}) '
        "{ aggregate { count } } }",
        6,
    ),
}


@contextlib.contextmanager
def _gateway() -> Iterator[Any]:
    from gateway.config import LimitsConfig, load_config
    from gateway.execution.engines import create_engine
    from gateway.execution.gateway import Gateway

    config = load_config(REPO / "configs" / "services.yaml").with_engine("embedded")
    health = config.departments["health"].store
    slow = Relay(health.port, delay=0.2)  # type: ignore[union-attr]
    departments = dict(config.departments)
    departments["health"] = departments["health"].model_copy(
        update={"store": health.model_copy(update={"port": slow.port})}
    )
    config = config.model_copy(
        update={
            "departments": departments,
            "cache": config.cache.model_copy(update={"enabled": False}),
            "limits": LimitsConfig(statement_seconds=10.0),
        }
    )
    gateway = Gateway.start(config, create_engine(config))
    try:
        yield gateway
    finally:
        gateway.close()
        slow.close()


def _p50(call: Callable[[], Any], runs: int) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        took.append(time.perf_counter() - started)
    return statistics.median(took) * 1000


def run(runs: int, progress: Callable[[str], None]) -> dict[str, Any]:
    from gateway.execution.fairness import CALLER
    from gateway.identity.caller import Identity

    rows = []
    with _gateway() as gateway:
        supervisor = Identity("supervisor", subject="bench-attacker")

        def as_caller(caller: str, query: str, identity: Any = None) -> Any:
            token = CALLER.set(caller)
            try:
                return gateway.execute(query, identity=identity).body
            finally:
                CALLER.reset(token)

        def victim() -> None:
            body = as_caller("victim", VICTIM)
            if "errors" in body:
                raise RuntimeError(f"the victim's request failed: {body['errors'][0]['message']}")

        victim()  # plans made, stores attached
        for name, (query, threads) in ATTACKS.items():
            progress(f"hostile: idle, then {name}")
            idle = _p50(victim, runs)
            stop = threading.Event()

            def attack(query: str = query, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    with contextlib.suppress(Exception):
                        as_caller("attacker", query, supervisor)

            workers = [threading.Thread(target=attack, daemon=True) for _ in range(threads)]
            for worker in workers:
                worker.start()
            time.sleep(1.0)
            try:
                under = _p50(victim, runs)
            finally:
                stop.set()
                for worker in workers:
                    worker.join(timeout=60)
            ratio = under / idle
            rows.append(
                {
                    "attack": name,
                    "threads": threads,
                    "idle_p50_ms": idle,
                    "attack_p50_ms": under,
                    "ratio": ratio,
                    "runs": runs,
                    "target": "<= 2",
                    "met": ratio <= 2,
                }
            )
    return {"rows": rows}
