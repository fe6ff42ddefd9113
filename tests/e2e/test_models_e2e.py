"""Studies of the GLM model kinds across three organisations as real processes over mTLS:
propose, approve, run (join + secure fit), the result at both owners against the exact
optimum of the same objective and scikit-learn, the revealed metrics, and Predict.
(The Poisson study uses the same mesh with a count outcome in another insurer CSV.)"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import mean_poisson_deviance

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.lasso.worker.lasso_program import regression_spec
from services.mesh.config import load_config
from services.testkit.glm_reference import fit_glm_exact, fit_glm_sklearn
from services.testkit.outcomes import data_with_outcome
from services.testkit.studies import spec_for
from services.testkit.synthetic import make_study_data, reference_join
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = pytest.mark.e2e

CLASSIFICATION = [
    common_pb2.METRIC_ACCURACY,
    common_pb2.METRIC_PRECISION,
    common_pb2.METRIC_RECALL,
    common_pb2.METRIC_F1,
]


@pytest.fixture(scope="module")
def binary_mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    configs = local_mesh_for(root)
    orgs = {org: load_config(p, env={}) for org, p in configs.items()}
    data = data_with_outcome(make_study_data(300, overlap=0.5), "binary", seed=5)
    sources = {
        "insurer": str(data.insurer.write_csv(orgs["insurer"].state_dir / "data" / "insurer.csv")),
        "hospital": str(data.hospital.write_csv(orgs["hospital"].state_dir / "data" / "hospital.csv")),
    }
    mesh = LocalMesh(configs).start()
    clients = {
        org: GatewayClient.from_pki(c.self_endpoint.address("gateway"), org, c.pki_dir) for org, c in orgs.items()
    }
    yield clients, data, sources
    for c in clients.values():
        c.close()
    mesh.stop()


def run_study(clients, data, sources, study_id: str, **spec_args):
    spec = spec_for(data, study_id, **spec_args)
    study = clients["insurer"].propose(spec, sources["insurer"])
    clients["hospital"].approve(study_id, study.spec_digest, sources["hospital"])
    clients["helper"].approve(study_id, study.spec_digest)
    run = clients["insurer"].start_run(study_id)
    final = None
    for event in clients["insurer"].watch(run.run_id, timeout=600.0):
        final = event.run
    assert final is not None and final.state == common_pb2.RUN_STATE_SUCCEEDED, final
    return spec, final


def test_logistic_study_matches_the_exact_optimum_and_reveals_metrics(binary_mesh):
    clients, data, sources = binary_mesh
    spec, final = run_study(
        clients,
        data,
        sources,
        "e2e-logistic",
        alphas=[0.02],
        kind=common_pb2.MODEL_KIND_LOGISTIC,
        l1_ratio=1.0,
        metrics=CLASSIFICATION,
    )
    names, x, y = reference_join(data)
    exact = fit_glm_exact(x, y, regression_spec(spec))
    sklearn = fit_glm_sklearn(x, y, regression_spec(spec))
    _, insurer = clients["insurer"].result(final.run_id)
    # each gateway ends the run on its own: the hospital's may end just after the insurer's
    assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
    _, hospital = clients["hospital"].result(final.run_id)
    secure = np.array([c.value for c in insurer.coefficients])
    scale = float(np.max(np.abs(exact.coefficients)))
    assert [c.feature for c in insurer.coefficients] == names and insurer.kind == common_pb2.MODEL_KIND_LOGISTIC
    assert np.max(np.abs(secure - exact.coefficients)) <= 1e-4 * scale
    assert np.max(np.abs(secure - sklearn.coefficients)) <= 1e-4 * scale
    assert abs(insurer.intercept - exact.intercept) <= 1e-4 * max(1.0, abs(exact.intercept))
    assert list(secure == 0) == list(exact.coefficients == 0) and 0 < int(np.sum(secure == 0)) < len(names)
    assert list(hospital.coefficients) == list(insurer.coefficients) and list(hospital.metrics) == list(insurer.metrics)

    predicted = (x @ exact.coefficients + exact.intercept > 0).astype(float)
    tp, positives, called = float(predicted @ y), float(y.sum()), float(predicted.sum())
    expected = {
        common_pb2.METRIC_ACCURACY: float(np.mean(predicted == y)),
        common_pb2.METRIC_PRECISION: tp / called,
        common_pb2.METRIC_RECALL: tp / positives,
        common_pb2.METRIC_F1: 2 * tp / (called + positives),
    }
    assert [m.metric for m in insurer.metrics] == CLASSIFICATION
    for metric in insurer.metrics:
        assert metric.value == pytest.approx(expected[metric.metric], abs=1e-6)

    records = [dict(zip(names, row, strict=True)) for row in x[:5].tolist()]
    probabilities, kind = clients["hospital"].predict_with_kind(final.run_id, records)
    assert kind == common_pb2.MODEL_KIND_LOGISTIC
    eta = x[:5] @ secure + insurer.intercept
    assert probabilities == pytest.approx([1 / (1 + math.exp(-v)) for v in eta], rel=1e-12)


def test_svm_study_matches_the_exact_optimum_and_predicts_classes(binary_mesh):
    clients, data, sources = binary_mesh
    spec, final = run_study(
        clients,
        data,
        sources,
        "e2e-svm",
        alphas=[0.01],
        kind=common_pb2.MODEL_KIND_SVM,
        metrics=[common_pb2.METRIC_ACCURACY],
    )
    names, x, y = reference_join(data)
    exact = fit_glm_exact(x, y, regression_spec(spec))
    _, insurer = clients["insurer"].result(final.run_id)
    secure = np.array([c.value for c in insurer.coefficients])
    assert insurer.kind == common_pb2.MODEL_KIND_SVM
    assert np.max(np.abs(secure - exact.coefficients)) <= 1e-3 * float(np.max(np.abs(exact.coefficients)))
    predicted = (x @ exact.coefficients + exact.intercept > 0).astype(float)
    assert insurer.metrics[0].value == pytest.approx(float(np.mean(predicted == y)), abs=1e-6)
    records = [dict(zip(names, row, strict=True)) for row in x[:8].tolist()]
    classes, kind = clients["insurer"].predict_with_kind(final.run_id, records)
    assert kind == common_pb2.MODEL_KIND_SVM
    assert classes == [float(v) for v in (x[:8] @ secure + insurer.intercept > 0)]


REGRESSION = [common_pb2.METRIC_DEVIANCE, common_pb2.METRIC_MSE, common_pb2.METRIC_R2, common_pb2.METRIC_ADJUSTED_R2]


def test_poisson_study_matches_the_exact_optimum_and_predicts_expected_counts(binary_mesh):
    clients, _, sources = binary_mesh
    data = data_with_outcome(make_study_data(300, overlap=0.5), "count", seed=5)
    counts_csv = data.insurer.write_csv(Path(sources["insurer"]).with_name("insurer_counts.csv"))
    sources = {**sources, "insurer": str(counts_csv)}
    spec, final = run_study(
        clients,
        data,
        sources,
        "e2e-poisson",
        alphas=[0.1],
        kind=common_pb2.MODEL_KIND_POISSON,
        l1_ratio=1.0,
        metrics=REGRESSION,
    )
    names, x, y = reference_join(data)
    exact = fit_glm_exact(x, y, regression_spec(spec))
    _, insurer = clients["insurer"].result(final.run_id)
    # each gateway ends the run on its own: the hospital's may end just after the insurer's
    assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
    _, hospital = clients["hospital"].result(final.run_id)
    secure = np.array([c.value for c in insurer.coefficients])
    assert insurer.kind == common_pb2.MODEL_KIND_POISSON and [c.feature for c in insurer.coefficients] == names
    assert np.max(np.abs(secure - exact.coefficients)) <= 1e-4 * float(np.max(np.abs(exact.coefficients)))
    assert abs(insurer.intercept - exact.intercept) <= 1e-4 * max(1.0, abs(exact.intercept))
    assert list(secure == 0) == list(exact.coefficients == 0), (secure, exact.coefficients)
    assert 0 < int(np.sum(secure == 0)) < len(names)
    assert list(hospital.coefficients) == list(insurer.coefficients) and list(hospital.metrics) == list(insurer.metrics)

    mu = np.exp(x @ exact.coefficients + exact.intercept)
    mse = float(np.mean((y - mu) ** 2))
    r2 = 1 - mse / float(np.var(y))
    expected = {
        common_pb2.METRIC_DEVIANCE: mean_poisson_deviance(y, mu),
        common_pb2.METRIC_MSE: mse,
        common_pb2.METRIC_R2: r2,
        common_pb2.METRIC_ADJUSTED_R2: 1 - (1 - r2) * (len(y) - 1) / (len(y) - len(names) - 1),
    }
    assert [m.metric for m in insurer.metrics] == REGRESSION
    for metric in insurer.metrics:
        assert metric.value == pytest.approx(expected[metric.metric], abs=1e-6)

    records = [dict(zip(names, row, strict=True)) for row in x[:5].tolist()]
    counts, kind = clients["hospital"].predict_with_kind(final.run_id, records)
    assert kind == common_pb2.MODEL_KIND_POISSON
    assert counts == pytest.approx([math.exp(v) for v in x[:5] @ secure + insurer.intercept], rel=1e-12)


def test_cross_validated_logistic_study_chooses_its_alpha_and_reveals_k_fold_metrics(binary_mesh):
    clients, data, sources = binary_mesh
    alphas = [0.002, 0.02, 0.5]
    spec, final = run_study(
        clients,
        data,
        sources,
        "e2e-logistic-cv",
        alphas=alphas,
        cv_folds=3,
        kind=common_pb2.MODEL_KIND_LOGISTIC,
        l1_ratio=1.0,
        metrics=[common_pb2.METRIC_ACCURACY],
    )
    _, insurer = clients["insurer"].result(final.run_id)
    # each gateway ends the run on its own: the hospital's may end just after the insurer's
    assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
    _, hospital = clients["hospital"].result(final.run_id)
    assert list(hospital.coefficients) == list(insurer.coefficients) and list(hospital.cv_curve) == list(
        insurer.cv_curve
    )
    # The folds follow the join's secret row order, so the plaintext CV cannot be replayed here
    # (tests/unit/lasso/test_glm_cv.py does, on known folds): the curve's minimum is the chosen alpha
    # and the coefficients are the exact optimum at it.
    curve = {p.alpha: p.mean_validation_loss for p in insurer.cv_curve}
    assert sorted(curve) == alphas and insurer.alpha == min(curve, key=lambda a: curve[a])
    assert all(0 < v < math.log(2) + 0.1 for v in curve.values())  # a log-loss near or below chance
    names, x, y = reference_join(data)
    chosen = regression_spec(spec)
    exact = fit_glm_exact(x, y, replace(chosen, alphas=(insurer.alpha,), cv_folds=0, metrics=()))
    secure = np.array([c.value for c in insurer.coefficients])
    assert np.max(np.abs(secure - exact.coefficients)) <= 1e-4 * float(np.max(np.abs(exact.coefficients)))
    (accuracy,) = insurer.metrics
    predicted = (x @ exact.coefficients + exact.intercept > 0).astype(float)
    assert accuracy.value == pytest.approx(float(np.mean(predicted == y)), abs=1e-6)
    assert accuracy.HasField("cv_value") and 0.4 < accuracy.cv_value <= 1.0


def test_cross_validated_poisson_study_chooses_its_alpha_and_reveals_k_fold_metrics(binary_mesh):
    clients, _, sources = binary_mesh
    data = data_with_outcome(make_study_data(300, overlap=0.5), "count", seed=5)
    counts_csv = data.insurer.write_csv(Path(sources["insurer"]).with_name("insurer_counts_cv.csv"))
    # The local policy asks a relative penalty >= 1e-6. Two folds × two alphas keep this e2e to 6 sequential
    # fits; three folds × three alphas are tested at one party (tests/unit/lasso/test_poisson_cv.py).
    alphas = [0.005, 0.5]
    spec, final = run_study(
        clients,
        data,
        {**sources, "insurer": str(counts_csv)},
        "e2e-poisson-cv",
        alphas=alphas,
        cv_folds=2,
        kind=common_pb2.MODEL_KIND_POISSON,
        l1_ratio=1.0,
        metrics=[common_pb2.METRIC_DEVIANCE],
    )
    _, insurer = clients["insurer"].result(final.run_id)
    # each gateway ends the run on its own: the hospital's may end just after the insurer's
    assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
    _, hospital = clients["hospital"].result(final.run_id)
    assert list(hospital.coefficients) == list(insurer.coefficients) and list(hospital.cv_curve) == list(
        insurer.cv_curve
    )
    # As for logistic CV, the folds follow the secret row order (tests/unit/lasso/test_poisson_cv.py replays
    # them on known folds): the curve's minimum is the chosen alpha, the coefficients the exact optimum at it.
    curve = {p.alpha: p.mean_validation_loss for p in insurer.cv_curve}
    assert sorted(curve) == alphas and insurer.alpha == min(curve, key=lambda a: curve[a])
    names, x, y = reference_join(data)
    null_deviance = float(mean_poisson_deviance(y, np.full(len(y), np.mean(y))))
    assert all(0 < v < 2 * null_deviance for v in curve.values())  # held-out deviances of the right size
    exact = fit_glm_exact(x, y, replace(regression_spec(spec), alphas=(insurer.alpha,), cv_folds=0, metrics=()))
    secure = np.array([c.value for c in insurer.coefficients])
    assert insurer.kind == common_pb2.MODEL_KIND_POISSON
    assert np.max(np.abs(secure - exact.coefficients)) <= 1e-4 * float(np.max(np.abs(exact.coefficients)))
    (deviance,) = insurer.metrics
    mu = np.exp(x @ exact.coefficients + exact.intercept)
    assert deviance.value == pytest.approx(float(mean_poisson_deviance(y, mu)), abs=1e-6)
    assert deviance.HasField("cv_value") and deviance.cv_value == pytest.approx(curve[insurer.alpha], rel=1e-9)
