"""Instruments as data: load an instrument file and normalise raw headers through it.

An instrument file (``config/instruments/NAME.yaml``, schema
``config/schemas/instrument.schema.yaml``) says how one camera writes its files. This
module turns any raw header of that camera into the same normalised values:

==============  =====================================================================
key             meaning
==============  =====================================================================
imagetype       bias, dark, flat, twilight-flat, sky-flat, science, standard, focus,
                test, other
band            filter/band name (path-safe: letters, digits, ``_``, ``-``, ``.``)
exptime         seconds
dateobs         start of the exposure, ISO 8601 UTC (``astropy.time.Time``-readable)
mjd             the same as MJD (UTC)
target          object name as written (stripped)
ra, dec         telescope pointing in the instrument's own convention (degrees);
                :func:`pointing_to_icrs` converts them to ICRS
airmass         as written
binning         ``"BXxBY"`` (e.g. ``"2x2"``)
readout_mode    free text
gain            e-/ADU (header if the instrument file names a keyword, else the chip's)
read_noise      e-
temperature     detector temperature, deg C
rotator         rotator angle, deg
saturation      ADU
==============  =====================================================================

Values that cannot be read are ``None``; problems (a required keyword missing, a
value that is not in the instrument's value map) are returned as messages, not
raised, so an observation log can list every bad frame and still be written.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.coordinates import FK5, ICRS, TETE, Angle, EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time

from .errors import ImredError
from .schema import fill_defaults, read_yaml, validate

INSTRUMENT_DIR = Path(__file__).resolve().parents[2] / "config" / "instruments"

IMAGE_TYPES = (
    "bias",
    "dark",
    "flat",
    "twilight-flat",
    "sky-flat",
    "science",
    "standard",
    "focus",
    "test",
    "other",
)

NUMERIC = {"exptime", "airmass", "gain", "read_noise", "temperature", "rotator", "saturation"}
NUMERIC |= {"nreads", "read_time"}

# Normalised values the pipeline needs for every frame that gets reduced.
ALWAYS_REQUIRED = ("imagetype", "exptime", "dateobs")


def _clean(value: Any) -> str:
    return re.sub(r"\s+", " ", str(value).strip()).lower()


def safe_name(value: str) -> str:
    """A name usable in a path and a wildcard: letters, digits, ``_ - .`` only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value).strip()).strip("_")


@dataclass
class Chip:
    """One detector (or one half of a split detector) as the instrument file describes it."""

    name: str
    extension: int | str = 0
    select: dict = field(default_factory=dict)
    band: str | None = None
    kind: str | None = None  # detector kind of this chip; None = detector.kind (chip_value)
    datasec: str | None = None
    trimsec: str | None = None
    amplifiers: list = field(default_factory=list)
    gain: float | None = None
    read_noise: float | None = None
    saturation: float | None = None
    pixel_scale: float | None = None
    geometry: dict = field(default_factory=dict)
    static_mask: list = field(default_factory=list)

    def matches_file(self, path: str | Path, primary: fits.Header) -> bool:
        """Whether a raw file carries this chip (for cameras that write a file per chip)."""
        sel = self.select
        if "filename" in sel and not fnmatch.fnmatch(Path(path).name, sel["filename"]):
            return False
        if "keyword" in sel:
            value = primary.get(sel["keyword"])
            if value is None or _clean(value) != _clean(sel.get("value", "")):
                return False
        return True


