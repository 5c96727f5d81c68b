"""Reference catalogs for astrometry and photometric calibration.

One entry point, :func:`get_reference_catalog`, returns the stars of a field (a cone)
from Gaia DR3, Pan-STARRS1, SDSS DR16, 2MASS, APASS DR9 or a local file, as one
*normalised* table; :func:`colour_transform` derives magnitudes in other bands (e.g.
Johnson B, V from SDSS g, r); :func:`write_ldac` writes the table as a FITS-LDAC
reference catalog for SCAMP (``ASTREF_CATALOG FILE``).

The normalised table
--------------------
==================  ==================================================================
``source_id``       the catalog's identifier (Gaia ``source_id``, PS1/SDSS ``objID``,
                    2MASS designation, APASS ``recno``; a row number for a file
                    without one)
``ra``, ``dec``     ICRS, degrees; at ``epoch`` when one is asked for and the catalog
                    has proper motions (Gaia), else at the catalog's epoch
``ra_err``,         1-sigma position errors, mas (``ra_err`` is along
``dec_err``         ``ra * cos(dec)``; 2MASS: the error ellipse's semi-major axis for
                    both); NaN where the catalog gives none
``epoch``           decimal year at which the star's position holds (NaN: unknown)
``{band}_mag``,     magnitudes and their errors, bands as the catalog names them:
``{band}_err``      Gaia ``G, BP, RP``; PS1 ``g, r, i, z, y``; SDSS ``u, g, r, i, z``
                    (PSF magnitudes); 2MASS ``J, H, Ks``; APASS ``B, V, g, r, i``.
                    NaN where missing
``pmra``, ``pmdec`` Gaia only: proper motion (``pmra`` includes ``cos(dec)``), mas/yr,
``pmra_err``, ...   with errors and ``parallax`` (mas); NaN for 2-parameter solutions
==================  ==================================================================

``table.meta`` (FITS-safe keys, so the table can be written as it is):
``SOURCE``, ``CATALOG`` (service table id or file), ``CATDESC`` (what to cite),
``RA_CEN``, ``DEC_CEN``, ``RADIUS`` (deg), ``EPOCH`` (decimal year asked for, or
``"catalog"``), ``PROPER`` (True when proper motions moved some stars), ``REFFROM``
(``"cache"``, ``"service"`` or ``"file"``), ``REFPATH`` (the file read, or the service
and table), ``CACHEFIL`` (cache written after a query), ``NSTARS`` and ``EMPTY`` (True
when no star of the catalog falls in the field: not an error, the caller decides).

Online sources and the cache
----------------------------
Gaia DR3 is queried with ADQL on ``gaiadr3.gaia_source`` (``astroquery.gaia``); the
others through VizieR (``astroquery.vizier``): PS1 ``II/349/ps1`` (this is Pan-STARRS1
DR1 mean photometry, the release VizieR holds; the setting is called
``panstarrs_dr2`` for the configuration's sake), SDSS ``V/154/sdss16`` (primary
objects classified as stars: ``mode == 1``, ``class == 6``), 2MASS ``II/246/out``,
APASS ``II/336/apass9``. Each query runs in a daemon thread with a deadline of
``timeout`` seconds (``astroquery.gaia`` contacts the archive as soon as it is
imported and its TAP client has no timeout of its own).

What a query returns is normalised at the catalog's own epoch (before any proper
motion is applied) and written to ``cache_dir`` as FITS, named by
:func:`cache_file_name`, e.g. ``gaia_dr3_114.6020+21.5750_r0.150.fits`` (centre
rounded to 1e-4 deg, radius to 1e-3 deg: requests that round to the same name share
the file). A run that finds its file needs no network. Failing that, any cache file of
the same source whose cone *contains* the requested one (angular distance between
centres + requested radius <= its radius, read from the file's ``RA_CEN``,
``DEC_CEN``, ``RADIUS`` keywords) is used, the smallest such cone first, and cut down
to the requested cone. An empty answer is cached too (``EMPTY = T``).

Epoch propagation
-----------------
Positions move linearly on the sphere: the unit vector ``r`` of the star plus
``dt * (pmra * e_east + pmdec * e_north)``, renormalised (the first-order model of
the Gaia documentation, without radial velocity or parallax). It is exact to first
order everywhere, the poles included, and handles stars without proper motion (they
keep their position and their catalog epoch) without the warnings
``SkyCoord.apply_space_motion`` raises for stars without a distance. Over decades the
neglected perspective acceleration is below a milliarcsecond except for the nearest
high-velocity stars, far under what an astrometric solution of ground-based images
reaches. Position errors grow with ``dt * pm_err`` (added in quadrature).
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.time import Time

from .errors import ImredError

__all__ = [
    "JESTER2005_BV",
    "SOURCES",
    "cache_file_name",
    "colour_transform",
    "get_reference_catalog",
    "propagate_positions",
    "tycho2_index_stars",
    "write_ldac",
    "write_ldac_file",
]

SOURCES = ("gaia_dr3", "panstarrs_dr2", "sdss_dr16", "2mass", "apass", "file")

#: Johnson B, V from SDSS g, r for stars (Jester et al. 2005, AJ 130, 873), each good
#: to about 0.02-0.03 mag: ``B = g + 0.39 (g - r) + 0.21``, ``V = g - 0.59 (g - r) - 0.01``.
JESTER2005_BV: dict[str, dict] = {
    "B": {"base": "g_mag", "terms": {"g_mag-r_mag": 0.39}, "zero": 0.21},
    "V": {"base": "g_mag", "terms": {"g_mag-r_mag": -0.59}, "zero": -0.01},
}

GAIA_TABLE = "gaiadr3.gaia_source"
GAIA_REF_EPOCH = 2016.0
_GAIA_NOTE = "Gaia DR3 (Gaia Collaboration, Vallenari et al. 2023) via the ESA archive"
# Gaia (E)DR3 photometric zero-point uncertainties, added in quadrature to the flux
# errors (ESA "EDR3 passbands" page; VizieR I/350 ReadMe)
_GAIA_ZP_ERR = {"G": 0.0027553202, "BP": 0.0027901700, "RP": 0.0037793818}
_MAG_PER_FLUX_RATIO = 2.5 / math.log(10.0)

_MAS_PER_DEG = 3.6e6
_NAME_ROUNDING = (4, 3)  # decimals of the centre and of the radius in cache names
_COVER_TOLERANCE_DEG = 1e-9

_STANDARD_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "ra_err",
    "dec_err",
    "epoch",
    "pmra",
    "pmdec",
    "pmra_err",
    "pmdec_err",
    "parallax",
)


# --------------------------------------------------------------------------------------
# the catalogs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _VizierSpec:
    """How one VizieR table maps onto the normalised columns.

    Each entry lists candidate column names, tried in order, case-insensitively (the
    names astroquery returns from VizieR's VOTable, e.g. ``g'mag`` for APASS; older
    dumps spell it ``gpmag``). ``pos_err`` units are read from the column when it has
    one, else ``pos_err_unit``.
    """

    catalog: str
    ra: tuple[str, ...]
    dec: tuple[str, ...]
    ra_err: tuple[str, ...]
    dec_err: tuple[str, ...]
    source_id: tuple[str, ...]
    bands: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    epoch: tuple[str, ...] = ()
    epoch_format: str = "decimalyear"  # or "mjd", "jd"
    pos_err_unit: str = "arcsec"
    keep: Callable[[Table], np.ndarray] | None = None
    note: str = ""


def _sdss_stars(raw: Table) -> np.ndarray:
    """Primary photometric objects (``mode == 1``) classified as stars (``class == 6``)."""
    keep = np.ones(len(raw), dtype=bool)
    for name, value in (("mode", 1), ("class", 6)):
        column = _find(raw, (name,))
        if column is not None:
            keep &= np.ma.filled(np.ma.asarray(raw[column]) == value, False)
    return keep


_VIZIER: dict[str, _VizierSpec] = {
    "panstarrs_dr2": _VizierSpec(
        catalog="II/349/ps1",
        ra=("RAJ2000",),
        dec=("DEJ2000",),
        ra_err=("e_RAJ2000",),
        dec_err=("e_DEJ2000",),
        source_id=("objID",),
        bands={b: ((f"{b}mag",), (f"e_{b}mag",)) for b in "grizy"},
        epoch=("Epoch",),
        epoch_format="mjd",
        note="Pan-STARRS1 DR1 mean photometry (Chambers et al. 2016) via VizieR",
    ),
    "sdss_dr16": _VizierSpec(
        catalog="V/154/sdss16",
        ra=("RA_ICRS",),
        dec=("DE_ICRS",),
        ra_err=("e_RA_ICRS",),
        dec_err=("e_DE_ICRS",),
        source_id=("objID",),
        # PSF magnitudes (upmag), the model magnitudes (umag) only when PSF ones are absent
        bands={b: ((f"{b}pmag", f"{b}mag"), (f"e_{b}pmag", f"e_{b}mag")) for b in "ugriz"},
        epoch=("ObsDate",),
        keep=_sdss_stars,
        note="SDSS DR16 photometric catalogue (Ahumada et al. 2020) via VizieR",
    ),
    "2mass": _VizierSpec(
        catalog="II/246/out",
        ra=("RAJ2000",),
        dec=("DEJ2000",),
        ra_err=("errMaj",),  # semi-major axis of the error ellipse: an upper bound
        dec_err=("errMaj",),
        source_id=("_2MASS", "2MASS"),
        bands={
            "J": (("Jmag",), ("e_Jmag",)),
            "H": (("Hmag",), ("e_Hmag",)),
            "Ks": (("Kmag", "Ksmag"), ("e_Kmag", "e_Ksmag")),
        },
        epoch=("JD",),
        epoch_format="jd",
        note="2MASS All-Sky Point Source Catalog (Skrutskie et al. 2006) via VizieR",
    ),
    "apass": _VizierSpec(
        catalog="II/336/apass9",
        ra=("RAJ2000",),
        dec=("DEJ2000",),
        ra_err=("e_RAJ2000",),
        dec_err=("e_DEJ2000",),
        source_id=("recno",),
        bands={
            "B": (("Bmag",), ("e_Bmag",)),
            "V": (("Vmag",), ("e_Vmag",)),
            "g": (("g'mag", "gpmag", "g_mag"), ("e_g'mag", "e_gpmag", "e_g_mag")),
            "r": (("r'mag", "rpmag", "r_mag"), ("e_r'mag", "e_rpmag", "e_r_mag")),
            "i": (("i'mag", "ipmag", "i_mag"), ("e_i'mag", "e_ipmag", "e_i_mag")),
        },
        note="AAVSO Photometric All-Sky Survey DR9 (Henden et al. 2016) via VizieR",
    ),
}

_GAIA_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "ra_error",
    "dec_error",
    "pmra",
    "pmdec",
    "pmra_error",
    "pmdec_error",
    "parallax",
    "ref_epoch",
    "phot_g_mean_mag",
    "phot_bp_mean_mag",
    "phot_rp_mean_mag",
    "phot_g_mean_flux_over_error",
    "phot_bp_mean_flux_over_error",
    "phot_rp_mean_flux_over_error",
)


def _catalog_id(source: str) -> str:
    return GAIA_TABLE if source == "gaia_dr3" else _VIZIER[source].catalog


# --------------------------------------------------------------------------------------
# queries (the only code that touches the network)
# --------------------------------------------------------------------------------------


def gaia_adql(ra: float, dec: float, radius_deg: float) -> str:
    """The ADQL cone query on ``gaiadr3.gaia_source`` (degrees, ICRS)."""
    return (
        f"SELECT {', '.join(_GAIA_COLUMNS)} FROM {GAIA_TABLE} "
        f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
        f"CIRCLE('ICRS', {ra:.8f}, {dec:.8f}, {radius_deg:.8f}))"
    )


def _query_gaia(ra: float, dec: float, radius_deg: float, timeout: float) -> Table:
    """Gaia DR3 cone through the ESA archive (asynchronous job: no 2000-row limit)."""
    # imported here: importing astroquery.gaia contacts the archive (status messages)
    from astroquery.gaia import Gaia

    job = Gaia.launch_job_async(gaia_adql(ra, dec, radius_deg))
    return job.get_results()


def _query_vizier(
    catalog: str, ra: float, dec: float, radius_deg: float, timeout: float
) -> Table | None:
    """One VizieR table in a cone, all its columns, no row limit (None: no rows)."""
    from astropy.coordinates import SkyCoord
    from astroquery.vizier import Vizier

    vizier = Vizier(columns=["**"], row_limit=-1, timeout=timeout)
    result = vizier.query_region(
        SkyCoord(ra, dec, unit="deg", frame="icrs"),
        radius=radius_deg * u.deg,
        catalog=catalog,
        frame="icrs",
        cache=False,
    )
    if len(result) == 0:
        return None
    return result[0]


def _run_with_deadline(func: Callable, timeout: float, *args):
    """``func(*args)`` in a daemon thread; TimeoutError if it has not answered in time.

    A daemon thread, not an executor: a hung connection must not keep the
    interpreter from exiting.
    """
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = func(*args)
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="imred-refcat-query", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------


def _find(table: Table, candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is a column of ``table`` (case-insensitive)."""
    lower = {name.lower(): name for name in table.colnames}
    for name in candidates:
        if name in table.colnames:
            return name
        if name.lower() in lower:
            return lower[name.lower()]
    return None


