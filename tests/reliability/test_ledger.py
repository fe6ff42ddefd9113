"""The reliability ledger: what is counted, and the exact summary line."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.reliability.ledger import Ledger, summarise, table


def test_a_check_that_raises_is_counted_as_failed_and_the_exception_goes_on() -> None:
    ledger = Ledger()
    with ledger.check("faults", "kill", "kill a/b during x") as item:
        item.detail = "fine"
    with pytest.raises(AssertionError):
        with ledger.check("faults", "kill", "kill c/d during y"):
            raise AssertionError("run not FAILED")
    assert [(i.name, i.ok) for i in ledger.items] == [("kill a/b during x", True), ("kill c/d during y", False)]
    assert "run not FAILED" in ledger.items[1].detail


def test_unknown_categories_are_refused() -> None:
    with pytest.raises(ValueError):
        Ledger().record("speed", "x", "y", True)


def test_the_last_line_reads_exactly_as_specified() -> None:
    ledger = Ledger()
    for ok in (True, True, False):
        ledger.record("faults", "kill", "f", ok)
    ledger.record("bad_inputs", "gateway fields", "b", True)
    ledger.record("refusals", "identity", "r", True)
    ledger.record("canary", "log", "c", True)
    summary = summarise(ledger.items)
    assert (
        summary.last_line() == "reliability: faults 2/3 survived, bad inputs 1/1 rejected, refusals 1/1 correct, "
        "canary found: 1/1, leaks: 0"
    )
    assert not summary.clean
    ledger.record("leaks", "logs", "id at x:1", False)
    assert summarise(ledger.items).leaks == 1


def test_clean_needs_every_category_present_and_complete() -> None:
    ledger = Ledger()
    for category in ("faults", "bad_inputs", "refusals", "canary"):
        ledger.record(category, "g", "n", True)
    assert summarise(ledger.items).clean
    assert not summarise(
        [i for i in ledger.items if i.category != "canary"]
    ).clean  # a canary never planted is not "found"


def test_the_ledger_survives_its_json_file(tmp_path: Path) -> None:
    ledger = Ledger()
    ledger.record("refusals", "TLS", "no certificate → gateway", True, "UNAVAILABLE")
    ledger.note("load", "4 runs")
    ledger.dump(tmp_path / "l.json")
    again = Ledger.load(tmp_path / "l.json")
    assert again.items == ledger.items and again.notes == ledger.notes
    text = table(again.items, again.notes)
    assert "TLS" in text and "load: 4 runs" in text
