"""A whole study through the three organisations' web consoles in headless Chromium:
the insurer proposes from a spec file, the hospital's console shows the proposal and a
click approves it, the helper acknowledges, the insurer starts the run and watches the
steps turn complete live, the result page shows scikit-learn's coefficients, the model
kind and the revealed metrics, and the helper's console never offers a result. A second
study (logistic regression, proposed through the gateways) shows its classification
metrics on the result page. Screenshots of every page go to test-artifacts/."""

from __future__ import annotations

import re

import numpy as np
import pytest

from riskmesh.v1 import common_pb2
from services.mesh.config import load_config
from services.testkit.outcomes import data_with_outcome
from services.testkit.plain_reference import lasso_reference
from services.testkit.studies import spec_for
from services.testkit.synthetic import reference_join
from tests.e2e.console_browser import ALPHA, shot, signed_in

pytestmark = pytest.mark.e2e

STUDY = "console-study"
LOGISTIC_STUDY = "console-logistic"
REGRESSION = [common_pb2.METRIC_R2, common_pb2.METRIC_ADJUSTED_R2, common_pb2.METRIC_MSE]
CLASSIFICATION = [
    common_pb2.METRIC_ACCURACY,
    common_pb2.METRIC_PRECISION,
    common_pb2.METRIC_RECALL,
    common_pb2.METRIC_F1,
]


def shown_metrics(page) -> dict[str, float]:
    rows = page.locator("#quality tr[data-metric]")
    return {
        rows.nth(i).get_attribute("data-metric"): float(rows.nth(i).get_attribute("data-value"))
        for i in range(rows.count())
    }


def test_study_proposed_approved_run_and_revealed_through_the_consoles(console_mesh, browser):
    m = console_mesh
    insurer_ctx, insurer = signed_in(browser, m.consoles["insurer"])
    hospital_ctx, hospital = signed_in(browser, m.consoles["hospital"])
    helper_ctx, helper = signed_in(browser, m.consoles["helper"])

    # The insurer proposes from a spec file; the CSV path stays at the insurer.
    insurer.get_by_label("Spec file").set_input_files(str(m.spec_file(STUDY, [ALPHA], metrics=REGRESSION)))
    insurer.get_by_label("Your CSV file").fill(m.sources["insurer"])
    shot(insurer, "studies-propose")
    insurer.get_by_role("button", name="Propose").click()
    insurer.wait_for_url(re.compile(f"/studies/{STUDY}"))
    digest = m.clients["insurer"].get_study(STUDY).spec_digest
    assert insurer.locator("#digest").inner_text() == digest

    # The hospital sees the proposal waiting for it and approves that exact digest by a click.
    hospital.goto(m.consoles["hospital"].url + "/studies")
    row = hospital.get_by_role("row").filter(has_text=STUDY)
    assert "proposed" in row.inner_text().lower() and "insurer" in row.inner_text()
    shot(hospital, "studies-hospital")
    row.get_by_role("link", name=re.compile("Review")).click()
    assert hospital.locator("#digest").inner_text() == digest
    assert "helper" in hospital.get_by_role("table").filter(has_text="Receives or learns").inner_text()
    shot(hospital, "study-hospital-before-approval")
    hospital.get_by_label("Your CSV file for this study").fill(m.sources["hospital"])
    hospital.get_by_role("button", name=re.compile("Approve digest")).click()
    hospital.wait_for_url(re.compile(r"done=approved"))
    assert "hospital" in m.clients["hospital"].get_study(STUDY).approved_by

    # The helper acknowledges from its console (no CSV: it holds no data).
    helper.goto(m.consoles["helper"].url + f"/studies/{STUDY}")
    assert helper.get_by_label("Your CSV file for this study").count() == 0
    helper.get_by_role("button", name=re.compile("Acknowledge digest")).click()
    helper.wait_for_url(re.compile(r"done=acknowledged"))
    shot(helper, "study-helper-acknowledged")
    assert m.clients["insurer"].get_study(STUDY).state == common_pb2.STUDY_STATE_APPROVED

    # The insurer starts the run; the board updates in place (no reload) until every step is done.
    insurer.goto(m.consoles["insurer"].url + f"/studies/{STUDY}")
    shot(insurer, "study-insurer-approved")
    insurer.get_by_role("button", name="Start a run").click()
    insurer.wait_for_url(re.compile(r"/runs/"))
    insurer.evaluate("window.__samePage = true")
    insurer.locator("td[data-status='active']").first.wait_for(timeout=60_000)
    insurer.locator("td[data-party='insurer'][data-phase='Setup'][data-status='done']").wait_for(timeout=120_000)
    shot(insurer, "run-insurer-live")
    insurer.locator("#run-summary[data-state='succeeded']").wait_for(timeout=240_000)
    assert insurer.evaluate("window.__samePage === true"), "the page was reloaded instead of updated live"
    statuses = insurer.locator("td.step").evaluate_all("cells => cells.map(c => c.dataset.status)")
    assert (
        set(statuses) == {"done", "n/a"} and statuses.count("n/a") == 3
    )  # owners do not intersect; the helper does not encrypt
    shot(insurer, "run-insurer-succeeded")
    run_id = insurer.url.rsplit("/", 1)[-1]

    # The result page: scikit-learn's coefficients on the plaintext join, to 1e-5.
    insurer.get_by_role("link", name="View the result").click()
    insurer.wait_for_url(re.compile(r"/result$"))
    shot(insurer, "result-insurer")
    names, x, y = reference_join(m.data)
    reference = lasso_reference(names, x, y, ALPHA)
    rows = insurer.locator("#coefficients tr[data-feature]")
    shown = {
        rows.nth(i).get_attribute("data-feature"): float(rows.nth(i).get_attribute("data-value"))
        for i in range(rows.count())
    }
    assert list(shown) == names
    secure, plain = np.array([shown[n] for n in names]), np.array([reference[n] for n in names])
    assert np.max(np.abs(secure - plain)) <= 1e-5 * np.max(np.abs(plain))
    assert int(insurer.locator("#joined").inner_text()) == len(y)
    assert insurer.locator("svg[aria-labelledby='bars-title'] rect.bar").count() == len(names)
    assert insurer.locator("svg[aria-labelledby='wf-title'] rect").count() > 0
    # The model kind and the metrics the study asked for, as the MPC revealed them (R², adjusted R²
    # and MSE of the revealed model on the plaintext join, to 1e-6).
    assert insurer.locator("#model-kind").inner_text() == "Lasso"
    fitted = x @ secure + float(insurer.locator("#intercept").inner_text())
    mse = float(np.mean((y - fitted) ** 2))
    r2 = 1 - mse / float(np.var(y))
    adjusted = 1 - (1 - r2) * (len(y) - 1) / (len(y) - len(names) - 1)
    metrics = shown_metrics(insurer)
    assert list(metrics) == ["r2", "adjusted_r2", "mse"]
    assert metrics["r2"] == pytest.approx(r2, abs=1e-5) and metrics["adjusted_r2"] == pytest.approx(adjusted, abs=1e-5)
    assert metrics["mse"] == pytest.approx(mse, rel=1e-5)

    hospital.goto(m.consoles["hospital"].url + f"/runs/{run_id}/result")
    assert (
        float(hospital.locator(f"#coefficients tr[data-feature='{names[0]}']").get_attribute("data-value"))
        == shown[names[0]]
    )
    shot(hospital, "result-hospital")

    # The helper's console shows the run but never offers a result, and refuses to show one.
    helper.goto(m.consoles["helper"].url + f"/runs/{run_id}")
    helper.locator("#run-summary[data-state='succeeded']").wait_for()
    assert helper.locator("#no-result").is_visible()
    assert helper.get_by_role("link", name=re.compile("result", re.I)).count() == 0
    shot(helper, "run-helper")
    helper.goto(m.consoles["helper"].url + "/runs")
    assert helper.get_by_role("link", name=re.compile("result", re.I)).count() == 0
    shot(helper, "runs-helper")
    response = helper.goto(m.consoles["helper"].url + f"/runs/{run_id}/result")
    assert response.status == 403 and helper.locator("#coefficients").count() == 0
    shot(helper, "result-helper-refused")

    # Audit: every org's chain verifies and the console's actions are recorded under its identity.
    for org, page in (("insurer", insurer), ("hospital", hospital), ("helper", helper)):
        page.goto(m.consoles[org].url + "/audit")
        assert "Chain verified" in page.locator("#chain").inner_text()
        assert page.get_by_text(f"spiffe://{org}/console").count() > 0
    shot(insurer, "audit-insurer")
    insurer.goto(m.consoles["insurer"].url + "/runs")
    shot(insurer, "runs-insurer")
    for ctx in (insurer_ctx, hospital_ctx, helper_ctx):
        ctx.close()


