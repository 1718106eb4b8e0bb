"""OpenTelemetry spans around the stages of a request: parse, compile, policy, engine, shape.

Nothing is traced unless ``telemetry.exporter`` names an exporter: without one, :func:`stage`
is a no-op context manager and the request path pays no tracing cost at all.
"""

from __future__ import annotations

import contextlib
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Tracer

from gateway.config import TelemetryConfig

_UNTRACED = contextlib.nullcontext()


class Telemetry:
    """A tracer of the gateway's own (not the process-global provider), or none."""

    def __init__(self, tracer: Tracer | None = None, provider: TracerProvider | None = None) -> None:
        self.tracer = tracer
        self.provider = provider

    @classmethod
    def configure(cls, config: TelemetryConfig, processor: SpanProcessor | None = None) -> Telemetry:
        """Spans to the configured exporter, or to ``processor`` (tests pass the SDK's in-memory one)."""
        if processor is None:
            exporter: SpanExporter
            if config.exporter == "none":
                return cls()
            if config.exporter == "console":
                exporter = ConsoleSpanExporter()
            else:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter(endpoint=config.endpoint) if config.endpoint else OTLPSpanExporter()
            processor = BatchSpanProcessor(exporter)
        provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
        provider.add_span_processor(processor)
        return cls(provider.get_tracer("citygate"), provider)

    def stage(self, name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
        """A span named ``citygate.<name>``; without a tracer, a shared no-op context."""
        if self.tracer is None:
            return _UNTRACED
        return self.tracer.start_as_current_span(f"citygate.{name}", attributes=attributes)

    def close(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
