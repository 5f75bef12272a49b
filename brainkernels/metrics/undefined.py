"""A metric that cannot be computed (a correlation from two babies, an AUROC without positives):
NaN wherever it is used in arithmetic, and the reason in words wherever it is printed or written
(tables, CSV, reports), so no report shows a bare "nan"."""

from __future__ import annotations

import re

# fill, alignment and width of a format spec; the rest (precision, type) only applies to numbers
_ALIGNMENT = re.compile(r"^(?P<align>.?[<>=^])?[+\- ]?z?#?0?(?P<width>\d*)")


class Undefined(float):
    def __new__(cls, reason: str) -> Undefined:
        value = super().__new__(cls, "nan")
        value.reason = reason
        return value

    def __repr__(self) -> str:
        return self.reason

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        match = _ALIGNMENT.match(spec)
        align = (match.group("align") or "").replace("=", ">")
        return format(self.reason, align + match.group("width"))

    def __reduce__(self):
        return Undefined, (self.reason,)
