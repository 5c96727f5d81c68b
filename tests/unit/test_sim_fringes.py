"""Simulator fringes: an additive pattern scaling with the sky, saved in the truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from imred.instrument import load_instrument
from imred.simulate import simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
AMPLITUDE = 0.05


def _doc(fringes: bool) -> dict:
    """The small demo, Poisson noise and non-linearity off (so that the same seed gives the
    same read noise and cosmic rays whatever the expected signal), fringes in r only."""
    doc = yaml.safe_load(DEMO.read_text())
    doc["bands"][1]["fringe_amplitude"] = AMPLITUDE
    doc["small"].update(
        calibrations={"bias": {"count": 1}, "dark": {"count": 0}, "flat": {"count": 1}},
        poisson={"enabled": False},
        nonlinearity={"enabled": False},
        fringes={"enabled": fringes},
    )
    return doc


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    on, off = tmp_path_factory.mktemp("fringes_on"), tmp_path_factory.mktemp("fringes_off")
    simulate_night(_doc(True), on, small=True)
    simulate_night(_doc(False), off, small=True)
    return on, off


def test_fringe_frame_minus_plain_frame_is_the_truth_fringe_times_the_sky(pair):
    on, off = pair
    inst = load_instrument("demo_small")
    frames = Table.read(on / "truth" / "frames.ecsv")
    chips = Table.read(on / "truth" / "frame_chips.ecsv")
    assert (on / "truth" / "fringe_r.fits").is_file()
    assert not (on / "truth" / "fringe_g.fits").exists()
    assert not (off / "truth" / "fringe_r.fits").exists()
    residual_rms, signal_rms = [], []
    for frame in frames:
        path_on, path_off = on / "raw" / frame["file"], off / "raw" / frame["file"]
        if not (frame["imagetype"] == "science" and frame["band"] == "r"):
            # no fringes in g, nor in calibration frames: the same bytes
            assert path_on.read_bytes() == path_off.read_bytes(), frame["frame"]
            continue
        for chip in inst.chips:
            a = fits.getdata(path_on, chip.extension).astype(float)[:256, :256]
            b = fits.getdata(path_off, chip.extension).astype(float)[:256, :256]
            fringe = fits.getdata(on / "truth" / "fringe_r.fits", chip.name).astype(float)
            flat = fits.getdata(on / "truth" / "flat_r.fits", chip.name).astype(float)
            row = chips[(chips["frame"] == frame["frame"]) & (chips["chip"] == chip.name)][0]
            assert row["sky"] == frame["sky"]  # the chip sees the frame's own band
            want = fringe * row["sky"] * frame["exptime"] * flat / row["gain"]  # ADU
            good = (a < 59000) & (b < 59000)  # not clipped at saturation
            resid = (a - b - want)[good]
            residual_rms.append(np.sqrt(np.mean(resid**2)))
            signal_rms.append(np.sqrt(np.mean(want[good] ** 2)))
            # the difference is the pattern, to the rounding of the two raw values
            assert np.abs(resid).max() <= 1.0 + 1e-3
            assert np.corrcoef((a - b)[good], want[good])[0, 1] > 0.99
            assert np.abs(fringe).max() == pytest.approx(AMPLITUDE, rel=0.02)
    assert len(residual_rms) == 6  # 3 r frames x 2 chips
    # the residual is the rounding of two integers: rms sqrt(2/12) = 0.41 ADU
    assert np.max(residual_rms) < 0.45
    assert np.min(signal_rms) > 20 * np.max(residual_rms)


def test_fringe_patterns_differ_by_band_and_chip_and_are_smooth(tmp_path):
    doc = _doc(True)
    doc["bands"][0]["fringe_amplitude"] = AMPLITUDE
    doc["small"]["observing"] = {"science_frames_per_band": 1}
    simulate_night(doc, tmp_path, small=True)
    g = fits.getdata(tmp_path / "truth" / "fringe_g.fits", "c1")
    r = fits.getdata(tmp_path / "truth" / "fringe_r.fits", "c1")
    r2 = fits.getdata(tmp_path / "truth" / "fringe_r.fits", "c2")
    assert not np.allclose(g, r)  # another wavelength: other cycles and phase
    assert abs(np.corrcoef(r.ravel(), r2.ravel())[0, 1]) < 0.3  # chips are independent
    # fringes tens of pixels apart: neighbouring pixels nearly equal
    assert np.std(np.diff(r, axis=1)) < 0.2 * np.std(r)
