"""On-chip binning in the simulator (scenario ``observing.binning``), checked with numbers.

Each binned night has an unbinned twin with the same seed: the night plan, catalog,
flats and dark current are the same, so the two can be compared pixel block by block.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import sep
import yaml
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from astropy.table import Table
from astropy.wcs import WCS
from imred.config import load_config
from imred.errors import ImredError
from imred.instrument import load_instrument
from imred.masters import build_calibrated, build_master_bias, build_master_dark, build_master_flat
from imred.obslog import update_obslog
from imred.products import write_image_product
from imred.sim import optics
from imred.simulate import simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
INST = load_instrument("demo_small")


def _doc(binning, *, sparse: bool = False) -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    small = doc["small"]
    small["observing"] = {"science_frames_per_band": 2, "binning": list(binning)}
    if sparse:  # science frames only, bright separated stars, seeing sampled by 2x2 pixels
        small["calibrations"] = {"bias": {"count": 0}, "dark": {"count": 0}, "flat": {"count": 0}}
        small["stars"] = {"density_at_20": 80000, "slope": 0.15, "magnitudes": [16.0, 17.2]}
        small["bad_columns"] = {"enabled": False}
        small["seeing"] = {"fwhm_arcsec": 2.0, "scatter": 0.05}
    return doc


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, binning in (("b2", (2, 2)), ("b1", (1, 1))):
        out[name] = tmp_path_factory.mktemp(f"night_{name}")
        simulate_night(_doc(binning), out[name], small=True)
    return out


@pytest.fixture(scope="module")
def sparse(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, binning in (("b2", (2, 2)), ("b1", (1, 1))):
        out[name] = tmp_path_factory.mktemp(f"sparse_{name}")
        simulate_night(_doc(binning, sparse=True), out[name], small=True)
    return out


def _frames(out: Path) -> Table:
    return Table.read(out / "truth" / "frames.ecsv")


def _chip_row(out: Path, frame: str, chip: str):
    fc = Table.read(out / "truth" / "frame_chips.ecsv")
    return fc[(fc["frame"] == frame) & (fc["chip"] == chip)][0]


def _electrons(out: Path, frame: str, chip: str) -> np.ndarray:
    """Data section minus the true (binned) bias and drift, linearised, times the gain."""
    raw = fits.getdata(out / "raw" / f"{frame}.fits", INST.chip(chip).extension).astype(float)
    bias = fits.getdata(out / "truth" / "bias.fits", chip).astype(float)
    row = _chip_row(out, frame, chip)
    poly = np.asarray(Table.read(out / "truth" / "nonlinearity.ecsv")["coefficient"])
    n = raw.shape[0]  # the data section is the leading n x n block
    adu = (raw - bias - row["bias_offset"])[:n, :n]
    return adu * np.polyval(poly[::-1], adu) * row["gain"]


# ------------------------------------------------------------------- (a) files and obslog
def test_binned_raw_files_read_back_as_2x2(nights, tmp_path):
    rows, _ = update_obslog(INST, [nights["b2"] / "raw"], tmp_path / "obslog.tsv")
    assert rows and {r["binning"] for r in rows} == {"2x2"}
    assert {(int(r["nx"]), int(r["ny"])) for r in rows} == {(138, 128)}  # 276x256 unbinned
    assert {(r["use"], r["reason"]) for r in rows} == {("yes", "")}
    frame = _frames(nights["b2"])["frame"][0]
    with fits.open(nights["b2"] / "raw" / f"{frame}.fits") as hdul:
        assert hdul[0].header["CCDSUM"] == "2 2"
        assert hdul["CCD1"].data.shape == (128, 138)
        assert hdul["CCD1"].header["DATASEC"] == "[1:128,1:128]"
        assert hdul["CCD1"].header["BIASSEC"] == "[131:138,1:128]"
    with fits.open(nights["b1"] / "raw" / f"{frame}.fits") as hdul:
        assert hdul["CCD1"].data.shape == (256, 276)
    for name in ("dark", "badpix", "flat_g"):
        assert fits.getdata(nights["b2"] / "truth" / f"{name}.fits", "c1").shape == (128, 128)
    assert fits.getdata(nights["b2"] / "truth" / "bias.fits", "c1").shape == (128, 138)
    assert set(_frames(nights["b2"])["binning"]) == {"2x2"}


def test_truth_images_are_the_unbinned_ones_binned(nights):
    t2, t1 = nights["b2"] / "truth", nights["b1"] / "truth"
    flat2, flat1 = fits.getdata(t2 / "flat_r.fits", "c2"), fits.getdata(t1 / "flat_r.fits", "c2")
    np.testing.assert_allclose(flat2, optics.bin_mean(flat1, (2, 2)), rtol=1e-6)
    dark2, dark1 = fits.getdata(t2 / "dark.fits", "c1"), fits.getdata(t1 / "dark.fits", "c1")
    np.testing.assert_allclose(dark2, optics.bin_sum(dark1, (2, 2)), rtol=1e-5)
    bits2, bits1 = fits.getdata(t2 / "badpix.fits", "c1"), fits.getdata(t1 / "badpix.fits", "c1")
    assert (bits2 > 0).sum() >= (bits1 > 0).sum() / 4
    assert np.array_equal(bits2 > 0, optics.bin_sum((bits1 > 0).astype(int), (2, 2)) > 0)
    # the bias is an offset: its level stays, its structure is the block mean
    bias2, bias1 = fits.getdata(t2 / "bias.fits", "c1"), fits.getdata(t1 / "bias.fits", "c1")
    np.testing.assert_allclose(bias2, optics.bin_mean(bias1.astype(float), (2, 2)), atol=1e-3)


def test_refuses_a_binning_that_cuts_sections(tmp_path):
    with pytest.raises(ImredError, match="binned-pixel boundaries"):
        simulate_night(_doc((3, 3)), tmp_path, small=True)


# -------------------------------------------------------------- (c) signal and read noise
def test_binned_flat_collects_four_times_the_charge(nights):
    ratios = {}
    for name, area in (("b2", 4), ("b1", 1)):
        fr = _frames(nights[name])
        flats = fr[fr["imagetype"] == "flat"]
        per = []
        for f in flats:
            for chip in ("c1", "c2"):
                e = _electrons(nights[name], f["frame"], chip)
                # lamp e-/s per unbinned pixel = the truth's per-binned-pixel value / area
                per.append(np.mean(e) / (f["illumination"] / area * f["exptime"]))
        ratios[name] = np.array(per)
    ratio = ratios["b2"].mean() / ratios["b1"].mean()
    print(f"binned/unbinned flat e- per unit lamp (same illumination): {ratio:.5f}")
    assert ratio == pytest.approx(4.0, rel=2e-3)
    # the flat level the plan aims at is on the raw (binned) pixel: the same ADU level
    lvl = {
        n: np.mean(
            _electrons(
                nights[n],
                _frames(nights[n])[_frames(nights[n])["imagetype"] == "flat"]["frame"][0],
                "c1",
            )
        )
        for n in nights
    }
    assert lvl["b2"] == pytest.approx(lvl["b1"], rel=0.02)


def test_binned_bias_has_the_chips_read_noise(nights):
    fr = _frames(nights["b2"])
    biases = list(fr[fr["imagetype"] == "bias"]["frame"])
    for chip in ("c1", "c2"):
        c = INST.chip(chip)
        ext = c.extension
        measured = []
        for a, b in itertools.pairwise(biases):
            ra = fits.getdata(nights["b2"] / "raw" / f"{a}.fits", ext).astype(float)
            rb = fits.getdata(nights["b2"] / "raw" / f"{b}.fits", ext).astype(float)
            diff = (ra - rb)[:128, :128]
            _, _, sd = sigma_clipped_stats(diff, sigma=4)
            measured.append(sd / np.sqrt(2) * c.gain)
        rn = float(np.mean(measured))
        print(f"{chip}: read noise of 2x2 binned biases {rn:.3f} e- (chip {c.read_noise} e-)")
        assert rn == pytest.approx(c.read_noise, rel=0.03)


# ------------------------------------------------------------------- (b) WCS and stars
def test_true_wcs_has_the_binned_pixel_scale_and_positions(sparse):
    fr = _frames(sparse["b2"])
    sf2 = Table.read(sparse["b2"] / "truth" / "star_frames.ecsv")
    sf1 = Table.read(sparse["b1"] / "truth" / "star_frames.ecsv")
    stars = Table.read(sparse["b2"] / "truth" / "stars.ecsv")
    idx = {int(i): k for k, i in enumerate(stars["id"])}
    n = 0
    for frame in fr["frame"]:
        for chip in ("c1", "c2"):
            h = fits.getheader(sparse["b2"] / "truth" / "frames" / f"{frame}.fits", chip)
            cd = np.array([[h["CD1_1"], h["CD1_2"]], [h["CD2_1"], h["CD2_2"]]])
            assert np.sqrt(abs(np.linalg.det(cd))) * 3600 == pytest.approx(0.8, rel=1e-9)
            h1 = fits.getheader(sparse["b1"] / "truth" / "frames" / f"{frame}.fits", chip)
            assert h["CRPIX1"] == pytest.approx((h1["CRPIX1"] - 0.5) / 2 + 0.5, rel=1e-12)
            assert h["A_3_0"] == pytest.approx(4 * h1["A_3_0"], rel=1e-12)  # k r^3, r in px
            assert h["BP_2_3"] == pytest.approx(16 * h1["BP_2_3"], rel=1e-12)  # 5th order
            wcs = WCS(h)
            s2 = sf2[(sf2["frame"] == frame) & (sf2["chip"] == chip)]
            s1 = sf1[(sf1["frame"] == frame) & (sf1["chip"] == chip)]
            k = [idx[int(i)] for i in s2["id"]]
            px, py = wcs.all_world2pix(stars["ra"][k], stars["dec"][k], 0)
            assert np.max(np.hypot(px - s2["x"], py - s2["y"])) < 0.01
            assert list(s1["id"]) == list(s2["id"])
            np.testing.assert_allclose(s2["x"], (s1["x"] + 0.5) / 2 - 0.5, atol=1e-9)
            np.testing.assert_allclose(s2["y"], (s1["y"] + 0.5) / 2 - 0.5, atol=1e-9)
            np.testing.assert_allclose(s2["flux"], s1["flux"], rtol=1e-12)
            n += len(s2)
    assert n > 50


def test_binned_stars_land_where_the_binned_wcs_puts_them(sparse):
    out = sparse["b2"]
    fr = _frames(out)
    sf = Table.read(out / "truth" / "star_frames.ecsv")
    stars = Table.read(out / "truth" / "stars.ecsv")
    dx, dy, fluxes = [], [], []
    yy, xx = np.mgrid[0:128, 0:128]
    for f in fr[fr["imagetype"] == "science"]:
        for chip in ("c1", "c2"):
            with fits.open(out / "truth" / "frames" / f"{f['frame']}.fits") as hdul:
                wcs, cosmic = WCS(hdul[chip].header), hdul[chip].data.astype(bool)
            flat = fits.getdata(out / "truth" / f"flat_{f['band']}.fits", chip).astype(float)
            dark = fits.getdata(out / "truth" / "dark.fits", chip).astype(float)
            image = (_electrons(out, f["frame"], chip) - dark * f["exptime"]) / flat
            rows = sf[(sf["frame"] == f["frame"]) & (sf["chip"] == chip) & sf["on_chip"]]
            sig = f["seeing"] / 0.8 / 2.3548
            for s in rows:
                if not (12 < s["x"] < 115 and 12 < s["y"] < 115) or s["flux"] < 2e4:
                    continue
                d = np.hypot(sf["x"] - s["x"], sf["y"] - s["y"])
                same = (sf["frame"] == f["frame"]) & (sf["chip"] == chip)
                if np.any(same & (d > 0) & (d < 20) & (sf["flux"] > 0.002 * s["flux"])):
                    continue
                near = np.hypot(xx - s["x"], yy - s["y"])
                if cosmic[near < 9].any():
                    continue
                star = stars[stars["id"] == s["id"]][0]
                px, py = wcs.all_world2pix(star["ra"], star["dec"], 0)
                sky = np.median(image[(near > 9) & (near < 13)])
                data = np.ascontiguousarray(image - sky)
                mx, my, _ = sep.winpos(data, np.array([px]), np.array([py]), np.array([sig]))
                dx.append(mx[0] - px)
                dy.append(my[0] - py)
                flux = data[near < 8].sum()
                fluxes.append(flux / s["flux"])
    dx, dy = np.array(dx), np.array(dy)
    rx, ry = np.sqrt(np.mean(dx**2)), np.sqrt(np.mean(dy**2))
    print(f"{dx.size} stars: centroid - binned WCS rms {rx:.4f}, {ry:.4f} binned px; "
          f"flux (r < 8 binned px) / truth median {np.median(fluxes):.4f}")  # fmt: skip
    assert dx.size >= 15
    assert rx < 0.03 and ry < 0.03
    assert np.median(fluxes) == pytest.approx(0.99, abs=0.02)  # Moffat wings beyond r = 8


# ------------------------------------------------------------ (d) the pipeline's calibration
def _calibrate(out: Path, tmp: Path, chip_name: str):
    """Masters and one calibrated r-band science frame of ``chip_name``, as the rules do."""
    rows, _ = update_obslog(INST, [out / "raw"], tmp / "obslog.tsv")
    rows = [r for r in rows if r["chip"] == chip_name]
    chip = asdict(INST.chip(chip_name))
    cfg = load_config({"instruments": {"demo_small": {"raw": [str(out / "raw")]}}})
    settings = cfg["calibration"]
    settings = settings | {"cosmic_rays": settings["cosmic_rays"] | {"enabled": False}}
    detector = {"nonlinearity": INST.detector.get("nonlinearity"), "reference": None}
    night, setup = rows[0]["night"], "setup"
    of = lambda t, band=None: [  # noqa: E731
        r for r in rows if r["imagetype"] == t and (band is None or r["band"] == band)
    ]
    master, h = build_master_bias(of("bias"), chip, night, setup, settings, detector)
    bias = tmp / "bias.fits"
    write_image_product(bias, h, master.data, unc=master.unc, mask=master.mask, unit="adu")
    master, h = build_master_dark(of("dark"), chip, night, setup, settings, detector, bias)
    dark = tmp / "dark.fits"
    write_image_product(dark, h, master.data, unc=master.unc, mask=master.mask)
    master, h = build_master_flat(
        of("flat", "r"), chip, night, setup, "r", settings, detector, bias, dark, min_frames=3
    )
    flat = tmp / "flat.fits"
    write_image_product(flat, h, master.data, unc=master.unc, mask=master.mask)
    sci = of("science", "r")[0]
    masters = {"bias": bias, "dark": dark, "flat": flat}
    cal, header = build_calibrated(sci, chip, settings, detector, masters)
    return cal, header, sci, float(fits.getheader(bias)["RDNOISE"])


# the master flat's IMRSTEPS card (5 steps + comment) is over 80 characters: astropy warns
# that it truncates the comment (not about binning; the same unbinned)
def test_pipeline_calibrates_a_binned_night(nights, tmp_path):
    chip = "c1"
    sky = {}
    for name in ("b2", "b1"):
        (tmp_path / name).mkdir()
        cal, header, row, rn = _calibrate(nights[name], tmp_path / name, chip)
        n = 128 if name == "b2" else 256
        assert cal.sci.shape == (n, n)
        assert header["TRIMSEC"] == f"[1:{n},1:{n}]"  # the raw (binned) pixels it holds
        fr = _frames(nights[name])
        truth = fr[fr["frame"] == row["frame"]][0]
        flat = fits.getdata(nights[name] / "truth" / "flat_r.fits", chip).astype(float)
        _, level, _ = sigma_clipped_stats(cal.sci, sigma=2.5, maxiters=10)
        # the calibrated frame is flat-fielded by a flat normalised to its median
        expected = truth["sky"] * truth["exptime"] * np.median(flat)
        sky[name] = (level, expected, truth["sky"])
        print(f"{name}: calibrated sky {level:.1f} e-, truth sky x t x median flat "
              f"{expected:.1f} e- ({level / expected - 1:+.4f}); read noise from bias pairs "
              f"{rn:.3f} e-")  # fmt: skip
        assert level == pytest.approx(expected, rel=0.01)
        assert rn == pytest.approx(INST.chip(chip).read_noise, rel=0.05)
    # the truth sky is per raw pixel: a binned pixel holds 4 unbinned ones
    assert sky["b2"][2] == pytest.approx(4 * sky["b1"][2], rel=1e-9)
    assert sky["b2"][0] / sky["b1"][0] == pytest.approx(4.0, rel=0.01)
