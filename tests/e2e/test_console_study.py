"""A whole study through the three organisations' web consoles in headless Chromium:
the insurer proposes from a spec file, the hospital's console shows the proposal and a
click approves it, the helper acknowledges, the insurer starts the run and watches the
steps turn complete live, the result page shows scikit-learn's coefficients, and the
helper's console never offers a result. Screenshots of every page go to test-artifacts/."""

from __future__ import annotations

import re

import numpy as np
import pytest

from riskmesh.v1 import common_pb2
from services.testkit.plain_reference import lasso_reference
from services.testkit.synthetic import reference_join
from tests.e2e.console_browser import ALPHA, shot, signed_in

pytestmark = pytest.mark.e2e

STUDY = "console-study"


def test_study_proposed_approved_run_and_revealed_through_the_consoles(console_mesh, browser):
    m = console_mesh
    insurer_ctx, insurer = signed_in(browser, m.consoles["insurer"])
    hospital_ctx, hospital = signed_in(browser, m.consoles["hospital"])
    helper_ctx, helper = signed_in(browser, m.consoles["helper"])

    # The insurer proposes from a spec file; the CSV path stays at the insurer.
    insurer.get_by_label("Spec file").set_input_files(str(m.spec_file(STUDY, [ALPHA])))
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
