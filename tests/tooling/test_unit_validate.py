"""ipsec_nflog.validate: the integer and group checks shared by the capture config and the rule
helpers. Each refusal names the value and what was expected, in one line."""

from __future__ import annotations

import pytest

from ipsec_nflog.validate import check_int, validate_group


@pytest.mark.parametrize("value", [0, 1, 65535])
def test_group_numbers_of_the_kernel_range_pass_unchanged(value: int) -> None:
    assert validate_group(value) == value


@pytest.mark.parametrize("value,message", [
    (-1, "NFLOG group must be in 0..65535, got -1"),
    (65536, "NFLOG group must be in 0..65535, got 65536"),
    (True, "NFLOG group must be an integer, not True"),
    ("5", "NFLOG group must be an integer, not '5'"),
    (5.0, "NFLOG group must be an integer, not 5.0"),
    (None, "NFLOG group must be an integer, not None"),
])
def test_bad_groups_are_refused_with_one_line(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        validate_group(value)
    assert str(info.value) == message


@pytest.mark.parametrize("value", [10, 11, 20])
def test_check_int_accepts_both_ends(value: int) -> None:
    assert check_int("snaplen", value, 10, 20) == value


@pytest.mark.parametrize("value,message", [
    (9, "snaplen must be in 10..20, got 9"),
    (21, "snaplen must be in 10..20, got 21"),
    (False, "snaplen must be an integer, not False"),
    (b"12", "snaplen must be an integer, not b'12'"),
    ("1\x1b[2J", "snaplen must be an integer, not '1\\x1b[2J'"),  # repr: never raw escapes
])
def test_check_int_names_the_setting_and_the_value(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_int("snaplen", value, 10, 20)
    assert str(info.value) == message


def test_an_int_subclass_that_is_not_bool_passes_as_it_is() -> None:
    class Port(int):
        pass

    port = Port(500)
    assert check_int("port", port, 1, 65535) is port
