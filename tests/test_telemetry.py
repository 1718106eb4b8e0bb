"""OpenTelemetry spans around each stage of a request, through the SDK's own in-memory exporter."""

from __future__ import annotations

from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.config import Config, TelemetryConfig
from gateway.execution.gateway import Gateway
from gateway.identity.caller import Identity
from gateway.observe.telemetry import Telemetry
from tests.conftest import shared_engine
from tests.policy_support import with_policies


def test_each_stage_is_a_span(sqlite_config: Config) -> None:
    exporter = InMemorySpanExporter()
    config = with_policies(sqlite_config)
    telemetry = Telemetry.configure(TelemetryConfig(exporter="console"), SimpleSpanProcessor(exporter))
    gateway = Gateway.start(config, shared_engine(config), telemetry=telemetry)
    try:
        query = "{ health_clinic_visits(limit: 2) { visit_id } transport_stations(limit: 1) { name } }"
        gateway.execute(query, identity=Identity("health_analyst"))
        names = [span.name for span in exporter.get_finished_spans()]
        assert names.count("citygate.parse") == 1 and names.count("citygate.compile") == 1
        assert names.count("citygate.policy") == names.count("citygate.engine") == names.count("citygate.shape") == 2
        engine = next(s for s in exporter.get_finished_spans() if s.name == "citygate.engine")
        assert engine.attributes is not None and engine.attributes["route"] == "delegated"  # each reads one file
        exporter.clear()
        gateway.execute(query, identity=Identity("health_analyst"))  # plan and rows cached
        assert [span.name for span in exporter.get_finished_spans()] == ["citygate.shape", "citygate.shape"]
    finally:
        gateway.close()


def test_no_exporter_means_no_tracer() -> None:
    assert Telemetry.configure(TelemetryConfig()).tracer is None
