"""imred.blind (astrometry.net's solve-field) on fields made of real Tycho-2 stars.

The stars come from the astrometry.net index files themselves
(:func:`imred.refcat.tycho2_index_stars`), are projected through a known TAN-SIP WCS
of a 2048 x 2048 chip at 2.1"/px (1.19 deg), plus centroid noise, and solved with no
pointing. The tests that run solve-field skip when it or the index files are missing.
"""

from __future__ import annotations

import copy
import math
import shutil
import time

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS, Sip
from imred.astrometry import initial_wcs, match_and_fit
from imred.blind import TOO_SMALL, solve_field, solve_field_environment
from imred.errors import ImredError
from imred.frames import solve_frame
from imred.instrument import Instrument, load_instrument
from imred.refcat import ASTROMETRY_INDEX_DIR, tycho2_index_stars

HAVE_INDEX = any(ASTROMETRY_INDEX_DIR.glob("index-tycho2-*.fits"))
needs_index = pytest.mark.skipif(
    not HAVE_INDEX,
    reason=f"no astrometry.net Tycho-2 index files in {ASTROMETRY_INDEX_DIR} "
    "(apt install astrometry-data-tycho2)",
)
needs_solve_field = pytest.mark.skipif(
    shutil.which("solve-field") is None or not HAVE_INDEX,
    reason="solve-field (apt install astrometry.net) or its Tycho-2 index files are missing",
)

SHAPE = (2048, 2048)
SCALE = 2.1  # arcsec per pixel: 1.19 deg
RA0, DEC0 = 120.0, 20.0
NOISE_PX = 0.05
SETTINGS = {
    "method": "python",
    "blind": "auto",
    "blind_min_field_deg": 0.4,
    "blind_cpulimit_s": 30.0,
    "search_radius_arcsec": 30.0,
    "match_radius_arcsec": 1.0,
    "sip_order": 3,
    "min_matches": 10,
    "max_rms_arcsec": None,
    "mag_column": "VT_mag",
}


def _wide_camera() -> Instrument:
    """The demo camera with one 2048 x 2048 chip at 2.1"/px on the optical axis."""
    doc = copy.deepcopy(load_instrument("demo_small").raw_doc)
    doc["pixel_scale"] = SCALE
    chip = doc["chips"][0]
    chip["datasec"] = "[1:2048,1:2048]"
    chip["amplifiers"] = [
        {
            "name": "A",
            "data": "[1:2048,1:2048]",
            "overscan": "[2053:2068,1:2048]",
            "readout_axis": "x",
        }
    ]
    chip["geometry"] = {"offset_arcsec": [0.0, 0.0]}
    doc["chips"] = [chip]
    return Instrument(doc, "demo_small with a 1.2 deg chip (test)")


def _truth() -> WCS:
    """The true WCS: position angle 23 deg, about 2 px of SIP distortion at the corners."""
    ny, nx = SHAPE
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    w.wcs.crval = [RA0, DEC0]
    t = math.radians(23.0)
    w.wcs.cd = np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]]) * SCALE / 3600
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], a[0, 2], b[1, 1] = 1.0e-6, -0.5e-6, 1.5e-6  # 1.0, 0.5, 1.5 px at r = 1000 px
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    w.pixel_shape = (nx, ny)
    return w


@pytest.fixture(scope="module")
def tycho_field():
    """(truth, sources, refcat): the Tycho-2 stars on the chip through the truth."""
    truth = _truth()
    stars = tycho2_index_stars(RA0, DEC0, 1.0)
    x, y = truth.all_world2pix(stars["ra"], stars["dec"], 0)
    on = (x >= 0) & (x <= SHAPE[1] - 1) & (y >= 0) & (y <= SHAPE[0] - 1)
    rng = np.random.default_rng(11)
    n = int(on.sum())
    sources = Table(
        {
            "x": x[on] + rng.normal(0.0, NOISE_PX, n),
            "y": y[on] + rng.normal(0.0, NOISE_PX, n),
            "flux": 10 ** (-0.4 * (np.asarray(stars["VT_mag"])[on] - 20.0)),
            "flags": np.full(n, 4 | 16, dtype=np.int16),  # bright stars: saturated, masked
        }
    )
    return truth, sources, stars


def _centre_offset(wcs: WCS, truth: WCS) -> float:
    centre = [[(SHAPE[1] - 1) / 2.0, (SHAPE[0] - 1) / 2.0]]
    a, b = wcs.all_pix2world(centre, 0)[0], truth.all_pix2world(centre, 0)[0]
    return math.hypot((a[0] - b[0]) * math.cos(math.radians(b[1])), a[1] - b[1]) * 3600.0


# ================================================================ the index stars
@needs_index
def test_tycho2_index_stars_holds_known_stars():
    """Betelgeuse (Hipparcos J2000: 05h55m10.305s +07d24m25.43s) and the cone."""
    ra, dec = 88.792939, 7.407064
    stars = tycho2_index_stars(ra, dec, 1.0)
    assert 50 < len(stars) < 1000
    first = stars[0]
    d = math.hypot((first["ra"] - ra) * math.cos(math.radians(dec)), first["dec"] - dec)
    assert d * 3600.0 < 0.5  # the brightest star of the cone is Betelgeuse
    assert 0.0 < first["VT_mag"] < 1.5
    assert np.all(np.diff(np.asarray(stars["VT_mag"])) >= 0)  # brightest first
    cos_sep = np.sin(np.radians(dec)) * np.sin(np.radians(stars["dec"])) + np.cos(
        np.radians(dec)
    ) * np.cos(np.radians(stars["dec"])) * np.cos(np.radians(stars["ra"] - ra))
    assert np.all(cos_sep >= math.cos(math.radians(1.0)) - 1e-12)
    assert stars.meta["NSTARS"] == len(stars) and stars.meta["EPOCH"] == 2000.0


