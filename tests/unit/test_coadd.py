"""Coadds against known truth: seeded frames with stars of known magnitude and position."""

import shutil

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from imred.coadd import CoaddInput, clipped_mean, coadd_frames, coadd_grid, flux_scale, tpv_header
from imred.errors import ImredError
from imred.mask import Bit
from imred.products import write_image_product
from scipy.special import erf

RA0, DEC0 = 150.0, 20.0
SCALE = 0.4  # arcsec/px
SIGMA = 1.6  # px, Gaussian PSF
NX, NY = 220, 200
COMMON_ZP = 25.0
SKY_VAR = 100.0  # e-^2 per pixel


def _frame_wcs(dx_arcsec, dy_arcsec, rot_deg, sip=True) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0 + dx_arcsec / 3600 / np.cos(np.radians(DEC0)), DEC0 + dy_arcsec / 3600]
    w.wcs.crpix = [NX / 2 + 0.5, NY / 2 + 0.5]
    t = np.radians(rot_deg)
    s = SCALE / 3600
    w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    if sip:
        from astropy.wcs import Sip

        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[2, 0], a[0, 2], a[3, 0] = 2e-5, -1e-5, 3e-8  # ~1 px at the corners
        b[0, 2], b[1, 1], b[0, 3] = 2e-5, 1e-5, -2e-8
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.set()
    w.pixel_shape = (NX, NY)
    return w


def _render(x, y, flux, shape) -> np.ndarray:
    """Gaussian stars integrated over pixels (exact)."""
    ny, nx = shape
    img = np.zeros(shape)
    xe = np.arange(nx + 1) - 0.5
    ye = np.arange(ny + 1) - 0.5
    k = 1 / (np.sqrt(2) * SIGMA)
    for xs, ys, f in zip(x, y, flux, strict=True):
        if not (-10 < xs < nx + 10 and -10 < ys < ny + 10):
            continue
        px = np.diff(0.5 * erf((xe - xs) * k))
        py = np.diff(0.5 * erf((ye - ys) * k))
        img += f * np.outer(py, px)
    return img


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """Four dithered frames (two zero points, two exposure times), one with a cosmic ray."""
    tmp = tmp_path_factory.mktemp("coadd")
    rng = np.random.default_rng(7)
    gx, gy = np.meshgrid(np.arange(-25, 26, 10.0), np.arange(-25, 26, 10.0))  # arcsec
    n = gx.size
    ra = RA0 + (gx.ravel() + rng.uniform(-1.5, 1.5, n)) / 3600 / np.cos(np.radians(DEC0))
    dec = DEC0 + (gy.ravel() + rng.uniform(-1.5, 1.5, n)) / 3600
    mag = rng.uniform(15.5, 19.0, n)
    specs = [
        (0, 0, 0.0, 25.5, 60.0),
        (6, 4, 0.3, 25.5, 120.0),
        (-5, 6, -0.2, 25.0, 60.0),  # through cloud: 0.5 mag less
        (4, -6, 0.1, 25.4, 90.0),
    ]
    inputs = []
    for i, (dx, dy, rot, zp, t) in enumerate(specs):
        w = _frame_wcs(dx, dy, rot)
        x, y = w.all_world2pix(ra, dec, 0)
        flux = t * 10 ** (-0.4 * (mag - zp))
        model = _render(x, y, flux, (NY, NX))
        var = SKY_VAR + model
        sci = model + rng.normal(0, np.sqrt(var))
        mask = np.zeros((NY, NX), np.uint16)
        mask[:, 30] = int(Bit.BAD)  # a bad column
        sci[:, 30] = 1e6  # garbage under the mask must not reach the coadd
        if i == 1:  # an unmasked cosmic ray, away from the stars
            yy, xx = np.mgrid[40 : NY - 40, 40 : NX - 40]
            d2 = np.min((xx.ravel()[:, None] - x) ** 2 + (yy.ravel()[:, None] - y) ** 2, axis=1)
            k = int(np.argmax(d2))
            cr = (int(yy.ravel()[k]), int(xx.ravel()[k]))
            sci[cr[0] : cr[0] + 2, cr[1] : cr[1] + 2] += 5000.0
        path = tmp / f"f{i}.fits"
        write_image_product(path, fits.Header({"EXPTIME": t}), sci, var=var, mask=mask)
        inputs.append(CoaddInput(f"f{i}.c1", str(path), w, zp, t))
    truth = {
        "ra": ra,
        "dec": dec,
        "mag": mag,
        "cr": (cr[0] + 0.5, cr[1] + 0.5),
        "wcs1": inputs[1].wcs,
    }
    return inputs, truth


def _settings(method):
    return {
        "method": method,
        "zero_point": COMMON_ZP,
        "clip_sigma": 4.0,
        "clip_ampfrac": 0.3,
        "swarp_resampling": "LANCZOS3",
        "reproject_order": "bilinear",
        "pixel_scale_arcsec": None,
    }


def test_tpv_header_reproduces_the_sip_wcs():
    sip = _frame_wcs(3, -2, 0.7)
    tpv = WCS(tpv_header(sip))
    x, y = np.meshgrid(np.linspace(0, NX - 1, 15), np.linspace(0, NY - 1, 15))
    r1, d1 = sip.all_pix2world(x.ravel(), y.ravel(), 0)
    r2, d2 = tpv.all_pix2world(x.ravel(), y.ravel(), 0)
    err = np.hypot((r1 - r2) * np.cos(np.radians(DEC0)), d1 - d2) * 3600
    assert err.max() < 1e-5  # arcsec
    # a WCS without distortion: the identity polynomial
    lin = tpv_header(_frame_wcs(0, 0, 0, sip=False))
    assert [lin[f"PV1_{k}"] for k in range(3)] == pytest.approx([0, 1, 0], abs=1e-12)
    assert [lin[f"PV2_{k}"] for k in range(3)] == pytest.approx([0, 1, 0], abs=1e-12)


