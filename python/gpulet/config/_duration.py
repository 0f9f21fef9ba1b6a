"""Go's ``time.Duration`` text form, which NVIDIA's config uses (``sleepInterval: 60s``)."""

from __future__ import annotations

import re
from datetime import timedelta
from fractions import Fraction

__all__ = ["format_go_duration", "parse_go_duration"]

_NS_PER_UNIT = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5 MICRO SIGN
    "μs": 1_000,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_MAX_NS = 2**63 - 1
#: No duration needs more characters ("2562047h47m16.854775807s" is Go's longest).
_MAX_TEXT = 100
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> timedelta:
    """Parse ``"1h30m"``, ``"1.5s"``, ``"300ms"`` or ``"0"`` as Go's ``time.ParseDuration`` does.

    Raises ValueError for anything else. Precision below a microsecond is rounded away.
    """
    if len(text) > _MAX_TEXT:
        raise ValueError(f"invalid duration: {len(text)} characters is too long for one")
    s = text.strip()
    sign = 1
    if s and s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return timedelta(0)
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = Fraction(0)
    pos = 0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += Fraction(m.group(1)) * _NS_PER_UNIT[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(
            f"invalid duration {text!r}: use a number and a unit (ns, us, ms, s, m, h), "
            "e.g. 60s or 1m30s"
        )
    if total > _MAX_NS:
        # Go's time.Duration is an int64 of nanoseconds; ParseDuration refuses more.
        raise ValueError(f"invalid duration {text!r}: longer than Go's limit of about 2562047h")
    return timedelta(microseconds=round(sign * total / 1000))


def _trim(value: Fraction) -> str:
    text = f"{float(value):.9f}".rstrip("0").rstrip(".")
    return text or "0"


def format_go_duration(value: timedelta) -> str:
    """Write a duration as Go's ``time.Duration.String`` does: ``1m0s``, ``1.5s``, ``300ms``."""
    ns = (value // timedelta(microseconds=1)) * 1000
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_trim(Fraction(ns, 1_000))}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_trim(Fraction(ns, 1_000_000))}ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    out = sign
    if hours:
        out += f"{hours}h"
    if hours or minutes:
        out += f"{minutes}m"
    return out + f"{_trim(Fraction(rest, 1_000_000_000))}s"