def test_tycho2_index_stars_without_index_files(tmp_path):
    with pytest.raises(ImredError, match=r"no astrometry\.net Tycho-2 index files"):
        tycho2_index_stars(0.0, 0.0, 1.0, index_dir=tmp_path)


# ================================================================ blind solving
@needs_solve_field
def test_blind_solution_of_a_tycho2_field_without_pointing(tycho_field):
    truth, sources, stars = tycho_field
    assert len(sources) >= 40  # 57 Tycho-2 stars on the chip
    start = time.perf_counter()
    wcs, reason = solve_field(sources, SHAPE, SCALE * 1.03, cpulimit_s=30)
    elapsed = time.perf_counter() - start
    assert wcs is not None, reason
    assert reason == ""
    assert wcs.pixel_shape == (2048, 2048)
    assert list(wcs.wcs.ctype) == ["RA---TAN-SIP", "DEC--TAN-SIP"]
    offset = _centre_offset(wcs, truth)
    assert offset < 1.0, offset  # measured 0.07"
    assert elapsed < 30.0  # measured ~1 s

    # refined against the catalog from the blind WCS
    refined = match_and_fit(sources, stars, wcs, mag_column="VT_mag", flag_mask=0)
    assert refined.ok, refined.reason
    assert _centre_offset(refined.wcs, truth) < 0.1  # measured 0.03"


@needs_solve_field
def test_solve_frame_blind_without_pointing(tycho_field):
    truth, sources, stars = tycho_field
    row = {"ra": None, "dec": None, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    sources = sources.copy()
    sources["flags"] = 0
    _, result = solve_frame(sources, stars, row, _wide_camera(), SHAPE, SETTINGS)
    assert result.ok, result.reason
    assert result.method.startswith("solve-field + imred-python")
    assert _centre_offset(result.wcs, truth) < 0.1


@needs_solve_field
def test_solve_frame_blind_rescues_a_wrong_pointing(tycho_field):
    """A header pointing 0.5 deg off: the python match fails, blind solving finds it."""
    truth, sources, stars = tycho_field
    sources = sources.copy()
    sources["flags"] = 0
    camera = _wide_camera()
    row = {"ra": RA0, "dec": DEC0 + 0.5, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    never = SETTINGS | {"blind": "never"}
    _, first = solve_frame(sources, stars, row, camera, SHAPE, never)
    assert not first.ok
    wcs0, result = solve_frame(sources, stars, row, camera, SHAPE, SETTINGS)
    assert result.ok, result.reason
    assert result.method.startswith("solve-field + ")
    assert _centre_offset(result.wcs, truth) < 0.1
    assert _centre_offset(wcs0, truth) < 1.0  # wcs0 is the blind solution now
    w_header = initial_wcs(camera, "c1", RA0, DEC0 + 0.5, 0.0, SHAPE)
    assert _centre_offset(w_header, truth) > 1790.0  # the header's pointing: 0.5 deg off


# ================================================================ refusals
@pytest.fixture
def random_sources():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0.0, 255.0, (30, 2))
    sources = Table({"x": xy[:, 0], "y": xy[:, 1], "flux": rng.uniform(1.0, 10.0, 30)})
    return sources, Table({"ra": [RA0], "dec": [DEC0], "VT_mag": [9.0]})


def test_a_small_field_is_not_blind_solved(random_sources):
    sources, stars = random_sources
    wcs, reason = solve_field(sources, (256, 256), SCALE)
    assert wcs is None and reason.startswith(TOO_SMALL)
    row = {"ra": None, "dec": None, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    _, result = solve_frame(sources, stars, row, _wide_camera(), (256, 256), SETTINGS)
    assert not result.ok
    assert result.reason.startswith("no pointing (RA/Dec keywords) in the header; blind solving:")
    assert "field too small for the index files" in result.reason


def test_a_missing_solve_field_binary(random_sources):
    sources, stars = random_sources
    tools = {"solve_field": "no-such-solve-field"}
    row = {"ra": None, "dec": None, "chip": "c1", "rotator": 0.0, "binning": "1x1"}
    camera = _wide_camera()
    with pytest.raises(ImredError, match=r"tools\.solve_field"):
        solve_frame(sources, stars, row, camera, SHAPE, SETTINGS | {"blind": "always"}, tools)
    _, result = solve_frame(sources, stars, row, camera, SHAPE, SETTINGS, tools)
    assert not result.ok and "tools.solve_field" in result.reason


def test_solve_field_runs_without_the_venv(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.setenv("VIRTUAL_ENV", "/work/venv")
    monkeypatch.setenv("PATH", "/work/venv/bin:/usr/local/bin:/usr/bin:/bin")
    env = solve_field_environment()
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env
    assert env["PATH"].split(":")[0] == "/usr/bin"
    assert "/work/venv/bin" not in env["PATH"].split(":")
