"""`riskmesh bench` argument validation, unbuilt phases, and the JSON last line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.bench import cli
from services.bench.cli import BenchArgs, missing_parts, validate
from services.cli.main import app


def _args(**changes: object) -> BenchArgs:
    base = {"phase": "all", "records": 1_000, "features": 10, "latency_ms": 0.0, "repeat": 1, "alpha": 0.1}
    base.update(changes)
    return BenchArgs(**base)  # type: ignore[arg-type]


def test_valid_arguments() -> None:
    assert validate(_args()) == []
    assert validate(_args(phase="lasso", latency_ms=20.0, repeat=3, alpha=0.5)) == []
    assert validate(_args(phase="lasso", alpha=None, design="collinear")) == []


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"phase": "bogus"}, "--phase must be one of"),
        ({"records": 5}, "--records must be at least 10"),
        ({"features": 1}, "--features must be at least 2"),
        ({"latency_ms": -1.0}, "--latency-ms must be >= 0"),
        ({"repeat": 0}, "--repeat must be at least 1"),
        ({"alpha": 0.0}, "--alpha must be > 0"),
        ({"phase": "join", "latency_ms": 5.0}, "not available for --phase join"),
        ({"design": "bogus"}, "--design must be one of"),
        ({"phase": "all", "design": "collinear"}, "for --phase lasso only"),
    ],
)
def test_invalid_arguments(changes: dict, fragment: str) -> None:
    problems = validate(_args(**changes))
    assert any(fragment in p for p in problems), problems


def test_bad_arguments_exit_2_with_a_json_last_line() -> None:
    result = CliRunner().invoke(app, ["bench", "--phase", "all", "--records", "5"])
    assert result.exit_code == cli.EXIT_USAGE
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["ok"] is False and "--records" in last["error"]


def test_unbuilt_phase_exits_3_and_prints_no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(cli.REQUIREMENTS, "lasso", (("services.bench.no_such_module", "the secure Lasso MPC program"),))
    result = CliRunner().invoke(app, ["bench", "--phase", "lasso", "--records", "1000"])
    assert result.exit_code == cli.EXIT_NOT_BUILT
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last == {
        "ok": False,
        "phase": "lasso",
        "built": False,
        "missing": ["the secure Lasso MPC program"],
        "error": "--phase lasso is not built yet: missing the secure Lasso MPC program",
    }
    assert not {"lasso_s", "total_s", "rel_coef_diff"} & set(last)


def test_missing_parts_names_only_absent_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        cli.REQUIREMENTS, "join", (("services.bench.cli", "present"), ("services.bench.absent_module", "absent"))
    )
    assert missing_parts("join") == ["absent"]


def test_unknown_sweep_is_refused() -> None:
    result = CliRunner().invoke(app, ["bench", "--sweep", "huge"])
    assert result.exit_code == cli.EXIT_USAGE
    assert "--sweep must be one of" in json.loads(result.stdout.strip().splitlines()[-1])["error"]


def test_phase_ok_checks_accuracy_and_agreement() -> None:
    assert cli.phase_ok("all", {"rel_coef_diff": 2e-8})
    assert not cli.phase_ok("all", {"rel_coef_diff": 2e-5})
    good = {
        "rel_coef_diff": 1e-9,
        "owners_agree": True,
        "converged": True,
        "objective_gap": 1e-12,
        "max_pred_diff": 1e-9,
    }
    assert cli.phase_ok("lasso", good)
    assert not cli.phase_ok("lasso", {**good, "owners_agree": False})
    assert not cli.phase_ok("lasso", {**good, "converged": False})
    assert not cli.phase_ok("lasso", {**good, "objective_gap": 2e-8})
    assert not cli.phase_ok("lasso", {**good, "max_pred_diff": 2e-6})
    # The collinear design judges the fit by its objective and predictions, not coefficient by coefficient.
    assert cli.phase_ok("lasso", {**good, "design": "collinear", "rel_coef_diff": 1e-3})
    assert not cli.phase_ok("lasso", {**good, "design": "synthetic", "rel_coef_diff": 1e-3})
    assert cli.phase_ok("join", {"shares_match_plaintext": True})
    assert not cli.phase_ok("join", {"shares_match_plaintext": False})


def test_model_choice_is_checked() -> None:
    assert validate(_args(phase="lasso", model="logistic")) == []
    assert any("--model must be one of" in p for p in validate(_args(phase="lasso", model="probit")))
    assert validate(_args(phase="all", model="logistic")) == []
    assert any("--phase all fits lasso or logistic" in p for p in validate(_args(phase="all", model="svm")))
    assert any("for --phase lasso and all only" in p for p in validate(_args(phase="join", model="logistic")))


def test_compare_tno_takes_lasso_or_logistic_only() -> None:
    result = CliRunner().invoke(app, ["bench", "--compare-tno", "--model", "svm", "--records", "1000"])
    assert result.exit_code == cli.EXIT_USAGE
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["ok"] is False and last["mode"] == "compare-tno" and "lasso, logistic" in last["error"]


def test_compare_tno_passes_the_model_and_its_default_alpha(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.bench import tno_compare

    seen: list[tuple] = []
    monkeypatch.setattr(tno_compare, "compare_tno", lambda *args: seen.append(args) or 0)
    result = CliRunner().invoke(app, ["bench", "--compare-tno", "--model", "logistic", "--records", "1000"])
    assert result.exit_code == 0 and seen == [(1000, 10, 0.01, None, "logistic")]


def test_phase_all_logistic_runs_the_compare_tno_study(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--phase all --model logistic` is riskmesh's side of `--compare-tno --model logistic`: bench_all,
    with the same default alpha."""
    from services.bench import full_bench

    seen: list[tuple] = []

    def fake_bench_all(*args, **kwargs):
        seen.append((args, kwargs))
        return {"rel_coef_diff": 1e-9, "model": "logistic"}

    monkeypatch.setattr(full_bench, "bench_all", fake_bench_all)
    result = CliRunner().invoke(app, ["bench", "--phase", "all", "--model", "logistic", "--records", "1000"])
    assert result.exit_code == 0, result.stdout
    ((args, kwargs),) = seen
    assert args[:3] == (1000, 10, 0.01) and kwargs["model"] == "logistic"
