"""Write normalised header values the way an instrument file says they are read.

The inverse of :meth:`imred.instrument.Instrument.normalise`: for each normalised
value (``imagetype``, ``band``, ``exptime``, ``dateobs``, ``ra`` ...) the header
spec of the instrument file names the keyword (the first one of a list is written),
an optional value map (the raw value written is the first one, in the file's order,
that maps to the wanted value) and a format (``isot``,
``sexagesimal_hours``, ``date_time`` with its ``time_keyword``, ``binning`` ...).
``scale`` and ``divide_by`` are undone. Values the instrument file does not read
are not written.
"""

from __future__ import annotations

from typing import Any

from astropy import units as u
from astropy.coordinates import Angle
from astropy.time import Time

from ..errors import ImredError

# Values that differ per chip go to the chip's extension header; the rest to the primary.
CHIP_KEYS = ("gain", "read_noise", "saturation")


def _unmap(value: Any, mapping: dict, key: str, source: str) -> Any:
    """The first raw value (in the file's order) that the map translates to ``value``."""
    want = str(value).strip().lower()
    for raw, mapped in mapping.items():
        if raw != "*" and mapped is not None and str(mapped).strip().lower() == want:
            return raw
    if mapping.get("*") == "*":
        return value
    raise ImredError(
        f"{source}: header.{key}.map has no raw value that maps to {value!r}; add one "
        f"(for example '{value}: {value}') to simulate {key} = {value}"
    )


def _number(value: float, digits: int = 6) -> float:
    return float(round(float(value), digits))


def _encode(value: Any, fmt: str, key: str, source: str) -> Any:
    """The raw header value that ``_parse(raw, fmt)`` reads back as ``value``."""
    if fmt == "string":
        return str(value)
    if fmt in ("float", "degrees"):
        return _number(value, 8)
    if fmt == "int":
        return round(float(value))
    if fmt == "bool":
        return bool(value)
    if fmt == "hours":
        return _number(float(value) / 15.0, 9)
    if fmt == "sexagesimal_hours":
        return Angle(float(value), unit=u.deg).to_string(
            unit=u.hourangle, sep=":", precision=3, pad=True
        )
    if fmt == "sexagesimal_degrees":
        return Angle(float(value), unit=u.deg).to_string(
            unit=u.deg, sep=":", precision=2, pad=True, alwayssign=True
        )
    if fmt == "isot":
        return Time(value, scale="utc").isot
    if fmt == "mjd":
        return _number(Time(value, scale="utc").mjd, 8)
    if fmt == "jd":
        return _number(Time(value, scale="utc").jd, 8)
    if fmt == "binning":
        bx, by = str(value).lower().split("x")
        return f"{int(bx)} {int(by)}"
    raise ImredError(f"{source}: cannot write header.{key} in format {fmt!r}")


def encode_value(key: str, spec: dict, value: Any, source: str) -> list[tuple[str, Any]]:
    """``(keyword, raw value)`` pairs that make ``spec`` read ``value``.

    Parameters
    ----------
    key : str
        The normalised name (``exptime``, ``ra`` ...), for messages.
    spec : dict
        The instrument file's ``header.<key>`` block.
    value : object
        The normalised value (degrees for ra/dec, ISO UTC for dateobs, ``"1x1"`` for
        binning).
    source : str
        The instrument file, for messages.
    """
    if value is None:
        return []
    if "keywords" in spec:
        if spec.get("combine", "first_not_empty") == "binning":
            parts = str(value).lower().split("x")
            return [(kw, int(p)) for kw, p in zip(spec["keywords"], parts, strict=False)]
        raw = _unmap(value, spec["map"], key, source) if "map" in spec else value
        return [(spec["keywords"][0], raw)]
    keyword = spec.get("keyword")
    if keyword is None:
        if "divide_by" in spec and isinstance(value, (int, float)):
            return [(spec["divide_by"], 1.0)]  # the instrument file's own value, divided by 1
        return []  # a fixed value: nothing to write
    keyword = keyword if isinstance(keyword, str) else keyword[0]
    if "map" in spec:
        return [(keyword, _unmap(value, spec["map"], key, source))]
    fmt = spec.get("format", "float" if key in _NUMERIC else "string")
    cards: list[tuple[str, Any]] = []
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "scale" in spec:
            value = value / spec["scale"]
        if "divide_by" in spec:
            cards.append((spec["divide_by"], 1.0))
    if fmt == "date_time":
        iso = Time(value, scale="utc").isot
        date, time = iso.split("T")
        if not spec.get("time_keyword"):
            raise ImredError(f"{source}: header.{key} has format date_time but no time_keyword")
        return [(keyword, date), (spec["time_keyword"], time)]
    cards.insert(0, (keyword, _encode(value, fmt, key, source)))
    return cards


_NUMERIC = {"exptime", "airmass", "gain", "read_noise", "temperature", "rotator", "saturation"}


def header_cards(
    header_spec: dict, values: dict, source: str
) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """Cards for the primary header and for a chip's extension header.

    Parameters
    ----------
    header_spec : dict
        The instrument file's ``header`` block.
    values : dict
        Normalised values to write (keys as in :mod:`imred.instrument`).
    source : str
        The instrument file, for messages.

    Returns
    -------
    primary, chip : list of (keyword, value)
    """
    primary: list[tuple[str, Any]] = []
    chip: list[tuple[str, Any]] = []
    for key, value in values.items():
        spec = header_spec.get(key)
        if spec is None:
            continue
        target = chip if key in CHIP_KEYS else primary
        target.extend(encode_value(key, spec, value, source))
    return primary, chip
