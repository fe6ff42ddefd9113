"""What the reliability suite counted: one `Item` per check, in five categories.

    faults      a process killed (SIGKILL) or frozen (SIGSTOP) during a run; ok = the
                run ended FAILED everywhere within the bound, nothing was lost or served
                half-written, and a rerun succeeded
    bad_inputs  one malformed request, stream or CSV file; ok = a clear status (never
                INTERNAL/UNKNOWN, never a hang) and the state left intact
    refusals    one call with a wrong identity; ok = the right status (and audited where
                the server audits)
    canary      the planted value the leak scanner must find; ok = found
    leaks       one finding of patient data (an ID, tag or value) where none may be;
                every leak item is a failure

An item is recorded by the check itself (`Ledger.check` records ok=False when the block
raises), so every counted item is a check that can fail. The summary's last line is
the one `make reliability` ends with.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Where the pytest plugin (tests/reliability/plugin.py) writes the ledger for the runner.
REPORT_ENV = "RISKMESH_RELIABILITY_REPORT"

CATEGORIES = ("faults", "bad_inputs", "refusals", "canary", "leaks")
MAX_DETAIL_CHARS = 300


@dataclass
class Item:
    """One counted check."""

    category: str
    group: str  # a sub-heading of the summary table, e.g. "kill" or "gateway fields"
    name: str
    ok: bool
    detail: str = ""
    test: str = ""


@dataclass
class Ledger:
    """The items of one reliability session (see the module docstring)."""

    items: list[Item] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (heading, text): figures such as the load's
    current_test: str = ""

    def note(self, heading: str, text: str) -> None:
        self.notes.append((heading, text))

    def record(self, category: str, group: str, name: str, ok: bool, detail: str = "") -> Item:
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}")
        item = Item(category, group, name, ok, detail[:MAX_DETAIL_CHARS], self.current_test)
        self.items.append(item)
        return item

    @contextlib.contextmanager
    def check(self, category: str, group: str, name: str) -> Iterator[Item]:
        """Count the block as one check: ok unless it raises (the exception goes on)."""
        item = Item(category, group, name, True, "", self.current_test)
        try:
            yield item
        except BaseException as exc:
            item.ok = False
            item.detail = f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_CHARS]
            raise
        finally:
            if category not in CATEGORIES:
                raise ValueError(f"unknown category {category!r}")
            item.detail = item.detail[:MAX_DETAIL_CHARS]
            self.items.append(item)

    def recorded_by(self, test: str) -> int:
        return sum(1 for i in self.items if i.test == test)

    def dump(self, path: Path) -> None:
        path.write_text(json.dumps({"items": [asdict(i) for i in self.items], "notes": self.notes}, indent=1))

    @classmethod
    def load(cls, path: Path) -> Ledger:
        raw = json.loads(path.read_text())
        return cls([Item(**item) for item in raw["items"]], [(h, t) for h, t in raw["notes"]])


@dataclass(frozen=True)
class Summary:
    faults: tuple[int, int]  # (survived, injected)
    bad_inputs: tuple[int, int]  # (rejected cleanly, tried)
    refusals: tuple[int, int]  # (correct, tried)
    canary: tuple[int, int]  # (found, planted)
    leaks: int  # findings

    @property
    def clean(self) -> bool:
        """Everything held: all faults survived, inputs rejected, refusals right, the canary found, no leak."""
        pairs = (self.faults, self.bad_inputs, self.refusals, self.canary)
        return all(n > 0 and ok == n for ok, n in pairs) and self.leaks == 0

    def last_line(self) -> str:
        return (
            f"reliability: faults {self.faults[0]}/{self.faults[1]} survived, "
            f"bad inputs {self.bad_inputs[0]}/{self.bad_inputs[1]} rejected, "
            f"refusals {self.refusals[0]}/{self.refusals[1]} correct, "
            f"canary found: {self.canary[0]}/{self.canary[1]}, leaks: {self.leaks}"
        )


def summarise(items: list[Item]) -> Summary:
    def pair(category: str) -> tuple[int, int]:
        of = [i for i in items if i.category == category]
        return sum(i.ok for i in of), len(of)

    return Summary(
        pair("faults"),
        pair("bad_inputs"),
        pair("refusals"),
        pair("canary"),
        sum(1 for i in items if i.category == "leaks"),
    )


def table(items: list[Item], notes: list[tuple[str, str]] | None = None) -> str:
    """The summary table: one line per (category, group) with ok/total, the faults one by
    one, the notes (figures), then the failed checks."""
    heads = {
        "faults": "injected / survived",
        "bad_inputs": "tried / rejected cleanly",
        "refusals": "tried / correct",
        "canary": "planted / found",
        "leaks": "findings",
    }
    totals: Counter[tuple[str, str]] = Counter()
    oks: Counter[tuple[str, str]] = Counter()
    for item in items:
        totals[(item.category, item.group)] += 1
        oks[(item.category, item.group)] += item.ok
    lines = [f"{'category':<11} {'group':<34} {'counts':>12}   meaning", "-" * 84]
    for category in CATEGORIES:
        groups = sorted(g for c, g in totals if c == category)
        if category == "leaks":
            found = sum(totals[(category, g)] for g in groups)
            lines.append(f"{category:<11} {'all files, messages and the wire':<34} {found:>12}   {heads[category]}")
            groups_lines = [f"{'':<11} {g:<34} {totals[(category, g)]:>12}" for g in groups]
            lines += groups_lines
            continue
        all_total = sum(totals[(category, g)] for g in groups)
        all_ok = sum(oks[(category, g)] for g in groups)
        lines.append(f"{category:<11} {'(all)':<34} {f'{all_total} / {all_ok}':>12}   {heads[category]}")
        lines += [f"{'':<11} {g:<34} {f'{totals[(category, g)]} / {oks[(category, g)]}':>12}" for g in groups]
    faults = [i for i in items if i.category == "faults"]
    if faults:
        lines += ["", "faults:"]
        lines += [f"  {'ok  ' if i.ok else 'FAIL'} {i.name}: {i.detail}" for i in faults]
    for heading, text in notes or []:
        lines += ["", f"{heading}: {text}"]
    failed = [i for i in items if not i.ok and i.category != "faults"]
    if failed:
        lines += ["", "failed checks:"]
        lines += [f"  [{i.category}/{i.group}] {i.name}: {i.detail}" for i in failed]
    return "\n".join(lines)