def _floats(column, unit: str | None = None, default_unit: str | None = None) -> np.ndarray:
    """A column as float64 with NaN for masked values, converted to ``unit``."""
    values = np.ma.MaskedArray(column).astype(float).filled(np.nan)
    values = np.asarray(values, dtype=float)
    if unit is not None:
        have = getattr(column, "unit", None) or default_unit
        if have is not None and u.Unit(have) != u.Unit(unit):
            values = values * u.Unit(have).to(unit)
    return values


def _ids(column) -> np.ndarray:
    """Identifiers as a plain array: integers (masked -> -1) or strings (masked -> '')."""
    data = np.ma.MaskedArray(column)
    if data.dtype.kind in "iu":
        return np.asarray(data.astype(np.int64).filled(-1))
    if data.dtype.kind in "SU":
        return np.asarray(data.astype(str).filled(""))
    return np.asarray(data.filled(data.fill_value))


def _to_decimal_year(values: np.ndarray, fmt: str) -> np.ndarray:
    """Epochs (``fmt``: ``decimalyear``, ``mjd`` or ``jd``) as decimal years, NaN kept."""
    if fmt == "decimalyear":
        return values.astype(float)
    out = np.full(values.shape, np.nan)
    good = np.isfinite(values)
    if good.any():
        out[good] = Time(values[good], format=fmt, scale="utc").decimalyear
    return out