class Instrument:
    """A validated instrument file; see the module docstring."""

    def __init__(self, doc: dict, source: str):
        self.source = source
        self.raw_doc = copy.deepcopy(doc)
        defaults = doc.get("chip_defaults", {}) or {}
        expanded = copy.deepcopy(doc)
        expanded.pop("chip_defaults", None)
        expanded["chips"] = [{**copy.deepcopy(defaults), **c} for c in doc.get("chips", [])]
        validate(expanded, "instrument", source)
        doc = fill_defaults(expanded, "instrument")
        names = [c["name"] for c in doc["chips"]]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ImredError(f"{source}: chip names must be unique; repeated: {', '.join(dupes)}")
        self.doc = doc
        self.name: str = doc["name"]
        self.detector: dict = doc["detector"]
        self.header_spec: dict = doc["header"]
        self.pixel_scale: float | None = doc.get("pixel_scale")
        self.site: dict | None = doc.get("site")
        self.pointing: dict = doc.get("pointing", {"frame": "icrs", "equinox": 2000.0})
        self.rotator: dict = doc.get("rotator", {})
        self.calibration: dict = doc.get("calibration", {})
        self.files: dict = doc.get("files", {})
        self.chips = [Chip(**c) for c in doc["chips"]]
        for spec_name, spec in self.header_spec.items():
            if "map" in spec and spec_name == "imagetype":
                bad = sorted({v for v in spec["map"].values() if v not in IMAGE_TYPES})
                if bad:
                    raise ImredError(
                        f"{source}: header.imagetype.map maps to {', '.join(map(str, bad))}; "
                        f"allowed image types: {', '.join(IMAGE_TYPES)}"
                    )

    @property
    def hash(self) -> str:
        """A short hash of the file's content (changes when the file's meaning changes)."""
        text = json.dumps(self.raw_doc, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def chip(self, name: str) -> Chip:
        for c in self.chips:
            if c.name == name:
                return c
        raise ImredError(
            f"{self.source}: no chip named '{name}'; chips: {', '.join(c.name for c in self.chips)}"
        )

    def wants_file(self, path: str | Path) -> bool:
        """Whether a file name matches the instrument's raw-file patterns."""
        name = Path(path).name
        pats = self.files.get("patterns", ["*.fits"])
        if not any(fnmatch.fnmatch(name, p) for p in pats):
            return False
        return not any(fnmatch.fnmatch(name, p) for p in self.files.get("exclude", []))

    def chip_value(self, chip: Chip, key: str) -> Any:
        """A chip property, falling back to the detector-wide (or instrument-wide) one."""
        value = getattr(chip, key, None)
        if value is None:
            value = self.detector.get(key)
        if value is None and key == "pixel_scale":
            value = self.pixel_scale
        return value

    # ----------------------------------------------------------------- headers
    def normalise(self, header: fits.Header, chip: Chip) -> tuple[dict, list[str]]:
        """Normalise one chip's header (primary merged with extension).

        Returns ``(values, problems)``: ``values`` has every key of the module table
        (``None`` where unknown); ``problems`` are messages for the observation log
        (a required keyword missing, a value not in a map, an unparsable value).
        """
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, spec in self.header_spec.items():
            try:
                values[key] = self._read_value(header, key, spec, chip, values)
            except _BadValueError as why:
                values[key] = None
                problems.append(str(why))
        for key in (
            "band",
            "target",
            "ra",
            "dec",
            "airmass",
            "binning",
            "readout_mode",
            "gain",
            "read_noise",
            "temperature",
            "rotator",
            "saturation",
        ):
            values.setdefault(key, None)
        if chip.band:
            values["band"] = chip.band
        elif values.get("imagetype") in ("bias", "dark"):
            values["band"] = None  # the filter in the beam means nothing for these
        failed = {p.split(":", 1)[0] for p in problems}
        for key in ("gain", "read_noise", "saturation"):
            if values[key] is None and key not in failed:
                values[key] = self.chip_value(chip, key)
        if values.get("binning") is None:
            values["binning"] = "1x1"
        if values.get("dateobs") is not None:
            values["mjd"] = float(Time(values["dateobs"], scale="utc").mjd)
        else:
            values["mjd"] = None
        if values.get("band") is not None:
            values["band"] = safe_name(values["band"]) or None
        for key in ALWAYS_REQUIRED:
            if values.get(key) is None and not any(p.startswith(f"{key}:") for p in problems):
                problems.append(f"{key}: no value (the instrument file gives no default)")
        return values, problems

    def _keyword_value(self, header: fits.Header, spec: dict) -> tuple[str | None, Any]:
        keys = spec.get("keyword")
        if keys is None:
            return None, None
        for key in [keys] if isinstance(keys, str) else keys:
            if key in header:
                value = header[key]
                if isinstance(value, str):
                    value = value.strip()
                if value not in ("", None):
                    return key, value
        return (keys if isinstance(keys, str) else "/".join(keys)), None

    def _read_value(self, header, key, spec, chip, sofar) -> Any:
        if "keywords" in spec:
            return self._combined(header, key, spec)
        kw, value = self._keyword_value(header, spec)
        if value is None:
            value = spec.get("value", spec.get("default"))
            if (
                value is None
                and "divide_by" in spec
                and key in ("gain", "read_noise", "saturation")
            ):
                value = self.chip_value(chip, key)
            if value is None:
                if spec.get("required"):
                    raise _BadValueError(f"{key}: required keyword {kw} is missing")
                return None
            if kw is None:
                kw = "(fixed value)"
        if "map" in spec:
            value = self._mapped(value, spec["map"], key, kw)
            if value is None:
                return None
        value = self._parse(
            value,
            spec.get("format", "float" if key in NUMERIC else "string"),
            key,
            kw,
            header,
            spec,
        )
        if "scale" in spec and value is not None:
            value = value * spec["scale"]
        if "divide_by" in spec and value is not None:
            div = header.get(spec["divide_by"])
            try:
                div = float(div)
            except (TypeError, ValueError):
                raise _BadValueError(
                    f"{key}: keyword {spec['divide_by']} (to divide by) is missing or not a number"
                ) from None
            if div == 0:
                raise _BadValueError(f"{key}: keyword {spec['divide_by']} is 0")
            value = value / div
        return value

    def _mapped(self, value, mapping, key, kw):
        table = {_clean(k): v for k, v in mapping.items()}
        clean = _clean(value)
        if clean in table:
            return table[clean]
        if "*" in table:
            return value if table["*"] == "*" else table["*"]
        raise _BadValueError(
            f"{key}: {kw}={value!r} is not in the instrument's {key} map "
            f"(add it under header.{key}.map in the instrument file)"
        )

    def _combined(self, header, key, spec) -> Any:
        raw = [header.get(k) for k in spec["keywords"]]
        how = spec.get("combine", "first_not_empty")
        if how == "binning":
            if any(v is None for v in raw):
                if "default" in spec:
                    return self._parse(spec["default"], "binning", key, "default", header, spec)
                if spec.get("required"):
                    raise _BadValueError(
                        f"{key}: keywords {', '.join(spec['keywords'])} are missing"
                    )
                return None
            try:
                return "x".join(str(int(float(v))) for v in raw)
            except ValueError:
                raise _BadValueError(f"{key}: binning keywords give {raw}") from None
        ignore = {_clean(v) for v in spec.get("ignore", [])}
        for kw, value in zip(spec["keywords"], raw, strict=True):
            if value is None or _clean(value) in ignore or _clean(value) == "":
                continue
            if "map" in spec:
                value = self._mapped(value, spec["map"], key, kw)
            return str(value).strip() if isinstance(value, str) else value
        if "default" in spec:
            return spec["default"]
        if spec.get("required"):
            raise _BadValueError(f"{key}: none of {', '.join(spec['keywords'])} has a value")
        return None

    def _parse(self, value, fmt, key, kw, header, spec) -> Any:
        try:
            if fmt == "string":
                return str(value).strip()
            if fmt in ("float", "degrees"):
                return float(value)
            if fmt == "int":
                return int(float(value))
            if fmt == "bool":
                return _clean(value) in ("t", "true", "1", "yes", "y")
            if fmt == "hours":
                return float(value) * 15.0
            if fmt == "sexagesimal_hours":
                if isinstance(value, (int, float)):
                    return float(value) * 15.0
                return Angle(_sexa(value), unit=u.hourangle).degree
            if fmt == "sexagesimal_degrees":
                if isinstance(value, (int, float)):
                    return float(value)
                return Angle(_sexa(value), unit=u.deg).degree
            if fmt == "isot":
                return Time(str(value).strip(), scale="utc").isot
            if fmt == "date_time":
                tkw = spec.get("time_keyword")
                tval = header.get(tkw) if tkw else None
                if tval is None:
                    raise _BadValueError(f"{key}: time keyword {tkw} is missing")
                date = str(value).strip().split("T")[0]
                return Time(f"{date}T{str(tval).strip()}", scale="utc").isot
            if fmt == "mjd":
                return Time(float(value), format="mjd", scale="utc").isot
            if fmt == "jd":
                return Time(float(value), format="jd", scale="utc").isot
            if fmt == "binning":
                parts = re.split(r"[\sx,*]+", str(value).strip().lower())
                parts = [int(float(p)) for p in parts if p]
                if len(parts) == 1:
                    parts = parts * 2
                if len(parts) != 2 or min(parts) < 1:
                    raise ValueError(value)
                return f"{parts[0]}x{parts[1]}"
        except _BadValueError:
            raise
        except (ValueError, TypeError) as err:
            raise _BadValueError(f"{key}: {kw}={value!r} cannot be read as {fmt} ({err})") from None
        raise ImredError(f"{self.source}: unknown format {fmt!r} for header.{key}")


class _BadValueError(Exception):
    pass


def _sexa(value: str) -> str:
    text = str(value).strip()
    parts = re.split(r"[\s:hdms°'\"]+", text)
    parts = [p for p in parts if p]
    return ":".join(parts) if len(parts) > 1 else text


def load_instrument(name: str | Path, directory: str | Path | None = None) -> Instrument:
    """Load an instrument by name (``config/instruments/NAME.yaml``) or by path."""
    directory = Path(directory) if directory else INSTRUMENT_DIR
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = directory / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in directory.glob("*.yaml"))
        raise ImredError(
            f"unknown instrument '{name}': no file {path}; known instruments: {', '.join(known)} "
            "(to add one, write config/instruments/NAME.yaml; see the README)"
        )
    doc = read_yaml(path, "instrument file")
    if not isinstance(doc, dict):
        raise ImredError(f"instrument file '{path}' must be a YAML mapping")
    return Instrument(doc, str(path))


