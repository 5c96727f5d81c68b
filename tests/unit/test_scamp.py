"""imred.scamp (astrometry.method: scamp) against a synthetic field's known truth.

The field: a true TAN-SIP WCS (order 3, about 1.5 pixels of distortion at the chip's
corners), stars at random true pixel positions; the detections are those positions
plus Gaussian centroid noise, the reference catalog their true sky positions plus
Gaussian errors. The first WCS is the truth without distortion, moved by 5" and turned
by 0.1 deg. SCAMP 2.10 runs for real (skipped when it is not installed).
"""

from __future__ import annotations

import copy
import math
import shutil
import time
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, Sip
from imred.astrometry import initial_wcs, read_wcs, write_wcs
from imred.errors import ImredError
from imred.frames import solve_frame
from imred.instrument import load_instrument
from imred.scamp import _tpv_to_sip, merge_wcs_header, read_scamp_head, solve_scamp

needs_scamp = pytest.mark.skipif(
    shutil.which("scamp") is None, reason="SCAMP (scamp) is not installed (apt install scamp)"
)

CENTROID_NOISE_PX = 0.03
REF_NOISE_ARCSEC = 0.010
SETTINGS = {
    "method": "scamp",
    "blind": "never",
    "search_radius_arcsec": 30.0,
    "match_radius_arcsec": 1.0,
    "sip_order": 3,
    "min_matches": 10,
    "max_rms_arcsec": None,
    "scamp_match_resol_arcsec": None,
    "mag_column": "r_mag",
}


def _turned_and_shifted(wcs: WCS, east: float, north: float, rotation_deg: float) -> WCS:
    """``wcs`` (no SIP) moved on the sky by (east, north) arcsec and turned."""
    out = wcs.deepcopy()
    out.sip = None
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    t = math.radians(rotation_deg)
    out.wcs.cd = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]]) @ wcs.wcs.cd
    dec = wcs.wcs.crval[1]
    out.wcs.crval = [
        wcs.wcs.crval[0] + east / 3600.0 / math.cos(math.radians(dec)),
        dec + north / 3600.0,
    ]
    out.wcs.set()
    out.pixel_shape = wcs.pixel_shape
    return out


def _field(w0: WCS, n: int, seed: int, distortion_px: float = 1.5):
    """(truth, sources, refcat): the truth is ``w0`` moved back by (-5", -3"), -0.1 deg
    with a third-order SIP distortion of about ``distortion_px`` at the corners."""
    rng = np.random.default_rng(seed)
    nx, ny = w0.pixel_shape
    truth = _turned_and_shifted(w0, -5.0, -3.0, -0.1)
    r = math.hypot(nx, ny) / 2.0  # the farthest corner from the centre, roughly
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 0], a[1, 2] = 0.5, -0.4, 0.3, 0.3, 0.2
    b[2, 0], b[1, 1], b[0, 2], b[0, 3], b[2, 1] = -0.3, 0.5, 0.4, 0.3, -0.2
    for p in range(4):
        for q in range(4):
            a[p, q] *= distortion_px / r ** (p + q)
            b[p, q] *= distortion_px / r ** (p + q)
    truth.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    truth.sip = Sip(a, b, None, None, truth.wcs.crpix)
    truth.wcs.set()
    xy = rng.uniform(0.0, [nx - 1, ny - 1], (n, 2))
    ra, dec = truth.all_pix2world(xy[:, 0], xy[:, 1], 0)
    mag = rng.uniform(14.0, 20.0, n)
    flux = 10 ** (-0.4 * (mag - 25.0))
    sources = Table(
        {
            "x": xy[:, 0] + rng.normal(0.0, CENTROID_NOISE_PX, n),
            "y": xy[:, 1] + rng.normal(0.0, CENTROID_NOISE_PX, n),
            "x_err": np.full(n, CENTROID_NOISE_PX),
            "y_err": np.full(n, CENTROID_NOISE_PX),
            "flux": flux,
            "flux_err": np.sqrt(flux + 1000.0),
            "flags": np.zeros(n, dtype=np.int16),
        }
    )
    cos_dec = np.cos(np.radians(dec))
    refcat = Table(
        {
            "ra": ra + rng.normal(0.0, REF_NOISE_ARCSEC, n) / 3600.0 / cos_dec,
            "dec": dec + rng.normal(0.0, REF_NOISE_ARCSEC, n) / 3600.0,
            "ra_err": np.full(n, 1000 * REF_NOISE_ARCSEC),
            "dec_err": np.full(n, 1000 * REF_NOISE_ARCSEC),
            "r_mag": mag,
        }
    )
    return truth, sources, refcat


def _plain_tan(shape=(1024, 1024), scale=0.5, ra=150.0, dec=30.0, pa_deg=12.0) -> WCS:
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [(nx + 1) / 2 + 37.0, (ny + 1) / 2 - 21.0]
    w.wcs.crval = [ra, dec]
    t = math.radians(pa_deg)
    w.wcs.cd = np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]]) * scale / 3600
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    w.pixel_shape = (nx, ny)
    return w