def _empty_normalised(bands: Sequence[str], *, gaia: bool = False) -> Table:
    names = ["source_id", "ra", "dec", "ra_err", "dec_err", "epoch"]
    if gaia:
        names += ["pmra", "pmdec", "pmra_err", "pmdec_err", "parallax"]
    for band in bands:
        names += [f"{band}_mag", f"{band}_err"]
    dtypes = [np.int64] + [float] * (len(names) - 1)
    table = Table(names=names, dtype=dtypes)
    _set_units(table)
    return table


def _set_units(table: Table) -> None:
    for name in table.colnames:
        if name in ("ra", "dec"):
            table[name].unit = u.deg
        elif name in ("ra_err", "dec_err", "parallax"):
            table[name].unit = u.mas
        elif name in ("pmra", "pmdec", "pmra_err", "pmdec_err"):
            table[name].unit = u.mas / u.yr
        elif name == "epoch":
            table[name].unit = u.yr
        elif name.endswith(("_mag", "_err")):
            table[name].unit = u.mag


def _normalise_gaia(raw: Table | None) -> Table:
    bands = ("G", "BP", "RP")
    if raw is None or len(raw) == 0:
        return _empty_normalised(bands, gaia=True)

    def col(name: str):
        found = _find(raw, (name,))
        if found is None:
            raise ImredError(
                f"the Gaia archive answered without column {name!r} "
                f"(columns: {', '.join(raw.colnames)}): the query in imred.refcat is out of date"
            )
        return raw[found]

    out = Table()
    out["source_id"] = _ids(col("source_id"))
    out["ra"] = _floats(col("ra"), "deg", "deg")
    out["dec"] = _floats(col("dec"), "deg", "deg")
    out["ra_err"] = _floats(col("ra_error"), "mas", "mas")
    out["dec_err"] = _floats(col("dec_error"), "mas", "mas")
    ref_epoch = _floats(col("ref_epoch"))
    out["epoch"] = np.where(np.isfinite(ref_epoch), ref_epoch, GAIA_REF_EPOCH)
    out["pmra"] = _floats(col("pmra"), "mas/yr", "mas/yr")
    out["pmdec"] = _floats(col("pmdec"), "mas/yr", "mas/yr")
    out["pmra_err"] = _floats(col("pmra_error"), "mas/yr", "mas/yr")
    out["pmdec_err"] = _floats(col("pmdec_error"), "mas/yr", "mas/yr")
    out["parallax"] = _floats(col("parallax"), "mas", "mas")
    for band in bands:
        key = band.lower()
        out[f"{band}_mag"] = _floats(col(f"phot_{key}_mean_mag"))
        snr = _floats(col(f"phot_{key}_mean_flux_over_error"))
        with np.errstate(divide="ignore", invalid="ignore"):
            err = np.hypot(_MAG_PER_FLUX_RATIO / snr, _GAIA_ZP_ERR[band])
        out[f"{band}_err"] = np.where(snr > 0, err, np.nan)
    _set_units(out)
    return out


def _normalise_vizier(source: str, raw: Table | None) -> Table:
    spec = _VIZIER[source]
    bands = tuple(spec.bands)
    if raw is None or len(raw) == 0:
        return _empty_normalised(bands)
    if spec.keep is not None:
        raw = raw[spec.keep(raw)]
        if len(raw) == 0:
            return _empty_normalised(bands)

    def required(kind: str, candidates: Sequence[str]) -> str:
        found = _find(raw, candidates)
        if found is None:
            raise ImredError(
                f"VizieR {spec.catalog} answered without a {kind} column "
                f"(looked for {', '.join(candidates)}; got {', '.join(raw.colnames)}): "
                "the column names in imred.refcat are out of date"
            )
        return found

    n = len(raw)
    out = Table()
    id_col = _find(raw, spec.source_id)
    out["source_id"] = _ids(raw[id_col]) if id_col else np.arange(n, dtype=np.int64)
    out["ra"] = _floats(raw[required("RA", spec.ra)], "deg", "deg")
    out["dec"] = _floats(raw[required("Dec", spec.dec)], "deg", "deg")
    for name, candidates in (("ra_err", spec.ra_err), ("dec_err", spec.dec_err)):
        found = _find(raw, candidates)
        out[name] = _floats(raw[found], "mas", spec.pos_err_unit) if found else np.full(n, np.nan)
    found = _find(raw, spec.epoch) if spec.epoch else None
    out["epoch"] = (
        _to_decimal_year(_floats(raw[found]), spec.epoch_format) if found else np.full(n, np.nan)
    )
    for band, (mag_names, err_names) in spec.bands.items():
        mag = _find(raw, mag_names)
        err = _find(raw, err_names)
        out[f"{band}_mag"] = _floats(raw[mag]) if mag else np.full(n, np.nan)
        out[f"{band}_err"] = _floats(raw[err]) if err else np.full(n, np.nan)
    _set_units(out)
    return out


def _normalise_file(raw: Table, columns: Mapping[str, str] | None, path: Path) -> Table:
    """Rename a user's table: ``columns`` maps normalised names to the file's names;
    columns already named like normalised ones are taken as they are."""
    mapping = dict(columns or {})
    for name, target in mapping.items():
        if not isinstance(name, str) or not isinstance(target, str):
            raise ImredError(
                f"reference catalog setting `columns` must map names to column names of "
                f"{path}, got {name!r}: {target!r}"
            )
        if target not in raw.colnames:
            raise ImredError(
                f"reference catalog {path} has no column {target!r} (setting `columns`: "
                f"{name}: {target}); its columns are {', '.join(raw.colnames)}"
            )
        if name not in _STANDARD_COLUMNS and not name.endswith(("_mag", "_err")):
            raise ImredError(
                f"setting `columns` for {path}: {name!r} is not a normalised column name "
                f"(use one of {', '.join(_STANDARD_COLUMNS)} or '<band>_mag'/'<band>_err')"
            )
    mapped = set(mapping.values())
    for name in raw.colnames:
        if name in mapping or name in mapped:
            continue
        if name in _STANDARD_COLUMNS or name.endswith(("_mag", "_err")):
            mapping[name] = name
    for needed in ("ra", "dec"):
        if needed not in mapping:
            raise ImredError(
                f"reference catalog {path} has no {needed!r} column: name it in the "
                f"setting `columns` (e.g. {{{needed!r}: 'RAJ2000'}}); its columns are "
                f"{', '.join(raw.colnames)}"
            )
    n = len(raw)
    out = Table()
    out["source_id"] = (
        _ids(raw[mapping["source_id"]]) if "source_id" in mapping else np.arange(n, dtype=np.int64)
    )
    out["ra"] = _floats(raw[mapping["ra"]], "deg", "deg")
    out["dec"] = _floats(raw[mapping["dec"]], "deg", "deg")
    for name in ("ra_err", "dec_err"):
        out[name] = (
            _floats(raw[mapping[name]], "mas", "mas") if name in mapping else np.full(n, np.nan)
        )
    out["epoch"] = _floats(raw[mapping["epoch"]]) if "epoch" in mapping else np.full(n, np.nan)
    for name in ("pmra", "pmdec", "pmra_err", "pmdec_err"):
        if name in mapping:
            out[name] = _floats(raw[mapping[name]], "mas/yr", "mas/yr")
    if "parallax" in mapping:
        out["parallax"] = _floats(raw[mapping["parallax"]], "mas", "mas")
    photometry = [k for k in mapping if k.endswith(("_mag", "_err")) and k not in out.colnames]
    for name in photometry:
        out[name] = _floats(raw[mapping[name]])
    _set_units(out)
    return out


