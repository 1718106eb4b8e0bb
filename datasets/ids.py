"""Check characters of the two unified identifiers that link records across departments.

GB 11643-1999 (resident identity number) ends in an ISO 7064 MOD 11-2 check character;
GB 32100-2015 (unified social credit code) ends in a MOD 31 check character over a
31-character set, and its positions 9-17 are a GB 11714 organisation code with a check
character of its own.

>>> resident_check_char("44190019900101123")
'1'
>>> is_valid_resident_id("11010519491231002X")
True
>>> is_valid_credit_code("91350100M000100Y43")
True
"""

from __future__ import annotations

import datetime as dt

RESIDENT_WEIGHTS = tuple(pow(2, 17 - i, 11) for i in range(17))
_RESIDENT_CHECK = "10X98765432"

CREDIT_CHARSET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_VALUE = {c: i for i, c in enumerate(CREDIT_CHARSET)}
CREDIT_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))

ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)


def resident_check_char(body: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits of an ID number."""
    if len(body) != 17 or not body.isdigit():
        raise ValueError(f"a resident ID body is 17 digits, got {body!r}")
    total = sum(int(d) * w for d, w in zip(body, RESIDENT_WEIGHTS, strict=True))
    return _RESIDENT_CHECK[total % 11]


def is_valid_resident_id(value: str) -> bool:
    """True when ``value`` is 18 characters, its birth date exists and its check character holds."""
    if len(value) != 18 or not value[:17].isdigit():
        return False
    try:
        resident_birth_date(value)
    except ValueError:
        return False
    return resident_check_char(value[:17]) == value[17]


def resident_birth_date(value: str) -> dt.date:
    """The birth date encoded in positions 7-14."""
    return dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))


def resident_gender(value: str) -> str:
    """'M' or 'F': the sequence number's last digit (position 17) is odd for men."""
    return "M" if int(value[16]) % 2 else "F"


def org_code_check_char(body: str) -> str:
    """GB 11714 check character for an 8-character organisation code body."""
    total = sum(_alnum_value(c) * w for c, w in zip(body, ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def credit_check_char(body: str) -> str:
    """GB 32100 check character for the first 17 characters of a credit code."""
    if len(body) != 17 or any(c not in _CREDIT_VALUE for c in body):
        raise ValueError(f"a credit code body is 17 characters of {CREDIT_CHARSET}, got {body!r}")
    total = sum(_CREDIT_VALUE[c] * w for c, w in zip(body, CREDIT_WEIGHTS, strict=True))
    return CREDIT_CHARSET[(31 - total % 31) % 31]


def is_valid_credit_code(value: str) -> bool:
    """True when ``value`` uses the 31-character set and both check characters hold."""
    if len(value) != 18 or any(c not in _CREDIT_VALUE for c in value):
        return False
    org = value[8:17]
    if org_code_check_char(org[:8]) != org[8]:
        return False
    return credit_check_char(value[:17]) == value[17]


def _alnum_value(c: str) -> int:
    return int(c) if c.isdigit() else ord(c) - ord("A") + 10