def _separations(w1: WCS, w2: WCS, n: int = 17) -> np.ndarray:
    nx, ny = w2.pixel_shape
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n))
    xy = np.column_stack([gx.ravel(), gy.ravel()])
    a, b = w1.all_pix2world(xy, 0), w2.all_pix2world(xy, 0)
    dra = (a[:, 0] - b[:, 0] + 180.0) % 360.0 - 180.0
    return np.hypot(dra * np.cos(np.radians(b[:, 1])), a[:, 1] - b[:, 1]) * 3600.0


@pytest.fixture(scope="module")
def field():
    w0 = _plain_tan()
    truth, sources, refcat = _field(w0, 400, seed=42)
    return w0, truth, sources, refcat


# ================================================================ the solution
@needs_scamp
def test_scamp_recovers_the_true_wcs(field, tmp_path):
    w0, truth, sources, refcat = field
    assert _separations(w0, truth).max() > 5.0  # the first WCS is well off
    start = time.perf_counter()
    result = solve_scamp(sources, refcat, w0, mag_column="r_mag")
    elapsed = time.perf_counter() - start
    assert result.ok, result.reason
    assert result.method == "scamp TPV->TAN-SIP order 3" and result.sip_order == 3
    assert list(result.wcs.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    assert result.n_matches >= 390 and result.n_sources == 400
    d = _separations(result.wcs, truth)
    rms_truth = float(np.sqrt(np.mean(d**2)))
    assert rms_truth < 0.05, rms_truth  # measured 0.0071", worst grid point 0.021"
    # the rms measured against the catalog: centroid noise and catalog errors
    expected = math.sqrt(2 * ((CENTROID_NOISE_PX * 0.5) ** 2 + REF_NOISE_ARCSEC**2))
    assert result.rms_arcsec == pytest.approx(expected, rel=0.15)  # 0.0250" vs 0.0255"
    assert elapsed < 10.0  # measured 0.2-0.5 s

    # the product: TAN-SIP, no PV key, read back as it was written, without warnings
    path = tmp_path / "frame.c1.wcs.fits"
    write_wcs(path, result.wcs, result.header_cards())
    header = fits.getheader(path)
    assert not [k for k in header if k.startswith("PV")]
    assert header["ASTMETH"] == "scamp TPV->TAN-SIP order 3" and header["ASTOK"] is True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = read_wcs(path)
        plain = WCS(header)
    assert caught == []
    assert _separations(back, result.wcs).max() < 1e-6
    assert _separations(plain, result.wcs).max() < 1e-6


@needs_scamp
def test_solve_frame_dispatches_to_scamp():
    """The workflow's entry point with method scamp: the instrument's initial WCS for a
    demo chip (256 x 256, 0.4"/px), 120 stars."""
    instrument = load_instrument("demo_small")
    row = {"ra": 150.0, "dec": 30.0, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    w0 = initial_wcs(instrument, "c1", 150.0, 30.0, 0.0, (256, 256))
    truth, sources, refcat = _field(w0, 120, seed=7, distortion_px=0.5)
    wcs0, result = solve_frame(sources, refcat, row, instrument, (256, 256), SETTINGS)
    assert result.ok, result.reason
    assert result.method.startswith("scamp ")
    assert _separations(wcs0, w0).max() < 1e-9
    rms_truth = float(np.sqrt(np.mean(_separations(result.wcs, truth) ** 2)))
    assert rms_truth < 0.05, rms_truth  # measured 0.0091"


# ================================================================ failures
@needs_scamp
def test_failures_come_back_with_a_reason(field):
    w0, _, sources, refcat = field
    elsewhere = refcat.copy()
    elsewhere["dec"] += 1.0
    result = solve_scamp(sources, elsewhere, w0, mag_column="r_mag")
    assert not result.ok and result.reason.startswith("no reference stars in the field")
    assert result.wcs is w0 and result.n_matches == 0

    result = solve_scamp(sources, refcat[:0], w0)
    assert not result.ok and result.reason == "the reference catalog is empty"

    result = solve_scamp(sources[:0], refcat, w0)
    assert not result.ok and result.reason == "no sources"

    # a first WCS 3' off, beyond the search radius (30"): SCAMP finds no match, but
    # fits its degree-3 polynomial to chance pairs, 11 of them within 1" (a count that
    # passes); its position contrast (0.016) gives it away
    far = _turned_and_shifted(w0, 180.0, 0.0, 0.0)
    result = solve_scamp(sources, refcat, far, mag_column="r_mag")
    assert not result.ok
    assert result.reason.startswith("SCAMP's match is not significant: position contrast")
    assert result.n_matches >= 10
    assert _separations(result.wcs, field[1]).max() > 100.0  # the rejected fit is wrong
    # a sparse chip (15 sources: a linear fit) that SCAMP cannot match: its .head has no
    # PV keys, which as TPV would map every pixel onto CRVAL; read as TAN, flagged
    result = solve_scamp(sources[:15], refcat, far, mag_column="r_mag")
    assert not result.ok and result.reason.startswith("fewer matches than 10"), result.reason
    assert "(SCAMP: WARNING: Not enough matched detections" in result.reason
    assert result.sip_order == 1


def test_a_missing_scamp_binary_names_the_setting(field):
    w0, _, sources, refcat = field
    with pytest.raises(ImredError, match=r"tools\.scamp"):
        solve_scamp(sources, refcat, w0, binary="no-such-scamp-binary")
    instrument = load_instrument("demo_small")
    row = {"ra": 150.0, "dec": 30.0, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    with pytest.raises(ImredError, match=r"tools\.scamp"):
        solve_frame(
            sources, refcat, row, instrument, (256, 256), SETTINGS,
            tools={"scamp": "no-such-scamp-binary"},
        )  # fmt: skip


# ================================================================ headers
def test_a_scamp_head_with_utf8_converts_to_an_equal_tan_sip(tmp_path):
    """SCAMP's .head (UTF-8 in a COMMENT card, TPV) read and converted: the TAN-SIP
    reproduces the TPV to < 0.1 mas over the chip."""
    tpv_cards = {
        "CTYPE1": "RA---TPV", "CTYPE2": "DEC--TPV", "CUNIT1": "deg", "CUNIT2": "deg",
        "CRVAL1": 150.0, "CRVAL2": 30.0, "CRPIX1": 549.5, "CRPIX2": 491.5,
        "CD1_1": -1.3586e-04, "CD1_2": 2.8876e-05, "CD2_1": 2.8877e-05, "CD2_2": 1.3586e-04,
        "PV1_0": 2.8e-06, "PV1_1": 0.99992, "PV1_2": 5.6e-05, "PV1_4": -2.2e-03,
        "PV1_5": -8.8e-04, "PV1_6": -1.9e-04, "PV1_7": 2.5e-02, "PV1_8": -2.0e-03,
        "PV1_9": 3.0e-03, "PV1_10": -9.7e-03, "PV2_0": -1.6e-06, "PV2_1": 0.99990,
        "PV2_2": -2.5e-05, "PV2_4": 1.3e-03, "PV2_5": -3.0e-04, "PV2_6": -8.3e-04,
        "PV2_7": 2.7e-02, "PV2_8": 5.8e-03, "PV2_9": 9.9e-03, "PV2_10": 3.5e-03,
    }  # fmt: skip
    lines = ["HISTORY   Astrometric solution by SCAMP version 2.10.0 (2020-12-01)"]
    lines.append("COMMENT   (c) 2010-2018 Sorbonne Université/Université de Bordeaux/CNRS")
    lines += [str(fits.Card(k, v)) for k, v in tpv_cards.items()]
    lines.append("END")
    path = tmp_path / "chip.head"
    path.write_bytes("\n".join(lines).encode("utf-8"))
    head = read_scamp_head(path)
    assert head["CTYPE1"] == "RA---TPV" and head["PV1_10"] == pytest.approx(-9.7e-03)

    base = fits.Header({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "A_ORDER": 2})
    base["A_0_2"], base["PC1_1"], base["CDELT1"], base["NAXIS1"] = 1e-6, 1.0, 1e-4, 1024
    merged = merge_wcs_header(base, head)
    assert "A_ORDER" not in merged and "A_0_2" not in merged and "PC1_1" not in merged
    assert "CDELT1" not in merged and merged["NAXIS1"] == 1024 and "PV2_10" in merged
    del merged["NAXIS1"]
    tpv = WCS(merged)
    tpv.pixel_shape = (1024, 1024)
    sip, error = _tpv_to_sip(tpv, (1024, 1024), 3)
    assert error < 1e-4
    assert _separations(sip, tpv).max() < 1e-4
    assert not [k for k in sip.to_header(relax=True) if k.startswith("PV")]


def test_blind_policy_never_without_a_pointing(field):
    _, _, sources, refcat = field
    instrument = load_instrument("demo_small")
    row = {"ra": None, "dec": None, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    _, result = solve_frame(
        sources, refcat, row, instrument, (256, 256), SETTINGS | {"method": "python"}
    )
    assert not result.ok and result.reason.startswith("no pointing")
    assert "astrometry.blind is never" in result.reason


def test_settings_are_checked():
    instrument = load_instrument("demo_small")
    row = {"ra": 150.0, "dec": 30.0, "chip": "c1"}
    table = Table({"x": [1.0], "y": [1.0]})
    with pytest.raises(ImredError, match=r"astrometry\.method"):
        solve_frame(table, table, row, instrument, (256, 256), SETTINGS | {"method": "tpv"})
    settings = copy.deepcopy(SETTINGS) | {"blind": "sometimes"}
    with pytest.raises(ImredError, match=r"astrometry\.blind"):
        solve_frame(table, table, row, instrument, (256, 256), settings)
