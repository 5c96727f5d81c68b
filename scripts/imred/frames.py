"""From a calibrated frame to a solved, photometrically calibrated one: the file layer.

Each function reads the products a rule names, calls the array functions of
:mod:`imred.detect`, :mod:`imred.astrometry` and :mod:`imred.photometry`, and
returns what the rule writes:

- :func:`detect_frame`: background (a mesh estimate with objects masked) and
  sources; the sky-subtracted frame (``SCI`` - background, ``VAR``, ``MASK``, and
  the background model ``BKG``) and the source catalog, whose header holds the
  frame's QA numbers (FWHM, ellipticity, sources, sky and its noise).
- :func:`solve_frame`: the initial WCS from pointing and geometry, refined against
  the reference catalog (imred's own fit or SCAMP), with blind solving
  (astrometry.net) for frames without a pointing or whose match failed; a failure is
  a flagged WCS file (``ASTOK = F`` with the reason), never an exception, so the run
  continues and the frame is left out of coadds.
- :func:`calibrate_frame_photometry`: the zero point (mag of 1 e-/s) from catalog
  stars at the solved WCS; the catalog gets calibrated ``mag``, ``mag_err``, ``ra``,
  ``dec``.
- :func:`frame_qa_table`: one row per frame x chip of a night.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from .astrometry import AstrometryResult, _binning, initial_wcs, match_and_fit, read_wcs
from .blind import solve_field
from .detect import detect_sources, estimate_background, frame_qa
from .errors import ImredError
from .instrument import Instrument
from .mask import UNUSABLE
from .photometry import frame_zero_point
from .products import provenance_cards, read_image_product
from .scamp import solve_scamp


def detect_frame(calibrated: str, settings: dict, pixel_scale: float):
    """Background and sources of a calibrated frame.

    Returns ``(skysub, header, catalog)``: ``skysub`` a dict of arrays (SCI, VAR, MASK,
    BKG), ``header`` the product's primary header, ``catalog`` the source Table with
    the QA numbers in its meta.
    """
    p = read_image_product(calibrated)
    sci, var, mask = p["SCI"], p["VAR"], p["MASK"]
    if not np.any((mask & np.uint16(int(UNUSABLE))) == 0):
        raise ImredError(f"{calibrated}: every pixel is masked; nothing to detect")
    bkg_set = settings["background"]
    bkg = estimate_background(
        sci, mask, box=bkg_set["box"], filter_size=bkg_set["filter_size"], mask_objects=True
    )
    det = settings["detection"]
    radii = [r / pixel_scale for r in det["aperture_radii_arcsec"]]
    catalog = detect_sources(
        sci,
        var,
        mask,
        bkg,
        method=det["method"],
        threshold=det["threshold"],
        minarea=det["minarea"],
        aperture_radii_px=radii,
        pixel_scale_arcsec=pixel_scale,
        sextractor={"binary": settings["tools"]["sextractor"]}
        if det["method"] == "sextractor"
        else None,
    )
    qa = frame_qa(catalog, bkg, pixel_scale)
    header = p["header"].copy()
    header["IMRTYPE"] = ("SKYSUB", "calibrated frame minus its background")
    for key, value, comment in provenance_cards(
        settings=settings, inputs=[calibrated], steps=["background", "detection"]
    ):
        header[key] = (value, comment)
    header["SKYLEVEL"] = (round(float(bkg.global_level), 3), "median sky (e-)")
    header["SKYRMS"] = (round(float(bkg.global_rms), 3), "median sky noise (e-)")
    flags = qa.get("flags") or []
    catalog.meta.update(
        {
            "NX": sci.shape[1],
            "NY": sci.shape[0],
            "NSOURCE": int(qa["n_sources"]),
            "NPSFSTAR": int(qa.get("n_psf_stars", 0)),
            "FWHMPX": _finite(qa["fwhm_px"]),
            "FWHM": _finite(qa["fwhm_arcsec"]),
            "ELLIP": _finite(qa["ellipticity"]),
            "SKY": _finite(qa["sky_level"]),
            "SKYRMS": _finite(qa["sky_noise"]),
            "QAFLAGS": "; ".join(flags) if not isinstance(flags, str) else flags,
        }
    )
    skysub = {
        "SCI": (sci - bkg.level).astype(np.float32),
        "VAR": var,
        "MASK": mask,
        "BKG": bkg.level.astype(np.float32),
    }
    return skysub, header, catalog, qa


def _meta_float(meta, key: str) -> float:
    """A number from a table's meta; NaN when absent or undefined (a FITS null)."""
    try:
        return float(meta.get(key))
    except (TypeError, ValueError):
        return np.nan


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def solve_frame(
    catalog: Table,
    refcat: Table,
    row: dict,
    instrument: Instrument,
    shape: tuple[int, int],
    settings: dict,
    tools: dict | None = None,
):
    """The astrometric solution of one frame x chip: (wcs0, AstrometryResult).

    ``settings`` is the configuration's ``astrometry`` block (plus ``mag_column``),
    ``tools`` its ``tools`` block (``scamp``, ``solve_field``: program names).

    1. With a pointing (and ``blind`` not ``always``): the initial WCS
       (:func:`~imred.astrometry.initial_wcs`) refined by ``method``: ``python``
       (:func:`~imred.astrometry.match_and_fit`) or ``scamp``
       (:func:`imred.scamp.solve_scamp`).
    2. Blind solving (:func:`imred.blind.solve_field`, then ``match_and_fit`` from the
       blind WCS): with ``blind: always``; with ``auto`` (the default) when the frame
       has no pointing, or when step 1 failed although there were enough usable
       sources and a reference catalog (a wrong pointing, a failed match); never with
       ``never``. A chip smaller than ``blind_min_field_deg`` is not tried. The result's
       ``method`` starts with ``"solve-field + "``; when blind solving fails too, the
       reason holds both failures.

    A bad frame is a result with ``ok`` False and the reason (the frame is left out
    of coadds), never an exception. ImredError only for the setup: SCAMP missing
    (``method: scamp``), solve-field missing with ``blind: always`` (with ``auto`` the
    reason says it is missing), an unknown method, no pixel scale.
    """
    tools = tools or {}
    method = settings.get("method", "python")
    blind = settings.get("blind", "auto")
    if method not in ("python", "scamp"):
        raise ImredError(f"astrometry.method {method!r} is not known: use python or scamp")
    if blind not in ("auto", "never", "always"):
        raise ImredError(f"astrometry.blind {blind!r} is not known: use auto, never or always")
    fit = {
        "mag_column": settings["mag_column"],
        "shape": shape,
        "search_radius_arcsec": settings["search_radius_arcsec"],
        "match_radius_arcsec": settings["match_radius_arcsec"],
        "sip_order": settings["sip_order"],
        "min_matches": settings["min_matches"],
        "max_rms_arcsec": settings["max_rms_arcsec"],
    }
    ra = _finite(row["ra"]) if row.get("ra") is not None else None
    dec = _finite(row["dec"]) if row.get("dec") is not None else None
    first = None
    if ra is not None and dec is not None and blind != "always":
        wcs0 = initial_wcs(
            instrument, row["chip"], ra, dec, row.get("rotator"), shape,
            binning=row.get("binning") or "1x1",
        )  # fmt: skip
        if method == "scamp":
            first = solve_scamp(
                catalog, refcat, wcs0, binary=tools.get("scamp", "scamp"),
                match_resol_arcsec=settings.get("scamp_match_resol_arcsec"), **fit,
            )  # fmt: skip
        else:
            first = match_and_fit(catalog, refcat, wcs0, **fit)
        helps = first.n_sources >= settings["min_matches"] and len(refcat) > 0
        if first.ok or blind == "never" or not helps:
            return wcs0, first
    else:
        wcs0 = WCS(naxis=2)
        wcs0.pixel_shape = shape[::-1]
        if blind == "never":
            reason = "no pointing (RA/Dec keywords) in the header, and astrometry.blind is never"
            return wcs0, AstrometryResult(wcs0, 0, np.nan, np.nan, np.nan, "none", False, reason)
    before = first.reason if first is not None else "no pointing (RA/Dec keywords) in the header"

    # ---- blind solving
    chip = instrument.chip(row["chip"])
    scale = instrument.chip_value(chip, "pixel_scale")
    if scale is None:
        raise ImredError(
            f"{instrument.source}: chip {chip.name} has no pixel_scale (set pixel_scale in the "
            "instrument file); blind solving needs it"
        )
    scale = float(scale) * _binning(row.get("binning") or "1x1")[0]
    try:
        blind_wcs, reason = solve_field(
            catalog, shape, scale, binary=tools.get("solve_field", "solve-field"),
            min_field_deg=settings.get("blind_min_field_deg", 0.4),
            cpulimit_s=settings.get("blind_cpulimit_s", 60.0),
        )  # fmt: skip
    except ImredError as exc:
        if blind == "always":
            raise
        blind_wcs, reason = None, f"skipped: {exc}"
    if blind_wcs is None:
        if first is None:
            first = AstrometryResult(wcs0, 0, np.nan, np.nan, np.nan, "none", False)
        return wcs0, replace(first, reason=f"{before}; blind solving: {reason}")
    result = match_and_fit(catalog, refcat, blind_wcs, **fit)
    result.method = f"solve-field + {result.method}"
    if not result.ok:
        result.reason = f"{before}; blind solution found, but not refined: {result.reason}"
    return blind_wcs, result


