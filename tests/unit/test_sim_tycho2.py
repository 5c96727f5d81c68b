"""Simulator with the Tycho-2 stars of astrometry.net's index files as its star catalog.

Tycho-2 is sparse (a few tens of stars per deg^2 in Debian's index files), so the night
is taken with a test camera of 2x2 chips of 200 pixels at 8"/pixel (53' on a side).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import sep
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred.errors import ImredError
from imred.refcat import ASTROMETRY_INDEX_DIR, tycho2_index_stars
from imred.simulate import simulate_night

from conftest import write_test_camera

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
HAVE_INDEX = any(ASTROMETRY_INDEX_DIR.glob("index-tycho2-*.fits"))
needs_index = pytest.mark.skipif(
    not HAVE_INDEX,
    reason=f"no Tycho-2 index files in {ASTROMETRY_INDEX_DIR} (Debian package "
    "astrometry-data-tycho2-10-19-littleendian)",
)
N, SCALE = 200, 8.0  # chip size (pixels), pixel scale (arcsec)
RA0, DEC0 = 115.0, -1.0  # Monoceros, up in the evening of 2024-03-15 at Kitt Peak


def _wide_camera(folder: Path) -> Path:
    """2x2 chips of N x N data pixels (plus 10 overscan columns) at SCALE "/pixel."""
    half = (N / 2 + 5) * SCALE  # chip centres 10 pixels apart at the gaps
    chips = [
        {
            "name": f"w{n}",
            "extension": f"W{n}",
            "datasec": f"[1:{N},1:{N}]",
            "amplifiers": [{"data": f"[1:{N},1:{N}]", "overscan": f"[{N + 3}:{N + 10},1:{N}]"}],
            "geometry": {"offset_arcsec": [(-1) ** n * half, (-1) ** (n // 2) * half]},
        }
        for n in range(4)
    ]
    return write_test_camera(folder, "widecam", chips, pixel_scale=SCALE)


def _doc(folder: Path, catalog) -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    doc.pop("small")
    doc["instrument"] = str(_wide_camera(folder))
    doc["field"] = {"name": "TYCHO", "ra_deg": RA0, "dec_deg": DEC0}
    # bright stars: 3-s exposures at a low zero point keep V_T ~ 6-12 unsaturated;
    # a 24" (3-pixel) seeing samples them
    doc["bands"] = [{"name": "r", "zero_point": 20.5, "exptime": 3.0, "sky_mag_arcsec2": 21.0}]
    doc["calibrations"] = {"bias": {"count": 0}, "dark": {"count": 0}, "flat": {"count": 0}}
    doc["observing"] = {"science_frames_per_band": 2}
    doc["seeing"] = {"fwhm_arcsec": 24.0, "scatter": 0.0}
    doc["dither"] = {"offsets_arcsec": [[0, 0], [100, 60]], "pointing_error_arcsec": 1.0}
    doc["cosmic_rays"] = {"enabled": False}
    doc["bad_columns"] = {"enabled": False}
    doc["refcat"] = {"bright_limit": 0.0, "mag_limit": 16.0}
    doc["stars"] = copy.deepcopy(doc["stars"])
    doc["stars"]["catalog"] = catalog
    return doc


@pytest.fixture(scope="module")
def tycho_night(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tycho2")
    if not HAVE_INDEX:
        pytest.skip(f"no Tycho-2 index files in {ASTROMETRY_INDEX_DIR}")
    out = tmp / "night"
    simulate_night(_doc(tmp, {"tycho2": True}), out)
    return out


@needs_index
def test_the_stars_are_the_index_stars_of_the_field(tycho_night):
    """stars.ecsv is exactly the index files' stars in the simulated disc, magnitudes from
    V_T as documented (g - r = 0.5, g = V_T + 0.59 x 0.5 + 0.01, r = g - 0.5)."""
    truth = tycho_night / "truth"
    stars = Table.read(truth / "stars.ecsv")
    assert stars.meta["CATFILE"] == "tycho2_index" and stars.meta["NDROPPED"] == 0
    # the disc the simulator covers: the farthest chip corner (2 x (105 + 100) pixels
    # from the axis diagonally) + the largest dither + 5 x the pointing error + the
    # 60-pixel margin + 30"
    radius = (np.hypot(1640.0, 1640.0) + np.hypot(100, 60) + 5.0 + 60 * SCALE + 30.0) / 3600
    wanted = tycho2_index_stars(RA0, DEC0, radius)
    print(f"disc radius {radius:.4f} deg: {len(stars)} stars, {len(wanted)} index stars")
    assert len(stars) == len(wanted) >= 15
    assert np.array_equal(np.asarray(stars["ra"]), np.asarray(wanted["ra"]))
    assert np.array_equal(np.asarray(stars["dec"]), np.asarray(wanted["dec"]))
    assert np.allclose(stars["g_mag"], wanted["VT_mag"] + 0.59 * 0.5 + 0.01, rtol=0, atol=1e-9)
    assert np.allclose(stars["r_mag"], stars["g_mag"] - 0.5, rtol=0, atol=1e-9)
    assert np.all(stars["gr"] == 0.5)
    # no index star within 10" of the disc's edge (the comparison is not a matter of luck)
    wider = tycho2_index_stars(RA0, DEC0, radius + 0.2)
    d = _sep_deg(wider["ra"], wider["dec"], RA0, DEC0)
    assert not np.any(np.abs(d - radius) < 10 / 3600)
    ref = Table.read(truth / "refcat.fits")
    assert set(ref["source_id"]) == set(stars["id"])  # bright_limit 0: all of them


@needs_index
def test_tycho_stars_land_where_the_true_wcs_puts_them(tycho_night):
    """Each science frame x chip holds exactly the index stars the true WCS puts on it,
    at the true WCS's pixels, and the images show them there."""
    truth = tycho_night / "truth"
    stars = Table.read(truth / "stars.ecsv")
    frames = Table.read(truth / "frames.ecsv")
    sf = Table.read(truth / "star_frames.ecsv")
    bias = {f"w{n}": fits.getdata(truth / "bias.fits", f"w{n}").astype(float) for n in range(4)}
    n_on, worst_px, offsets = 0, 0.0, []
    for frame in frames[frames["imagetype"] == "science"]:
        with (
            fits.open(truth / "frames" / f"{frame['frame']}.fits") as masks,
            fits.open(tycho_night / "raw" / frame["file"]) as raw,
        ):
            for chip in bias:
                wcs = WCS(masks[chip].header)
                x, y = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
                inside = (x >= -0.5) & (x < N - 0.5) & (y >= -0.5) & (y < N - 0.5)
                rows = sf[(sf["frame"] == frame["frame"]) & (sf["chip"] == chip) & sf["on_chip"]]
                assert set(rows["id"]) == set(stars["id"][inside])
                k = np.searchsorted(stars["id"], rows["id"])
                if len(rows):
                    miss = np.hypot(rows["x"] - x[k], rows["y"] - y[k])
                    worst_px = max(worst_px, float(miss.max()))
                n_on += len(rows)
                image = raw[chip.upper()].data.astype(float)[:, :N] - bias[chip][:, :N]
                for s, xs, ys in zip(rows, x[k], y[k], strict=True):
                    if not (8 < xs < N - 9 and 8 < ys < N - 9) or s["peak"] > 40000:
                        continue
                    near = np.hypot(x - xs, y - ys)
                    if np.sum(near < 10) > 1:  # another star within 10 pixels
                        continue
                    r = np.hypot(*np.meshgrid(np.arange(N) - xs, np.arange(N) - ys))
                    data = np.ascontiguousarray(image - np.median(image[(r > 8) & (r < 14)]))
                    mx, my, _ = sep.winpos(data, np.array([xs]), np.array([ys]), np.array([1.27]))
                    offsets.append((mx[0] - xs, my[0] - ys))
    offsets = np.array(offsets)
    print(
        f"on-chip star rows {n_on}, worst truth-vs-WCS pixel {worst_px:.2e}, "
        f"{len(offsets)} measured, rms centroid offset (x, y) "
        f"{np.sqrt(np.mean(offsets**2, axis=0))}"
    )
    assert n_on >= 30
    assert worst_px < 1e-3
    assert len(offsets) >= 10
    assert np.sqrt(np.mean(offsets**2, axis=0)).max() < 0.05


def test_missing_index_files_name_the_folder_and_the_package(tmp_path):
    empty = tmp_path / "no_index"
    empty.mkdir()
    with pytest.raises(
        ImredError,
        match=r"stars\.catalog\.tycho2.*no_index has none.*astrometry-data-tycho2-10-19-littleendian",
    ):
        simulate_night(_doc(tmp_path, {"tycho2": {"index_dir": str(empty)}}), tmp_path / "a")
    with pytest.raises(ImredError, match=r"stars\.catalog has both tycho2 and file"):
        both = {"tycho2": True, "file": "x.fits", "columns": {"ra": "ra", "dec": "dec"}}
        simulate_night(_doc(tmp_path, both), tmp_path / "b")


def _sep_deg(ra, dec, ra0, dec0) -> np.ndarray:
    r, d = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    r0, d0 = np.radians(ra0), np.radians(dec0)
    c = np.sin(d) * np.sin(d0) + np.cos(d) * np.cos(d0) * np.cos(r - r0)
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))
