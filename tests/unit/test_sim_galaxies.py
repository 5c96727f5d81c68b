"""Simulator galaxies: Sersic profiles that hold their truth flux, listed apart from stars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred.instrument import load_instrument
from imred.simulate import load_scenario, simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
N = 256  # demo_small chips
SCALE = 0.4


def _doc(noise: bool, **galaxies) -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    small = doc["small"]
    small["calibrations"] = {"bias": {"count": 0}, "dark": {"count": 0}, "flat": {"count": 0}}
    small["stars"] = {"enabled": False}
    small["galaxies"] = {
        "enabled": True,
        "density_at_20": 40000,
        "magnitudes": [15.5, 18.5],
        "r_eff_arcsec": 0.5,
        "truncation_r_eff": 4.0,
        "exponential_fraction": 0.5,
        **galaxies,
    }
    if not noise:
        for key in ("poisson", "read_noise", "cosmic_rays", "sky", "nonlinearity", "bad_columns"):
            small[key] = {"enabled": False}
    else:
        small["nonlinearity"] = {"enabled": False}
        small["observing"] = {"science_frames_per_band": 5}  # noise differs frame to frame
        small["dither"]["offsets_arcsec"] = [[0, 0], [12, 10], [-10, -12], [15, -5], [-5, 15]]
    return doc


@pytest.fixture(scope="module")
def noiseless(tmp_path_factory):
    out = tmp_path_factory.mktemp("galaxies_noiseless")
    simulate_night(_doc(noise=False), out, small=True)
    return out


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    out = tmp_path_factory.mktemp("galaxies_noisy")
    simulate_night(_doc(noise=True), out, small=True)
    return out


def _electrons(out: Path, frame, chip) -> np.ndarray:
    """Sky + galaxy e- before the flat: raw minus true bias, drift and dark, over the flat."""
    chips = Table.read(out / "truth" / "frame_chips.ecsv")
    row = chips[(chips["frame"] == frame["frame"]) & (chips["chip"] == chip.name)][0]
    raw = fits.getdata(out / "raw" / frame["file"], chip.extension).astype(float)
    bias = fits.getdata(out / "truth" / "bias.fits", chip.name)
    dark = fits.getdata(out / "truth" / "dark.fits", chip.name)
    flat = fits.getdata(out / "truth" / f"flat_{frame['band']}.fits", chip.name)
    e = (raw - bias - row["bias_offset"])[:N, :N] * row["gain"] - dark * frame["exptime"]
    return e / flat


def _isolated(out: Path, min_flux: float = 0.0, trunc: float = 4.0):
    """(frame row, chip, galaxy_frames row, galaxy row, aperture radius px) of galaxies whose
    whole light lies on the chip, away from every other galaxy's."""
    inst = load_instrument("demo_small")
    frames = Table.read(out / "truth" / "frames.ecsv")
    gal = Table.read(out / "truth" / "galaxies.ecsv")
    gf = Table.read(out / "truth" / "galaxy_frames.ecsv")
    reach = trunc * np.asarray(gal["r_eff_arcsec"]) / SCALE
    by_id = {int(i): k for k, i in enumerate(gal["id"])}
    for frame in frames[frames["imagetype"] == "science"]:
        psf = 3.0 * frame["seeing"] / SCALE
        for chip in inst.chips:
            rows = gf[(gf["frame"] == frame["frame"]) & (gf["chip"] == chip.name)]
            rad = np.array([reach[by_id[int(i)]] for i in rows["id"]]) + psf
            for k, s in enumerate(rows):
                if s["flux"] < min_flux or rad[k] > 40:
                    continue
                if not (
                    rad[k] + 2 < s["x"] < N - 3 - rad[k] and rad[k] + 2 < s["y"] < N - 3 - rad[k]
                ):
                    continue
                d = np.hypot(rows["x"] - s["x"], rows["y"] - s["y"])
                if np.any((d > 0) & (d < rad + rad[k] + 3)):
                    continue
                yield frame, chip, s, gal[by_id[int(s["id"])]], rad[k]


def test_galaxy_fluxes_integrate_to_the_truth(noiseless):
    ratios = []
    for frame, chip, s, _, radius in _isolated(noiseless):
        image = _electrons(noiseless, frame, chip)
        r = np.hypot(*np.meshgrid(np.arange(N) - s["x"], np.arange(N) - s["y"]))
        ratios.append(np.sum(image[r < radius]) / s["flux"])
    ratios = np.array(ratios)
    assert len(ratios) >= 10
    assert np.all(np.abs(ratios - 1) < 0.01), ratios