def test_logistic_result_shows_the_model_kind_and_classification_metrics(console_mesh, browser):
    m = console_mesh
    insurer_config = load_config(m.configs["insurer"], env={})
    binary = data_with_outcome(m.data, "binary", seed=5)
    source = str(binary.insurer.write_csv(insurer_config.state_dir / "data" / "insurer-binary.csv"))
    spec = spec_for(
        binary,
        LOGISTIC_STUDY,
        alphas=[0.02],
        kind=common_pb2.MODEL_KIND_LOGISTIC,
        l1_ratio=1.0,
        metrics=CLASSIFICATION,
    )
    study = m.clients["insurer"].propose(spec, source)
    m.clients["hospital"].approve(LOGISTIC_STUDY, study.spec_digest, m.sources["hospital"])
    m.clients["helper"].approve(LOGISTIC_STUDY, study.spec_digest)
    run = m.clients["insurer"].start_run(LOGISTIC_STUDY)
    final = run
    for event in m.clients["insurer"].watch(run.run_id, timeout=600.0):
        final = event.run
    assert final.state == common_pb2.RUN_STATE_SUCCEEDED, final

    context, page = signed_in(browser, m.consoles["hospital"])
    page.goto(m.consoles["hospital"].url + f"/runs/{run.run_id}/result")
    shot(page, "result-hospital-logistic")
    assert page.locator("#model-kind").inner_text() == "Logistic regression"
    names, x, y = reference_join(binary)
    rows = page.locator("#coefficients tr[data-feature]")
    coefficients = {
        rows.nth(i).get_attribute("data-feature"): float(rows.nth(i).get_attribute("data-value"))
        for i in range(rows.count())
    }
    eta = x @ np.array([coefficients[n] for n in names]) + float(page.locator("#intercept").inner_text())
    predicted = (eta >= 0).astype(float)
    tp, positives, called = float(predicted @ y), float(y.sum()), float(predicted.sum())
    expected = {
        "accuracy": float(np.mean(predicted == y)),
        "precision": tp / called,
        "recall": tp / positives,
        "f1": 2 * tp / (called + positives),
    }
    metrics = shown_metrics(page)
    assert list(metrics) == list(expected)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    context.close()