# --------------------------------------------------------------------- pointing
def pointing_to_icrs(ra, dec, mjd, pointing: dict, site: dict | None = None):
    """Convert telescope pointings (deg, in the instrument's convention) to ICRS degrees.

    Vectorised: ``ra``, ``dec``, ``mjd`` are arrays (NaN where unknown). ``pointing``
    is the instrument file's ``pointing`` block: ``icrs`` (nothing to do), ``fk5``
    with an ``equinox``, or ``apparent`` (true equator and equinox of the date,
    astropy's TETE, geocentric: the observatory's few-metre offset is far below a
    pointing's accuracy).
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    mjd = np.asarray(mjd, dtype=float)
    frame = pointing.get("frame", "icrs")
    good = np.isfinite(ra) & np.isfinite(dec)
    out_ra, out_dec = ra.copy(), dec.copy()
    if frame == "icrs" or not good.any():
        return out_ra, out_dec
    if frame == "fk5":
        eq = Time(pointing.get("equinox", 2000.0), format="jyear")
        coord = SkyCoord(ra[good] * u.deg, dec[good] * u.deg, frame=FK5(equinox=eq))
    elif frame == "apparent":
        ok = good & np.isfinite(mjd)
        good = ok
        if not good.any():
            return out_ra, out_dec
        times = Time(mjd[good], format="mjd", scale="utc")
        coord = SkyCoord(ra[good] * u.deg, dec[good] * u.deg, frame=TETE(obstime=times))
    else:
        raise ImredError(f"pointing frame {frame!r} is not one of icrs, fk5, apparent")
    icrs = coord.transform_to(ICRS())
    out_ra[good] = icrs.ra.deg
    out_dec[good] = icrs.dec.deg
    return out_ra, out_dec


def night_of(mjd, longitude_deg: float | None) -> list[str | None]:
    """The night (``YYYYMMDD`` of the evening) each time belongs to.

    A night runs from local noon to local noon, local meaning mean solar time at the
    site's longitude (east positive); without a site, UTC noon.
    """
    mjd = np.atleast_1d(np.asarray(mjd, dtype=float))
    shift = (longitude_deg or 0.0) / 360.0 - 0.5
    out: list[str | None] = []
    for value in mjd:
        if not math.isfinite(value):
            out.append(None)
            continue
        day = Time(math.floor(value + shift), format="mjd", scale="utc").datetime
        out.append(day.strftime("%Y%m%d"))
    return out


def airmass_at(ra, dec, mjd, site: dict):
    """Airmass (sec z, plane-parallel) of ICRS pointings at a site; NaN below the horizon."""
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    mjd = np.asarray(mjd, dtype=float)
    out = np.full(ra.shape, np.nan)
    good = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mjd)
    if not good.any():
        return out
    from astropy.coordinates import AltAz

    loc = EarthLocation.from_geodetic(
        site["longitude_deg"] * u.deg,
        site["latitude_deg"] * u.deg,
        site.get("elevation_m", 0.0) * u.m,
    )
    times = Time(mjd[good], format="mjd", scale="utc")
    altaz = SkyCoord(ra[good] * u.deg, dec[good] * u.deg).transform_to(
        AltAz(obstime=times, location=loc)
    )
    alt = altaz.alt.deg
    am = 1.0 / np.sin(np.radians(np.clip(alt, 1e-3, 90)))
    am[alt <= 0] = np.nan
    out[good] = am
    return out
