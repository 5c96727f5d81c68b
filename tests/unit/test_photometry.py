"""Frame zero points from aperture photometry of catalog stars with known magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from imred.mask import Bit
from imred.photometry import frame_zero_point


def star_field(rng, zp=25.0, exptime=60.0, n=60, fwhm=3.0, sky_noise=5.0):
    shape = (300, 300)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 20.0]
    w.wcs.crpix = [150.5, 150.5]
    w.wcs.cd = [[-0.4 / 3600, 0], [0, 0.4 / 3600]]
    x = rng.uniform(20, 280, n)
    y = rng.uniform(20, 280, n)
    mag = rng.uniform(14, 19, n)
    flux = exptime * 10 ** (-0.4 * (mag - zp))
    sigma = fwhm / 2.3548
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        image += (
            fi
            / (2 * np.pi * sigma**2)
            * np.exp(-((xx - xi) ** 2 + (yy - yi) ** 2) / (2 * sigma**2))
        )
    var = np.clip(image, 0, None) + sky_noise**2
    sci = image + rng.normal(0, 1, shape) * np.sqrt(var)
    ra, dec = w.all_pix2world(x, y, 0)
    cat = Table({"ra": ra, "dec": dec, "r_mag": mag, "r_err": np.full(n, 0.01)})
    return sci, var, np.zeros(shape, np.uint16), w, cat, (x, y)


def test_zero_point_is_recovered_within_its_error():
    rng = np.random.default_rng(1)
    sci, var, mask, w, cat, _ = star_field(rng, zp=25.3)
    res = frame_zero_point(sci, var, mask, w, cat, "r_mag", exptime=60.0, fwhm_px=3.0)
    assert res["ok"] and res["n_stars"] > 40
    # a 2.5 FWHM aperture holds 1 - 2^-(2*2.5^2) = 99.98 % of a Gaussian's flux
    assert res["zero_point"] == pytest.approx(25.3, abs=3 * res["zero_point_err"] + 1e-3)
    assert res["zero_point_err"] < 0.01


def test_masked_and_missing_stars_are_left_out_and_failures_say_why():
    rng = np.random.default_rng(2)
    sci, var, mask, w, cat, (x, y) = star_field(rng, zp=25.0)
    full = frame_zero_point(sci, var, mask, w, cat, "r_mag", exptime=60.0, fwhm_px=3.0)
    mask[int(y[0]) - 1 : int(y[0]) + 2, int(x[0]) - 1 : int(x[0]) + 2] = Bit.SATURATED
    cut = frame_zero_point(sci, var, mask, w, cat, "r_mag", exptime=60.0, fwhm_px=3.0)
    assert cut["n_stars"] == full["n_stars"] - 1
    none = frame_zero_point(sci, var, mask, w, cat[:0], "r_mag", exptime=60.0, fwhm_px=3.0)
    assert not none["ok"] and none["reason"] == "no catalog star on the frame"
    nocol = frame_zero_point(sci, var, mask, w, cat, "g_mag", exptime=60.0, fwhm_px=3.0)
    assert not nocol["ok"] and "no column g_mag" in nocol["reason"]
