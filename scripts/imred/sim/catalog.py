"""The synthetic star catalog and the reference catalog made from it.

Stars are spread uniformly over a disc on the sky. Their reference-band magnitudes
follow power-law number counts, ``N(< m) = density_at_20 * 10**(slope (m - 20))`` per
deg^2; their colours ``x = g - r`` are a mixture of turn-off stars (``x ~ 0.42``) and
M dwarfs (``x ~ 1.40``), and the magnitude in band b is
``m_b = m_ref + P_b(x) - P_ref(x)`` with the scenario's colour polynomials ``P``.

The reference catalog is what a survey query would return: stars between a bright
(saturation) and a faint limit in the reference band, magnitudes drawn about the
truth with errors ``sqrt(floor^2 + (1.0857 / snr)^2)`` (``snr = 5`` at ``depth_5sigma``),
and positions scattered by an error that grows for faint stars.

Instrumental colour terms (scenario ``bands[].colour_term: {colour: [c1, c2], k}``): the
camera's band differs from the catalog band of the same name, and a star gives the
electrons of ``m_inst = m_catalog + k (m_c1 - m_c2)`` (catalog magnitudes on the right;
k > 0 makes red stars fainter in the camera). :func:`add_instrumental_magnitudes` adds
``{band}_mag_inst`` for such bands; ``{band}_mag`` (and the reference catalog) stay the
catalog magnitudes.

Real stars instead (``stars.catalog``): a catalog file's stars (:func:`read_star_catalog`)
or the Tycho-2 stars of astrometry.net's index files (:func:`tycho2_star_catalog`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table

from ..errors import ImredError
from .optics import sky_to_tan, tan_to_sky


def colour_polynomials(stars: dict, bands: list[str]) -> dict[str, np.ndarray]:
    """Colour polynomial of each catalog band; the observed bands must be among them."""
    table = {c["band"]: np.asarray(c["terms"], dtype=float) for c in stars["colours"]}
    given = {k[: -len("_mag")] for k in ((stars.get("catalog") or {}).get("columns") or {})}
    missing = [b for b in [*bands, stars["reference_band"]] if b not in table and b not in given]
    if missing:
        raise ImredError(
            f"scenario: stars.colours has no entry for band(s) {', '.join(sorted(set(missing)))}; "
            "add {band: NAME, terms: [c0, c1, c2]} (m = m_ref + c0 + c1 (g-r) + c2 (g-r)^2)"
        )
    return table


def make_star_catalog(
    stars: dict, ra0: float, dec0: float, radius_arcsec: float, rng: np.random.Generator
) -> Table:
    """Synthetic stars within ``radius_arcsec`` of (ra0, dec0).

    Returns a table with ``id``, ``ra``, ``dec`` (deg), ``gr`` (g - r colour) and
    ``{band}_mag`` for every band of ``stars.colours``.
    """
    polys = colour_polynomials(stars, [])
    area_deg2 = np.pi * (radius_arcsec / 3600.0) ** 2
    m1, m2 = sorted(stars["magnitudes"])
    s = stars["slope"]
    expected = stars["density_at_20"] * area_deg2 * (10 ** (s * (m2 - 20)) - 10 ** (s * (m1 - 20)))
    n = int(rng.poisson(expected)) if stars["enabled"] else 0
    if n > 2_000_000:
        raise ImredError(
            f"scenario: the star counts give {n} stars in the field; lower stars.density_at_20 "
            "or the faint end of stars.magnitudes"
        )
    if s > 0:
        lo, hi = 10 ** (s * m1), 10 ** (s * m2)
        mag = np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / s
    else:
        mag = rng.uniform(m1, m2, n)
    rad = radius_arcsec * np.sqrt(rng.uniform(0.0, 1.0, n))
    ang = rng.uniform(0.0, 2 * np.pi, n)
    ra, dec = tan_to_sky(rad * np.sin(ang), rad * np.cos(ang), ra0, dec0)
    red = rng.uniform(0.0, 1.0, n) < stars["red_fraction"]
    gr = np.where(red, rng.normal(1.40, 0.10, n), rng.normal(0.42, 0.12, n))
    gr = np.clip(gr, -0.3, 1.8)
    table = Table()
    table["id"] = np.arange(1, n + 1, dtype=np.int64)
    table["ra"] = ra
    table["dec"] = dec
    table["ra"].unit = table["dec"].unit = "deg"
    table["gr"] = gr
    ref = stars["reference_band"]
    p_ref = np.polyval(polys[ref][::-1], gr)
    for band, poly in polys.items():
        table[f"{band}_mag"] = mag + np.polyval(poly[::-1], gr) - p_ref
        table[f"{band}_mag"].unit = "mag"
    table.meta["REFBAND"] = ref
    return table


INSTRUMENTAL_SUFFIX = "_mag_inst"


def colour_terms(bands: list[dict]) -> dict[str, dict]:
    """``{band: {"colour": [c1, c2], "k": k}}`` of the scenario bands with a colour term."""
    return {
        b["name"]: {"colour": [str(c) for c in b["colour_term"]["colour"]],
                    "k": float(b["colour_term"]["k"])}
        for b in bands
        if b.get("colour_term")
    }  # fmt: skip


def add_instrumental_magnitudes(table: Table, terms: dict[str, dict], what: str = "stars") -> None:
    """Add ``{band}_mag_inst = {band}_mag + k ({c1}_mag - {c2}_mag)`` for each colour term.

    The terms are also recorded in ``table.meta["COLOUR_TERMS"]``. A colour band (or the
    band itself) without its ``_mag`` column is an :class:`ImredError`.
    """
    if not terms:
        return
    for band, term in terms.items():
        need = [band, *term["colour"]]
        missing = [b for b in need if f"{b}_mag" not in table.colnames]
        if missing:
            raise ImredError(
                f"scenario: bands[{band}].colour_term needs {what} magnitudes in "
                f"{', '.join(sorted(set(missing)))}, which the {what} catalog does not have "
                "(add them to stars.colours, or to stars.catalog.columns)"
            )
        c1, c2 = term["colour"]
        colour = np.asarray(table[f"{c1}_mag"], float) - np.asarray(table[f"{c2}_mag"], float)
        col = f"{band}{INSTRUMENTAL_SUFFIX}"
        table[col] = np.asarray(table[f"{band}_mag"], float) + term["k"] * colour
        table[col].unit = "mag"
    table.meta["COLOUR_TERMS"] = {b: dict(t) for b, t in terms.items()}


def camera_magnitude_column(table: Table, band: str) -> str:
    """The column holding the magnitudes the camera sees in ``band``."""
    inst = f"{band}{INSTRUMENTAL_SUFFIX}"
    return inst if inst in table.colnames else f"{band}_mag"


def make_refcat(
    stars_table: Table,
    refcat: dict,
    reference_band: str,
    bands: list[str],
    rng: np.random.Generator,
) -> Table:
    """The pipeline's reference catalog drawn from the truth (see the module docstring).

    Columns: ``source_id``, ``ra``, ``dec`` (deg), ``ra_err``, ``dec_err`` (mas) and
    ``{band}_mag``, ``{band}_err`` (mag) for every catalog band.
    """
    ref = np.asarray(stars_table[f"{reference_band}_mag"])
    keep = (ref > refcat["bright_limit"]) & (ref < refcat["mag_limit"])
    sub = stars_table[keep]
    n = len(sub)
    ref = ref[keep]
    pos_err = refcat["position_error_mas"] * np.sqrt(1.0 + 10 ** (0.8 * (ref - 19.0)))
    dec = np.asarray(sub["dec"]) + rng.normal(0.0, 1.0, n) * pos_err / 3.6e6
    cosd = np.cos(np.radians(dec))
    ra = (np.asarray(sub["ra"]) + rng.normal(0.0, 1.0, n) * pos_err / 3.6e6 / cosd) % 360.0
    out = Table()
    out["source_id"] = np.asarray(sub["id"], dtype=np.int64)
    out["ra"] = ra
    out["dec"] = dec
    out["ra"].unit = out["dec"].unit = "deg"
    out["ra_err"] = pos_err
    out["dec_err"] = pos_err
    out["ra_err"].unit = out["dec_err"].unit = "mas"
    for band in bands:
        true = np.asarray(sub[f"{band}_mag"])
        snr = 5.0 * 10 ** (-0.4 * (true - refcat["depth_5sigma"]))
        err = np.sqrt(refcat["error_floor"] ** 2 + (1.0857 / snr) ** 2)
        out[f"{band}_mag"] = true + rng.normal(0.0, 1.0, n) * err
        out[f"{band}_err"] = err
        out[f"{band}_mag"].unit = out[f"{band}_err"].unit = "mag"
    out.meta["CATALOG"] = "imred simulated reference catalogue"
    out.meta["REFBAND"] = reference_band
    out.meta["MAGLIM"] = refcat["mag_limit"]
    out.meta["BRIGHTLM"] = refcat["bright_limit"]
    out.meta["DEPTH5S"] = refcat["depth_5sigma"]
    return out


def read_star_catalog(stars: dict, base, ra0: float, dec0: float, radius_arcsec: float) -> Table:
    """The stars of a real catalog file within ``radius_arcsec`` of (ra0, dec0).

    ``stars.catalog`` gives the ``file`` (any table astropy reads; a relative path is
    taken from the scenario's folder) and ``columns``, which maps ``ra``, ``dec`` (deg,
    ICRS), optionally ``id``, ``gr`` (g - r) and ``{band}_mag`` to the file's column names.
    Every catalog band (``stars.colours``) missing from ``columns`` is made from the
    reference band with the colour polynomials, the colour being ``gr`` or else
    ``g_mag - r_mag``. Rows with a missing or non-finite value in a used column are
    dropped. Returns the columns of :func:`make_star_catalog` (``id`` is the file's id
    column, else the 1-based row number in the file). ``stars.catalog.tycho2`` reads
    the Tycho-2 index files instead (:func:`tycho2_star_catalog`).
    """
    spec = stars["catalog"]
    if spec.get("tycho2") not in (None, False):
        return tycho2_star_catalog(stars, base, ra0, dec0, radius_arcsec)
    path = Path(spec["file"]).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    if not path.is_file():
        raise ImredError(f"scenario: stars.catalog.file '{spec['file']}' does not exist ({path})")
    try:
        table = Table.read(path)
    except Exception as err:  # astropy raises many kinds for unreadable files
        raise ImredError(f"scenario: stars.catalog.file '{path}' cannot be read: {err}") from None
    columns = dict(spec["columns"])
    missing = [f"{k}: {v}" for k, v in columns.items() if v not in table.colnames]
    if missing:
        raise ImredError(
            f"scenario: stars.catalog.columns name columns that {path.name} does not have "
            f"({', '.join(missing)}); its columns: {', '.join(table.colnames)}"
        )
    for key in ("ra", "dec"):
        if key not in columns:
            raise ImredError(f"scenario: stars.catalog.columns needs '{key}' (a column name)")
    polys = colour_polynomials(stars, [])
    ref = stars["reference_band"]
    given = {k[: -len("_mag")] for k in columns if k.endswith("_mag")}
    bands = list(polys) + sorted(given - set(polys))
    needed = [b for b in polys if b not in given]
    if needed:
        if f"{ref}_mag" not in columns:
            raise ImredError(
                f"scenario: stars.catalog.columns has no '{ref}_mag' (the reference band "
                f"stars.reference_band) to make {', '.join(needed)} from; map it or every band"
            )
        if ref not in polys:
            raise ImredError(
                f"scenario: stars.colours has no entry for the reference band {ref}, needed to "
                f"make {', '.join(needed)} from it; add one (or map every band in "
                "stars.catalog.columns)"
            )
        if "gr" not in columns and not {"g_mag", "r_mag"} <= set(columns):
            raise ImredError(
                "scenario: stars.catalog.columns needs 'gr' or both 'g_mag' and 'r_mag' (the "
                f"g - r colour) to make {', '.join(needed)} with stars.colours"
            )

    def col(key):
        c = table[columns[key]]
        values = np.ma.filled(np.ma.asarray(c, dtype=float), np.nan)
        return np.asarray(values, dtype=float)

    used = {k: col(k) for k in columns if k != "id"}
    good = np.all([np.isfinite(v) for v in used.values()], axis=0)
    ids = (
        np.asarray(table[columns["id"]], dtype=np.int64)
        if "id" in columns
        else np.arange(1, len(table) + 1, dtype=np.int64)
    )
    ra, dec = used["ra"], used["dec"]
    xi, eta = sky_to_tan(ra, dec, ra0, dec0)
    with np.errstate(invalid="ignore"):
        near = good & (np.hypot(xi, eta) <= radius_arcsec) & (_cos_sep(ra, dec, ra0, dec0) > 0)
    out = Table()
    out["id"] = ids[near]
    out["ra"] = ra[near] % 360.0
    out["dec"] = dec[near]
    out["ra"].unit = out["dec"].unit = "deg"
    if "gr" in columns:
        gr = used["gr"][near]
    elif {"g_mag", "r_mag"} <= set(columns):
        gr = used["g_mag"][near] - used["r_mag"][near]
    else:
        gr = np.full(int(near.sum()), np.nan)
    out["gr"] = gr
    for band in bands:
        if band in given:
            out[f"{band}_mag"] = used[f"{band}_mag"][near]
        else:
            p_ref = np.polyval(polys[ref][::-1], gr)
            p_band = np.polyval(polys[band][::-1], gr)
            out[f"{band}_mag"] = used[f"{ref}_mag"][near] + p_band - p_ref
        out[f"{band}_mag"].unit = "mag"
    if len(np.unique(out["id"])) != len(out):
        raise ImredError(f"scenario: stars.catalog: ids in {path.name} are not unique")
    out.meta["REFBAND"] = ref
    out.meta["CATFILE"] = path.name
    out.meta["NDROPPED"] = int(np.sum(~good))
    return out


#: Debian's packages of the index files read by tycho2_star_catalog (scales 08 and 09
#: hold the denser star lists, 10-19 the sparser ones)
TYCHO2_PACKAGES = (
    "astrometry-data-tycho2-10-19-littleendian",
    "astrometry-data-tycho2-09-littleendian",
    "astrometry-data-tycho2-08-littleendian",
)
TYCHO2_GR = 0.5  # default g - r of a Tycho-2 star (B - V ~ 0.7: Jester et al. 2005)


def tycho2_star_catalog(stars: dict, base, ra0: float, dec0: float, radius_arcsec: float) -> Table:
    """The Tycho-2 stars of astrometry.net's index files within ``radius_arcsec``.

    ``stars.catalog.tycho2`` is ``true`` or ``{index_dir, gr}``: the stars of every
    ``index-tycho2-*.fits`` in ``index_dir`` (default ``/usr/share/astrometry``, where
    Debian's ``astrometry-data-tycho2-*`` packages put them; a relative path is taken
    from the scenario's folder) within the cone, read by
    :func:`imred.refcat.tycho2_index_stars` (positions ICRS, epoch J2000, no proper
    motion; which stars depend on which index files are installed: each file is a
    uniformised subset of Tycho-2, the merge of Debian's files a few tens of stars per
    deg^2 brighter than V_T ~ 12).

    Magnitudes (an approximation, a few tenths of a magnitude for one star): every
    star gets the colour ``g - r = gr`` (default 0.5, about the mean of Tycho-2 stars);
    ``V = V_T`` (V_T - V is below 0.1 mag for such colours), ``g = V + 0.59 gr + 0.01``
    (Jester et al. 2005, :data:`imred.refcat.JESTER2005_BV` inverted) and every band
    ``m_b = g + P_b(gr) - P_g(gr)`` with the colour polynomials of ``stars.colours``,
    which must then have a ``g`` entry. Stars without a V_T are left out (counted in
    the meta ``NDROPPED``). ``id`` is the 1-based rank in V_T (brightest first) within
    the cone.
    """
    spec = stars["catalog"]
    if spec.get("file") is not None or spec.get("columns") is not None:
        raise ImredError(
            "scenario: stars.catalog has both tycho2 and file/columns; give one of them "
            "(tycho2 takes the stars from astrometry.net's Tycho-2 index files)"
        )
    opts = spec["tycho2"] if isinstance(spec["tycho2"], dict) else {}
    index_dir = Path(opts.get("index_dir") or "/usr/share/astrometry").expanduser()
    if not index_dir.is_absolute():
        index_dir = Path(base) / index_dir
    files = sorted(index_dir.glob("index-tycho2-*.fits")) if index_dir.is_dir() else []
    if not files:
        raise ImredError(
            f"scenario: stars.catalog.tycho2 reads astrometry.net's Tycho-2 index files "
            f"(index-tycho2-*.fits), and {index_dir} has none"
            f"{'' if index_dir.is_dir() else ' (no such folder)'}: install the Debian package "
            f"{TYCHO2_PACKAGES[0]} (apt install {TYCHO2_PACKAGES[0]}; {TYCHO2_PACKAGES[1]} and "
            f"{TYCHO2_PACKAGES[2]} add denser star lists) or set stars.catalog.tycho2.index_dir "
            "to their folder"
        )
    polys = colour_polynomials(stars, [])
    if "g" not in polys:
        raise ImredError(
            "scenario: stars.catalog.tycho2 makes the band magnitudes from g (g = V_T + "
            "0.59 (g - r) + 0.01); stars.colours needs a 'g' entry ({band: g, terms: [...]})"
        )
    gr = float(opts.get("gr", TYCHO2_GR))
    from ..refcat import tycho2_index_stars  # reading catalog input (lazy: a heavy module)

    found = tycho2_index_stars(ra0, dec0, radius_arcsec / 3600.0, index_dir=index_dir)
    vt = np.asarray(found["VT_mag"], dtype=float)
    good = np.isfinite(vt)
    n = int(good.sum())
    g_mag = vt[good] + 0.59 * gr + 0.01
    p_g = float(np.polyval(polys["g"][::-1], gr))
    out = Table()
    out["id"] = np.arange(1, n + 1, dtype=np.int64)
    out["ra"] = np.asarray(found["ra"], dtype=float)[good]
    out["dec"] = np.asarray(found["dec"], dtype=float)[good]
    out["ra"].unit = out["dec"].unit = "deg"
    out["gr"] = np.full(n, gr)
    for band, poly in polys.items():
        out[f"{band}_mag"] = g_mag + float(np.polyval(poly[::-1], gr)) - p_g
        out[f"{band}_mag"].unit = "mag"
    out.meta["REFBAND"] = stars["reference_band"]
    out.meta["CATFILE"] = "tycho2_index"
    out.meta["INDEXDIR"] = str(index_dir)
    out.meta["INDEXFILES"] = ",".join(p.name for p in files)
    out.meta["NDROPPED"] = int(np.sum(~good))
    return out


def _cos_sep(ra, dec, ra0, dec0):
    d, d0 = np.radians(dec), np.radians(dec0)
    return np.sin(d) * np.sin(d0) + np.cos(d) * np.cos(d0) * np.cos(np.radians(ra - ra0))
