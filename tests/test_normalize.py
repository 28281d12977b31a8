import datetime as dt
import uuid
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer import normalize
from syncer.normalize import Invalid


@pytest.mark.parametrize("raw, expected", [
    ("010-1234-5678", "01012345678"),
    ("+82 10-1234-5678", "01012345678"),
    ("+82 010-1234-5678", "01012345678"),
    ("+821012345678", "01012345678"),
    ("821012345678", "01012345678"),
    ("010 1234 5678", "01012345678"),
    ("(010) 1234.5678", "01012345678"),
    ("  01012345678 ", "01012345678"),
    ("011-123-4567", "0111234567"),
    ("02-123-4567", "021234567"),
    ("031-1234-5678", "03112345678"),
    ("1588-1234", "15881234"),
    ("０１０-１２３４-５６７８", "01012345678"),  # full-width digits
])
def test_phone_numbers_become_domestic_digits(raw: str, expected: str) -> None:
    assert normalize.phone_number(raw) == expected


@pytest.mark.parametrize("raw", [
    "", "   ", "010-12", "call me", "010-1234-567a", "+1 415 555 0100", "12345", True, 3.5, None,
    "010-1234-5678-9999-1",
])
def test_phone_numbers_that_cannot_be_normalised(raw: object) -> None:
    with pytest.raises(Invalid) as info:
        normalize.phone_number(raw)
    # the reason never repeats the value
    assert "1234" not in str(info.value)


@given(st.from_regex(r"01[016789][0-9]{7,8}", fullmatch=True), st.sampled_from(["", "-", " ", "."]),
       st.booleans())
def test_phone_formats_of_one_number_agree(digits: str, sep: str, international: bool) -> None:
    body = digits[:3] + sep + digits[3:-4] + sep + digits[-4:]
    text = ("+82 " + body[1:]) if international else body
    assert normalize.phone_number(text) == digits


@pytest.mark.parametrize("raw, expected", [
    (True, True), (False, False), (1, True), (0, False), ("Y", True), ("n", False),
    ("true", True), ("FALSE", False), (" yes ", True), ("0", False), (Decimal(1), True),
    (b"\x01", True), (b"\x00", False),
])
def test_consents_become_booleans(raw: object, expected: bool) -> None:
    assert normalize.consent(raw) is expected


@pytest.mark.parametrize("raw", [2, -1, "maybe", "", 0.5, None, [], b"\x02"])
def test_consents_that_are_not_booleans(raw: object) -> None:
    with pytest.raises(Invalid):
        normalize.consent(raw)


@pytest.mark.parametrize("raw, expected", [
    (42, "42"), (" 42 ", "42"), ("abc", "abc"), (Decimal("7"), "7"),
    (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"), (b"x1", "x1"),
])
def test_user_ids_are_trimmed_strings(raw: object, expected: str) -> None:
    assert normalize.user_id(raw) == expected


@pytest.mark.parametrize("raw", [None, "", "   ", True, 1.5, b"\xff\xfe"])
def test_invalid_user_ids(raw: object) -> None:
    with pytest.raises(Invalid):
        normalize.user_id(raw)


def test_email_addresses() -> None:
    assert normalize.email_address(" Kim@Example.COM ") == "Kim@example.com"
    for bad in ["", "no-at-sign", "a@b", "a b@c.com", "@c.com", 5]:
        with pytest.raises(Invalid):
            normalize.email_address(bad)


@pytest.mark.parametrize("raw, expected", [
    ("text", "text"), (3, 3), (2.5, 2.5), (True, True), (Decimal("12.50"), 12.5),
    (Decimal("12.00"), 12), (dt.date(2026, 1, 2), "2026-01-02"),
    (dt.datetime(2026, 1, 2, 3, 4, 5, 123456), "2026-01-02T03:04:05.123456"),
    (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "2026-01-02T03:04:05+00:00"),
    (uuid.UUID(int=2), "00000000-0000-0000-0000-000000000002"),
])
def test_custom_properties_are_json_scalars(raw: object, expected: object) -> None:
    out = normalize.custom(raw)
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize("raw", [float("nan"), float("inf"), Decimal("NaN"), b"bytes", {"a": 1},
                                 [1], dt.timedelta(1)])
def test_custom_properties_that_cannot_be_sent(raw: object) -> None:
    with pytest.raises(Invalid):
        normalize.custom(raw)


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.text(), st.datetimes()))
def test_soft_delete_flag_is_total(raw: object) -> None:
    assert normalize.is_deleted_flag(raw) in (True, False)


@pytest.mark.parametrize("raw, deleted", [
    (None, False), (False, False), (0, False), ("", False), ("0", False), ("false", False),
    (True, True), (1, True), ("2026-01-01", True), (dt.datetime(2026, 1, 1), True),
    ("Y", True), ("deleted", True), ("active", False), ("pending", False), ("N", False),
])
def test_soft_delete_flag(raw: object, deleted: bool) -> None:
    assert normalize.is_deleted_flag(raw) is deleted
