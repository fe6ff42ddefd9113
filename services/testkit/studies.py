"""Study specs for synthetic data (demo, benchmarks, tests)."""

from __future__ import annotations

from collections.abc import Sequence

from riskmesh.v1 import common_pb2
from services.study.policy import DisclosurePolicy
from services.study.spec import DEFAULT_PAILLIER_BITS
from services.testkit.synthetic import StudyData


def spec_for(
    data: StudyData,
    study_id: str,
    alphas: list[float] | None = None,
    kind: int = common_pb2.MODEL_KIND_LASSO,
    cv_folds: int = 0,
    standardize: bool = False,
    min_intersection: int | None = None,
    iterations: int = 0,
    l1_ratio: float = 0.0,
    title: str = "Risk factors of hospitalisation",
    run_policy: common_pb2.RunPolicy | None = None,
    reveal_standardized: bool = False,
    metrics: Sequence[int] = (),
    balanced_class_weights: bool = False,
    svm_loss: int = common_pb2.SVM_LOSS_UNSPECIFIED,
    paillier_bits: int = DEFAULT_PAILLIER_BITS,
) -> common_pb2.StudySpec:
    """A spec over the data's columns; `min_intersection` defaults to the default local floor,
    max(100, 10·(d + 1)), so that organisations with the default policy approve it."""
    owners = []
    for table in (data.insurer, data.hospital):
        owner = common_pb2.OwnerColumns(
            org=table.org, birth_date_column="birth_date", postal_code_column="postal_code", features=table.columns
        )
        if table.target is not None:
            owner.target.CopyFrom(table.target)
        owners.append(owner)
    features = len(data.insurer.columns) + len(data.hospital.columns)
    return common_pb2.StudySpec(
        study_id=study_id,
        title=title,
        parties=[
            common_pb2.Party(org="insurer", role=common_pb2.ROLE_DATA_OWNER),
            common_pb2.Party(org="hospital", role=common_pb2.ROLE_DATA_OWNER),
            common_pb2.Party(org="helper", role=common_pb2.ROLE_HELPER),
        ],
        owners=owners,
        model=common_pb2.ModelSpec(
            kind=kind,
            alphas=alphas or [0.1],
            cv_folds=cv_folds,
            standardize=standardize,
            iterations=iterations,
            l1_ratio=l1_ratio,
            balanced_class_weights=balanced_class_weights,
            svm_loss=svm_loss,
        ),
        min_intersection=DisclosurePolicy().joined_floor(features) if min_intersection is None else min_intersection,
        reveal=common_pb2.RevealSpec(
            joined_count=True,
            cv_curve=cv_folds > 1,
            standardized_coefficients=reveal_standardized,
            metrics=list(metrics),
        ),
        paillier_bits=paillier_bits,
        run_policy=run_policy,
    )
