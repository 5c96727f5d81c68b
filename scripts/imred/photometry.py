"""Aperture photometry of catalog stars and frame zero points.

:func:`frame_zero_point` measures the stars of a reference catalog that fall on a
background-subtracted frame (electrons), at the positions its solved WCS gives,
in a circular aperture of ``aperture_fwhm`` x FWHM radius, and fits the zero point
``ZP = median(m_ref + 2.5 log10(flux / t))``: the magnitude that gives 1 e-/s. The
median is sigma-clipped; its error is the clipped scatter / sqrt(N) (and at least
the catalog's own error floor divided by sqrt(N)). Stars with any unusable mask
bit in the aperture, saturated stars and faint ones (S/N below ``min_snr``) are
left out. The airmass and the number of stars are returned with it.
"""

from __future__ import annotations

import numpy as np
import sep
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS

from .mask import UNUSABLE


def aperture_photometry(
    sci: np.ndarray, var: np.ndarray, mask: np.ndarray, x, y, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum of a background-subtracted image in circles: (flux, error, bad).

    ``bad`` is True where an unusable pixel (mask bits) or the image edge falls in
    the circle. Sub-pixel exact overlap (sep.sum_circle).
    """
    data = np.ascontiguousarray(np.nan_to_num(sci), dtype=np.float64)
    v = np.ascontiguousarray(np.nan_to_num(var, nan=0.0), dtype=np.float64)
    unusable = (mask & np.uint16(int(UNUSABLE))) != 0
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    flux, err, flag = sep.sum_circle(data, x, y, radius, var=v, subpix=5)
    bad_sum, _, _ = sep.sum_circle(unusable.astype(np.float64), x, y, radius, subpix=1)
    edge = (x - radius < 0) | (y - radius < 0) | (x + radius > sci.shape[1] - 1)
    edge |= y + radius > sci.shape[0] - 1
    return flux, err, (bad_sum > 0) | edge | (flag != 0)


def frame_zero_point(
    sci: np.ndarray,
    var: np.ndarray,
    mask: np.ndarray,
    wcs: WCS,
    refcat: Table,
    mag_column: str,
    *,
    exptime: float,
    fwhm_px: float,
    aperture_fwhm: float = 2.5,
    min_snr: float = 20.0,
    clip_sigma: float = 3.0,
) -> dict:
    """Zero point of one frame x chip (see the module docstring).

    Returns ``zero_point``, ``zero_point_err``, ``n_stars``, ``scatter`` (clipped rms
    of the star-by-star values), ``aperture_px``, and ``ok``/``reason``.
    """
    out = {"zero_point": np.nan, "zero_point_err": np.nan, "n_stars": 0, "scatter": np.nan}
    if mag_column not in refcat.colnames:
        return out | {"ok": False, "reason": f"the reference catalog has no column {mag_column}"}
    if not np.isfinite(fwhm_px) or fwhm_px <= 0 or exptime <= 0:
        return out | {"ok": False, "reason": "no FWHM or exposure time"}
    radius = aperture_fwhm * fwhm_px
    x, y = wcs.all_world2pix(np.asarray(refcat["ra"]), np.asarray(refcat["dec"]), 0)
    mag = np.asarray(refcat[mag_column], dtype=float)
    inside = (
        np.isfinite(x) & np.isfinite(y) & np.isfinite(mag)
        & (x > radius) & (y > radius)
        & (x < sci.shape[1] - 1 - radius) & (y < sci.shape[0] - 1 - radius)
    )  # fmt: skip
    if not inside.any():
        return out | {"ok": False, "reason": "no catalog star on the frame", "aperture_px": radius}
    flux, err, bad = aperture_photometry(sci, var, mask, x[inside], y[inside], radius)
    good = ~bad & (flux > 0) & (flux > min_snr * err)
    if good.sum() < 3:
        return out | {
            "ok": False,
            "reason": f"{int(good.sum())} usable catalog stars (3 needed)",
            "aperture_px": radius,
        }
    values = mag[inside][good] + 2.5 * np.log10(flux[good] / exptime)
    _, median, std = sigma_clipped_stats(values, sigma=clip_sigma, maxiters=5)
    keep = np.abs(values - median) <= clip_sigma * max(std, 1e-3)
    n = int(keep.sum())
    err_column = mag_column.replace("_mag", "_err")
    floor = 0.0
    if err_column in refcat.colnames and n:
        floor = float(np.nanmedian(np.asarray(refcat[err_column], float)[inside][good][keep]))
    zp_err = max(std, floor) * np.sqrt(np.pi / 2) / np.sqrt(n)
    return {
        "zero_point": float(median),
        "zero_point_err": float(zp_err),
        "n_stars": n,
        "scatter": float(std),
        "aperture_px": float(radius),
        "ok": True,
        "reason": "",
    }
