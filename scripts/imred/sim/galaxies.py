"""Simple galaxies: Sersic profiles (exponential discs and spheroids) with number counts.

Galaxies are spread uniformly over the same disc as the stars. Their reference-band
magnitudes follow ``N(< m) = density_at_20 * 10**(slope (m - 20))`` per deg^2; a
fraction ``exponential_fraction`` are exponential discs (Sersic n = 1), the others
spheroids with ``sersic_index``. The half-light radius (along the major axis) is
``r_eff_arcsec * 10**(-0.1 (m - 20))`` scattered log-normally by ``r_eff_scatter_dex``;
axis ratios are uniform in ``axis_ratio``, position angles (north through east)
uniform. Colours ``x = g - r`` are ``colour_gr`` +- ``colour_scatter`` and band
magnitudes follow the stars' colour polynomials.

A galaxy's image is its profile ``exp(-b_n ((r / r_eff)^(1/n) - 1))`` cut at
``truncation_r_eff`` half-light radii, integrated over pixels (3 x 3 sub-pixels when
its minor half-light radius is under 3 pixels, else sampled at pixel centres), convolved
with the frame's Moffat PSF and normalised so that it holds exactly its flux: the
magnitude is that of the truncated profile.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..errors import ImredError
from .optics import moffat_alpha, tan_to_sky

OVERSAMPLE = 3  # sub-pixels per axis for the PSF and for small galaxies
SMALL_PX = 3.0  # galaxies whose minor half-light radius is below this are sub-sampled
MAX_RADIUS_PX = 150


def make_galaxy_catalog(
    params: dict,
    polys: dict[str, np.ndarray],
    reference_band: str,
    ra0: float,
    dec0: float,
    radius_arcsec: float,
    rng: np.random.Generator,
    first_id: int,
) -> Table:
    """Synthetic galaxies within ``radius_arcsec`` of (ra0, dec0) (see the module docstring).

    Columns: ``id`` (from ``first_id``), ``ra``, ``dec`` (deg), ``gr``, ``{band}_mag`` for
    every colour band, ``sersic_n``, ``r_eff_arcsec``, ``axis_ratio``, ``pa_deg`` and
    ``galaxy`` (True).
    """
    area_deg2 = np.pi * (radius_arcsec / 3600.0) ** 2
    m1, m2 = sorted(params["magnitudes"])
    s = params["slope"]
    expected = params["density_at_20"] * area_deg2 * (10 ** (s * (m2 - 20)) - 10 ** (s * (m1 - 20)))
    n = int(rng.poisson(expected)) if params["enabled"] else 0
    if n > 500_000:
        raise ImredError(
            f"scenario: the galaxy counts give {n} galaxies in the field; lower "
            "galaxies.density_at_20 or the faint end of galaxies.magnitudes"
        )
    lo, hi = 10 ** (s * m1), 10 ** (s * m2)
    mag = np.log10(lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) / s
    rad = radius_arcsec * np.sqrt(rng.uniform(0.0, 1.0, n))
    ang = rng.uniform(0.0, 2 * np.pi, n)
    ra, dec = tan_to_sky(rad * np.sin(ang), rad * np.cos(ang), ra0, dec0)
    disc = rng.uniform(0.0, 1.0, n) < params["exponential_fraction"]
    r_eff = params["r_eff_arcsec"] * 10 ** (-0.1 * (mag - 20.0))
    r_eff = r_eff * 10 ** rng.normal(0.0, params["r_eff_scatter_dex"], n)
    q1, q2 = sorted(params["axis_ratio"])
    q = rng.uniform(q1, q2, n)
    pa = rng.uniform(0.0, 180.0, n)
    gr = rng.normal(params["colour_gr"], params["colour_scatter"], n)
    table = Table()
    table["id"] = np.arange(first_id, first_id + n, dtype=np.int64)
    table["ra"] = ra
    table["dec"] = dec
    table["ra"].unit = table["dec"].unit = "deg"
    table["gr"] = gr
    p_ref = np.polyval(polys[reference_band][::-1], gr)
    for band, poly in polys.items():
        table[f"{band}_mag"] = mag + np.polyval(poly[::-1], gr) - p_ref
        table[f"{band}_mag"].unit = "mag"
    table["sersic_n"] = np.where(disc, 1.0, float(params["sersic_index"]))
    table["r_eff_arcsec"] = np.clip(r_eff, 0.05, 30.0)
    table["r_eff_arcsec"].unit = "arcsec"
    table["axis_ratio"] = q
    table["pa_deg"] = pa
    table["pa_deg"].unit = "deg"
    table["galaxy"] = np.ones(n, dtype=bool)
    table.meta["REFBAND"] = reference_band
    table.meta["TRUNCATE"] = float(params["truncation_r_eff"])
    return table


def psf_kernel(fwhm_px: float, beta: float, floor: float = 1e-4) -> np.ndarray:
    """The Moffat PSF integrated over pixels, centred, out to where it drops below ``floor``
    of its peak (at least 3 FWHM), normalised to a sum of 1."""
    alpha = moffat_alpha(fwhm_px, beta)
    radius = alpha * np.sqrt(max(floor ** (-1.0 / beta) - 1.0, 0.0))
    h = int(np.clip(np.ceil(max(radius, 3 * fwhm_px)), 3, 60))
    sub = (np.arange(OVERSAMPLE) + 0.5) / OVERSAMPLE - 0.5
    g = (np.arange(-h, h + 1)[:, None] + sub[None, :]).ravel()
    prof = (1.0 + (g[:, None] ** 2 + g[None, :] ** 2) / alpha**2) ** (-beta)
    n = 2 * h + 1
    kernel = prof.reshape(n, OVERSAMPLE, n, OVERSAMPLE).sum(axis=(1, 3))
    return kernel / kernel.sum()


def pixel_angle(cd: np.ndarray, pa_deg: np.ndarray) -> np.ndarray:
    """Angle (rad, from +x towards +y) on the pixel grid of sky position angles (north
    through east) for a chip whose (xi east, eta north) <- (x, y) matrix is ``cd``."""
    pa = np.radians(np.asarray(pa_deg, dtype=float))
    sky = np.vstack([np.sin(pa), np.cos(pa)])  # (east, north) of the direction
    pix = np.linalg.solve(cd, sky)
    return np.arctan2(pix[1], pix[0])


def render_galaxies(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    r_eff_px: np.ndarray,
    sersic_n: np.ndarray,
    axis_ratio: np.ndarray,
    angle: np.ndarray,
    kernel: np.ndarray,
    truncation: float,
) -> None:
    """Add PSF-convolved Sersic galaxies to ``image`` in place (see the module docstring).

    ``x``, ``y``: 0-based centres; ``angle``: major axis on the pixel grid (rad, from +x).
    """
    from scipy.signal import fftconvolve  # imported here: scipy.signal takes ~1 s to import
    from scipy.special import gammaincinv

    ny, nx = image.shape
    k = kernel.shape[0] // 2
    for xs, ys, f, re, n, q, th in zip(
        x, y, flux, r_eff_px, sersic_n, axis_ratio, angle, strict=True
    ):
        if f <= 0:
            continue
        h = int(min(np.ceil(truncation * re) + k + 1, MAX_RADIUS_PX))
        ix0, iy0 = int(np.rint(xs)), int(np.rint(ys))
        x1, x2 = max(ix0 - h, 0), min(ix0 + h + 1, nx)
        y1, y2 = max(iy0 - h, 0), min(iy0 + h + 1, ny)
        if x1 >= x2 or y1 >= y2:
            continue
        over = OVERSAMPLE if q * re < SMALL_PX else 1
        sub = (np.arange(over) + 0.5) / over - 0.5
        gx = (np.arange(ix0 - h, ix0 + h + 1)[:, None] + sub[None, :] - xs).ravel()
        gy = (np.arange(iy0 - h, iy0 + h + 1)[:, None] + sub[None, :] - ys).ravel()
        dx, dy = gx[None, :], gy[:, None]
        u = dx * np.cos(th) + dy * np.sin(th)
        v = -dx * np.sin(th) + dy * np.cos(th)
        r = np.sqrt(u**2 + (v / q) ** 2) / re
        b = gammaincinv(2.0 * n, 0.5)
        prof = np.where(r <= truncation, np.exp(-b * (r ** (1.0 / n) - 1.0)), 0.0)
        m = 2 * h + 1
        stamp = prof.reshape(m, over, m, over).sum(axis=(1, 3))
        stamp = fftconvolve(stamp, kernel, mode="same")
        total = stamp.sum()
        if total <= 0:
            continue
        stamp *= f / total
        sy = slice(y1 - (iy0 - h), y2 - (iy0 - h))
        sx = slice(x1 - (ix0 - h), x2 - (ix0 - h))
        image[y1:y2, x1:x2] += stamp[sy, sx]