def calibrate_frame_photometry(
    skysub: str, wcs_path: str, catalog: Table, refcat: Table, mag_column: str, settings: dict
) -> tuple[dict, Table]:
    """Zero point of a frame and its catalog with calibrated magnitudes and sky positions."""
    head = fits.getheader(wcs_path)
    p = read_image_product(skysub)
    exptime = float(p["header"]["EXPTIME"])
    fwhm = _meta_float(catalog.meta, "FWHMPX")
    if not head.get("ASTOK", False):
        zp = {"ok": False, "reason": f"no astrometric solution: {head.get('ASTREAS', '')}"}
        out = catalog.copy()
        for col in ("ra", "dec", "mag", "mag_err"):
            out[col] = np.full(len(out), np.nan)  # the catalog keeps its columns, unsolved
        out.meta["ZP"] = None
        return zp | {"zero_point": np.nan, "zero_point_err": np.nan, "n_stars": 0}, out
    wcs = read_wcs(wcs_path)
    zp = frame_zero_point(
        p["SCI"], p["VAR"], p["MASK"], wcs, refcat, mag_column,
        exptime=exptime, fwhm_px=fwhm, aperture_fwhm=settings["aperture_fwhm"],
        min_snr=settings["min_snr"],
    )  # fmt: skip
    out = catalog.copy()
    ra, dec = wcs.all_pix2world(np.asarray(out["x"]), np.asarray(out["y"]), 0)
    out["ra"], out["dec"] = ra, dec
    flux = np.asarray(out["flux"], dtype=float)
    err = np.asarray(out["flux_err"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["mag"] = np.where(flux > 0, zp["zero_point"] - 2.5 * np.log10(flux / exptime), np.nan)
        out["mag_err"] = np.where(flux > 0, 1.0857 * err / flux, np.nan)
    out.meta["ZP"] = _finite(zp["zero_point"])  # FITS has no NaN: None when it failed
    out.meta["ZPERR"] = _finite(zp["zero_point_err"])
    out.meta["ZPNSTAR"] = zp["n_stars"]
    return zp, out


def frame_qa_table(entries: list[dict]) -> Table:
    """The night's frame QA table from one dict per frame x chip (see imred.paths)."""
    cols = [
        "frame", "chip", "band", "target", "airmass", "exptime", "fwhm_arcsec",
        "ellipticity", "n_sources", "sky", "sky_rms", "astrometric_rms_arcsec",
        "astrometry_matches", "zero_point", "zero_point_err", "zero_point_stars", "flags",
    ]  # fmt: skip
    text = ("frame", "chip", "band", "target", "flags")
    rows = [{c: e.get(c) for c in cols} for e in entries]
    for r in rows:
        for c in cols:
            # a missing value (None, or a FITS null read back as astropy's Undefined)
            if c in text:
                r[c] = r[c] or ""
            elif not isinstance(r[c], int | float | np.number):
                r[c] = _meta_float(r, c)
    return Table(rows=rows, names=cols) if rows else Table(names=cols)
