"""Templates render every branch the browser tests do not reach: a CV curve, standardised
coefficients, a failed run's board."""

from __future__ import annotations

from types import SimpleNamespace

from riskmesh.v1 import common_pb2 as c
from riskmesh.v1 import gateway_pb2, lasso_pb2
from services.console import charts, quality
from services.console.app import Console
from services.console.board import STEPS, Board
from services.console.security import AuthSettings
from services.study.disclosure import column_owners
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data

PARTIES = [("insurer", c.ROLE_DATA_OWNER), ("hospital", c.ROLE_DATA_OWNER), ("helper", c.ROLE_HELPER)]


def console(role: str = "data_owner") -> Console:
    gateway = SimpleNamespace(org="insurer", role=role)
    return Console(gateway, AuthSettings("token", "t", "riskmesh-console-insurer", ("127.0.0.1",)))  # type: ignore[arg-type]


def test_result_page_with_cv_curve_and_standardised_coefficients():
    spec = spec_for(make_study_data(20), "s", alphas=[0.01, 0.1, 1.0], cv_folds=3, standardize=True)
    result = lasso_pb2.ModelResult(
        coefficients=[
            lasso_pb2.Coefficient(feature="age", value=0.5, standardized_value=1.5),
            lasso_pb2.Coefficient(feature="bmi", value=-0.25, standardized_value=-0.7),
        ],
        intercept=1.0,
        joined=50,
        alpha=0.1,
        iterations=40,
        target="hospitalisation_days",
        cv_curve=[lasso_pb2.CvPoint(alpha=a, mean_squared_error=m) for a, m in ((0.01, 3.0), (0.1, 2.0), (1.0, 2.5))],
    )
    run = gateway_pb2.Run(run_id="s-1", study_id="s", state=c.RUN_STATE_SUCCEEDED, trace_id="ab" * 16)
    html = (
        console()
        .templates.get_template("result.html")
        .render(
            run=run,
            result=result,
            study=gateway_pb2.Study(spec=spec),
            owners=column_owners(spec),
            standardized=True,
            bars=charts.bar_chart([("age", 0.5), ("bmi", -0.25)]),
            cv=charts.cv_chart([(0.01, 3.0), (0.1, 2.0), (1.0, 2.5)], 0.1),
            cv_points=quality.cv_points(result),
            cv_criterion=quality.cv_criterion(result, spec),
            waterfall=None,
            step_labels=[label for _, label in STEPS],
            csrf_token="x",
            path="/runs/s-1/result",
        )
    )
    assert "Standardised" in html and "1.500000" in html and "cv-chosen" in html and "0.1 (chosen)" in html
    assert "Mean validation squared error" in html and ">2.000000</td>" in html
    assert 'data-feature="age"' in html and "insurer" in html


def test_failed_run_board_names_phase_org_and_reason_without_actions_for_the_helper():
    board = Board.for_parties(PARTIES)
    error = c.RunError(phase=c.PHASE_INTERSECTION, org="helper", reason="too few patients in the intersection")
    board.add(gateway_pb2.WatchRunResponse(run=gateway_pb2.Run(run_id="r", state=c.RUN_STATE_FAILED, error=error)))
    html = (
        console("helper")
        .templates.get_template("_board.html")
        .render(board=board, run=board.run, problem="", csrf_token="x")
    )
    assert 'data-status="failed"' in html and "Failed in Intersection at helper." in html and "too few patients" in html
    assert "Cancel the run" not in html and "/result" not in html


def _render_result(result: lasso_pb2.ModelResult, spec: c.StudySpec) -> str:
    return (
        console()
        .templates.get_template("result.html")
        .render(
            run=gateway_pb2.Run(run_id="s-1", study_id="s", state=c.RUN_STATE_SUCCEEDED),
            result=result,
            study=gateway_pb2.Study(spec=spec),
            owners=column_owners(spec),
            standardized=False,
            model_kind=quality.model_kind_label(result, spec),
            iterations_label=quality.iterations_label(result, spec),
            metrics=quality.metric_rows(result),
            bars=charts.bar_chart([(co.feature, co.value) for co in result.coefficients]),
            cv=None,
            waterfall=None,
            step_labels=[label for _, label in STEPS],
            csrf_token="x",
            path="/runs/s-1/result",
        )
    )


