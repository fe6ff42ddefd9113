"""OpenTelemetry for one riskmesh process.

Traces cross organisations with W3C trace context (the SDK's default propagator), so a
study run is one trace with spans from every party. Export: OTLP when the standard
`OTEL_EXPORTER_OTLP_ENDPOINT` is set, otherwise JSON lines in `<state_dir>/spans/`.

Span attributes riskmesh sets itself (never patient data, tags, values or shares):
    riskmesh.org, riskmesh.server    who produced the span (resource attributes)
    riskmesh.study.id, riskmesh.run.id
    riskmesh.phase                   the run phase (Phase enum name without prefix)
    riskmesh.rows                    row counts only
    riskmesh.mpc.{rounds,messages,bytes}.<phase>   MPC traffic counts of one party (span `mpc traffic`)
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one JSON object per line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(json.loads(span.to_json(indent=None)), separators=(",", ":")) for span in spans]
        with self._lock, self.path.open("a") as f:
            f.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def setup_tracing(org: str, server: str, state_dir: Path) -> TracerProvider:
    """Install the process-wide tracer provider for <org>'s <server>."""
    resource = Resource.create({"service.name": f"riskmesh-{server}", "service.namespace": org, "riskmesh.org": org, "riskmesh.server": server})
    provider = TracerProvider(resource=resource)
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        path = Path(state_dir) / "spans" / f"{org}-{server}.jsonl"
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def read_spans(paths: Sequence[Path]) -> list[dict]:
    """All spans from JSON-lines files (for `riskmesh trace`, the demo and tests)."""
    spans = []
    for path in paths:
        if Path(path).exists():
            spans += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return spans
