"""An ill-conditioned study through every server at default settings (issue 19): three near-identical
measurements per quantity, units from 1e-3 to 1e3, a target on a small scale. The secure Lasso
must reach scikit-learn's optimum (run to convergence) and say that it is certified.

On this data the previous solver (40 ADMM iterations, then one polish) stopped 1% above the optimum
and reported success."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Lasso

from riskmesh.client import GatewayClient
from riskmesh.v1 import common_pb2
from services.lasso.core.plan import DEFAULT_ITERATIONS
from services.mesh.config import load_config
from services.testkit.collinear import as_joined, collinear_study_data
from services.testkit.studies import spec_for
from services.testkit.synthetic import reference_join
from services.tools.launcher import LocalMesh, local_mesh_for

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

RECORDS, FEATURES, SEED = 600, 15, 0
ALPHA_FRACTION = 1e-4  # of alpha_max: four of fifteen coefficients non-zero, two of them a contrast


@pytest.fixture(scope="module")
def collinear_mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("collinear")
    configs = local_mesh_for(root)
    orgs = {org: load_config(p, env={}) for org, p in configs.items()}
    data = collinear_study_data(RECORDS, FEATURES, seed=SEED)
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


def _objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: float, alpha: float) -> float:
    return float(0.5 * np.mean((y - x @ w - b) ** 2) + alpha * np.abs(w).sum())


def test_ill_conditioned_study_reaches_the_optimum_with_a_certificate(collinear_mesh):
    clients, data, sources = collinear_mesh
    names, x_raw, y_raw = reference_join(data)
    x, y = as_joined(x_raw), as_joined(y_raw)  # the join's fixed-point encoding: what the MPC computes on
    centred = x - x.mean(axis=0)
    alpha = ALPHA_FRACTION * float(np.max(np.abs(centred.T @ (y - y.mean()))) / len(y))

    study = clients["insurer"].propose(spec_for(data, "collinear-study", alphas=[alpha]), sources["insurer"])
    assert study.spec.model.iterations == 0  # the server's default maximum
    clients["hospital"].approve("collinear-study", study.spec_digest, sources["hospital"])
    clients["helper"].approve("collinear-study", study.spec_digest)
    run = clients["insurer"].start_run("collinear-study")
    final = None
    for event in clients["insurer"].watch(run.run_id, timeout=600):
        final = event.run
    assert final is not None and final.state == common_pb2.RUN_STATE_SUCCEEDED, final
    _, result = clients["insurer"].result(final.run_id)
    # each gateway ends the run on its own: the hospital's may end just after the insurer's
    assert clients["hospital"].wait(final.run_id, timeout=60).state == common_pb2.RUN_STATE_SUCCEEDED
    _, other = clients["hospital"].result(final.run_id)
    assert list(other.coefficients) == list(result.coefficients)
    assert [c.feature for c in result.coefficients] == names
    assert result.converged and 0 < result.certified_gap <= 1e-8
    assert 0 < result.iterations <= DEFAULT_ITERATIONS

    reference = Lasso(alpha=alpha, tol=1e-14, max_iter=10**7, precompute=True).fit(x, y)
    w_ref, b_ref = reference.coef_, float(reference.intercept_)
    w, b = np.array([c.value for c in result.coefficients]), result.intercept
    best = _objective(x, y, w_ref, b_ref, alpha)
    assert _objective(x, y, w, b, alpha) - best <= 1e-8 * best
    assert np.max(np.abs(x @ (w - w_ref) + (b - b_ref))) <= 1e-6 * np.ptp(y)

    # The optimum is well separated (strict complementarity, a well-conditioned support, no
    # coefficient near zero), so the coefficients themselves are determined to far below 1e-5.
    gradient = centred.T @ (y - y.mean() - centred @ w_ref) / len(y)
    active = w_ref != 0
    scale = centred.std(axis=0)
    support = centred[:, active] / scale[active]
    assert np.min(1 - np.abs(gradient[~active]) / alpha) >= 0.1
    assert np.linalg.eigvalsh(support.T @ support / len(y))[0] >= 0.1
    standardised = np.abs(w_ref * scale)
    assert standardised[active].min() >= 1e-3 * standardised.max()
    assert np.array_equal(w != 0, active)
    assert np.max(np.abs(w - w_ref)) <= 1e-5 * np.max(np.abs(w_ref))
