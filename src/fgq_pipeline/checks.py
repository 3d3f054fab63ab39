"""The type checks every setting shares. Python counts ``True`` as the integer 1, so a bool must be
refused explicitly wherever a count or a number is expected; numpy's scalars (read from files) pass."""

from __future__ import annotations

import numbers


def is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_int(what: str, value: object, minimum: int = 1, hint: str = "") -> None:
    """Raise a ValueError naming ``what`` and ``value`` unless it is an integer >= ``minimum``."""
    if is_int(value) and value >= minimum:
        return
    expected = {1: "a positive integer", 0: "0 or a positive integer"}.get(minimum, f"an integer >= {minimum}")
    raise ValueError(f"{what} must be {expected}, got {value!r}" + (f"; {hint}" if hint else ""))
