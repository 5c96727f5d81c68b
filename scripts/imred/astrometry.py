"""Astrometry: a chip's initial WCS from the instrument file, and a TAN-SIP solution.

Three parts, all in memory except the last:

- :func:`initial_wcs`: the TAN WCS of one chip's trimmed grid from the telescope
  pointing, the rotator angle and the chip's ``geometry`` in the instrument file;
- :func:`match_and_fit`: match detected sources to a reference catalog (robust to a
  pointing error of tens of arcseconds and a small rotation), then fit a TAN-SIP WCS
  by linear least squares with sigma clipping; failures come back as
  ``AstrometryResult(ok=False, reason=...)``, not as exceptions;
- :func:`write_wcs` / :func:`read_wcs`: the frame WCS product (``paths.FRAME_WCS``).

Conventions
-----------
* Images are ``(ny, nx)``; pixel positions ``x, y`` are 0-based on the chip's trimmed
  grid (the centre of pixel ``[j, i]`` is ``x = i, y = j``); FITS ``CRPIX`` is 1-based.
  astropy calls take ``origin=0`` for these positions.
* Sky offsets ``(xi, eta)`` are gnomonic (TAN) coordinates in arcsec, ``xi`` towards
  east (increasing RA), ``eta`` towards north. Residuals "in RA" are along
  ``RA cos(Dec)``.
* One WCS convention: TAN, with SIP (``RA---TAN-SIP``, ``A``/``B`` forward and
  ``AP``/``BP`` inverse polynomials) when there are enough stars to show the
  distortion above the noise (plain ``RA---TAN`` otherwise); never TPV.

The frame WCS product
---------------------
A FITS file with one HDU and no data: a primary HDU with ``NAXIS = 2``,
``NAXIS1 = NAXIS2 = 0`` (a zero-size array: no pixels follow; ``NAXIS = 0`` would make
astropy warn that the WCS has more axes than the image) whose header is the WCS of the
chip's trimmed grid: ``CTYPEi``, ``CRPIXi``, ``CRVALi``, ``CDi_j`` (degrees),
``CUNITi``, ``RADESYS = 'ICRS'``, SIP ``A_ORDER``/``B_ORDER``/``AP_ORDER``/``BP_ORDER``
and their coefficients, ``IMAGEW``/``IMAGEH`` (the grid's nx, ny, as astrometry.net
writes them) and the quality keywords of :meth:`AstrometryResult.header_cards`:
``ASTOK`` (T when solved), ``ASTREAS`` (why not), ``ASTMETH``, ``ASTNMAT`` (matched
stars in the fit), ``ASTRMS`` (2-D rms of the fit residuals, arcsec), ``ASTRMSRA``,
``ASTRMSDE`` (per axis, arcsec), ``ASTNSRC``, ``ASTNREF``, ``ASTORDER`` (SIP order, 1
for plain TAN). ``astropy.wcs.WCS(fits.getheader(path))`` reads it without a warning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, Sip
from scipy.optimize import brentq
from scipy.spatial import cKDTree

from .errors import ImredError
from .fitsio import write_atomic
from .instrument import Chip, Instrument
from .sections import parse_section

ARCSEC = 1.0 / 3600.0
METHOD = "imred-python"

# star count needed per fitted coefficient (per axis) before a higher order is used
_STARS_PER_COEFFICIENT = 3

# source flags (imred.detect's bits) that keep a source out: SATURATED 4, EDGE 8,
# MASKED 16, OVERFLOW 32, MEASUREMENT 64; NEIGHBOURS 1 and BLENDED 2 stay in (common in
# crowded fields; the few whose centroids are off are clipped)
DEFAULT_FLAG_MASK = 4 | 8 | 16 | 32 | 64


# ================================================================ initial WCS
def position_angle(instrument: Instrument, rotator_deg: float | None) -> float:
    """The camera's sky position angle (deg) for a rotator reading.

    ``PA = sign * value + offset_deg`` (instrument file ``rotator``), the angle from
    north to the chip's +y axis through east; ``value`` is ``rotator_deg`` or, when that
    is None (or NaN), the rotator's ``default_deg``.
    """
    rot = instrument.rotator or {}
    value = rotator_deg
    if value is None or not np.isfinite(value):
        value = rot.get("default_deg", 0.0) or 0.0
    sign = float(rot.get("sign", 1))
    return sign * float(value) + float(rot.get("offset_deg", 0.0) or 0.0)


def _sky_rotation(pa_deg: float) -> np.ndarray:
    """Turns north ``(0, 1)`` into the direction of position angle ``pa`` (east of north)."""
    t = math.radians(pa_deg)
    return np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])


def _chip_matrix(scale: float, rotator: dict, geometry: dict) -> np.ndarray:
    """arcsec (east, north) per unbinned pixel (dx, dy) at PA 0."""
    sky = np.array([[-scale, 0.0], [0.0, scale]])  # east to the left
    if rotator.get("flip_x"):
        sky = sky @ np.diag([-1.0, 1.0])  # east to the right
    phi = math.radians(float(geometry.get("rotation_deg", 0.0) or 0.0))
    turn = np.array([[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    flip = np.diag(
        [-1.0 if geometry.get("flip_x") else 1.0, -1.0 if geometry.get("flip_y") else 1.0]
    )
    return sky @ turn @ flip


def _binning(binning) -> tuple[int, int]:
    if isinstance(binning, str):
        parts = [p for p in re.split(r"[\sx,*]+", binning.strip().lower()) if p]
        binning = [int(p) for p in parts] * (2 if len(parts) == 1 else 1)
    bx, by = (int(b) for b in binning)
    if bx < 1 or by < 1:
        raise ImredError(f"binning {binning!r}: both factors must be >= 1")
    return bx, by


def initial_wcs(
    instrument: Instrument,
    chip: Chip | str,
    ra: float,
    dec: float,
    rotator_deg: float | None,
    shape: tuple[int, int],
    binning: tuple[int, int] | str = (1, 1),
    trim_offset: tuple[float, float] = (0.0, 0.0),
) -> WCS:
    """The TAN WCS of one chip's trimmed grid from the pointing, rotator and focal plane.

    Parameters
    ----------
    instrument : Instrument
        The camera (``pixel_scale``, ``rotator``, the chip's ``geometry``).
    chip : Chip or str
        The chip (or its name).
    ra, dec : float
        ICRS position of the optical axis, degrees (convert a header pointing with
        :func:`imred.instrument.pointing_to_icrs` first).
    rotator_deg : float or None
        The rotator reading (normalised header value); None (or NaN) means the
        rotator's ``default_deg``.
    shape : (ny, nx)
        Shape of the image the WCS is for (the trimmed chip, binned).
    binning : (bx, by) or str
        Binning of the image (``"2x2"`` as in the observation log is accepted).
    trim_offset : (tx, ty)
        Unbinned pixels between the lower-left corner of the trimmed chip and the
        lower-left corner of the image's pixel ``[0, 0]`` (default 0: the image starts
        where the trimmed chip starts). With binning, :func:`imred.calib.trim_section`
        starts the binned grid at binned pixel ``(x1 - 1) // bx`` of a trim section
        ``[x1:...]``, i.e. ``tx = bx * ((x1 - 1) // bx) - (x1 - 1)`` (0 when ``x1 - 1``
        is a multiple of ``bx``).

    Returns
    -------
    astropy.wcs.WCS
        ``RA---TAN``/``DEC--TAN`` with ``CRVAL = (ra, dec)`` (the tangent point is the
        optical axis), ``CRPIX`` the 1-based image pixel of the optical axis (usually
        outside the chip), ``CD`` in degrees per image pixel; ``pixel_shape`` set. No
        distortion.

    Notes
    -----
    The convention (the simulator's, :mod:`imred.sim.optics`), with ``s`` the pixel
    scale (arcsec per unbinned pixel; the chip's, else the instrument's):

    1. Chip matrix at position angle 0, arcsec (east, north) per pixel step (dx, dy)::

           M0 = S @ Rchip(rotation_deg) @ diag(fx, fy)
           S = [[-s, 0], [0, s]]        (east to the left: x grows towards west)
           S = [[+s, 0], [0, s]]        (rotator.flip_x: east to the right)
           Rchip(phi) = [[cos phi, -sin phi], [sin phi, cos phi]]  (counter-clockwise)
           fx = -1 if geometry.flip_x else 1; fy likewise with flip_y

       (the flips act first, then the rotation, then the sky orientation).
    2. Position angle ``PA = sign * rotator + offset_deg`` (east of north, the direction
       of the chip's +y on the sky); the sky rotation is
       ``R(PA) = [[cos PA, sin PA], [-sin PA, cos PA]]`` (it turns north (0, 1) into
       (sin PA, cos PA): +PA moves +y from north towards east).
    3. ``geometry.offset_arcsec = (east, north)`` is the offset of the chip's reference
       pixel ``p_ref`` (``geometry.reference_pixel``, 1-based on the unbinned trimmed
       chip; default its centre ``((nx_t + 1) / 2, (ny_t + 1) / 2)``) from the optical
       axis at rotator reading 0, i.e. at ``PA0 = offset_deg``. The chip turns with the
       rotator, so at any PA an unbinned pixel ``p`` (1-based) lies at::

           (xi, eta) = R(PA) @ M0 @ (p - p_ref) + R(PA - PA0) @ offset

       about the optical axis; the optical axis is the fixed pixel
       ``p_axis = p_ref - inv(R(PA0) @ M0) @ offset``.
    4. Image pixel ``X`` (1-based, binned) covers unbinned 1-based pixel centre
       ``p = t + b X - (b - 1) / 2`` (per axis, ``t`` = ``trim_offset``), so
       ``CRPIX = (p_axis - t + (b - 1) / 2) / b`` and
       ``CD = R(PA) @ M0 @ diag(bx, by) / 3600``.

    A plain TAN projection about the optical axis: the WCS differs from the sky by the
    pointing error, the rotator's error and the optics' distortion.
    """
    if not isinstance(chip, Chip):
        chip = instrument.chip(str(chip))
    scale = instrument.chip_value(chip, "pixel_scale")
    if scale is None:
        raise ImredError(
            f"{instrument.source}: chip {chip.name} has no pixel_scale (set pixel_scale in the "
            "instrument file, for the instrument or the chip); it is needed for the initial WCS"
        )
    if not (np.isfinite(ra) and np.isfinite(dec)):
        raise ImredError(
            f"chip {chip.name}: the pointing (ra={ra}, dec={dec}) is not known; the initial WCS "
            "needs it (check the instrument file's header.ra/header.dec)"
        )
    bx, by = _binning(binning)
    ny, nx = (int(n) for n in shape)
    geometry = chip.geometry or {}
    rotator = instrument.rotator or {}
    # size of the unbinned trimmed chip (for the default reference pixel)
    trim_text = chip.trimsec or chip.datasec
    if trim_text:
        rows, cols = parse_section(trim_text)
        nx_t, ny_t = cols.stop - cols.start, rows.stop - rows.start
    else:
        nx_t, ny_t = nx * bx, ny * by
    if geometry.get("reference_pixel") is not None:
        ref = np.array(geometry["reference_pixel"], dtype=float)
    else:
        ref = np.array([(nx_t + 1) / 2.0, (ny_t + 1) / 2.0])
    offset = np.array(geometry.get("offset_arcsec", [0.0, 0.0]), dtype=float)
    m0 = _chip_matrix(float(scale), rotator, geometry)
    pa0 = float(rotator.get("offset_deg", 0.0) or 0.0)
    pa = position_angle(instrument, rotator_deg)
    p_axis = ref - np.linalg.solve(_sky_rotation(pa0) @ m0, offset)
    b = np.array([bx, by], dtype=float)
    t = np.asarray(trim_offset, dtype=float)
    crpix = (p_axis - t + (b - 1.0) / 2.0) / b
    cd = _sky_rotation(pa) @ m0 @ np.diag(b) * ARCSEC

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = crpix
    wcs.wcs.crval = [float(ra) % 360.0, float(dec)]
    wcs.wcs.cd = cd
    wcs.wcs.radesys = "ICRS"
    wcs.wcs.set()
    wcs.pixel_shape = (nx, ny)
    return wcs


# ============================================================ tangent plane
def _to_tan(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic offsets (arcsec; xi east, eta north) about (ra0, dec0); NaN behind."""
    ra = np.radians(np.asarray(ra, dtype=float))
    dec = np.radians(np.asarray(dec, dtype=float))
    a0, d0 = math.radians(ra0), math.radians(dec0)
    cosd = np.cos(dec)
    dra = ra - a0
    den = np.sin(dec) * math.sin(d0) + cosd * math.cos(d0) * np.cos(dra)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.where(den > 1e-6, den, np.nan)
        xi = cosd * np.sin(dra) / den
        eta = (np.sin(dec) * math.cos(d0) - cosd * math.sin(d0) * np.cos(dra)) / den
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def _from_tan(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`_to_tan`: (ra, dec) in degrees from offsets in arcsec."""
    x = np.radians(np.asarray(xi, dtype=float) / 3600.0)
    y = np.radians(np.asarray(eta, dtype=float) / 3600.0)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    den = math.cos(d0) - y * math.sin(d0)
    ra = a0 + np.arctan2(x, den)
    dec = np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, den))
    return np.degrees(ra) % 360.0, np.degrees(dec)


# ================================================================ the model
def _terms(order: int) -> list[tuple[int, int]]:
    """Exponents (p, q) of u^p v^q, total degree 0..order."""
    return [(p, n - p) for n in range(order + 1) for p in range(n, -1, -1)]


def _n_coefficients(order: int) -> int:
    return (order + 1) * (order + 2) // 2


def _poly(coeffs: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """sum c[p, q] u^p v^q over the nonzero c."""
    out = np.zeros(np.broadcast(u, v).shape)
    for p, q in zip(*np.nonzero(coeffs), strict=True):
        out += coeffs[p, q] * u**p * v**q
    return out


@dataclass
class _Model:
    """A TAN-SIP model: pixel -> (u, v) -> SIP -> CD -> tangent plane -> sky."""

    crpix: np.ndarray  # (2,) 1-based
    crval: tuple[float, float]  # deg
    cd: np.ndarray  # arcsec per pixel, (xi, eta) <- (U, V)
    order: int
    a: np.ndarray | None = None  # a[p, q]: coefficient of u^p v^q (pixels)
    b: np.ndarray | None = None

    def focal(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        uu = np.asarray(x, dtype=float) + 1.0 - self.crpix[0]
        vv = np.asarray(y, dtype=float) + 1.0 - self.crpix[1]
        if self.a is None:
            return uu, vv
        return uu + _poly(self.a, uu, vv), vv + _poly(self.b, uu, vv)

    def tan(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Tangent-plane offsets (arcsec) about ``crval`` of 0-based pixels."""
        big_u, big_v = self.focal(x, y)
        return (
            self.cd[0, 0] * big_u + self.cd[0, 1] * big_v,
            self.cd[1, 0] * big_u + self.cd[1, 1] * big_v,
        )

    def sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        return _from_tan(*self.tan(x, y), *self.crval)

    def to_wcs(self, shape: tuple[int, int]) -> WCS:
        ny, nx = shape
        wcs = WCS(naxis=2)
        sip = self.a is not None
        suffix = "-SIP" if sip else ""
        wcs.wcs.ctype = ["RA---TAN" + suffix, "DEC--TAN" + suffix]
        wcs.wcs.cunit = ["deg", "deg"]
        wcs.wcs.crpix = self.crpix
        wcs.wcs.crval = list(self.crval)
        wcs.wcs.cd = self.cd * ARCSEC
        wcs.wcs.radesys = "ICRS"
        if sip:
            ap, bp = _inverse_sip(self, shape)
            wcs.sip = Sip(self.a, self.b, ap, bp, self.crpix)
        wcs.wcs.set()
        wcs.pixel_shape = (nx, ny)
        return wcs


def _fit_model(
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    order: int,
    crpix: np.ndarray,
    crval: tuple[float, float],
    sigma_xi: np.ndarray,
    sigma_eta: np.ndarray,
) -> _Model:
    """Weighted linear least squares of a TAN-SIP model on matched pairs.

    The tangent-plane offsets of the stars about a trial tangent point are fitted per
    axis by a full polynomial of the pixel offsets from ``crpix`` (degree 0..order); the
    constant terms move the tangent point (``CRVAL``) and the fit is repeated until they
    vanish (< 1e-8 arcsec: two or three rounds). The linear terms are ``CD``, the higher
    ones ``CD @ (A, B)``.
    """
    uu = x + 1.0 - crpix[0]
    vv = y + 1.0 - crpix[1]
    s = max(float(np.max(np.abs(uu))), float(np.max(np.abs(vv))), 1.0)
    terms = _terms(order)
    design = np.stack([(uu / s) ** p * (vv / s) ** q for p, q in terms], axis=1)
    w_xi, w_eta = 1.0 / sigma_xi, 1.0 / sigma_eta
    crval = (float(crval[0]), float(crval[1]))
    for _ in range(8):
        xi, eta = _to_tan(ra, dec, *crval)
        c_xi = np.linalg.lstsq(design * w_xi[:, None], xi * w_xi, rcond=None)[0]
        c_eta = np.linalg.lstsq(design * w_eta[:, None], eta * w_eta, rcond=None)[0]
        shift = math.hypot(c_xi[0], c_eta[0])
        ra_t, dec_t = _from_tan(c_xi[0], c_eta[0], *crval)
        crval = (float(ra_t), float(dec_t))
        if shift < 1e-8:
            break
    scaled = {pq: (c_xi[i] / s ** sum(pq), c_eta[i] / s ** sum(pq)) for i, pq in enumerate(terms)}
    cd = np.array([[scaled[(1, 0)][0], scaled[(0, 1)][0]], [scaled[(1, 0)][1], scaled[(0, 1)][1]]])
    model = _Model(crpix=np.asarray(crpix, dtype=float), crval=crval, cd=cd, order=order)
    if order >= 2:
        a = np.zeros((order + 1, order + 1))
        b = np.zeros((order + 1, order + 1))
        cd_inv = np.linalg.inv(cd)
        for (p, q), h in scaled.items():
            if p + q >= 2:
                a[p, q], b[p, q] = cd_inv @ np.array(h)
        model.a, model.b = a, b
    return model


def _inverse_sip(model: _Model, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """AP/BP polynomials inverting the model's A/B over the chip (plus a 5 % margin).

    Fitted by least squares on a 41 x 41 grid, all terms of total degree 0..N (as
    astrometry.net writes them), N from the forward order + 1 up to 7 until the worst
    grid point is inverted to 1e-4 pixel.
    """
    ny, nx = shape
    margin = 0.05 * max(nx, ny) + 2.0
    gx, gy = np.meshgrid(
        np.linspace(-margin, nx - 1 + margin, 41), np.linspace(-margin, ny - 1 + margin, 41)
    )
    uu = gx.ravel() + 1.0 - model.crpix[0]
    vv = gy.ravel() + 1.0 - model.crpix[1]
    big_u = uu + _poly(model.a, uu, vv)
    big_v = vv + _poly(model.b, uu, vv)
    s = max(float(np.max(np.abs(big_u))), float(np.max(np.abs(big_v))), 1.0)
    best = None
    for order in range(model.order + 1, 8):
        terms = _terms(order)
        design = np.stack([(big_u / s) ** p * (big_v / s) ** q for p, q in terms], axis=1)
        c_u = np.linalg.lstsq(design, uu - big_u, rcond=None)[0]
        c_v = np.linalg.lstsq(design, vv - big_v, rcond=None)[0]
        err = max(
            float(np.max(np.abs(design @ c_u - (uu - big_u)))),
            float(np.max(np.abs(design @ c_v - (vv - big_v)))),
        )
        if best is None or err < best[0]:
            ap = np.zeros((order + 1, order + 1))
            bp = np.zeros((order + 1, order + 1))
            for i, (p, q) in enumerate(terms):
                ap[p, q] = c_u[i] / s ** (p + q)
                bp[p, q] = c_v[i] / s ** (p + q)
            best = (err, ap, bp)
        if err < 1e-4:
            break
    return best[1], best[2]


# ================================================================== result
@dataclass
class AstrometryResult:
    """What :func:`match_and_fit` found.

    Attributes
    ----------
    wcs : astropy.wcs.WCS
        The solution (TAN-SIP, or TAN when too few stars for SIP) with ``pixel_shape``
        set. When ``ok`` is False it is the last WCS reached (the rejected fit, or
        ``wcs0`` when no fit was made) and is not a solution.
    n_matches : int
        Matched pairs used in the final fit (after sigma clipping).
    rms_arcsec : float
        2-D rms of the fit residuals, ``sqrt(rms_ra**2 + rms_dec**2)``, arcsec (NaN
        without a fit). Plain rms: not corrected for the fitted degrees of freedom.
    rms_ra_arcsec, rms_dec_arcsec : float
        rms of the residuals along ``RA cos(Dec)`` (east) and along Dec, arcsec.
    method : str
        ``"imred-python TAN-SIP order N"`` or ``"imred-python TAN"``.
    ok : bool
        True when solved.
    reason : str
        Why not (empty when ``ok``).
    sip_order : int
        Order of the fitted polynomial (1: plain TAN; 0 without a fit).
    n_sources, n_reference : int
        Usable sources; reference stars in the field (the chip plus the search radius).
    offset_arcsec : (float, float)
        (east, north) shift of the sky found by the offset search, relative to ``wcs0``.
    rotation_deg : float
        Rotation found by the offset search (of the sources about the chip centre, east
        of north).
    matches : astropy.table.Table or None
        The matched pairs: ``source`` (row in ``sources``), ``ref`` (row in ``refcat``),
        ``x``, ``y``, ``ra``, ``dec``, residuals ``dra``, ``ddec`` (arcsec, fit minus
        catalog, ``dra`` along ``RA cos(Dec)``) and ``used`` (False: clipped).
    """

    wcs: WCS
    n_matches: int
    rms_arcsec: float
    rms_ra_arcsec: float
    rms_dec_arcsec: float
    method: str
    ok: bool
    reason: str = ""
    sip_order: int = 0
    n_sources: int = 0
    n_reference: int = 0
    offset_arcsec: tuple[float, float] = (math.nan, math.nan)
    rotation_deg: float = math.nan
    matches: Table | None = field(default=None, repr=False)

    def header_cards(self) -> list[tuple[str, Any, str]]:
        """The AST* quality keywords of the frame WCS product (undefined value for NaN)."""

        def num(value: float, digits: int = 4):
            return round(float(value), digits) if np.isfinite(value) else None

        return [
            ("ASTOK", bool(self.ok), "astrometric solution found"),
            ("ASTREAS", self.reason, "why not (empty when solved)"),
            ("ASTMETH", self.method, "astrometric method"),
            ("ASTNMAT", int(self.n_matches), "matched stars used in the fit"),
            ("ASTRMS", num(self.rms_arcsec), "[arcsec] 2-D rms of the fit residuals"),
            ("ASTRMSRA", num(self.rms_ra_arcsec), "[arcsec] rms of residuals in RA cos(Dec)"),
            ("ASTRMSDE", num(self.rms_dec_arcsec), "[arcsec] rms of residuals in Dec"),
            ("ASTNSRC", int(self.n_sources), "usable sources"),
            ("ASTNREF", int(self.n_reference), "reference stars in the field"),
            ("ASTORDER", int(self.sip_order), "SIP order of the fit (1: TAN)"),
        ]


# ============================================================ offset search
@dataclass
class _Offset:
    rotation_deg: float
    shift: np.ndarray  # (2,) arcsec, catalog minus rotated sources
    peak: int
    background: float


def _rotate(xy: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate tangent-plane points (n, 2) by ``angle`` east of north (as the sky turns)."""
    if angle_deg == 0:
        return xy
    return xy @ _sky_rotation(angle_deg).T


def _find_offset(
    src: np.ndarray, cat: np.ndarray, radius: float, bin_size: float, max_rotation_deg: float
) -> _Offset:
    """Vote for the shift (and a small rotation) between sources and catalog stars.

    Every (source, catalog star) pair closer than ``radius`` votes for its offset in a
    2-D histogram of ``bin_size / 2`` cells; the votes are summed over 3 x 3 cells
    (a window of 1.5 ``bin_size``, so that a peak on a cell border is not split) and the
    fullest window wins. Rotations (about the chip centre) are tried in steps that move
    the farthest source by at most ``bin_size / 2``; the best peak over all wins.
    """
    tree = cKDTree(cat)
    cell = bin_size / 2.0
    n_cells = math.ceil(radius / cell) + 1
    edges = np.arange(-n_cells, n_cells + 1) * cell
    r_far = max(float(np.max(np.hypot(src[:, 0], src[:, 1]))), 1.0)
    angles = [0.0]
    if max_rotation_deg > 0:
        step = math.degrees(bin_size / 2.0 / r_far)
        n_steps = math.ceil(max_rotation_deg / step)
        grid = np.linspace(-max_rotation_deg, max_rotation_deg, 2 * n_steps + 1)
        angles = sorted(grid.tolist(), key=abs)
    best = None
    for angle in angles:
        rotated = _rotate(src, angle)
        near = tree.query_ball_point(rotated, radius)
        i = np.repeat(np.arange(len(rotated)), [len(n) for n in near])
        if i.size == 0:
            continue
        j = np.concatenate([np.asarray(n, dtype=int) for n in near])
        d = cat[j] - rotated[i]
        hist, _, _ = np.histogram2d(d[:, 0], d[:, 1], bins=[edges, edges])
        padded = np.pad(hist, 1)
        window = sum(
            padded[1 + di : padded.shape[0] - 1 + di, 1 + dj : padded.shape[1] - 1 + dj]
            for di in (-1, 0, 1)
            for dj in (-1, 0, 1)
        )
        k = np.unravel_index(int(np.argmax(window)), window.shape)
        peak = int(window[k])
        if best is None or peak > best[0]:
            centre = np.array([edges[k[0]] + cell / 2.0, edges[k[1]] + cell / 2.0])
            best = (peak, angle, centre, d, len(d))
    if best is None:
        return _Offset(0.0, np.zeros(2), 0, 0.0)
    peak, angle, centre, d, n_pairs = best
    shift = centre
    for half in (1.5 * cell, bin_size / 2.0):  # the median of the votes near the peak
        near = np.max(np.abs(d - shift), axis=1) <= half
        if near.any():
            shift = np.median(d[near], axis=0)
    background = n_pairs * (3 * cell) ** 2 / (math.pi * radius**2)
    return _Offset(angle, shift, peak, background)


def _match(src: np.ndarray, cat_tree: cKDTree, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest catalog star within ``radius`` of each source; one source per star."""
    dist, idx = cat_tree.query(src, distance_upper_bound=radius)
    found = np.isfinite(dist)
    i_src = np.nonzero(found)[0]
    i_cat, dist = idx[found], dist[found]
    order = np.argsort(dist, kind="stable")
    _, first = np.unique(i_cat[order], return_index=True)
    keep = np.sort(order[first])
    return i_src[keep], i_cat[keep]


# ================================================================ the fit
def _max_order(n: int, sip_order: int) -> int:
    order = 1
    for o in range(2, sip_order + 1):
        if n >= _STARS_PER_COEFFICIENT * _n_coefficients(o):
            order = o
    return order


def _extra_variance(r_xi, r_eta, e_xi, e_eta, n_free: int) -> float:
    """s0^2 making chi^2 = dof with per-axis variances e^2 + s0^2 (0 if already below)."""
    dof = max(2 * len(r_xi) - n_free, 1)

    def chi2(s2: float) -> float:
        with np.errstate(divide="ignore"):
            return float(np.sum(r_xi**2 / (e_xi**2 + s2)) + np.sum(r_eta**2 / (e_eta**2 + s2)))

    if np.all(e_xi > 0) and np.all(e_eta > 0) and chi2(0.0) <= dof:
        return 0.0
    hi = float(np.sum(r_xi**2) + np.sum(r_eta**2)) / dof + 1e-30  # chi2(hi) <= dof
    lo = 1e-12 * hi  # chi2(0) is infinite when a catalog error is 0
    if chi2(hi) >= dof or chi2(lo) <= dof:
        return hi if chi2(hi) >= dof else lo
    return float(brentq(lambda s2: chi2(s2) - dof, lo, hi, xtol=1e-14, rtol=1e-6))


def _robust_extra_variance(r_xi, r_eta, e_xi, e_eta, n_free: int) -> float:
    """s0^2 making the median of z^2 = r^2 / (e^2 + s0^2) that of a Gaussian (0.455).

    The target is scaled by ``(2n - n_free) / 2n`` for the fitted coefficients; 0 when
    the catalog errors alone already reach it.
    """
    r2 = np.concatenate([r_xi**2, r_eta**2])
    e2 = np.concatenate([e_xi**2, e_eta**2])
    target = 0.4549 * max(len(r2) - n_free, 1) / len(r2)

    def median_z2(s2: float) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(np.median(np.where(e2 + s2 > 0, r2 / (e2 + s2), np.inf)))

    if median_z2(0.0) <= target:
        return 0.0
    lo, hi = 0.0, float(np.max(r2)) / target + 1e-30
    for _ in range(60):  # bisection: the median is a step function of s2
        mid = 0.5 * (lo + hi)
        if median_z2(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6 * hi:
            break
    return hi


def _solve(x, y, ra, dec, e_xi, e_eta, order, crpix, crval, clip_sigma):
    """Weighted fit with iterative sigma clipping; returns model, kept mask, residuals.

    For a given set of pairs the fit and the extra variance ``s0^2`` are iterated to
    agreement (starting from equal weights) before any pair is clipped: clipping on
    residuals of a fit whose weights are not yet right would throw out the best stars.
    ``order`` is the highest order allowed; the one returned has the lowest BIC.
    """
    keep = np.ones(len(x), dtype=bool)
    model = None
    for _ in range(12):
        order_now = min(order, _max_order(int(keep.sum()), order))
        n_free = 2 * _n_coefficients(order_now)
        s2 = None
        for _ in range(8):
            if s2 is None:
                sig_xi = sig_eta = np.ones(len(x))
            else:
                sig_xi, sig_eta = np.sqrt(e_xi**2 + s2), np.sqrt(e_eta**2 + s2)
            model = _fit_model(
                x[keep], y[keep], ra[keep], dec[keep], order_now, crpix, crval,
                sig_xi[keep], sig_eta[keep],
            )  # fmt: skip
            crval = model.crval
            m_xi, m_eta = model.tan(x, y)
            c_xi, c_eta = _to_tan(ra, dec, *model.crval)
            r_xi, r_eta = m_xi - c_xi, m_eta - c_eta
            new = _extra_variance(r_xi[keep], r_eta[keep], e_xi[keep], e_eta[keep], n_free)
            converged = s2 is not None and abs(math.sqrt(new) - math.sqrt(s2)) < 1e-3 * (
                math.sqrt(new) + 1e-6
            )
            s2 = new
            if converged:
                break
        # clip in units of sqrt(e^2 + s_rob^2), s_rob from the median of z^2 (not pulled
        # by the outliers the way the chi^2 estimate is)
        s_rob = _robust_extra_variance(r_xi[keep], r_eta[keep], e_xi[keep], e_eta[keep], n_free)
        z = np.maximum(
            np.abs(r_xi) / np.sqrt(e_xi**2 + s_rob), np.abs(r_eta) / np.sqrt(e_eta**2 + s_rob)
        )
        new_keep = z <= clip_sigma
        if new_keep.sum() < max(4, _n_coefficients(order_now) + 1):
            break  # clipping would leave too few stars: keep the current set
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if model.order == 1:
        return model, keep, r_xi, r_eta
    # the order: the lowest-BIC one, all orders weighted with the top order's variances
    sig_xi, sig_eta = np.sqrt(e_xi**2 + s2), np.sqrt(e_eta**2 + s2)
    n_data = 2 * int(keep.sum())
    best = None
    for o in range(1, model.order + 1):
        trial = model
        if o < model.order:
            trial = _fit_model(
                x[keep], y[keep], ra[keep], dec[keep], o, crpix, model.crval,
                sig_xi[keep], sig_eta[keep],
            )  # fmt: skip
        m_xi, m_eta = trial.tan(x, y)
        c_xi, c_eta = _to_tan(ra, dec, *trial.crval)
        t_xi, t_eta = m_xi - c_xi, m_eta - c_eta
        chi2 = float(np.sum((t_xi / sig_xi)[keep] ** 2) + np.sum((t_eta / sig_eta)[keep] ** 2))
        bic = chi2 + 2 * _n_coefficients(o) * math.log(n_data)
        if best is None or bic < best[0]:
            best = (bic, trial, t_xi, t_eta)
    return best[1], keep, best[2], best[3]


def _column(table: Table, name: str, unit) -> np.ndarray:
    """A column as float, in ``unit`` when it carries one; masked entries are NaN."""
    col = table[name]
    factor = 1.0
    if getattr(col, "unit", None) is not None and unit is not None:
        factor = u.Unit(col.unit).to(unit)
    values = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    return np.asarray(values, dtype=float) * factor


def usable_sources(sources: Table | None, min_matches: int, flag_mask) -> tuple[np.ndarray, str]:
    """Rows of the sources a fit can use (finite x, y; no ``flag_mask`` flag), and why
    they are too few for ``min_matches`` ('' when they are enough).

    A table without ``x``/``y`` columns is an ImredError (a programming or file error,
    not a bad frame).
    """
    if sources is None or len(sources) == 0:
        return np.array([], dtype=np.int64), "no sources"
    for name in ("x", "y"):
        if name not in sources.colnames:
            raise ImredError(
                f"the source table has no '{name}' column (columns: {', '.join(sources.colnames)})"
            )
    usable = np.isfinite(_column(sources, "x", None)) & np.isfinite(_column(sources, "y", None))
    if "flags" in sources.colnames:
        usable &= (np.asarray(sources["flags"]).astype(np.int64) & int(flag_mask)) == 0
    rows = np.nonzero(usable)[0]
    if rows.size == 0:
        return rows, f"no sources (none of {len(sources)} is usable: flagged or not finite)"
    if rows.size < min_matches:
        return rows, f"fewer matches than {min_matches} possible: only {rows.size} usable sources"
    return rows, ""


def check_refcat(refcat: Table | None, mag_column: str | None) -> str:
    """Why a reference catalog cannot be used ('' when it can): empty. Missing ``ra``,
    ``dec`` or magnitude columns are an ImredError naming the columns it has."""
    if refcat is None or len(refcat) == 0:
        return "the reference catalog is empty"
    for name in ("ra", "dec"):
        if name not in refcat.colnames:
            raise ImredError(
                f"the reference catalog has no '{name}' column (columns: "
                f"{', '.join(refcat.colnames)})"
            )
    if mag_column is not None and mag_column not in refcat.colnames:
        raise ImredError(
            f"the reference catalog has no magnitude column '{mag_column}' (columns: "
            f"{', '.join(refcat.colnames)})"
        )
    return ""


def match_and_fit(
    sources: Table,
    refcat: Table,
    wcs0: WCS,
    *,
    mag_column: str | None = None,
    shape: tuple[int, int] | None = None,
    search_radius_arcsec: float = 30.0,
    match_radius_arcsec: float = 1.0,
    sip_order: int = 3,
    min_matches: int = 10,
    max_rotation_deg: float = 0.5,
    clip_sigma: float = 3.0,
    max_rms_arcsec: float | None = None,
    max_scale_change: float = 0.05,
    n_bright: int = 100,
    flag_mask: int = DEFAULT_FLAG_MASK,
) -> AstrometryResult:
    """Match sources to a reference catalog and fit a TAN-SIP WCS.

    Parameters
    ----------
    sources : Table
        Detections: ``x``, ``y`` (0-based on the trimmed grid), ``flux`` (for the
        brightness ranking; optional) and optionally ``flags`` (an integer bitmask).
    refcat : Table
        Reference stars: ``ra``, ``dec`` (ICRS deg, at the epoch of the image), optional
        ``ra_err``, ``dec_err`` (mas; ``ra_err`` along ``RA cos(Dec)``; weights) and the
        magnitude column ``mag_column``.
    wcs0 : astropy.wcs.WCS
        The starting WCS (e.g. :func:`initial_wcs`); its pixel ``x, y`` are the sources'.
    mag_column : str, optional
        Catalog magnitude column for the brightness ranking of the offset search; None:
        no ranking (every catalog star in the field takes part).
    shape : (ny, nx), optional
        Image shape; default ``wcs0.pixel_shape``.
    search_radius_arcsec : float
        Largest error of ``wcs0`` (shift anywhere on the chip) the offset search finds.
    match_radius_arcsec : float
        Final matching radius.
    sip_order : int
        Highest SIP order (1: plain TAN). An order is only tried with at least 3 matches
        per polynomial coefficient and axis (order 2 needs 18 matches, order 3 30,
        order 4 45); of the orders tried, the one with the lowest BIC is kept, so a
        distortion too small to show above the noise gives a plain TAN WCS.
    min_matches : int
        Fewer matched pairs is a failure.
    max_rotation_deg : float
        Largest rotation error of ``wcs0`` the offset search tries (0: translation only).
    clip_sigma : float
        Pairs whose residual in either axis exceeds ``clip_sigma`` robust standard
        deviations (weighted) are left out of the fit.
    max_rms_arcsec : float, optional
        A larger 2-D rms is a failure; default the larger of 0.5 arcsec and one pixel.
    max_scale_change : float
        A fitted pixel scale differing from ``wcs0``'s by more than this fraction is a
        failure (a wrong match).
    n_bright : int
        Brightest sources in the offset search (and twice as many catalog stars).
    flag_mask : int
        Sources with ``flags & flag_mask != 0`` are not used; default
        :data:`DEFAULT_FLAG_MASK` (saturated, edge, masked, overflow, failed
        measurement in :mod:`imred.detect`'s bits); -1 for any flag.

    Returns
    -------
    AstrometryResult
        ``ok`` False with a ``reason`` for: no sources, no reference stars (empty
        catalog, none in the field), fewer than ``min_matches`` usable sources or
        matches, no significant offset peak, a fitted scale far from ``wcs0``'s, an rms
        above ``max_rms_arcsec``.

    Notes
    -----
    1. Everything is compared in the tangent plane (arcsec) about the sky position of
       the chip centre through ``wcs0``: sources through ``wcs0``, the catalog by the
       gnomonic projection. Catalog stars within ``search_radius + 2 match_radius``
       of the chip are in the field.
    2. Offset search (a pair-offset histogram, "voting"): every pair of one of the
       ``n_bright`` brightest sources and one of the ``2 n_bright`` brightest catalog
       stars closer than ``search_radius`` votes for its offset; true pairs pile up in
       one cell, chance pairs spread evenly. It needs no pattern to survive (triangles
       fail when a few of the bright stars are missing, saturated or blended), its cost
       is the number of pairs, and its significance is simple to judge: the peak must
       exceed the expected chance count ``B`` by ``5 sqrt(B)`` (and hold >= 3 pairs).
       Rotations up to ``max_rotation_deg`` are searched on a grid (cell size
       ``max(1 arcsec, 2 match_radius)``). The shift is the median of the votes in the
       peak.
    3. Iteration: sources (shifted and rotated) are matched to the nearest catalog
       star (one source per star) within a radius halving from the cell size down to
       ``match_radius``; the first fit is linear (TAN), the next ones use the SIP order;
       each fit moves the sources for the next match. It stops when the matched set no
       longer changes at ``match_radius``.
    4. The fit (:func:`_fit_model`): CRPIX fixed at the chip centre; CRVAL, CD and the
       forward SIP A/B by weighted linear least squares with per-star variances
       ``err_cat^2 + s0^2`` per axis, ``s0`` (the centroid error) set so that chi^2
       equals the degrees of freedom. Pairs off by more than ``clip_sigma`` in units of
       ``sqrt(err_cat^2 + s_rob^2)`` are clipped, ``s_rob`` set from the median
       residual (a clipped pair may come back). Then the order: every order from 1 up
       to the one allowed by the star count is fitted with the same weights and the
       lowest ``BIC = chi^2 + n_coefficients ln(n_data)`` wins: with ~25 stars whose
       catalog positions are good to 10-100 mas a quadratic SIP only adds noise (0.025"
       instead of 0.014" mean rms over a 100" chip in the simulated demo). The inverse
       AP/BP are fitted on a grid over the chip (< 1e-4 px).
    """
    if sip_order < 1 or sip_order > 5:
        raise ValueError(f"sip_order must be 1..5, not {sip_order}")
    if min_matches < 4:
        raise ValueError(f"min_matches must be at least 4, not {min_matches}")
    if shape is None:
        if wcs0.pixel_shape is None:
            raise ValueError("match_and_fit needs the image shape (shape= or wcs0.pixel_shape)")
        shape = (int(wcs0.pixel_shape[1]), int(wcs0.pixel_shape[0]))
    ny, nx = (int(n) for n in shape)
    nan = math.nan

    def failed(reason: str, **extra) -> AstrometryResult:
        kw = {
            "wcs": wcs0,
            "n_matches": 0,
            "rms_arcsec": nan,
            "rms_ra_arcsec": nan,
            "rms_dec_arcsec": nan,
            "method": METHOD,
            "ok": False,
            "reason": reason,
        }
        kw.update(extra)
        return AstrometryResult(**kw)

    # ---- sources
    src_rows, problem = usable_sources(sources, min_matches, flag_mask)
    n_src = len(src_rows)
    if problem:
        return failed(problem, n_sources=n_src)
    x, y = _column(sources, "x", None)[src_rows], _column(sources, "y", None)[src_rows]
    if "flux" in sources.colnames:
        flux = _column(sources, "flux", None)[src_rows]
        rank = np.argsort(-np.where(np.isfinite(flux), flux, -np.inf), kind="stable")
    else:
        rank = np.arange(n_src)

    # ---- the comparison frame: tangent plane about the chip centre through wcs0
    xc, yc = (nx - 1) / 2.0, (ny - 1) / 2.0
    ra_c, dec_c = (float(v) for v in wcs0.all_pix2world([[xc, yc]], 0)[0])
    probe = wcs0.all_pix2world(np.array([[xc + 1, yc], [xc, yc + 1]]), 0)
    pxi, peta = _to_tan(probe[:, 0], probe[:, 1], ra_c, dec_c)
    jac = np.array([[pxi[0], pxi[1]], [peta[0], peta[1]]])  # arcsec per pixel at the centre
    scale0 = math.sqrt(abs(np.linalg.det(jac)))
    sky = wcs0.all_pix2world(np.column_stack([x, y]), 0)
    src_t = np.column_stack(_to_tan(sky[:, 0], sky[:, 1], ra_c, dec_c))

    # ---- the catalog in the field
    problem = check_refcat(refcat, mag_column)
    if problem:
        return failed(problem, n_sources=n_src)
    cat_ra = _column(refcat, "ra", u.deg)
    cat_dec = _column(refcat, "dec", u.deg)
    cxi, ceta = _to_tan(cat_ra, cat_dec, ra_c, dec_c)
    pix = np.linalg.solve(jac, np.vstack([cxi, ceta]))
    margin = (search_radius_arcsec + 2.0 * match_radius_arcsec) / scale0 + 2.0
    with np.errstate(invalid="ignore"):
        infield = (
            np.isfinite(pix[0])
            & np.isfinite(pix[1])
            & (np.abs(pix[0]) <= nx / 2.0 + margin)
            & (np.abs(pix[1]) <= ny / 2.0 + margin)
        )
    ref_rows = np.nonzero(infield)[0]
    n_ref = len(ref_rows)
    if n_ref == 0:
        return failed(
            f"no reference stars in the field (none of the catalog's {len(refcat)} stars lies "
            f"within {search_radius_arcsec:g} arcsec of the chip)",
            n_sources=n_src,
        )
    if n_ref < min_matches:
        return failed(
            f"fewer matches than {min_matches} possible: only {n_ref} reference stars in the field",
            n_sources=n_src,
            n_reference=n_ref,
        )
    cat_t = np.column_stack([cxi[ref_rows], ceta[ref_rows]])
    if mag_column is not None:
        mag = _column(refcat, mag_column, None)[ref_rows]
        cat_rank = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    else:
        cat_rank = np.arange(n_ref)
    e_ra = np.zeros(len(refcat))
    e_dec = np.zeros(len(refcat))
    if "ra_err" in refcat.colnames and "dec_err" in refcat.colnames:
        e_ra = _column(refcat, "ra_err", u.mas) / 1000.0
        e_dec = _column(refcat, "dec_err", u.mas) / 1000.0
        e_ra = np.where(np.isfinite(e_ra) & (e_ra > 0), e_ra, 0.0)
        e_dec = np.where(np.isfinite(e_dec) & (e_dec > 0), e_dec, 0.0)
    e_ra, e_dec = e_ra[ref_rows], e_dec[ref_rows]
    context = {"n_sources": n_src, "n_reference": n_ref}

    # ---- step 1: offset search
    bin_size = max(1.0, 2.0 * match_radius_arcsec)
    offset = _find_offset(
        src_t[rank[:n_bright]],
        cat_t[cat_rank[: 2 * n_bright]],
        float(search_radius_arcsec),
        bin_size,
        float(max_rotation_deg),
    )
    needed = max(3.0, offset.background + 5.0 * math.sqrt(offset.background))
    if offset.peak < needed:
        return failed(
            f"no offset found within {search_radius_arcsec:g} arcsec: the best peak holds "
            f"{offset.peak} pairs, {offset.background:.1f} expected by chance",
            **context,
        )
    context["offset_arcsec"] = (float(offset.shift[0]), float(offset.shift[1]))
    context["rotation_deg"] = float(offset.rotation_deg)
    pos = _rotate(src_t, offset.rotation_deg) + offset.shift

    # ---- step 2: match, fit, repeat with a shrinking radius
    tree = cKDTree(cat_t)
    crpix = np.array([(nx + 1) / 2.0, (ny + 1) / 2.0])
    radius = max(bin_size, match_radius_arcsec)
    model = None
    previous = None
    for iteration in range(12):
        i_src, i_cat = _match(pos, tree, radius)
        if len(i_src) < min_matches:
            extra = {}
            if model is not None:
                extra["wcs"] = model.to_wcs((ny, nx))
            return failed(
                f"fewer matches than {min_matches}: {len(i_src)} within {radius:.2g} arcsec",
                **context,
                **extra,
            )
        order = 1 if iteration == 0 else _max_order(len(i_src), sip_order)
        rows = ref_rows[i_cat]
        model, keep, r_xi, r_eta = _solve(
            x[i_src], y[i_src], cat_ra[rows], cat_dec[rows], e_ra[i_cat], e_dec[i_cat],
            order, crpix, (ra_c, dec_c) if model is None else model.crval, clip_sigma,
        )  # fmt: skip
        pos = np.column_stack(_to_tan(*model.sky(x, y), ra_c, dec_c))
        state = (order, i_src.tobytes(), i_cat.tobytes())
        if radius <= match_radius_arcsec and iteration > 0 and state == previous:
            break
        previous = state
        radius = max(match_radius_arcsec, radius / 2.0)

    # ---- the result
    n_used = int(keep.sum())
    rms_ra = float(np.sqrt(np.mean(r_xi[keep] ** 2)))
    rms_dec = float(np.sqrt(np.mean(r_eta[keep] ** 2)))
    rms = math.hypot(rms_ra, rms_dec)
    wcs = model.to_wcs((ny, nx))
    method = f"{METHOD} TAN-SIP order {model.order}" if model.order >= 2 else f"{METHOD} TAN"
    matches = Table(
        {
            "source": src_rows[i_src],
            "ref": ref_rows[i_cat],
            "x": x[i_src],
            "y": y[i_src],
            "ra": cat_ra[ref_rows[i_cat]],
            "dec": cat_dec[ref_rows[i_cat]],
            "dra": r_xi,
            "ddec": r_eta,
            "used": keep,
        }
    )
    result = AstrometryResult(
        wcs=wcs,
        n_matches=n_used,
        rms_arcsec=rms,
        rms_ra_arcsec=rms_ra,
        rms_dec_arcsec=rms_dec,
        method=method,
        ok=True,
        sip_order=model.order,
        matches=matches,
        **context,
    )
    if n_used < min_matches:
        result.ok = False
        result.reason = f"fewer matches than {min_matches}: {n_used} left after clipping"
        return result
    fitted_scale = math.sqrt(abs(np.linalg.det(model.cd)))
    if abs(fitted_scale / scale0 - 1.0) > max_scale_change:
        result.ok = False
        result.reason = (
            f"the fitted pixel scale {fitted_scale:.4g} arcsec differs from the expected "
            f"{scale0:.4g} by more than {100 * max_scale_change:g} % (a wrong match?)"
        )
        return result
    limit = max(0.5, scale0) if max_rms_arcsec is None else float(max_rms_arcsec)
    if rms > limit:
        result.ok = False
        result.reason = f"rms {rms:.3g} arcsec above the limit {limit:.3g} arcsec"
    return result


# ============================================================== the product
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "END", ""}


def wcs_header(wcs: WCS) -> fits.Header:
    """The WCS as header cards in the product's form (``CDi_j``, SIP, IMAGEW/IMAGEH)."""
    header = wcs.to_header(relax=True)
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.wcs.get_pc() * wcs.wcs.get_cdelt()[:, None]
    for key in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2"):
        header.remove(key, ignore_missing=True)
    at = header.index("CRPIX2") + 1 if "CRPIX2" in header else len(header)
    for i in range(2):
        for j in range(2):
            card = (f"CD{i + 1}_{j + 1}", float(cd[i, j]), "[deg/pixel] linear transformation")
            header.insert(at, card)
            at += 1
    if wcs.pixel_shape is not None:
        header["IMAGEW"] = (int(wcs.pixel_shape[0]), "[pixel] image width (NAXIS1 of the grid)")
        header["IMAGEH"] = (int(wcs.pixel_shape[1]), "[pixel] image height (NAXIS2 of the grid)")
    return header


def write_wcs(
    path: str | Path,
    wcs: WCS,
    extra_cards: Mapping[str, Any] | Iterable[tuple] = (),
) -> None:
    """Write the frame WCS product (see the module docstring), atomically.

    Parameters
    ----------
    path : str or Path
    wcs : astropy.wcs.WCS
        The chip's WCS (TAN or TAN-SIP); its ``pixel_shape`` gives IMAGEW/IMAGEH.
    extra_cards : mapping or iterable of tuples
        More cards: ``{key: value}`` or ``{key: (value, comment)}``, or
        ``(key, value[, comment])`` tuples, e.g. :meth:`AstrometryResult.header_cards`
        and provenance cards. A key of the WCS or a structural key is a ValueError.
    """
    header = wcs_header(wcs)
    items = extra_cards.items() if isinstance(extra_cards, Mapping) else extra_cards
    for item in items:
        if isinstance(extra_cards, Mapping):
            key, value = item
            card = (key, *value) if isinstance(value, tuple) else (key, value)
        else:
            card = tuple(item)
        key = str(card[0]).upper()
        if key in _STRUCTURAL or key in header:
            raise ValueError(f"write_wcs: card {key} would overwrite a WCS or structural keyword")
        value = card[1]
        if isinstance(value, float) and not np.isfinite(value):
            value = None  # FITS has no NaN: an undefined value
        header[key] = (value, *card[2:3])
    hdu = fits.PrimaryHDU(data=np.zeros((0, 0), dtype=np.uint8), header=header)
    write_atomic(path, lambda tmp: hdu.writeto(tmp))


def read_wcs(path: str | Path) -> WCS:
    """Read a frame WCS product: the WCS with ``pixel_shape`` from IMAGEW/IMAGEH.

    The quality keywords are in ``fits.getheader(path)``.
    """
    with fits.open(path) as hdul:
        header = hdul[0].header.copy()
    if "CTYPE1" not in header or "CTYPE2" not in header:
        raise ImredError(f"{path}: no WCS in the primary header (CTYPE1/CTYPE2 missing)")
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):  # NAXIS = 0 (astrometry.net's files) warns
        header.remove(key, ignore_missing=True)
    wcs = WCS(header)
    if "IMAGEW" in header and "IMAGEH" in header:
        wcs.pixel_shape = (int(header["IMAGEW"]), int(header["IMAGEH"]))
    return wcs