# --------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------


def _separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle distance (haversine), degrees."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def _in_cone(table: Table, ra: float, dec: float, radius_deg: float) -> Table:
    if len(table) == 0:
        return table
    distance = _separation_deg(table["ra"], table["dec"], ra, dec)
    return table[distance <= radius_deg]


def propagate_positions(
    ra: np.ndarray,
    dec: np.ndarray,
    pmra: np.ndarray,
    pmdec: np.ndarray,
    from_epoch: np.ndarray | float,
    to_epoch: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Move positions with their proper motions from ``from_epoch`` to ``to_epoch``.

    Linear motion on the sphere (see the module notes): ``r + dt * (pmra * e_east +
    pmdec * e_north)``, renormalised. Stars whose ``pmra``, ``pmdec`` or
    ``from_epoch`` is not finite are not moved.

    Parameters
    ----------
    ra, dec : array_like
        Positions, degrees.
    pmra, pmdec : array_like
        Proper motions, mas/yr; ``pmra`` is ``mu_alpha * cos(dec)`` (Gaia's ``pmra``).
    from_epoch : array_like or float
        Epoch of the positions, decimal years (Gaia DR3: 2016.0).
    to_epoch : float
        Epoch wanted, decimal years.

    Returns
    -------
    ra, dec : ndarray
        Moved positions, degrees (``ra`` in [0, 360)).
    moved : ndarray of bool
        Which stars were moved.
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    pmra = np.asarray(pmra, dtype=float)
    pmdec = np.asarray(pmdec, dtype=float)
    dt = float(to_epoch) - np.broadcast_to(np.asarray(from_epoch, dtype=float), ra.shape)
    moved = np.isfinite(pmra) & np.isfinite(pmdec) & np.isfinite(dt)
    a = np.radians(ra)
    d = np.radians(dec)
    ca, sa, cd, sd = np.cos(a), np.sin(a), np.cos(d), np.sin(d)
    r = np.stack([cd * ca, cd * sa, sd])
    east = np.stack([-sa, ca, np.zeros_like(a)])
    north = np.stack([-sd * ca, -sd * sa, cd])
    mas = math.radians(1.0 / _MAS_PER_DEG)
    step = np.where(moved, dt, 0.0) * mas
    r = r + step * (np.where(moved, pmra, 0.0) * east + np.where(moved, pmdec, 0.0) * north)
    r /= np.linalg.norm(r, axis=0)
    new_ra = np.degrees(np.arctan2(r[1], r[0])) % 360.0
    new_dec = np.degrees(np.arctan2(r[2], np.hypot(r[0], r[1])))
    # untouched stars keep their exact input values (no round trip through vectors)
    return np.where(moved, new_ra, ra), np.where(moved, new_dec, dec), moved


def _apply_epoch(table: Table, epoch: float | None) -> bool:
    """Move the table's stars to ``epoch`` in place when it has proper motions."""
    if epoch is None or len(table) == 0:
        return False
    if not {"pmra", "pmdec"} <= set(table.colnames):
        return False
    from_epoch = np.asarray(table["epoch"], dtype=float)
    ra, dec, moved = propagate_positions(
        table["ra"], table["dec"], table["pmra"], table["pmdec"], from_epoch, epoch
    )
    dt = np.where(moved, float(epoch) - from_epoch, 0.0)
    for pos, pm in (("ra_err", "pmra_err"), ("dec_err", "pmdec_err")):
        if pm in table.colnames:
            growth = np.where(moved, dt * np.asarray(table[pm], dtype=float), 0.0)
            growth = np.where(np.isfinite(growth), growth, 0.0)
            table[pos] = np.hypot(np.asarray(table[pos], dtype=float), growth)
            table[pos].unit = u.mas
    table["ra"] = ra
    table["dec"] = dec
    table["epoch"] = np.where(moved, float(epoch), from_epoch)
    _set_units(table)
    return bool(moved.any())


# --------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------


def cache_file_name(source: str, ra: float, dec: float, radius_deg: float) -> str:
    """The cache file of a field, e.g. ``gaia_dr3_114.6020+21.5750_r0.150.fits``.

    The centre is rounded to 1e-4 deg (RA zero-padded to 3 digits before the point,
    Dec signed), the radius to 1e-3 deg.
    """
    c, r = _NAME_ROUNDING
    ra = float(ra) % 360.0
    return f"{source}_{ra:0{c + 4}.{c}f}{float(dec):+0{c + 4}.{c}f}_r{float(radius_deg):.{r}f}.fits"


def _read_cache_header(path: Path) -> tuple[float, float, float] | None:
    try:
        header = fits.getheader(path, 1)
        return float(header["RA_CEN"]), float(header["DEC_CEN"]), float(header["RADIUS"])
    except (OSError, KeyError, ValueError, IndexError):
        return None  # not one of ours (or unreadable): not a candidate for reuse


def _find_cache(
    source: str, ra: float, dec: float, radius_deg: float, cache_dir: Path
) -> Path | None:
    """The exact cache file, else the smallest cached cone containing the field."""
    exact = cache_dir / cache_file_name(source, ra, dec, radius_deg)
    if exact.is_file():
        return exact
    if not cache_dir.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for path in sorted(cache_dir.glob(f"{source}_*_r*.fits")):
        if not re.fullmatch(rf"{re.escape(source)}_[0-9.]+[+-][0-9.]+_r[0-9.]+\.fits", path.name):
            continue
        cone = _read_cache_header(path)
        if cone is None:
            continue
        c_ra, c_dec, c_radius = cone
        distance = float(_separation_deg(ra, dec, c_ra, c_dec))
        if distance + radius_deg <= c_radius + _COVER_TOLERANCE_DEG and (
            best is None or c_radius < best[0]
        ):
            best = (c_radius, path)
    return None if best is None else best[1]


def _read_table(path: Path, what: str) -> Table:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz") and len(suffixes) > 1:
        suffix = suffixes[-2]
    else:
        suffix = suffixes[-1] if suffixes else ""
    formats = {
        ".fits": "fits",
        ".fit": "fits",
        ".fts": "fits",
        ".csv": "ascii.csv",
        ".ecsv": "ascii.ecsv",
    }
    if suffix not in formats:
        raise ImredError(
            f"{what} {path}: cannot tell its format from the suffix {suffix or '(none)'!r}; "
            "use .fits, .csv or .ecsv"
        )
    try:
        return Table.read(path, format=formats[suffix])
    except (OSError, ValueError) as exc:
        raise ImredError(f"cannot read {what} {path}: {exc}") from exc


def _write_cache(table: Table, path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = table.copy(copy_data=False)
    out.meta.clear()
    out.meta.update(meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out.write(tmp, format="fits", overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------


def _check_field(ra: float, dec: float, radius_deg: float) -> tuple[float, float, float]:
    try:
        ra, dec, radius_deg = float(ra), float(dec), float(radius_deg)
    except (TypeError, ValueError) as exc:
        raise ImredError(
            f"reference catalog field must be numbers (degrees), got ra={ra!r}, dec={dec!r}, "
            f"radius={radius_deg!r}"
        ) from exc
    if not (math.isfinite(ra) and math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise ImredError(f"reference catalog centre RA {ra}, Dec {dec} is not a sky position")
    if not (math.isfinite(radius_deg) and 0.0 < radius_deg <= 10.0):
        raise ImredError(
            f"reference catalog radius {radius_deg} deg must be > 0 and <= 10 deg "
            "(a field, not the sky)"
        )
    return ra % 360.0, dec, radius_deg


def get_reference_catalog(
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    source: str = "gaia_dr3",
    cache_dir: str | os.PathLike,
    epoch: float | None = None,
    columns: Mapping[str, str] | None = None,
    catalog_file: str | os.PathLike | None = None,
    allow_network: bool = True,
    timeout: float = 30,
) -> Table:
    """The reference stars of a field, normalised (see the module notes for the columns).

    Parameters
    ----------
    ra, dec : float
        Centre of the field, ICRS degrees.
    radius_deg : float
        Radius of the cone, degrees.
    source : str
        One of :data:`SOURCES`: ``gaia_dr3`` (default), ``panstarrs_dr2``,
        ``sdss_dr16``, ``2mass``, ``apass`` or ``file``.
    cache_dir : path
        Where online catalogs are cached (one FITS file per field, see
        :func:`cache_file_name`). Created when a query result is written.
    epoch : float, optional
        Decimal year to move positions to with the catalog's proper motions (Gaia;
        a file with ``pmra``/``pmdec``/``epoch`` columns). None: the catalog's epoch.
    columns : mapping, optional
        ``source="file"`` only: normalised name -> the file's column name, e.g.
        ``{"ra": "RAJ2000", "g_mag": "gmag"}``. Columns already named like
        normalised ones (``ra``, ``dec``, ``g_mag``, ...) need no entry. ``ra_err``
        and ``dec_err`` are mas unless the column carries a unit.
    catalog_file : path, optional
        ``source="file"`` only: a FITS, CSV or ECSV table (format from the suffix).
    allow_network : bool
        False: never query a service; use the cache or fail.
    timeout : float
        Seconds allowed for a query.

    Returns
    -------
    astropy.table.Table
        Stars within ``radius_deg`` of the centre; an empty table (``meta["EMPTY"]``
        True) when the catalog has none there.

    Raises
    ------
    ImredError
        Unknown source, bad field, unreadable file or mapping, or no catalog to be had:
        no cache and no network (or the query failed or timed out).
    """
    if source not in SOURCES:
        raise ImredError(
            f"unknown reference catalog source {source!r}: use one of {', '.join(SOURCES)}"
        )
    ra, dec, radius_deg = _check_field(ra, dec, radius_deg)
    if epoch is not None:
        epoch = float(epoch)
        if not (1800.0 <= epoch <= 2200.0):
            raise ImredError(f"reference catalog epoch {epoch} is not a decimal year")
    meta = {
        "SOURCE": source,
        "RA_CEN": ra,
        "DEC_CEN": dec,
        "RADIUS": radius_deg,
    }

    if source == "file":
        if catalog_file is None:
            raise ImredError(
                "reference catalog source 'file' needs `catalog_file` (a FITS, CSV or ECSV "
                "table of ra, dec and magnitudes)"
            )
        path = Path(catalog_file)
        if not path.is_file():
            raise ImredError(
                f"reference catalog file {path} does not exist (setting `catalog_file`)"
            )
        table = _in_cone(_normalise_file(_read_table(path, "reference catalog"), columns, path),
                         ra, dec, radius_deg)  # fmt: skip
        meta.update(CATALOG=path.name, REFFROM="file", REFPATH=str(path))
    else:
        if catalog_file is not None or columns:
            raise ImredError(
                f"`catalog_file` and `columns` are read only with source 'file', not "
                f"{source!r}: set `source: file` to use {catalog_file or 'a local file'}"
            )
        cache_dir = Path(cache_dir)
        meta["CATALOG"] = _catalog_id(source)
        meta["CATDESC"] = _VIZIER[source].note if source in _VIZIER else _GAIA_NOTE
        cached = _find_cache(source, ra, dec, radius_deg, cache_dir)
        if cached is not None:
            table = _read_table(cached, "cached reference catalog")
            missing = {"ra", "dec"} - set(table.colnames)
            if missing:
                raise ImredError(
                    f"cached reference catalog {cached} has no column(s) "
                    f"{', '.join(sorted(missing))}: delete it, or replace it with a FITS "
                    "table of normalised columns (ra, dec, ra_err, dec_err, <band>_mag, ...)"
                )
            if "epoch" not in table.colnames:
                table["epoch"] = np.full(len(table), np.nan)
            table = _in_cone(table, ra, dec, radius_deg)
            meta.update(REFFROM="cache", REFPATH=str(cached))
        else:
            table, written = _fetch(source, ra, dec, radius_deg, cache_dir, allow_network, timeout)
            meta.update(REFFROM="service", REFPATH=_service_name(source), CACHEFIL=str(written))

    table = table.copy()
    table.meta.clear()
    moved = _apply_epoch(table, epoch)
    meta["EPOCH"] = epoch if epoch is not None else "catalog"
    meta["PROPER"] = moved  # were proper motions applied?
    meta["NSTARS"] = len(table)
    meta["EMPTY"] = len(table) == 0
    table.meta.update(meta)
    return table


def _service_name(source: str) -> str:
    if source == "gaia_dr3":
        return f"ESA Gaia archive (astroquery.gaia) {GAIA_TABLE}"
    return f"VizieR (astroquery.vizier) {_VIZIER[source].catalog}"


def _fetch(
    source: str,
    ra: float,
    dec: float,
    radius_deg: float,
    cache_dir: Path,
    allow_network: bool,
    timeout: float,
) -> tuple[Table, Path]:
    """Query the service, normalise, cache; ImredError (one line) when it cannot."""
    path = cache_dir / cache_file_name(source, ra, dec, radius_deg)
    reason = "network use is off (allow_network=False)"
    if allow_network:
        try:
            if source == "gaia_dr3":
                raw = _run_with_deadline(_query_gaia, timeout, ra, dec, radius_deg, timeout)
            else:
                raw = _run_with_deadline(
                    _query_vizier, timeout, _VIZIER[source].catalog, ra, dec, radius_deg, timeout
                )
        except Exception as exc:  # any failure of the service becomes the one-line error below
            text = " ".join(str(exc).split())
            text = text if len(text) <= 200 else text[:197] + "..."
            reason = f"the query to {_service_name(source)} failed ({type(exc).__name__}: {text})"
            raise ImredError(
                _no_catalog_message(source, ra, dec, radius_deg, path, reason)
            ) from exc
        table = _normalise_gaia(raw) if source == "gaia_dr3" else _normalise_vizier(source, raw)
        table = _in_cone(table, ra, dec, radius_deg)
        _write_cache(
            table,
            path,
            {
                "SOURCE": source,
                "CATALOG": _catalog_id(source),
                "RA_CEN": ra,
                "DEC_CEN": dec,
                "RADIUS": radius_deg,
                "NSTARS": len(table),
                "EMPTY": len(table) == 0,
                "FETCHED": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "SERVICE": _service_name(source)[:68],
            },
        )
        return table, path
    raise ImredError(_no_catalog_message(source, ra, dec, radius_deg, path, reason))


def _no_catalog_message(
    source: str, ra: float, dec: float, radius_deg: float, path: Path, reason: str
) -> str:
    return (
        f"no {source} reference catalog for the field RA {ra:.4f} Dec {dec:+.4f} deg, "
        f"radius {radius_deg:.3f} deg: {reason}, and no cached catalog at {path}. "
        f"Put a catalog file there (FITS table with columns ra, dec, ra_err, dec_err, "
        f"<band>_mag, <band>_err), or set `source: file` with `catalog_file` (and `columns`) "
        "in the reference catalog configuration"
    )


# --------------------------------------------------------------------------------------
# colour transformations
# --------------------------------------------------------------------------------------


def _err_name(mag_column: str) -> str:
    return (
        mag_column[: -len("_mag")] + "_err" if mag_column.endswith("_mag") else f"{mag_column}_err"
    )


def colour_transform(table: Table, spec: Mapping[str, Mapping]) -> Table:
    """Add magnitudes derived by linear transformations of the table's magnitudes.

    Spec format: one entry per output band ``X`` (column ``X_mag``, error ``X_err``;
    a name already ending in ``_mag`` is used as it is)::

        {"B": {"base": "g_mag", "terms": {"g_mag-r_mag": 0.39}, "zero": 0.21,
               "scatter": 0.03}}

    means ``B_mag = g_mag + 0.39 * (g_mag - r_mag) + 0.21``. ``base`` (required) is a
    magnitude column; ``terms`` (optional) maps a colour ``"a-b"`` (or a single
    column ``"a"``) to its coefficient; ``zero`` (default 0) is a constant;
    ``scatter`` (default 0) is the transformation's own rms, added in quadrature to
    the error. :data:`JESTER2005_BV` is Jester et al. (2005) for SDSS g, r -> B, V.

    The error is propagated from the ``<band>_err`` columns as independent errors
    through the transformation written as one linear combination of magnitudes (so
    ``g + 0.39 (g - r)`` is ``1.39 g - 0.39 r``: the error of ``g`` counts once, with
    its full weight); it is NaN where an input error is NaN or missing.

    Parameters
    ----------
    table : astropy.table.Table
        A normalised catalog.
    spec : mapping
        The transformations (see above).

    Returns
    -------
    astropy.table.Table
        A copy of ``table`` with the new columns.
    """
    if not isinstance(spec, Mapping) or not spec:
        raise ImredError(
            "colour transformation spec must be a mapping of band -> "
            "{base, terms, zero}, e.g. {'V': {'base': 'g_mag', 'terms': {'g_mag-r_mag': -0.59}, "
            "'zero': -0.01}}"
        )
    out = table.copy()
    for band, entry in spec.items():
        where = f"colour transformation {band!r}"
        if not isinstance(entry, Mapping):
            raise ImredError(f"{where}: expected a mapping with base/terms/zero, got {entry!r}")
        unknown = set(entry) - {"base", "terms", "zero", "scatter"}
        if unknown:
            raise ImredError(
                f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                "(allowed: base, terms, zero, scatter)"
            )
        if "base" not in entry:
            raise ImredError(f"{where}: `base` (the magnitude column it starts from) is missing")
        coefficients: dict[str, float] = {}

        def add(column: str, c: float, coefficients=coefficients, where=where) -> None:
            column = column.strip()
            if column not in out.colnames:
                raise ImredError(
                    f"{where}: column {column!r} is not in the catalog "
                    f"(columns: {', '.join(out.colnames)})"
                )
            coefficients[column] = coefficients.get(column, 0.0) + c

        add(str(entry["base"]), 1.0)
        terms = entry.get("terms") or {}
        if not isinstance(terms, Mapping):
            raise ImredError(f"{where}: `terms` must map 'a-b' colours to coefficients")
        for colour, value in terms.items():
            try:
                c = float(value)
            except (TypeError, ValueError) as exc:
                raise ImredError(f"{where}: coefficient of {colour!r} is not a number") from exc
            parts = str(colour).split("-")
            if len(parts) == 1:
                add(parts[0], c)
            elif len(parts) == 2:
                add(parts[0], c)
                add(parts[1], -c)
            else:
                raise ImredError(f"{where}: term {colour!r} must be 'a-b' or 'a'")
        try:
            zero = float(entry.get("zero", 0.0))
            scatter = float(entry.get("scatter", 0.0))
        except (TypeError, ValueError) as exc:
            raise ImredError(f"{where}: `zero` and `scatter` must be numbers") from exc

        name = band if str(band).endswith("_mag") else f"{band}_mag"
        err_name = _err_name(name)
        for new in (name, err_name):
            if new in table.colnames:
                raise ImredError(
                    f"{where}: the catalog already has a column {new!r}; name the derived "
                    f"band differently (e.g. {band}_derived)"
                )
        value = np.full(len(out), zero)
        variance = np.full(len(out), scatter**2)
        for column, c in coefficients.items():
            value = value + c * np.asarray(out[column], dtype=float)
            if c == 0.0:
                continue
            err_column = _err_name(column)
            err = (
                np.asarray(out[err_column], dtype=float)
                if err_column in out.colnames
                else np.full(len(out), np.nan)
            )
            variance = variance + (c * err) ** 2
        out[name] = value
        out[name].unit = u.mag
        out[err_name] = np.sqrt(variance)
        out[err_name].unit = u.mag
    return out


# --------------------------------------------------------------------------------------
# SCAMP reference catalog (FITS-LDAC)
# --------------------------------------------------------------------------------------


def write_ldac_file(
    path: str | os.PathLike,
    header: fits.Header,
    objects: fits.BinTableHDU,
    *,
    overwrite: bool = True,
) -> Path:
    """Write a FITS-LDAC file: an empty primary HDU, ``LDAC_IMHEAD``, ``LDAC_OBJECTS``.

    ``LDAC_IMHEAD`` is the LDAC convention SExtractor writes and SCAMP reads: a 1-row
    binary table whose one column, ``Field Header Card`` (``TFORM = '<80n>A'``,
    ``TDIM = '(80, n)'``), holds a FITS header as ``n`` 80-character cards, ``END``
    included. The cards must keep their blank padding: astropy writes the trailing
    blanks of a string column as NUL bytes (its convention for FITS strings), and SCAMP
    crashes (segmentation fault, SCAMP 2.10) on a header with NULs inside cards. So the
    file is written by astropy and the header bytes are then written over the column
    as they are.

    Parameters
    ----------
    path : path
        Output file.
    header : astropy.io.fits.Header
        The header to store (for a SExtractor-like catalog: the image's header, with
        its WCS, ``NAXIS1``/``NAXIS2``, ``EXPTIME``...).
    objects : astropy.io.fits.BinTableHDU
        The catalog; written with ``EXTNAME = 'LDAC_OBJECTS'``.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    text = header.tostring(sep="", endcard=True, padding=False).encode("ascii")
    ncards = len(text) // 80
    cards = np.array([[text[i : i + 80] for i in range(0, len(text), 80)]], dtype="S80")
    imhead = fits.BinTableHDU.from_columns(
        [
            fits.Column(
                name="Field Header Card",
                format=f"{80 * ncards}A",
                dim=f"(80, {ncards})",
                array=cards,
            )
        ]
    )
    imhead.header["EXTNAME"] = "LDAC_IMHEAD"
    objects = objects.copy()
    objects.header["EXTNAME"] = "LDAC_OBJECTS"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([fits.PrimaryHDU(), imhead, objects]).writeto(path, overwrite=overwrite)
    with fits.open(path) as written:
        start = written["LDAC_IMHEAD"].fileinfo()["datLoc"]
    with open(path, "r+b") as handle:
        handle.seek(start)
        handle.write(text)
    return path


def write_ldac(
    table: Table,
    path: str | os.PathLike,
    *,
    mag_column: str,
    epoch: float | None = None,
    magerr_column: str | None = None,
    missing_pos_err_mas: float = 100.0,
    overwrite: bool = True,
) -> int:
    """Write a SCAMP reference catalog (FITS-LDAC, for ``ASTREF_CATALOG FILE``).

    Layout (as SCAMP's ``save_astreffield``/``read_astrefsamples`` in
    ``src/astrefcat.c`` write and read it): an empty primary HDU; ``LDAC_IMHEAD``, a
    1-row table whose column ``Field Header Card`` holds a FITS header as 80-character
    cards (see :func:`write_ldac_file`); ``LDAC_OBJECTS`` with one row per star:

    ====================  =======  ====================================================
    ``X_WORLD``           deg      RA (double)
    ``Y_WORLD``           deg      Dec (double)
    ``ERRA_WORLD``        deg      RA error (``ra_err``)
    ``ERRB_WORLD``        deg      Dec error (``dec_err``); SCAMP 2.10 uses
                                   ``sqrt(ERRA**2 + ERRB**2)`` on both axes
    ``ERRTHETA_WORLD``    deg      0 (the errors are along RA/Dec)
    ``MAG``, ``MAGERR``   mag      ``mag_column`` and its ``_err`` (``ASTREFMAG_KEY``)
    ``OBSDATE``           yr       epoch of the position (``ASTREFOBSDATE_KEY``)
    ``PMALPHA_J2000``...  mas/yr   proper motions and errors when the table has
                                   ``pmra``/``pmdec`` (0 where unknown; SCAMP >= 2.10)
    ``FLAGS``                      0 (SCAMP warns when it is absent)
    ====================  =======  ====================================================

    These are SCAMP's default ``ASTREFCENT_KEYS``, ``ASTREFERR_KEYS``,
    ``ASTREFMAG_KEY``, ``ASTREFMAGERR_KEY``, ``ASTREFOBSDATE_KEY``,
    ``ASTREFPROP_KEYS`` and ``ASTREFPROPERR_KEYS``: no setting is needed besides
    ``-ASTREF_CATALOG FILE -ASTREFCAT_NAME <path>``.

    Stars with a non-finite position or ``mag_column`` are left out (SCAMP sorts
    references by magnitude); a missing position error becomes
    ``missing_pos_err_mas``, a missing magnitude error 0 (SCAMP's own default).

    Parameters
    ----------
    table : astropy.table.Table
        A normalised catalog (:func:`get_reference_catalog`).
    path : path
        Output file (SCAMP's convention: ``.cat``).
    mag_column : str
        Magnitude column for ``MAG``, e.g. ``"G_mag"`` or ``"r_mag"``.
    epoch : float, optional
        ``OBSDATE`` for every star (decimal year). None: each star's ``epoch``
        column, then ``table.meta["EPOCH"]``, then 2000.0.
    magerr_column : str, optional
        Column for ``MAGERR``; default ``mag_column`` with ``_mag`` -> ``_err``.
    missing_pos_err_mas : float
        Position error written where the table has none, mas.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    int
        Number of stars written.
    """
    if mag_column not in table.colnames:
        raise ImredError(
            f"write_ldac: no magnitude column {mag_column!r} in the catalog "
            f"(columns: {', '.join(table.colnames)})"
        )
    for needed in ("ra", "dec"):
        if needed not in table.colnames:
            raise ImredError(f"write_ldac: the catalog has no {needed!r} column")
    magerr_column = magerr_column or _err_name(mag_column)
    n = len(table)
    ra = np.asarray(table["ra"], dtype=float)
    dec = np.asarray(table["dec"], dtype=float)
    mag = np.asarray(table[mag_column], dtype=float)
    keep = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(mag)

    def column_or(name: str, fill: float) -> np.ndarray:
        if name not in table.colnames:
            return np.full(n, fill)
        values = np.asarray(table[name], dtype=float)
        return np.where(np.isfinite(values), values, fill)

    magerr = column_or(magerr_column, 0.0)
    ra_err = column_or("ra_err", missing_pos_err_mas) / _MAS_PER_DEG
    dec_err = column_or("dec_err", missing_pos_err_mas) / _MAS_PER_DEG
    meta_epoch = table.meta.get("EPOCH")
    fallback = float(meta_epoch) if isinstance(meta_epoch, int | float) else 2000.0
    obsdate = np.full(n, float(epoch)) if epoch is not None else column_or("epoch", fallback)

    columns = [
        fits.Column(name="X_WORLD", format="D", unit="deg", array=ra[keep]),
        fits.Column(name="Y_WORLD", format="D", unit="deg", array=dec[keep]),
        fits.Column(name="ERRA_WORLD", format="E", unit="deg", array=ra_err[keep]),
        fits.Column(name="ERRB_WORLD", format="E", unit="deg", array=dec_err[keep]),
        fits.Column(name="ERRTHETA_WORLD", format="E", unit="deg", array=np.zeros(keep.sum())),
        fits.Column(name="MAG", format="E", unit="mag", array=mag[keep]),
        fits.Column(name="MAGERR", format="E", unit="mag", array=magerr[keep]),
        fits.Column(name="OBSDATE", format="D", unit="yr", array=obsdate[keep]),
    ]
    if {"pmra", "pmdec"} <= set(table.colnames):
        for name, source in (
            ("PMALPHA_J2000", "pmra"),
            ("PMDELTA_J2000", "pmdec"),
            ("PMALPHAERR_J2000", "pmra_err"),
            ("PMDELTAERR_J2000", "pmdec_err"),
        ):
            values = column_or(source, 0.0)
            columns.append(fits.Column(name=name, format="E", unit="mas/yr", array=values[keep]))
    columns.append(fits.Column(name="FLAGS", format="I", array=np.zeros(keep.sum(), np.int16)))
    objects = fits.BinTableHDU.from_columns(columns)

    header = fits.Header()
    header["SIMPLE"] = (True, "a reference catalog for SCAMP, written by imred")
    header["BITPIX"] = 8
    header["NAXIS"] = 0
    header["EQUINOX"] = (2000.0, "positions are ICRS")
    header["RADESYS"] = "ICRS"
    for key, comment in (
        ("SOURCE", "reference catalog source"),
        ("CATALOG", "catalog table"),
        ("RA_CEN", "[deg] field centre"),
        ("DEC_CEN", "[deg] field centre"),
        ("RADIUS", "[deg] field radius"),
        ("EPOCH", "epoch of the positions"),
    ):
        value = table.meta.get(key)
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            header[key] = (value if not isinstance(value, str) else value[:68], comment)
    header["MAGCOL"] = (mag_column, "column written as MAG")
    header["NREF"] = (int(keep.sum()), "stars written")
    header["NDROP"] = (int(n - keep.sum()), "stars left out (no position or magnitude)")

    write_ldac_file(path, header, objects, overwrite=overwrite)
    return int(keep.sum())


def catalog_for_field(field: Mapping, settings: Mapping) -> Table:
    """The reference catalog of one target field, as the workflow configures it.

    ``field``: ``ra``, ``dec``, ``radius`` (deg), ``epoch`` (decimal year or None);
    ``settings``: the config's ``reference_catalog`` block (source, file, columns,
    cache_dir, allow_network, timeout_s, colour_transform).
    """
    table = get_reference_catalog(
        field["ra"],
        field["dec"],
        field["radius"],
        source=settings["source"],
        cache_dir=settings["cache_dir"],
        epoch=field.get("epoch"),
        columns=settings.get("columns") or None,
        catalog_file=settings.get("file"),
        allow_network=settings.get("allow_network", True),
        timeout=settings.get("timeout_s", 60),
    )
    if settings.get("colour_transform"):
        table = colour_transform(table, settings["colour_transform"])
    return table


# --------------------------------------------------------------------------------------
# Tycho-2 from astrometry.net's index files (offline)
# --------------------------------------------------------------------------------------

#: where Debian's ``astrometry-data-tycho2-*`` packages install the index files
ASTROMETRY_INDEX_DIR = Path("/usr/share/astrometry")


def tycho2_index_stars(
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    index_dir: str | os.PathLike = ASTROMETRY_INDEX_DIR,
) -> Table:
    """The Tycho-2 stars within a cone, read from astrometry.net's index files.

    An index file (``index-tycho2-NN.*.fits``) holds its stars as a kd-tree: the HDU
    whose one column is ``kdtree_data_stars`` has 3 unsigned 32-bit integers per star,
    the unit vector quantised as ``xyz = low + u32 / scale`` (``low`` = the first 3 and
    ``scale`` the 7th of the float64 values in ``kdtree_range_stars``), and the
    ``MAG_VT`` HDU the stars' Tycho V_T magnitudes in the same order; the primary
    header's ``ENDIAN`` card gives the byte order. Each of Debian's files is a
    uniformised subset of Tycho-2 (dense for the small-scale indexes, sparse for the
    large ones); the stars of every file in ``index_dir`` are merged, duplicates (the
    same position to 0.2 mas) once.

    Parameters
    ----------
    ra, dec : float
        Cone centre, ICRS degrees.
    radius_deg : float
        Cone radius, degrees.
    index_dir : path
        Folder of the index files (default :data:`ASTROMETRY_INDEX_DIR`).

    Returns
    -------
    astropy.table.Table
        ``ra``, ``dec`` (deg, ICRS, epoch J2000 as in Tycho-2's mean positions; the
        quantisation is < 0.1 mas) and ``VT_mag``, brightest first; ``meta`` ``SOURCE``
        (``"tycho2_index"``), ``RA_CEN``, ``DEC_CEN``, ``RADIUS``, ``EPOCH`` (2000.0),
        ``NSTARS``.
    """
    files = sorted(Path(index_dir).glob("index-tycho2-*.fits"))
    if not files:
        raise ImredError(
            f"no astrometry.net Tycho-2 index files (index-tycho2-*.fits) in {index_dir}: "
            "install them (Debian: apt install astrometry-data-tycho2) or give their folder"
        )
    a0, d0 = math.radians(ra), math.radians(dec)
    centre = np.array([math.cos(d0) * math.cos(a0), math.cos(d0) * math.sin(a0), math.sin(d0)])
    cos_radius = math.cos(math.radians(radius_deg))
    vectors, mags = [], []
    for path in files:
        with fits.open(path, memmap=True) as hdul:
            names = {hdu.columns.names[0]: hdu for hdu in hdul[1:] if getattr(hdu, "columns", None)}
            if "kdtree_data_stars" not in names or "kdtree_range_stars" not in names:
                raise ImredError(f"{path}: not an astrometry.net index file (no star kd-tree)")
            big = hdul[0].header.get("ENDIAN", "04:03:02:01") != "04:03:02:01"
            order = ">" if big else "<"
            data = np.frombuffer(names["kdtree_data_stars"].data.tobytes(), f"{order}u4")
            bounds = np.frombuffer(names["kdtree_range_stars"].data.tobytes(), f"{order}f8")
            xyz = bounds[:3] + data.reshape(-1, 3) / bounds[6]
            xyz /= np.linalg.norm(xyz, axis=1)[:, None]
            inside = xyz @ centre >= cos_radius
            vectors.append(xyz[inside])
            if "MAG_VT" in names:
                mags.append(np.asarray(names["MAG_VT"].data["MAG_VT"], float)[inside])
            else:
                mags.append(np.full(int(inside.sum()), np.nan))
    xyz = np.concatenate(vectors)
    _, first = np.unique(np.round(xyz * 1e9), axis=0, return_index=True)  # 0.2 mas
    xyz, vt = xyz[first], np.concatenate(mags)[first]
    order_rows = np.argsort(np.where(np.isfinite(vt), vt, np.inf), kind="stable")
    xyz, vt = xyz[order_rows], vt[order_rows]
    table = Table(
        {
            "ra": np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0,
            "dec": np.degrees(np.arcsin(np.clip(xyz[:, 2], -1.0, 1.0))),
            "VT_mag": vt,
        }
    )
    table["ra"].unit = table["dec"].unit = u.deg
    table["VT_mag"].unit = u.mag
    table.meta.update(
        {
            "SOURCE": "tycho2_index",
            "CATALOG": str(index_dir),
            "RA_CEN": float(ra),
            "DEC_CEN": float(dec),
            "RADIUS": float(radius_deg),
            "EPOCH": 2000.0,
            "NSTARS": len(table),
        }
    )
    return table
