"""Small text helpers every report uses: the last line of a log, the first line of an error, a number."""
from __future__ import annotations

import math
import numbers


def last_line(text: str) -> str:
    """The last non-blank line of `text`, stripped ("no message" when there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), at most `limit` characters."""
    return (str(exc).splitlines() or [type(exc).__name__])[0][:limit]


def number(value, spec: str = ".3f") -> str:
    """`value` formatted with `spec`; "-" for None and NaN (a cell with nothing to show)."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return "-"
    return format(value, spec)
