"""`riskmesh trace`: a run's spans from every organisation as a waterfall (text and PNG).

Spans come from the JSON-lines files the servers export (`<state_dir>/spans/*.jsonl`).
The phase spans (`phase <name>`, attribute `riskmesh.phase`) of every party are the
waterfall's rows; the RPC spans are counted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from services.mesh.telemetry import read_spans


@dataclass(frozen=True)
class SpanRow:
    org: str
    server: str
    name: str
    phase: str
    start: float
    end: float
    error: bool

    @property
    def seconds(self) -> float:
        return self.end - self.start


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def span_files(roots: Iterable[Path]) -> list[Path]:
    return sorted(p for root in roots for p in Path(root).glob("**/spans/*.jsonl"))


def load_trace(roots: Iterable[Path], trace_id: str) -> list[SpanRow]:
    """Spans of one trace (trace_id as 32 hex digits, with or without 0x)."""
    wanted = trace_id.lower().removeprefix("0x")
    rows = []
    for span in read_spans(span_files(roots)):
        if span["context"]["trace_id"].removeprefix("0x") != wanted:
            continue
        attrs = span.get("attributes") or {}
        resource = span["resource"]["attributes"]
        rows.append(
            SpanRow(
                org=resource.get("riskmesh.org", "?"),
                server=resource.get("riskmesh.server", "?"),
                name=span["name"],
                phase=str(attrs.get("riskmesh.phase", "")),
                start=_time(span["start_time"]),
                end=_time(span["end_time"]),
                error=(span.get("status") or {}).get("status_code") == "ERROR",
            )
        )
    return sorted(rows, key=lambda r: r.start)


def phase_rows(rows: list[SpanRow]) -> list[SpanRow]:
    return [r for r in rows if r.phase]


def waterfall_text(rows: list[SpanRow], width: int = 28) -> str:
    phases = phase_rows(rows)
    if not phases:
        return "no phase spans in this trace"
    t0 = min(r.start for r in phases)
    total = max(r.end for r in phases) - t0 or 1e-9
    lines = [f"{'org':9} {'phase':18} {'start':>6} {'secs':>6}  timeline ({total:.2f} s)"]
    for r in sorted(phases, key=lambda r: (r.start, r.org)):
        a = int((r.start - t0) / total * width)
        b = max(a + 1, int((r.end - t0) / total * width))
        bar = " " * a + ("!" if r.error else "█") * (b - a)
        lines.append(f"{r.org:9} {r.phase:18} {r.start - t0:6.2f} {r.seconds:6.2f}  |{bar:<{width}}|")
    return "\n".join(lines)


def summary(rows: list[SpanRow]) -> dict:
    phases = phase_rows(rows)
    by_phase: dict[str, float] = {}
    for r in phases:
        by_phase[r.phase] = max(by_phase.get(r.phase, 0.0), r.seconds)
    return {
        "spans": len(rows),
        "orgs": sorted({r.org for r in rows}),
        "phase_spans": len(phases),
        "slowest_party_s_by_phase": {k: round(v, 3) for k, v in by_phase.items()},
        "wall_s": round(max(r.end for r in rows) - min(r.start for r in rows), 3) if rows else 0.0,
    }


def waterfall_png(rows: list[SpanRow], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = sorted(phase_rows(rows), key=lambda r: (r.org, r.start))
    t0 = min(r.start for r in phases)
    orgs = sorted({r.org for r in phases})
    colours = plt.get_cmap("tab10")
    names = sorted({r.phase for r in phases}, key=lambda p: min(r.start for r in phases if r.phase == p))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.6 * len(orgs)))
    for r in phases:
        y = orgs.index(r.org)
        ax.barh(
            y,
            r.seconds,
            left=r.start - t0,
            color=colours(names.index(r.phase) % 10),
            edgecolor="black" if r.error else None,
        )
    ax.set_yticks(range(len(orgs)), orgs)
    ax.set_xlabel("seconds since the run started")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i % 10)) for i in range(len(names))]
    ax.legend(handles, names, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=min(4, len(names)), fontsize=8)
    ax.set_title(title or "riskmesh run")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