def test_result_page_shows_the_model_kind_and_the_revealed_classification_metrics():
    classification = (c.METRIC_ACCURACY, c.METRIC_PRECISION, c.METRIC_RECALL, c.METRIC_F1)
    spec = spec_for(make_study_data(20), "s", alphas=[0.01], kind=c.MODEL_KIND_LOGISTIC, metrics=classification)
    values = (0.8125, 0.75, 0.6, 2 / 3)
    result = lasso_pb2.ModelResult(
        coefficients=[lasso_pb2.Coefficient(feature="age", value=0.5)],
        kind=c.MODEL_KIND_LOGISTIC,
        metrics=[
            lasso_pb2.MetricValue(metric=m, value=v, cv_value=v - 0.05)
            for m, v in zip(classification, values, strict=True)
        ],
    )
    html = _render_result(result, spec)
    assert 'id="model-kind">Logistic regression<' in html and ">Newton steps<" in html
    for key, label, value in (
        ("accuracy", "Accuracy", "0.8125"),
        ("precision", "Precision", "0.7500"),
        ("recall", "Recall", "0.6000"),
        ("f1", "F1", "0.6667"),
    ):
        assert f'data-metric="{key}"' in html and f">{label}</th>" in html and f">{value}</td>" in html
    assert "Mean over the validation folds" in html and ">0.7625</td>" in html  # accuracy's K-fold estimate
    assert "no-quality" not in html


def test_result_page_shows_regression_metrics_and_says_when_none_were_revealed():
    regression = (c.METRIC_R2, c.METRIC_ADJUSTED_R2, c.METRIC_MSE)
    spec = spec_for(make_study_data(20), "s", alphas=[0.1], metrics=regression)
    result = lasso_pb2.ModelResult(
        coefficients=[lasso_pb2.Coefficient(feature="age", value=0.5)],
        metrics=[
            lasso_pb2.MetricValue(metric=m, value=v) for m, v in zip(regression, (0.42, 0.4, 1234.5), strict=True)
        ],
    )
    html = _render_result(result, spec)  # an older result without `kind`: the study's kind is shown
    assert 'id="model-kind">Lasso<' in html and ">Solver iterations<" in html
    assert ">R²</th>" in html and ">0.4200</td>" in html and ">Adjusted R²</th>" in html and ">1234.5</td>" in html
    assert "Mean over the validation folds" not in html
    bare = _render_result(lasso_pb2.ModelResult(coefficients=result.coefficients), spec_for(make_study_data(20), "s"))
    assert 'id="no-quality"' in bare and 'id="quality"' not in bare


def test_poisson_deviance_is_labelled():
    result = lasso_pb2.ModelResult(
        kind=c.MODEL_KIND_POISSON, metrics=[lasso_pb2.MetricValue(metric=c.METRIC_DEVIANCE, value=0.9)]
    )
    assert quality.model_kind_label(result, c.StudySpec()).startswith("Poisson regression")
    assert [(r.key, r.label, r.value, r.cv_value) for r in quality.metric_rows(result)] == [
        ("deviance", "Mean Poisson deviance", 0.9, None)
    ]


def test_cv_curve_of_a_glm_plots_its_validation_loss():
    spec = spec_for(make_study_data(20), "s", alphas=[0.01, 0.1], cv_folds=3, kind=c.MODEL_KIND_LOGISTIC)
    result = lasso_pb2.ModelResult(
        kind=c.MODEL_KIND_LOGISTIC,
        alpha=0.01,
        cv_curve=[lasso_pb2.CvPoint(alpha=a, mean_validation_loss=v) for a, v in ((0.01, 0.52), (0.1, 0.61))],
    )
    assert quality.cv_criterion(result, spec) == "log-loss"
    assert quality.cv_points(result) == [(0.01, 0.52), (0.1, 0.61)]
    # A result from before mean_validation_loss: the linear models' squared error.
    old = lasso_pb2.ModelResult(cv_curve=[lasso_pb2.CvPoint(alpha=0.1, mean_squared_error=2.0)])
    assert quality.cv_points(old) == [(0.1, 2.0)] and quality.cv_criterion(old, spec_for(make_study_data(20), "s")) == (
        "squared error"
    )
