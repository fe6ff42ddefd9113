"""Disclosure floors: what one organisation, by its own local policy, lets a study reveal.

The spec is the proposer's; each organisation holds it against its own policy, from the
`[policy]` table of its config or the TOML file `policy_file` names (services/mesh/config.py):

    [policy]
    min_intersection = 100        # the joined count must be at least this ...
    rows_per_parameter = 10       # ... and at least this many rows per fitted parameter (d + 1)
    max_features = 50
    min_relative_penalty = 1e-6   # the weakest penalty, in the solver's range-normalised units
    model_kinds = ["lasso", "elastic_net", "ridge", "logistic", "poisson", "svm"]
    reveals = ["joined_count", "cv_curve", "metrics"]   # optional outputs allowed ("standardized_coefficients")
    max_runs = 20                 # the most runs a spec's run policy may allow

Every key is optional; the defaults are the values above. The gateway checks a spec
against its policy when it proposes or approves and again before every run; it passes
its floor on the joined count to its own lasso server, which stops the run inside the
MPC, before anything is computed, when the join is smaller (only that fact is revealed).

The relative penalty is the penalty in the units the solver works in (services/lasso/core/
plan.py): every column scaled by its declared half-range h, so features and target lie in
[−1, 1]. For feature j, with ρ the L1 share of the penalty (lasso 1, ridge 0):

    without standardisation:  αρ / (h_y·h_j) + α(1−ρ) / h_j²
    with standardisation:     αρ / h_y + α(1−ρ)

and the spec's relative penalty is the smallest over its features and alphas. Below
about 2^−32 a penalty vanishes in the solver's fixed point and the fit is an unpenalised
least-squares fit in disguise; the default floor keeps a wide margin above that. The GLMs
(logistic, Poisson, SVM) are held to the same formula with their declared target range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from riskmesh.v1 import common_pb2
from services.mesh.config import OrgConfig
from services.study.spec import GLM_KINDS, feature_names, helper_org, owner_columns, owner_orgs, target_owner

DEFAULT_MIN_INTERSECTION = 100
DEFAULT_ROWS_PER_PARAMETER = 10
DEFAULT_MAX_FEATURES = 50
DEFAULT_MIN_RELATIVE_PENALTY = 1e-6
DEFAULT_MAX_RUNS = 20
KIND_NAMES = {common_pb2.ModelKind.Value(n): n.removeprefix("MODEL_KIND_").lower() for n in common_pb2.ModelKind.keys()}
KIND_NAMES.pop(common_pb2.MODEL_KIND_UNSPECIFIED)
# Outputs a spec may ask for beyond the coefficients and intercept on the original scale.
OPTIONAL_REVEALS = ("joined_count", "cv_curve", "standardized_coefficients", "metrics")
DEFAULT_REVEALS = ("joined_count", "cv_curve", "metrics")
KEYS = (
    "min_intersection", "rows_per_parameter", "max_features", "min_relative_penalty",
    "model_kinds", "reveals", "max_runs",
)  # fmt: skip


class PolicyError(ValueError):
    """The local policy itself is malformed (a key, a type or a value)."""


@dataclass(frozen=True)
class Check:
    """One floor held against a spec: what the policy requires, what the spec says."""

    name: str
    required: str
    actual: str
    ok: bool


@dataclass(frozen=True)
class DisclosurePolicy:
    """One organisation's disclosure floors (see the module docstring)."""

    min_intersection: int = DEFAULT_MIN_INTERSECTION
    rows_per_parameter: int = DEFAULT_ROWS_PER_PARAMETER
    max_features: int = DEFAULT_MAX_FEATURES
    min_relative_penalty: float = DEFAULT_MIN_RELATIVE_PENALTY
    model_kinds: tuple[str, ...] = field(default_factory=lambda: tuple(KIND_NAMES.values()))
    reveals: tuple[str, ...] = DEFAULT_REVEALS
    max_runs: int = DEFAULT_MAX_RUNS

    def joined_floor(self, features: int) -> int:
        """The least joined count this organisation allows for a fit of `features` features."""
        return max(self.min_intersection, self.rows_per_parameter * (features + 1))

    def checks(self, spec: common_pb2.StudySpec) -> list[Check]:
        """Every floor against `spec` (a normalised, valid spec), passed or not."""
        d = len(feature_names(spec))
        floor = self.joined_floor(d)
        penalty = relative_penalty(spec)
        kind = KIND_NAMES.get(spec.model.kind, str(spec.model.kind))
        asked = requested_reveals(spec)
        beyond = [r for r in asked if r not in self.reveals]
        return [
            Check("minimum intersection", f">= {floor}", str(spec.min_intersection), spec.min_intersection >= floor),
            Check("features", f"<= {self.max_features}", str(d), d <= self.max_features),
            Check(
                "relative penalty",
                f">= {self.min_relative_penalty:g}",
                f"{penalty:.3g}",
                penalty >= self.min_relative_penalty,
            ),
            Check("model kind", " | ".join(self.model_kinds), kind, kind in self.model_kinds),
            Check("optional reveals", " | ".join(self.reveals) or "none", ", ".join(asked) or "none", not beyond),
            Check(
                "runs", f"<= {self.max_runs}", str(spec.run_policy.max_runs), spec.run_policy.max_runs <= self.max_runs
            ),
        ]

    def refusals(self, spec: common_pb2.StudySpec) -> list[Check]:
        """The floors `spec` does not meet (empty: this organisation may approve it)."""
        return [c for c in self.checks(spec) if not c.ok]


