"""A valid study spec to start from; tests change one thing at a time."""

from __future__ import annotations

from riskmesh.v1 import common_pb2


def make_spec(study_id: str = "diabetes-risk-2025") -> common_pb2.StudySpec:
    """Insurer (target + care use) and hospital (lifestyle), helper last."""
    return common_pb2.StudySpec(
        study_id=study_id,
        title="Risk factors of hospitalisation",
        parties=[
            common_pb2.Party(org="insurer", role=common_pb2.ROLE_DATA_OWNER),
            common_pb2.Party(org="hospital", role=common_pb2.ROLE_DATA_OWNER),
            common_pb2.Party(org="helper", role=common_pb2.ROLE_HELPER),
        ],
        owners=[
            common_pb2.OwnerColumns(
                org="insurer",
                birth_date_column="birth_date",
                postal_code_column="postal_code",
                features=[
                    common_pb2.ColumnSpec(name="gp_visits", min=0, max=100),
                    common_pb2.ColumnSpec(name="prescriptions", min=0, max=200),
                ],
                target=common_pb2.ColumnSpec(name="hospital_days", min=0, max=365),
            ),
            common_pb2.OwnerColumns(
                org="hospital",
                birth_date_column="dob",
                postal_code_column="zip",
                features=[
                    common_pb2.ColumnSpec(name="exercise_hours", min=0, max=40),
                    common_pb2.ColumnSpec(name="smoker", min=0, max=1),
                    common_pb2.ColumnSpec(name="bmi", min=10, max=70),
                ],
            ),
        ],
        model=common_pb2.ModelSpec(kind=common_pb2.MODEL_KIND_LASSO, alphas=[0.1]),
        min_intersection=10,
        reveal=common_pb2.RevealSpec(joined_count=True),
    )
