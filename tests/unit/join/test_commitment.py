"""Input commitments (services/join/core/commitment.py): equal inputs commit equally however
the file spells them; any change to the rows changes the commitment; the key hides the rows."""

from __future__ import annotations

import pytest

from services.join.core.columns import ColumnSpec
from services.join.core.commitment import input_commitment
from services.join.core.csvinput import parse_owner_csv
from services.join.core.errors import SpecError

KEY = bytes(range(32))
COLUMNS = (ColumnSpec("bmi", 10, 70), ColumnSpec("smoker", 0, 1))
BASE = (
    "birth_date,postal_code,bmi,smoker\n1960-02-01,1234AB,23.5,0\n1971-11-30,9876ZX,31,1\n1985-06-15,5555CC,19.25,0\n"
)


def commit(text: str, key: bytes = KEY) -> str:
    return input_commitment(
        parse_owner_csv(text, birth_date_column="birth_date", postal_code_column="postal_code", columns=COLUMNS), key
    )


def test_the_same_rows_commit_equally_whatever_the_order_and_spelling():
    respelled = (
        "birth_date;postal_code;bmi;smoker\n15-06-1985;5555 cc;19,25;0\n01/02/1960;1234ab;23,50;0\n"
        "30-11-1971;9876 ZX;3.1e1;1\n"
    )
    assert commit(respelled) == commit(BASE)
    assert len(commit(BASE)) == 64


@pytest.mark.parametrize(
    "changed",
    [
        BASE.rsplit("\n", 2)[0] + "\n",  # one patient removed
        BASE + "1990-01-01,1111AA,25,1\n",  # one patient added
        BASE.replace("23.5", "23.6"),  # one value changed
        BASE.replace("1960-02-01", "1960-02-02"),  # one ID changed
    ],
)
def test_any_change_to_the_rows_changes_the_commitment(changed):
    assert commit(changed) != commit(BASE)


def test_the_commitment_depends_on_the_owners_secret():
    assert commit(BASE, bytes(32)) != commit(BASE)
    with pytest.raises(SpecError):
        commit(BASE, b"short")
