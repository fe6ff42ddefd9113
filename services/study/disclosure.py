"""What a study reveals to whom: the text an approver reads before approving a digest.

Pure: derived from the StudySpec alone (README, "What each party learns").
"""

from __future__ import annotations

from riskmesh.v1 import common_pb2

LEAKAGE_NOTICE = (
    "By approving you allow what the table above lists, at every run the run policy allows. Two runs on inputs "
    "that differ by one patient reveal that patient's membership through the intersection size: every run "
    "commits to each owner's input (in every party's audit log), and a run whose input changed waits for the "
    "other owner's approval (riskmesh study approve-run). "
    "All three organisations, the helper included, learn how many solver iterations the fits needed "
    "(the public checkpoint at which the convergence certificate held — 10, 25, 40, … up to the study's "
    "maximum — for the cross-validation batch and for the final fit): one bit per checkpoint, a hint of how "
    "well-conditioned the joined data are. For logistic regression and the SVM they learn the number of Newton "
    "steps used (the fit stops once a step is small: one bit per step from the fourth)."
)


def column_owners(spec: common_pb2.StudySpec) -> dict[str, str]:
    """Feature or target name → the owner organisation whose CSV has it."""
    out: dict[str, str] = {}
    for owner in spec.owners:
        for column in owner.features:
            out[column.name] = owner.org
        if owner.target.name:
            out[owner.target.name] = owner.org
    return out


def model_summary(spec: common_pb2.StudySpec) -> str:
    """One line: the model kind, alpha(s), folds, standardisation, iterations."""
    model = spec.model
    kind = common_pb2.ModelKind.Name(model.kind).removeprefix("MODEL_KIND_").replace("_", " ").lower()
    alphas = ", ".join(f"{a:g}" for a in model.alphas) or "—"
    parts = [kind, f"alpha {alphas}"]
    if model.kind in (common_pb2.MODEL_KIND_ELASTIC_NET, common_pb2.MODEL_KIND_LOGISTIC, common_pb2.MODEL_KIND_POISSON):
        parts.append(f"l1 ratio {model.l1_ratio:g}")
    if model.balanced_class_weights:
        parts.append("balanced class weights")
    if model.cv_folds > 1:
        parts.append(f"{model.cv_folds}-fold cross-validation")
    parts.append("standardised features" if model.standardize else "features as given")
    if model.iterations:
        parts.append(f"{model.iterations} iterations")
    return "; ".join(parts)