def explain(refused: Sequence[Check]) -> str:
    """One line naming every unmet floor, e.g. for a FAILED_PRECONDITION message."""
    return "; ".join(f"{c.name} {c.actual} (local policy: {c.required})" for c in refused)


def relative_penalty(spec: common_pb2.StudySpec) -> float:
    """The smallest penalty of the spec in range-normalised units (module docstring)."""
    model = spec.model
    rho = {common_pb2.MODEL_KIND_LASSO: 1.0, common_pb2.MODEL_KIND_RIDGE: 0.0}.get(model.kind, model.l1_ratio)
    halves = [(c.max - c.min) / 2 for o in spec.owners for c in o.features]
    target = owner_columns(spec, target_owner(spec)).target
    h_y = (target.max - target.min) / 2
    smallest = math.inf
    for alpha in model.alphas:
        for h in halves:
            if model.standardize:
                penalty = alpha * rho / h_y + alpha * (1 - rho)
            else:
                penalty = alpha * rho / (h_y * h) + alpha * (1 - rho) / h**2
            smallest = min(smallest, penalty)
    return smallest


def requested_reveals(spec: common_pb2.StudySpec) -> list[str]:
    """The optional outputs the spec asks for, by their policy names."""
    asked = []
    if spec.reveal.joined_count:
        asked.append("joined_count")
    if spec.reveal.cv_curve and spec.model.cv_folds > 1:
        asked.append("cv_curve")
    if spec.reveal.standardized_coefficients:
        asked.append("standardized_coefficients")
    if spec.reveal.metrics:
        asked.append("metrics")
    return asked


def disclosures(spec: common_pb2.StudySpec) -> dict[str, list[str]]:
    """What each party receives or learns when the study runs (the approval screen lists it)."""
    names = ", ".join(feature_names(spec))
    model = [f"the coefficients of {names} on the original scale, and the intercept"]
    if spec.reveal.standardized_coefficients:
        model.append(
            "the coefficients on the standardised scale (with the original-scale ones they give "
            "each selected feature's spread over the join, the other owner's features included)"
        )
    if spec.model.cv_folds > 1:
        model.append("the alpha cross-validation chose")
        if spec.reveal.cv_curve:
            model.append(
                "the cross-validation curve (mean validation loss per alpha: squared error, log-loss, "
                "squared hinge or Poisson deviance, as the model)"
            )
    if spec.reveal.metrics:
        metrics = ", ".join(common_pb2.Metric.Name(m).removeprefix("METRIC_").lower() for m in spec.reveal.metrics)
        estimates = spec.model.cv_folds > 1 and spec.model.kind in GLM_KINDS  # the GLM CVs reveal both
        model.append(
            f"the model's quality on the join: {metrics}"
            + (", and each one's K-fold estimate at the chosen alpha" if estimates else "")
        )
    if spec.model.kind in GLM_KINDS:  # the fit stops once a Newton step is small (one bit per step from the 4th)
        iterations = "how many Newton steps the fit used (it stops once a step is small; at most the spec's maximum)"
    else:
        iterations = "how many solver iterations the fits used (the checkpoint where the convergence certificate held)"
    model += [
        "the joined count (the protocol shows it to both owners), or only that it was below the minimum",
        "per run, whether the other owner's input changed since its previous run (a hiding commitment)",
        "the other parties' progress as fractions, and the run's timing",
        iterations,
    ]
    helper = [
        "both owners' row counts, the joined count and which per-run pseudonymous tags matched",
        "the owners' input commitments (not the inputs)",
        iterations,
        "nothing of the model",
    ]
    first, second = owner_orgs(spec)
    return {first: list(model), second: list(model), helper_org(spec): helper}


def local_policy(config: OrgConfig) -> DisclosurePolicy:
    """This organisation's policy, from its configuration."""
    return policy_from_mapping(config.policy)


def policy_from_mapping(table: Mapping[str, object]) -> DisclosurePolicy:
    """A policy from a config table; PolicyError names the first bad key."""
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise PolicyError(f"policy: unknown key(s) {unknown}; known: {list(KEYS)}")
    values: dict[str, object] = {}
    for key in ("min_intersection", "rows_per_parameter", "max_features", "max_runs"):
        if key in table:
            values[key] = _count(table[key], key)
    if "min_relative_penalty" in table:
        penalty = table["min_relative_penalty"]
        if (
            isinstance(penalty, bool)
            or not isinstance(penalty, (int, float))
            or not (math.isfinite(penalty) and penalty >= 0)
        ):
            raise PolicyError("policy.min_relative_penalty must be a number >= 0")
        values["min_relative_penalty"] = float(penalty)
    if "model_kinds" in table:
        values["model_kinds"] = _names(table["model_kinds"], "model_kinds", tuple(KIND_NAMES.values()))
    if "reveals" in table:
        values["reveals"] = _names(table["reveals"], "reveals", OPTIONAL_REVEALS)
    return DisclosurePolicy(**values)  # type: ignore[arg-type]


def _count(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(f"policy.{key} must be an integer >= 1")
    return value


def _names(value: object, key: str, known: tuple[str, ...]) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"policy.{key} must be a list of names")
    bad = [v for v in value if v not in known]
    if bad:
        raise PolicyError(f"policy.{key}: unknown name(s) {bad}; known: {list(known)}")
    return tuple(value)
