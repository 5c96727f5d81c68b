"""FITS image sections.

Instrument files give sections in the FITS/IRAF convention ``"[x1:x2,y1:y2]"``:
1-based, both ends inclusive, x along NAXIS1 (columns). imred's arrays are
``(ny, nx)``, so a section becomes ``(slice(y1 - 1, y2), slice(x1 - 1, x2))``.
"""

from __future__ import annotations

import re

from .errors import ImredError

_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")


def parse_section(text: str, binning: tuple[int, int] = (1, 1)) -> tuple[slice, slice]:
    """Turn ``"[x1:x2,y1:y2]"`` into numpy slices ``(rows, columns)``.

    ``binning`` (bx, by) divides a section given in unbinned pixels; the
    result covers every binned pixel that overlaps it.

    >>> parse_section("[1:1024,11:20]")
    (slice(10, 20, None), slice(0, 1024, None))
    """
    match = _SECTION.match(str(text).strip())
    if not match:
        raise ImredError(
            f"section {text!r} is not of the form '[x1:x2,y1:y2]' (1-based, inclusive)"
        )
    x1, x2, y1, y2 = (int(v) for v in match.groups())
    if x1 < 1 or y1 < 1 or x2 < x1 or y2 < y1:
        raise ImredError(f"section {text!r} is empty or starts below 1 (sections are 1-based)")
    bx, by = binning
    return slice((y1 - 1) // by, -(-y2 // by)), slice((x1 - 1) // bx, -(-x2 // bx))


def format_section(rows: slice, cols: slice) -> str:
    """The inverse of :func:`parse_section` (binning 1)."""
    return f"[{cols.start + 1}:{cols.stop},{rows.start + 1}:{rows.stop}]"


def section_shape(text: str, binning: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """``(ny, nx)`` of a section."""
    rows, cols = parse_section(text, binning)
    return rows.stop - rows.start, cols.stop - cols.start