def test_galaxy_fluxes_integrate_to_the_truth_through_the_noise(noisy):
    ratios = []
    for frame, chip, s, _, radius in _isolated(noisy, min_flux=1.5e5):
        image = _electrons(noisy, frame, chip)
        r = np.hypot(*np.meshgrid(np.arange(N) - s["x"], np.arange(N) - s["y"]))
        sky = np.median(image[(r > radius + 3) & (r < radius + 25)])
        ratios.append(np.sum(image[r < radius] - sky) / s["flux"])
    ratios = np.array(ratios)
    assert len(ratios) >= 5
    assert abs(np.median(ratios) - 1) < 0.01, ratios
    assert np.all(np.abs(ratios - 1) < 0.03), ratios


def test_galaxy_shapes_follow_the_truth_on_the_sky(tmp_path):
    """Second moments: the major axis lies along the truth position angle, seen through
    the true WCS of a camera turned by 30 deg; elongated galaxies look elongated."""
    doc = _doc(
        noise=False,
        density_at_20=60000,
        magnitudes=[16.0, 17.0],
        r_eff_arcsec=0.8,
        r_eff_scatter_dex=0.05,
        axis_ratio=[0.3, 0.5],
        truncation_r_eff=3.0,
    )
    doc["small"]["observing"] = {"science_frames_per_band": 2}
    doc["small"]["rotator"] = {"angle_deg": 30.0}
    simulate_night(doc, tmp_path, small=True)
    misses, elong = [], []
    for frame, chip, s, g, radius in _isolated(tmp_path, trunc=3.0):
        assert abs(frame["pa"] - 30.0) < 0.2
        image = _electrons(tmp_path, frame, chip)
        yy, xx = np.mgrid[0:N, 0:N]
        w = image * (np.hypot(xx - s["x"], yy - s["y"]) < radius)
        dx, dy = xx - s["x"], yy - s["y"]
        mxx, myy, mxy = (np.sum(w * a) / np.sum(w) for a in (dx * dx, dy * dy, dx * dy))
        measured = 0.5 * np.arctan2(2 * mxy, mxx - myy)
        lam = np.linalg.eigvalsh([[mxx, mxy], [mxy, myy]])
        elong.append(np.sqrt(lam[0] / lam[1]))
        header = fits.getheader(tmp_path / "truth" / "frames" / f"{frame['frame']}.fits", chip.name)
        wcs = WCS(header)
        centre = SkyCoord(g["ra"] * u.deg, g["dec"] * u.deg)
        tip = centre.directional_offset_by(g["pa_deg"] * u.deg, 2 * u.arcsec)
        (x0, x1), (y0, y1) = wcs.all_world2pix([g["ra"], tip.ra.deg], [g["dec"], tip.dec.deg], 0)
        want = np.arctan2(y1 - y0, x1 - x0)
        diff = (measured - want + np.pi / 2) % np.pi - np.pi / 2
        misses.append(np.degrees(abs(diff)))
    assert len(misses) >= 4
    assert max(misses) < 3.0, misses
    assert max(elong) < 0.8, elong  # axis ratios 0.3-0.5, rounded a little by the seeing


def test_galaxies_are_listed_apart_and_off_by_default(noiseless):
    truth = noiseless / "truth"
    gal = Table.read(truth / "galaxies.ecsv")
    gf = Table.read(truth / "galaxy_frames.ecsv")
    assert len(gal) > 50 and np.all(gal["galaxy"]) and np.all(gf["galaxy"])
    assert np.all(gal["id"] >= 1_000_000_000)
    assert set(np.round(gal["sersic_n"], 3)) == {1.0, 4.0}
    assert len(Table.read(truth / "stars.ecsv")) == 0  # stars off here
    assert len(Table.read(truth / "star_frames.ecsv")) == 0
    assert len(Table.read(truth / "refcat.fits")) == 0  # galaxies are never reference stars
    sc, _, _ = load_scenario(DEMO)
    assert sc["galaxies"]["enabled"] is False


def test_galaxies_and_fringes_are_reproducible_by_seed(tmp_path):
    doc = _doc(noise=True)
    doc["bands"][1]["fringe_amplitude"] = 0.02
    doc["small"]["observing"] = {"science_frames_per_band": 1}
    first = simulate_night(doc, tmp_path / "a", small=True)
    again = simulate_night(doc, tmp_path / "b", small=True)
    other = simulate_night(doc, tmp_path / "c", small=True, seed=99)
    assert first["n_galaxies"] == again["n_galaxies"] > 0
    for a, b, c in zip(first["files"], again["files"], other["files"], strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes()
        assert Path(a).read_bytes() != Path(c).read_bytes()
    for name in ("galaxies.ecsv", "galaxy_frames.ecsv", "fringe_r.fits"):
        assert (tmp_path / "a" / "truth" / name).read_bytes() == (
            tmp_path / "b" / "truth" / name
        ).read_bytes()
