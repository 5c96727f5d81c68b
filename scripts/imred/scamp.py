"""Astrometry with SCAMP (``astrometry.method: scamp``): one chip, offline, TAN-SIP out.

:func:`solve_scamp` is the SCAMP counterpart of :func:`imred.astrometry.match_and_fit`:
the same inputs (the detections of one chip, the reference catalog, a first WCS) and
the same :class:`~imred.astrometry.AstrometryResult`. In a temporary folder it writes

- ``chip.cat``: the detections as a FITS-LDAC catalog (as SExtractor would write it):
  ``LDAC_IMHEAD`` holds an image header (``NAXIS1``/``NAXIS2`` and the first WCS as
  plain TAN: SCAMP knows no SIP) and ``LDAC_OBJECTS`` the columns SCAMP reads:
  ``XWIN_IMAGE``, ``YWIN_IMAGE`` (1-based), ``ERRAWIN_IMAGE``, ``ERRBWIN_IMAGE``,
  ``ERRTHETAWIN_IMAGE``, ``FLUX_AUTO``, ``FLUXERR_AUTO``, ``MAG_AUTO``, ``MAGERR_AUTO``,
  ``FLUX_RADIUS``, ``ELONGATION``, ``FLAGS``, ``FLAGS_WEIGHT``, ``IMAFLAGS_ISO``;
- ``astref.cat``: the reference catalog (:func:`imred.refcat.write_ldac`, without
  proper motions: the positions are already at the image's epoch);

runs ``scamp chip.cat -c config/astromatic/scamp.conf`` with ``ASTREF_CATALOG FILE``
(never a network catalog), ``MATCH_RESOL`` set, ``DISTORT_DEGREES`` from ``sip_order``
and no photometry or check-plots, and reads its solution ``chip.head`` and its XML
report ``scamp.xml`` (for the match contrasts).

From TPV to TAN-SIP
-------------------
SCAMP writes TPV (``PVi_j`` polynomials of the intermediate world coordinates). The
pipeline has one convention, TAN-SIP: the TPV WCS is evaluated on a 31 x 31 grid of
pixels over the chip (plus a 5 % margin) and a TAN-SIP of the same order is fitted to
it with :mod:`imred.astrometry`'s least squares (CRPIX at the chip centre, as
:func:`~imred.astrometry.match_and_fit` has it). A TPV polynomial of degree N composed
with the linear CD is a polynomial of degree N in the pixels, so the SIP of order N
reproduces it exactly (to < 0.1 mas in the tests); a conversion error above
:data:`MAX_CONVERSION_ERROR_ARCSEC` is reported as a failure.

Measured by imred
-----------------
SCAMP's rms (``ASTRRMS1/2`` of the ``.head``) is logged, not used: the converted WCS
is measured against the reference catalog as ``match_and_fit`` measures its fit: each
usable source goes to the nearest catalog star within ``match_radius_arcsec`` (one
source per star), pairs beyond ``clip_sigma`` in units of ``sqrt(err_cat^2 + s^2)``
(``s`` the robust extra scatter) are not counted, and the rms is that of the remaining
pairs (no correction for the fitted degrees of freedom).

The match count alone does not prove a match: when SCAMP finds none it still fits its
polynomial to whatever pairs lie within ``CROSSID_RADIUS``, and a degree-3 fit (20
coefficients) pulls 10-20 chance pairs of a 400-star field within 1" with a small rms.
SCAMP's position contrast (``XY_Contrast`` of its XML report) tells: it must reach
:data:`MIN_POSITION_CONTRAST`.

``ok`` is False with a reason for: no usable sources, no reference stars near the
chip, SCAMP failing or timing out, fewer than ``min_matches`` matches, a position
contrast below :data:`MIN_POSITION_CONTRAST`, a pixel scale more than
``max_scale_change`` from the first WCS's, an rms above ``max_rms_arcsec``. Only a
missing SCAMP binary (or configuration file) raises (:class:`~imred.errors.ImredError`,
naming the setting ``tools.scamp``).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.votable import parse as parse_votable
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from .astrometry import (
    DEFAULT_FLAG_MASK,
    AstrometryResult,
    _column,
    _fit_model,
    _match,
    _max_order,
    _robust_extra_variance,
    _to_tan,
    check_refcat,
    usable_sources,
    wcs_header,
)
from .detect import ASTROMATIC_DIR
from .errors import ImredError
from .refcat import write_ldac, write_ldac_file

__all__ = [
    "MAX_CONVERSION_ERROR_ARCSEC",
    "MIN_POSITION_CONTRAST",
    "SCAMP_CONFIG",
    "merge_wcs_header",
    "read_scamp_head",
    "solve_scamp",
]

LOG = logging.getLogger("imred.scamp")
METHOD = "scamp"
SCAMP_CONFIG = ASTROMATIC_DIR / "scamp.conf"
#: largest difference (arcsec) between SCAMP's TPV and the fitted TAN-SIP on the chip
MAX_CONVERSION_ERROR_ARCSEC = 0.002
#: SCAMP's position contrast (``XY_Contrast``) below which its match is rejected: right
#: matches gave 2.5-4.3 on sparse demo chips (10-13 stars) and ~50 on the tests' 400-star
#: field; wrong ones 0.9-1.0 (sparse) and 0.016-0.02 (a degree-3 polynomial fitted to
#: 11-16 chance pairs within 1", which the match count alone does not reveal)
MIN_POSITION_CONTRAST = 1.5
_GRID = 31
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # SCAMP's terminal control sequences
_DEFAULT_CENTROID_ERR_PX = 0.1  # when the table has neither x_err/y_err nor fwhm_px/snr

#: linear and distortion keywords removed from a header before another WCS is merged in
_WCS_KEY_PREFIXES = ("PC", "CD", "CDELT", "PV", "A_", "B_", "AP_", "BP_")


def _is_distortion_or_linear_key(key: str) -> bool:
    key = key.upper()
    if key in ("A_ORDER", "B_ORDER", "AP_ORDER", "BP_ORDER", "A_DMAX", "B_DMAX"):
        return True
    for prefix in _WCS_KEY_PREFIXES:
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            if prefix.endswith("_") or rest[:1].isdigit():
                return True
    return False


def merge_wcs_header(base: fits.Header, new: fits.Header) -> fits.Header:
    """``base`` with the cards of ``new``: PC/CD/CDELT/PV/SIP keys of ``base`` go first.

    Without the removal a TPV header merged into a TAN-SIP one (or the reverse) would
    leave the other convention's coefficients behind, and a CD matrix next to a PC one.
    """
    out = base.copy()
    for key in list(out.keys()):
        if _is_distortion_or_linear_key(key):
            out.remove(key, ignore_missing=True, remove_all=True)
    for card in new.cards:
        if card.keyword in ("COMMENT", "HISTORY", ""):
            continue
        out[card.keyword] = (card.value, card.comment)
    return out


def read_scamp_head(path: str | Path) -> fits.Header:
    """A SCAMP ``.head`` file as a header (newline-separated cards, with UTF-8 comments).

    SCAMP 2.10 writes its copyright line with UTF-8 characters: the bytes are decoded
    as UTF-8 (errors replaced) and anything not printable ASCII becomes ``?`` so that
    astropy accepts every card.
    """
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    text = "".join(c if (" " <= c <= "~") or c == "\n" else "?" for c in text)
    return fits.Header.fromstring(text, sep="\n")


def _plain_tan_header(wcs0: WCS, shape: tuple[int, int]) -> fits.Header:
    """An image header for ``LDAC_IMHEAD``: NAXISn and ``wcs0`` without SIP (CD form)."""
    linear = wcs0.deepcopy()
    linear.sip = None
    linear.wcs.ctype = [c.replace("-SIP", "") for c in linear.wcs.ctype]
    linear.wcs.set()
    ny, nx = shape
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = -32
    header["NAXIS"] = 2
    header["NAXIS1"] = nx
    header["NAXIS2"] = ny
    header["EXPTIME"] = (1.0, "no photometry is solved")
    header["EQUINOX"] = 2000.0
    return merge_wcs_header(header, wcs_header(linear))


def _source_objects(sources: Table, rows: np.ndarray) -> fits.BinTableHDU:
    """The LDAC_OBJECTS HDU of the usable sources ``rows`` (SExtractor's column names)."""
    n = len(rows)
    x = _column(sources, "x", None)[rows]
    y = _column(sources, "y", None)[rows]

    def optional(name: str, fill: float) -> np.ndarray:
        if name not in sources.colnames:
            return np.full(n, fill)
        values = _column(sources, name, None)[rows]
        return np.where(np.isfinite(values), values, fill)

    flux = optional("flux", 1.0)
    flux = np.where(flux > 0, flux, np.nan)
    flux_err = optional("flux_err", np.nan)
    flux_err = np.where(np.isfinite(flux_err) & (flux_err > 0), flux_err, 0.01 * np.abs(flux))
    snr = np.abs(flux) / flux_err
    if {"x_err", "y_err"} <= set(sources.colnames):
        ex, ey = optional("x_err", np.nan), optional("y_err", np.nan)
    else:
        ex = ey = optional("fwhm_px", np.nan) / (2.3548 * snr)
    ex = np.where(np.isfinite(ex) & (ex > 0), ex, _DEFAULT_CENTROID_ERR_PX)
    ey = np.where(np.isfinite(ey) & (ey > 0), ey, _DEFAULT_CENTROID_ERR_PX)
    radius = optional("flux_radius", 2.0)
    elong = optional("a", 1.0) / np.maximum(optional("b", 1.0), 1e-3)
    with np.errstate(invalid="ignore", divide="ignore"):
        mag = np.where(np.isfinite(flux), -2.5 * np.log10(flux), 99.0)
        mag_err = np.where(np.isfinite(flux), 2.5 / math.log(10.0) / snr, 99.0)
    flux = np.where(np.isfinite(flux), flux, 0.0)
    zeros = np.zeros(n, dtype=np.int16)
    columns = [
        fits.Column(name="NUMBER", format="J", array=np.arange(1, n + 1, dtype=np.int32)),
        fits.Column(name="XWIN_IMAGE", format="D", unit="pixel", array=x + 1.0),
        fits.Column(name="YWIN_IMAGE", format="D", unit="pixel", array=y + 1.0),
        fits.Column(name="ERRAWIN_IMAGE", format="E", unit="pixel", array=np.maximum(ex, ey)),
        fits.Column(name="ERRBWIN_IMAGE", format="E", unit="pixel", array=np.minimum(ex, ey)),
        fits.Column(
            name="ERRTHETAWIN_IMAGE", format="E", unit="deg", array=np.where(ex >= ey, 0.0, 90.0)
        ),
        fits.Column(name="FLUX_AUTO", format="E", unit="count", array=flux),
        fits.Column(name="FLUXERR_AUTO", format="E", unit="count", array=flux_err),
        fits.Column(name="MAG_AUTO", format="E", unit="mag", array=mag),
        fits.Column(name="MAGERR_AUTO", format="E", unit="mag", array=mag_err),
        fits.Column(name="FLUX_RADIUS", format="E", unit="pixel", array=radius),
        fits.Column(name="ELONGATION", format="E", array=elong),
        fits.Column(name="FLAGS", format="I", array=zeros),
        fits.Column(name="FLAGS_WEIGHT", format="I", array=zeros),
        fits.Column(name="IMAFLAGS_ISO", format="J", array=zeros.astype(np.int32)),
    ]
    return fits.BinTableHDU.from_columns(columns)


def _tpv_to_sip(tpv: WCS, shape: tuple[int, int], order: int) -> tuple[WCS, float]:
    """A TAN-SIP WCS of ``order`` fitted to ``tpv`` over the chip; (wcs, max error arcsec)."""
    ny, nx = shape
    margin = 0.05 * max(nx, ny)
    gx, gy = np.meshgrid(
        np.linspace(-margin, nx - 1 + margin, _GRID), np.linspace(-margin, ny - 1 + margin, _GRID)
    )
    gx, gy = gx.ravel(), gy.ravel()
    ra, dec = tpv.all_pix2world(gx, gy, 0)
    crpix = np.array([(nx + 1) / 2.0, (ny + 1) / 2.0])
    crval = tuple(float(v) for v in tpv.all_pix2world([[crpix[0] - 1, crpix[1] - 1]], 0)[0])
    ones = np.ones(len(gx))
    model = _fit_model(gx, gy, ra, dec, order, crpix, crval, ones, ones)
    m_xi, m_eta = model.tan(gx, gy)
    c_xi, c_eta = _to_tan(ra, dec, *model.crval)
    return model.to_wcs(shape), float(np.max(np.hypot(m_xi - c_xi, m_eta - c_eta)))


def _measure(
    wcs: WCS,
    x: np.ndarray,
    y: np.ndarray,
    refcat: Table,
    radius_arcsec: float,
    clip_sigma: float,
    n_free: int,
):
    """Pairs of sources (through ``wcs``) and catalog stars within ``radius_arcsec``.

    Returns ``(i_src, i_cat, r_xi, r_eta, used)``: residuals (arcsec, source minus
    star, about the chip's centre) and the pairs kept as ``match_and_fit`` keeps them:
    within ``clip_sigma`` in units of ``sqrt(err_cat^2 + s^2)`` per axis, ``s`` the
    robust extra scatter (:func:`imred.astrometry._robust_extra_variance`; ``n_free``
    fitted coefficients), ``err_cat`` the catalog's ``ra_err``/``dec_err``.
    """
    ny, nx = wcs.pixel_shape[1], wcs.pixel_shape[0]
    ra_c, dec_c = (float(v) for v in wcs.all_pix2world([[(nx - 1) / 2, (ny - 1) / 2]], 0)[0])
    sky = wcs.all_pix2world(np.column_stack([x, y]), 0)
    src = np.column_stack(_to_tan(sky[:, 0], sky[:, 1], ra_c, dec_c))
    cat_ra, cat_dec = _column(refcat, "ra", "deg"), _column(refcat, "dec", "deg")
    cat = np.column_stack(_to_tan(cat_ra, cat_dec, ra_c, dec_c))
    good = np.nonzero(np.all(np.isfinite(cat), axis=1))[0]
    if len(good) == 0:
        empty = np.zeros(0)
        return empty.astype(int), empty.astype(int), empty, empty, empty.astype(bool)
    i_src, i_cat = _match(src, cKDTree(cat[good]), radius_arcsec)
    i_cat = good[i_cat]
    r = src[i_src] - cat[i_cat]
    errors = []
    for name in ("ra_err", "dec_err"):
        e = np.zeros(len(i_cat))
        if name in refcat.colnames:
            e = _column(refcat, name, "mas")[i_cat] / 1000.0
        errors.append(np.where(np.isfinite(e) & (e > 0), e, 0.0))
    used = np.ones(len(i_src), dtype=bool)
    if 2 * len(i_src) > n_free:
        s2 = _robust_extra_variance(r[:, 0], r[:, 1], errors[0], errors[1], n_free)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.maximum(
                np.abs(r[:, 0]) / np.sqrt(errors[0] ** 2 + s2),
                np.abs(r[:, 1]) / np.sqrt(errors[1] ** 2 + s2),
            )
        used = z <= clip_sigma
    return i_src, i_cat, r[:, 0], r[:, 1], used


def _match_contrast(path: Path) -> tuple[float, float]:
    """SCAMP's contrasts of its pattern match (``AS_Contrast``: angle and scale,
    ``XY_Contrast``: position) from its XML (VOTable) report; NaN when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            votable = parse_votable(str(path))
        for table in votable.iter_tables():
            if table.name == "Fields":
                fields = table.to_table()
                return float(fields["AS_Contrast"][0]), float(fields["XY_Contrast"][0])
    except (OSError, ValueError, KeyError, IndexError) as exc:
        LOG.warning("SCAMP's XML report %s could not be read: %s", path, exc)
    return math.nan, math.nan


def solve_scamp(
    sources: Table,
    refcat: Table,
    wcs0: WCS,
    *,
    mag_column: str | None = None,
    shape: tuple[int, int] | None = None,
    binary: str = "scamp",
    config_file: str | Path | None = None,
    match_resol_arcsec: float | None = None,
    search_radius_arcsec: float = 30.0,
    match_radius_arcsec: float = 1.0,
    sip_order: int = 3,
    min_matches: int = 10,
    max_rms_arcsec: float | None = None,
    max_scale_change: float = 0.05,
    clip_sigma: float = 3.0,
    flag_mask: int = DEFAULT_FLAG_MASK,
    timeout_s: float = 300.0,
) -> AstrometryResult:
    """Solve one chip with SCAMP against a local reference catalog; a TAN-SIP result.

    Parameters
    ----------
    sources, refcat, wcs0, mag_column, shape, search_radius_arcsec, match_radius_arcsec,
    sip_order, min_matches, max_rms_arcsec, max_scale_change, clip_sigma, flag_mask
        As for :func:`imred.astrometry.match_and_fit` (``search_radius_arcsec`` becomes
        SCAMP's ``POSITION_MAXERR``; ``sip_order`` its ``DISTORT_DEGREES``, lowered
        like ``match_and_fit``'s order to what the number of usable sources supports).
        ``refcat`` positions must be at the image's epoch (proper motions are not
        given to SCAMP). Without ``mag_column`` every star gets magnitude 0.
    binary : str
        The SCAMP program (setting ``tools.scamp``).
    config_file : path, optional
        SCAMP configuration; default :data:`SCAMP_CONFIG`.
    match_resol_arcsec : float, optional
        SCAMP's ``MATCH_RESOL``; default the larger of 1 arcsec and the pixel scale.
    timeout_s : float
        SCAMP running longer is a failure.

    Returns
    -------
    AstrometryResult
        ``method`` ``"scamp TPV->TAN-SIP order N"`` (``"scamp TAN"`` for order 1); see
        the module docstring for the failures.

    Raises
    ------
    ImredError
        SCAMP (``binary``) is not installed, or the configuration file is missing.
    """
    program = shutil.which(binary)
    if program is None:
        raise ImredError(
            f"SCAMP binary {binary!r} not found on PATH (setting tools.scamp): install SCAMP "
            "(Debian: apt install scamp; conda-forge: astromatic-scamp) or set tools.scamp to "
            "its name or path, or use astrometry.method: python"
        )
    config_file = Path(config_file) if config_file is not None else SCAMP_CONFIG
    if not config_file.is_file():
        raise ImredError(
            f"SCAMP configuration file {config_file} is missing: restore it from imred's "
            "config/astromatic"
        )
    if shape is None:
        if wcs0.pixel_shape is None:
            raise ValueError("solve_scamp needs the image shape (shape= or wcs0.pixel_shape)")
        shape = (int(wcs0.pixel_shape[1]), int(wcs0.pixel_shape[0]))
    ny, nx = (int(n) for n in shape)
    nan = math.nan

    def failed(reason: str, **extra) -> AstrometryResult:
        kw = {"wcs": wcs0, "n_matches": 0, "rms_arcsec": nan, "rms_ra_arcsec": nan}
        kw |= {"rms_dec_arcsec": nan, "method": METHOD, "ok": False, "reason": reason}
        return AstrometryResult(**(kw | extra))

    # ---- usable sources (the same selection as match_and_fit)
    src_rows, problem = usable_sources(sources, min_matches, flag_mask)
    n_src = len(src_rows)
    if problem:
        return failed(problem, n_sources=n_src)
    x, y = _column(sources, "x", None)[src_rows], _column(sources, "y", None)[src_rows]

    # ---- reference stars near the chip
    problem = check_refcat(refcat, mag_column)
    if problem:
        return failed(problem, n_sources=n_src)
    cat_ra, cat_dec = _column(refcat, "ra", "deg"), _column(refcat, "dec", "deg")
    centre = wcs0.all_pix2world([[(nx - 1) / 2.0, (ny - 1) / 2.0]], 0)[0]
    corner = wcs0.all_pix2world([[0.0, 0.0]], 0)[0]
    cxi, ceta = _to_tan(cat_ra, cat_dec, *centre)
    k_xi, k_eta = _to_tan(corner[0], corner[1], *centre)
    reach = math.hypot(float(k_xi), float(k_eta)) + search_radius_arcsec
    with np.errstate(invalid="ignore"):
        near = np.hypot(cxi, ceta) <= reach
    n_ref = int(near.sum())
    if n_ref == 0:
        return failed(
            f"no reference stars in the field (none of the catalog's {len(refcat)} stars lies "
            f"within {search_radius_arcsec:g} arcsec of the chip)",
            n_sources=n_src,
        )
    context = {"n_sources": n_src, "n_reference": n_ref}

    scale0 = math.sqrt(abs(np.linalg.det(wcs0.pixel_scale_matrix))) * 3600.0
    resol = max(1.0, scale0) if match_resol_arcsec is None else float(match_resol_arcsec)
    degree = _max_order(n_src, sip_order)
    ref = refcat[near]
    ref = ref[[c for c in ref.colnames if not c.startswith(("pmra", "pmdec"))]]
    if mag_column is None:
        mag_column = "_imred_mag"
        ref[mag_column] = np.zeros(len(ref))

    with tempfile.TemporaryDirectory(prefix="imred-scamp-") as tmp:
        tmp = Path(tmp)
        write_ldac_file(
            tmp / "chip.cat", _plain_tan_header(wcs0, (ny, nx)), _source_objects(sources, src_rows)
        )
        write_ldac(ref, tmp / "astref.cat", mag_column=mag_column)
        settings = {
            "ASTREF_CATALOG": "FILE",
            "ASTREFCAT_NAME": "astref.cat",
            "MATCH_RESOL": f"{resol:g}",
            "POSITION_MAXERR": f"{search_radius_arcsec / 60.0:g}",
            "CROSSID_RADIUS": f"{max(1.0, 2.0 * match_radius_arcsec):g}",
            "DISTORT_DEGREES": str(degree),
            "SOLVE_PHOTOM": "N",
            "CHECKPLOT_TYPE": "NONE",
            "CHECKPLOT_DEV": "NULL",
            "WRITE_XML": "Y",
            "XML_NAME": "scamp.xml",
            "NTHREADS": "1",
            "AHEADER_GLOBAL": "none.ahead",
        }
        command = [program, "chip.cat", "-c", str(config_file.resolve())]
        for key, value in settings.items():
            command += [f"-{key}", value]
        try:
            proc = subprocess.run(
                command, cwd=tmp, capture_output=True, timeout=timeout_s, env=dict(os.environ)
            )
        except subprocess.TimeoutExpired:
            return failed(f"SCAMP did not finish within {timeout_s:g} s", **context)
        output = _ANSI.sub("", (proc.stderr + proc.stdout).decode("utf-8", errors="replace"))
        head_path = tmp / "chip.head"
        if proc.returncode != 0 or not head_path.is_file():
            tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
            return failed(f"SCAMP failed (exit {proc.returncode}): {tail}", **context)
        head = read_scamp_head(head_path)
        contrast = _match_contrast(tmp / "scamp.xml")
    LOG.debug("SCAMP output:\n%s", output)

    # ---- SCAMP's TPV as TAN-SIP, measured against the catalog
    tpv_header = merge_wcs_header(_plain_tan_header(wcs0, (ny, nx)), head)
    for key in ("NAXIS", "NAXIS1", "NAXIS2", "SIMPLE", "BITPIX", "EXPTIME"):
        tpv_header.remove(key, ignore_missing=True)
    if not any(key.startswith("PV") for key in head):
        # no polynomial (SCAMP writes none when it could not solve): in TPV every
        # missing coefficient is 0, which would map the whole chip onto CRVAL
        tpv_header["CTYPE1"], tpv_header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    try:
        tpv = WCS(tpv_header)
        tpv.pixel_shape = (nx, ny)
        wcs, conversion = _tpv_to_sip(tpv, (ny, nx), degree)
    except (ValueError, np.linalg.LinAlgError) as exc:  # astropy's WCS errors are ValueErrors
        return failed(f"SCAMP's solution is not a usable WCS ({exc})".replace("\n", " "), **context)
    scamp_rms = math.hypot(head.get("ASTRRMS1", nan), head.get("ASTRRMS2", nan)) * 3600.0
    LOG.info(
        "SCAMP's own numbers: rms against the reference (high S/N) %.3g arcsec, match "
        "contrast %.3g (angle, scale), %.3g (position); TPV -> TAN-SIP order %d within "
        "%.2g mas", scamp_rms, contrast[0], contrast[1], degree, 1000.0 * conversion,
    )  # fmt: skip
    n_free = 2 * (degree + 1) * (degree + 2) // 2
    i_src, i_cat, r_xi, r_eta, used = _measure(
        wcs, x, y, refcat, match_radius_arcsec, clip_sigma, n_free
    )
    n_used = int(used.sum())
    rms_ra = float(np.sqrt(np.mean(r_xi[used] ** 2))) if n_used else nan
    rms_dec = float(np.sqrt(np.mean(r_eta[used] ** 2))) if n_used else nan
    method = f"{METHOD} TPV->TAN-SIP order {degree}" if degree >= 2 else f"{METHOD} TAN"
    result = AstrometryResult(
        wcs=wcs,
        n_matches=n_used,
        rms_arcsec=math.hypot(rms_ra, rms_dec),
        rms_ra_arcsec=rms_ra,
        rms_dec_arcsec=rms_dec,
        method=method,
        ok=True,
        sip_order=degree,
        matches=Table(
            {
                "source": src_rows[i_src],
                "ref": i_cat,
                "x": x[i_src],
                "y": y[i_src],
                "ra": cat_ra[i_cat],
                "dec": cat_dec[i_cat],
                "dra": r_xi,
                "ddec": r_eta,
                "used": used,
            }
        ),
        **context,
    )
    scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    limit = max(0.5, scale0) if max_rms_arcsec is None else float(max_rms_arcsec)
    if n_used < min_matches:
        result.ok = False
        result.reason = (
            f"fewer matches than {min_matches}: {n_used} within {match_radius_arcsec:g} arcsec "
            "of SCAMP's solution (no match found?)"
        )
    elif contrast[1] < MIN_POSITION_CONTRAST:
        result.ok = False
        result.reason = (
            f"SCAMP's match is not significant: position contrast {contrast[1]:.3g} below "
            f"{MIN_POSITION_CONTRAST:g} (a chance solution fitted to {n_used} pairs?)"
        )
    elif abs(scale / scale0 - 1.0) > max_scale_change:
        result.ok = False
        result.reason = (
            f"the fitted pixel scale {scale:.4g} arcsec differs from the expected "
            f"{scale0:.4g} by more than {100 * max_scale_change:g} % (a wrong match?)"
        )
    elif result.rms_arcsec > limit:
        result.ok = False
        result.reason = f"rms {result.rms_arcsec:.3g} arcsec above the limit {limit:.3g} arcsec"
    elif conversion > MAX_CONVERSION_ERROR_ARCSEC:
        result.ok = False
        result.reason = (
            f"SCAMP's TPV solution differs from its TAN-SIP form by {1000 * conversion:.3g} mas"
        )
    scamp_warnings = [line.strip(" >") for line in output.splitlines() if "WARNING" in line]
    if not result.ok and scamp_warnings:
        result.reason += f" (SCAMP: {scamp_warnings[0]})"
    return result
