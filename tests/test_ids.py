"""The check-character algorithms, against published examples and as properties."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from datasets.ids import (
    CREDIT_CHARSET,
    credit_check_char,
    is_valid_credit_code,
    is_valid_resident_id,
    org_code_check_char,
    resident_birth_date,
    resident_check_char,
    resident_gender,
)


def test_published_resident_id_example() -> None:
    # The example printed in GB 11643-1999 itself.
    assert is_valid_resident_id("11010519491231002X")
    assert resident_birth_date("11010519491231002X") == dt.date(1949, 12, 31)
    assert resident_gender("11010519491231002X") == "F"


def test_published_credit_code_example() -> None:
    assert is_valid_credit_code("91350100M000100Y43")
    assert org_code_check_char("M000100Y") == "4"


def test_rejects_impossible_birth_date_and_bad_check() -> None:
    body = "44190019900230123"  # 30 February
    assert not is_valid_resident_id(body + resident_check_char(body))
    assert not is_valid_resident_id("11010519491231002Y")
    assert not is_valid_resident_id("1101051949123100X2")


def test_rejects_letters_outside_the_credit_charset() -> None:
    for letter in "IOSVZ":
        assert letter not in CREDIT_CHARSET
        assert not is_valid_credit_code("91350100M000100Y4" + letter)


digits17 = st.text(alphabet="0123456789", min_size=17, max_size=17)


@given(digits17, st.integers(0, 16), st.integers(1, 9))
def test_resident_check_detects_any_single_digit_change(body: str, position: int, delta: int) -> None:
    changed = body[:position] + str((int(body[position]) + delta) % 10) + body[position + 1 :]
    assert resident_check_char(changed) != resident_check_char(body)


@given(st.text(alphabet=CREDIT_CHARSET, min_size=17, max_size=17), st.integers(0, 16), st.integers(1, 30))
def test_credit_check_detects_any_single_character_change(body: str, position: int, delta: int) -> None:
    value = CREDIT_CHARSET.index(body[position])
    changed = body[:position] + CREDIT_CHARSET[(value + delta) % 31] + body[position + 1 :]
    assert credit_check_char(changed) != credit_check_char(body)
