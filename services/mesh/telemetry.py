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

Metrics for operators go the same way (OTLP to the same endpoint, otherwise JSON lines in
`<state_dir>/metrics/`), with the same resource attributes:
    riskmesh.runs                counter, attribute riskmesh.outcome: started, succeeded,
                                 failed or cancelled (gateways)
    riskmesh.phase.duration      histogram, seconds, attribute riskmesh.phase: every phase
                                 span of every server (PhaseDurations below)
    riskmesh.rpc.calls           counter, attributes rpc.method, riskmesh.caller.org: RPCs
                                 admitted by the authorization interceptor
    riskmesh.rpc.refusals        counter, attributes rpc.method, rpc.grpc.status_code,
                                 riskmesh.caller.org ("" when unidentified)
Their attributes are method names, phases, outcomes and organisation names only.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

# Instruments on the global meter: they report once setup_metrics installed a provider
# (and cost nothing before, or in processes that never do, such as tests in-process).
_meter = metrics.get_meter("riskmesh")
RUNS = _meter.create_counter("riskmesh.runs", unit="{run}", description="Study runs by outcome")
PHASE_DURATION = _meter.create_histogram("riskmesh.phase.duration", unit="s", description="Duration of each run phase")
RPC_CALLS = _meter.create_counter("riskmesh.rpc.calls", unit="{call}", description="RPCs admitted by authorization")
RPC_REFUSALS = _meter.create_counter("riskmesh.rpc.refusals", unit="{call}", description="RPCs refused")
METRICS_INTERVAL_MS = 5000
# Seconds an OTLP export may take (retries included) unless OTEL_EXPORTER_OTLP_TIMEOUT says
# otherwise: an unreachable collector must not hold a server's shutdown past the pod's
# grace period (15 s) -- spans and metrics each flush once at exit.
OTLP_TIMEOUT_S = 3.0


def _otlp_timeout() -> float | None:
    return None if os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT") else OTLP_TIMEOUT_S


def run_outcome(outcome: str) -> None:
    RUNS.add(1, {"riskmesh.outcome": outcome})


def rpc_admitted(method: str, caller_org: str) -> None:
    RPC_CALLS.add(1, {"rpc.method": method, "riskmesh.caller.org": caller_org})


def rpc_refused(method: str, code: str, caller_org: str) -> None:
    RPC_REFUSALS.add(1, {"rpc.method": method, "rpc.grpc.status_code": code, "riskmesh.caller.org": caller_org})


class PhaseDurations(SpanProcessor):
    """Records each finished phase span (attribute riskmesh.phase) in riskmesh.phase.duration."""

    def on_end(self, span: ReadableSpan) -> None:
        phase = (span.attributes or {}).get("riskmesh.phase")
        if phase and span.start_time and span.end_time:
            PHASE_DURATION.record((span.end_time - span.start_time) / 1e9, {"riskmesh.phase": str(phase)})


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


def _resource(org: str, server: str) -> Resource:
    attributes = {"service.name": f"riskmesh-{server}", "service.namespace": org}
    attributes.update({"riskmesh.org": org, "riskmesh.server": server})
    return Resource.create(attributes)


def setup_tracing(org: str, server: str, state_dir: Path) -> TracerProvider:
    """Install the process-wide tracer provider for <org>'s <server>."""
    provider = TracerProvider(resource=_resource(org, server))
    provider.add_span_processor(PhaseDurations())
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=_otlp_timeout())))
    else:
        path = Path(state_dir) / "spans" / f"{org}-{server}.jsonl"
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(path), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def setup_metrics(org: str, server: str, state_dir: Path, reader: MetricReader | None = None) -> MeterProvider:
    """Install the process-wide meter provider for <org>'s <server> (a given `reader`
    replaces the exporter: tests)."""
    if reader is None and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(timeout=_otlp_timeout()), export_interval_millis=METRICS_INTERVAL_MS
        )
    elif reader is None:
        path = Path(state_dir) / "metrics" / f"{org}-{server}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        out = path.open("a")
        console = ConsoleMetricExporter(out=out, formatter=lambda data: data.to_json(indent=None) + "\n")
        reader = PeriodicExportingMetricReader(console, export_interval_millis=METRICS_INTERVAL_MS)
    provider = MeterProvider(metric_readers=[reader], resource=_resource(org, server))
    metrics.set_meter_provider(provider)
    return provider


def read_spans(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """All spans from JSON-lines files (for `riskmesh trace`, the demo and tests)."""
    spans = []
    for path in paths:
        if Path(path).exists():
            spans += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return spans


def read_metrics(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The latest value of every metric data point in JSON-lines metric files (cumulative,
    so the last export of each file holds the totals): one dict per point with the
    resource's riskmesh.org and riskmesh.server, the metric name, the point's attributes,
    and `value` (counters) or `count` and `sum` (histograms)."""
    points = []
    for path in paths:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()] if Path(path).exists() else []
        if not lines:
            continue
        for resource_metrics in json.loads(lines[-1])["resource_metrics"]:
            resource = resource_metrics["resource"]["attributes"]
            for scope in resource_metrics["scope_metrics"]:
                for metric in scope["metrics"]:
                    for point in metric["data"]["data_points"]:
                        points.append(
                            {
                                "org": resource.get("riskmesh.org"),
                                "server": resource.get("riskmesh.server"),
                                "name": metric["name"],
                                "attributes": point.get("attributes") or {},
                                **{k: point[k] for k in ("value", "count", "sum") if k in point},
                            }
                        )
    return points