def test_grid_holds_every_frame_north_up(night):
    inputs, _ = night
    grid = coadd_grid([i.wcs for i in inputs])
    assert grid.wcs.cd[0, 0] < 0 and grid.wcs.cd[1, 1] > 0 and grid.wcs.cd[0, 1] == 0
    assert abs(grid.wcs.cd[1, 1] * 3600 - SCALE) < 1e-3
    nx, ny = grid.pixel_shape
    for inp in inputs:
        ra, dec = inp.wcs.all_pix2world([0, NX - 1, 0, NX - 1], [0, 0, NY - 1, NY - 1], 0)
        x, y = grid.all_world2pix(ra, dec, 0)
        assert (
            (x > -0.5).all() and (x < nx - 0.5).all() and (y > -0.5).all() and (y < ny - 0.5).all()
        )


def test_clipped_mean_rejects_an_outlier_but_keeps_star_peaks():
    values = np.array([[10.0, 1000.0], [11.0, 1200.0], [9.0, 800.0], [200.0, 1100.0]])
    var = np.full_like(values, 4.0)
    mean, v, n = clipped_mean(values, var, 4.0, 0.3)
    assert n.tolist() == [3, 4]  # the 200 is out; the star peaks (seeing) stay
    assert mean[0] == pytest.approx(10.0)
    assert v[0] == pytest.approx(4.0 / 3)


METHODS = ["reproject"] + (["swarp"] if shutil.which("SWarp") else [])


@pytest.mark.parametrize("method", METHODS)
def test_coadd_fluxes_positions_noise_and_rejection(night, method):
    inputs, truth = night
    res = coadd_frames(inputs, _settings(method), swarp="SWarp")
    sci, var, wcs = res.sci, res.var, res.wcs
    x, y = wcs.all_world2pix(truth["ra"], truth["dec"], 0)
    ny, nx = sci.shape
    inside = (x > 15) & (x < nx - 16) & (y > 15) & (y < ny - 16)
    # well inside every frame (full exposure), away from the bad column of each frame
    full = res.exposure[np.rint(y[inside]).astype(int), np.rint(x[inside]).astype(int)] == 330.0
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + np.eye(len(x)) * 1e9
    isolated = d.min(axis=1) > 12 * SIGMA  # apertures free of neighbours
    idx = np.flatnonzero(inside)[full & isolated[inside]]
    assert idx.size >= 10
    yy, xx = np.mgrid[0:ny, 0:nx]
    fluxes, offsets = [], []
    for i in idx:
        r2 = (xx - x[i]) ** 2 + (yy - y[i]) ** 2
        ap = r2 <= (5 * SIGMA) ** 2
        fluxes.append(sci[ap].sum())
        w = np.clip(sci, 0, None) * (r2 <= (2.5 * SIGMA) ** 2)
        offsets.append(np.hypot((w * xx).sum() / w.sum() - x[i], (w * yy).sum() / w.sum() - y[i]))
    expected = 10 ** (-0.4 * (truth["mag"][idx] - COMMON_ZP))
    ratio = np.array(fluxes) / expected
    # flux scaling to the common zero point (exptimes 60-120 s, zero points 25.0-25.5)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    assert np.std(ratio) < 0.02
    # positions: centroids of the coadd stars at the true sky positions
    assert np.median(offsets) < 0.05  # px (0.02")
    # noise: sums over blank apertures scatter as VAR says (within 20 %)
    rng = np.random.default_rng(1)
    z = []
    star = np.zeros(sci.shape, bool)
    for i in range(len(x)):
        star |= (xx - x[i]) ** 2 + (yy - y[i]) ** 2 < (8 * SIGMA) ** 2
    for _ in range(400):
        cx, cy = rng.uniform(20, nx - 20), rng.uniform(20, ny - 20)
        ap = (xx - cx) ** 2 + (yy - cy) ** 2 <= 16
        if (ap & star).any() or (res.mask[ap] != 0).any() or (res.exposure[ap] < 330).any():
            continue
        z.append(sci[ap].sum() / np.sqrt(var[ap].sum()))
    assert len(z) > 30
    assert 0.75 < np.std(z) < 1.25
    # the cosmic ray of frame 1 is rejected
    ra_cr, dec_cr = truth["wcs1"].all_pix2world([truth["cr"][1]], [truth["cr"][0]], 0)
    cx, cy = wcs.all_world2pix(ra_cr, dec_cr, 0)
    j, i = int(np.rint(cy[0])), int(np.rint(cx[0]))
    assert abs(sci[j, i]) < 6 * np.sqrt(var[j, i])
    # the products: weight = 1/VAR, no-data where nothing contributes
    assert np.allclose(res.weight[res.mask == 0], 1 / var[res.mask == 0], rtol=1e-5)
    # the exposure map: 330 s where all four frames overlap; no pixel with data lacks one
    assert res.exposure.max() == 330.0
    assert np.mean(res.exposure[res.mask == 0] > 0) > 0.995


def test_flux_scale():
    # a 100 s frame at zero point 26: 1 e-/s is mag 26; at common zp 25, scale 10**-0.4/100
    assert flux_scale(26.0, 100.0, 25.0) == pytest.approx(10 ** (-0.4) / 100)


def test_missing_swarp_is_a_clear_error(night):
    inputs, _ = night
    with pytest.raises(ImredError, match=r"tools\.swarp"):
        coadd_frames(inputs[:1], _settings("swarp"), swarp="no-such-swarp")


def test_nothing_to_coadd():
    with pytest.raises(ImredError, match="nothing to coadd"):
        coadd_frames([], _settings("reproject"))
