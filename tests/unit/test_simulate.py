"""The raw-night simulator, checked against its own truth with real numbers.

Most tests share one ``--small`` demo night (the demo_small camera: 2 chips of
256x256, 20 frames). Star photometry and centroids use a sparse variant (bright
stars only, science frames only) so that every measured star is isolated.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import sep
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred.errors import ImredError
from imred.fitsio import merged_header
from imred.instrument import load_instrument
from imred.sim import optics
from imred.sim.plan import plan_night
from imred.simulate import load_scenario, main, simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"


def _demo_doc() -> dict:
    return yaml.safe_load(DEMO.read_text())


def _sparse_doc() -> dict:
    """The small demo with science frames only, bright well separated stars, no bad columns."""
    doc = _demo_doc()
    doc["small"]["calibrations"] = {
        "bias": {"count": 0},
        "dark": {"count": 0},
        "flat": {"count": 0},
    }
    doc["small"]["stars"] = {"density_at_20": 80000, "slope": 0.15, "magnitudes": [16.0, 17.2]}
    doc["small"]["bad_columns"] = {"enabled": False}  # bad columns are tested on the demo night
    return doc


@pytest.fixture(scope="module")
def small_night(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("small_night")
    return out, simulate_night(DEMO, out, small=True)


@pytest.fixture(scope="module")
def sparse_night(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sparse_night")
    return out, simulate_night(_sparse_doc(), out, small=True)


class Truth:
    """Read access to a simulated night's truth folder, and truth-calibrated pixels."""

    def __init__(self, out: Path):
        self.out = out
        t = out / "truth"
        self.frames = Table.read(t / "frames.ecsv")
        self.chips = Table.read(t / "frame_chips.ecsv")
        self.stars = Table.read(t / "stars.ecsv")
        self.star_frames = Table.read(t / "star_frames.ecsv")
        self.instrument = load_instrument("demo_small")
        self.poly = np.asarray(Table.read(t / "nonlinearity.ecsv")["coefficient"])
        self.bias = {
            c.name: fits.getdata(t / "bias.fits", c.name).astype(float)
            for c in self.instrument.chips
        }
        self.dark = {
            c.name: fits.getdata(t / "dark.fits", c.name).astype(float)
            for c in self.instrument.chips
        }
        self.badpix = {
            c.name: fits.getdata(t / "badpix.fits", c.name) for c in self.instrument.chips
        }

    def of_type(self, imagetype: str, band: str | None = None) -> Table:
        rows = self.frames[self.frames["imagetype"] == imagetype]
        return rows if band is None else rows[rows["band"] == band]

    def raw(self, frame: str, chip: str) -> np.ndarray:
        ext = self.instrument.chip(chip).extension
        return fits.getdata(self.out / "raw" / f"{frame}.fits", ext).astype(float)

    def flat(self, band: str, chip: str) -> np.ndarray:
        return fits.getdata(self.out / "truth" / f"flat_{band}.fits", chip).astype(float)

    def adu(self, frame: str, chip: str) -> np.ndarray:
        """Data section minus the true bias and its drift, linearised (ADU)."""
        row = self.chips[(self.chips["frame"] == frame) & (self.chips["chip"] == chip)][0]
        value = (self.raw(frame, chip) - self.bias[chip] - row["bias_offset"])[:256, :256]
        return value * np.polyval(self.poly[::-1], value)

    def electrons(self, frame_row, chip: str) -> np.ndarray:
        """e- of sky + stars, flat-fielded with the true flat (what truth fluxes refer to)."""
        gain = self.instrument.chip(chip).gain
        e = self.adu(frame_row["frame"], chip) * gain - self.dark[chip] * frame_row["exptime"]
        return e / self.flat(frame_row["band"], chip)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ noise
def test_bias_pairs_give_read_noise_over_gain(small_night):
    truth = Truth(small_night[0])
    biases = truth.of_type("bias")
    assert len(biases) >= 5
    for chip in truth.instrument.chips:
        diff = truth.raw(biases["frame"][0], chip.name) - truth.raw(biases["frame"][1], chip.name)
        diff -= np.median(diff)  # the level drifts between frames
        measured = np.std(diff) / np.sqrt(2)
        expected = chip.read_noise / chip.gain
        assert measured == pytest.approx(expected, rel=0.03), chip.name


def test_flat_pairs_give_the_gain(small_night):
    truth = Truth(small_night[0])
    flats = truth.of_type("flat", "r")
    assert len(flats) >= 3
    for chip in truth.instrument.chips:
        a = truth.adu(flats["frame"][0], chip.name)
        b = truth.adu(flats["frame"][1], chip.name)
        b *= a.mean() / b.mean()  # the lamp flickers by 0.3 %
        rn_adu = chip.read_noise / chip.gain
        gain = a.mean() / (np.var(a - b) / 2 - rn_adu**2)
        assert gain == pytest.approx(chip.gain, rel=0.03), chip.name
        assert 0.3 < (a.mean() + 1000) / 60000 < 0.5  # the wanted flat level (0.4 of saturation)


def test_overscan_tracks_the_bias_drift(small_night):
    truth = Truth(small_night[0])
    chip = "c1"
    for row in truth.chips[truth.chips["chip"] == chip]:
        over = truth.raw(row["frame"], chip)[:, 260:276] - truth.bias[chip][:, 260:276]
        assert np.mean(over) == pytest.approx(row["bias_offset"], abs=0.2)


# ------------------------------------------------------------ astrometry
def _bright_isolated(truth: Truth, frame: str, chip: str, cosmic: np.ndarray) -> Table:
    rows = truth.star_frames[
        (truth.star_frames["frame"] == frame) & (truth.star_frames["chip"] == chip)
    ]
    x, y, flux = (np.asarray(rows[c]) for c in ("x", "y", "flux"))
    yy, xx = np.mgrid[0:256, 0:256]
    keep = []
    for i, s in enumerate(rows):
        if not (s["on_chip"] and 20 < s["x"] < 235 and 20 < s["y"] < 235):
            continue
        if not 3000 < s["peak"] < 45000:  # well exposed, far from saturation
            continue
        d = np.hypot(x - s["x"], y - s["y"])
        if np.any((d > 0) & (d < 40) & (flux > 0.002 * s["flux"])):
            continue
        near = np.hypot(xx - s["x"], yy - s["y"]) < 18
        if cosmic[near].any() or truth.badpix[chip][near].any():
            continue
        keep.append(i)
    return rows[keep]


def test_stars_land_where_the_true_wcs_puts_them(sparse_night):
    truth = Truth(sparse_night[0])
    dx, dy = [], []
    for frame in truth.of_type("science"):
        with fits.open(truth.out / "truth" / "frames" / f"{frame['frame']}.fits") as hdul:
            for chip in ("c1", "c2"):
                wcs = WCS(hdul[chip].header)
                cosmic = hdul[chip].data.astype(bool)
                image = truth.electrons(frame, chip)
                sig = frame["seeing"] / 0.4 / 2.3548
                for s in _bright_isolated(truth, frame["frame"], chip, cosmic):
                    star = truth.stars[truth.stars["id"] == s["id"]][0]
                    px, py = wcs.all_world2pix(star["ra"], star["dec"], 0)
                    r = np.hypot(*np.meshgrid(np.arange(256) - px, np.arange(256) - py))
                    sky = np.median(image[(r > 18) & (r < 25)])
                    data = np.ascontiguousarray(image - sky)
                    mx, my, _ = sep.winpos(data, np.array([px]), np.array([py]), np.array([sig]))
                    dx.append(mx[0] - px)
                    dy.append(my[0] - py)
    dx, dy = np.array(dx), np.array(dy)
    assert len(dx) >= 20
    assert np.sqrt(np.mean(dx**2)) < 0.05
    assert np.sqrt(np.mean(dy**2)) < 0.05


def test_truth_pixel_positions_agree_with_the_wcs_headers(small_night):
    truth = Truth(small_night[0])
    ids = {int(i): k for k, i in enumerate(truth.stars["id"])}
    n = 0
    for frame in truth.of_type("science"):
        with fits.open(truth.out / "truth" / "frames" / f"{frame['frame']}.fits") as hdul:
            for chip in ("c1", "c2"):
                wcs = WCS(hdul[chip].header)
                rows = truth.star_frames[
                    (truth.star_frames["frame"] == frame["frame"])
                    & (truth.star_frames["chip"] == chip)
                ]
                k = [ids[int(i)] for i in rows["id"]]
                px, py = wcs.all_world2pix(truth.stars["ra"][k], truth.stars["dec"][k], 0)
                assert np.max(np.hypot(px - rows["x"], py - rows["y"])) < 0.01
                # and back: the inverse SIP (AP/BP) is good to a small fraction of a pixel
                ra, dec = wcs.all_pix2world(rows["x"], rows["y"], 0)
                sx, sy = wcs.sip_foc2pix(*wcs.sip_pix2foc(rows["x"], rows["y"], 0), 0)
                assert np.max(np.hypot(sx - rows["x"], sy - rows["y"])) < 0.01
                cosd = np.cos(np.radians(dec))
                err = np.hypot((ra - truth.stars["ra"][k]) * cosd, dec - truth.stars["dec"][k])
                assert np.max(err) * 3600 < 1e-3
                n += len(rows)
    assert n > 100


def test_distortion_and_rotator_offset_are_in_the_wcs(small_night):
    truth = Truth(small_night[0])
    frame = truth.of_type("science")[0]
    header = fits.getheader(truth.out / "truth" / "frames" / f"{frame['frame']}.fits", "c1")
    assert header["CTYPE1"] == "RA---TAN-SIP"
    assert header["A_3_0"] > 0 and header["A_3_0"] == header["B_0_3"]
    cd = np.array([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]])
    pa = np.degrees(np.arctan2(cd[0, 1], cd[1, 1]))
    assert pa == pytest.approx(frame["pa"], abs=1e-6)
    assert 0.05 < abs(frame["pa"] - frame["rotator"]) < 0.12  # the rotator offset (0.08 deg)
    assert np.sqrt(abs(np.linalg.det(cd))) * 3600 == pytest.approx(0.4, rel=1e-9)


# ------------------------------------------------------------ photometry
def test_star_fluxes_integrate_to_the_truth(sparse_night):
    truth = Truth(sparse_night[0])
    ratios = []
    beta = 3.0
    radius = 15.0
    for frame in truth.of_type("science"):
        with fits.open(truth.out / "truth" / "frames" / f"{frame['frame']}.fits") as hdul:
            for chip in ("c1", "c2"):
                cosmic = hdul[chip].data.astype(bool)
                image = truth.electrons(frame, chip)
                fwhm_px = frame["seeing"] / 0.4
                alpha = optics.moffat_alpha(fwhm_px, beta)
                enclosed = 1 - (1 + (radius / alpha) ** 2) ** (1 - beta)
                for s in _bright_isolated(truth, frame["frame"], chip, cosmic):
                    if s["flux"] < 1.5e5:
                        continue
                    r = np.hypot(*np.meshgrid(np.arange(256) - s["x"], np.arange(256) - s["y"]))
                    sky = np.median(image[(r > 20) & (r < 30)])
                    total = np.sum(image[r < radius] - sky)
                    ratios.append(total / (s["flux"] * enclosed))
    ratios = np.array(ratios)
    assert len(ratios) >= 10
    assert np.all(np.abs(ratios - 1) < 0.02), ratios
    assert abs(np.median(ratios) - 1) < 0.005


def test_zero_points_follow_airmass_extinction_and_transparency(small_night):
    truth = Truth(small_night[0])
    sc = yaml.safe_load((truth.out / "truth" / "scenario.yaml").read_text())
    bands = {b["name"]: b for b in sc["bands"]}
    sci = truth.of_type("science")
    for f in sci:
        b = bands[f["band"]]
        want = b["zero_point"] - b["extinction"] * f["airmass"] + 2.5 * np.log10(f["transparency"])
        assert f["zero_point"] == pytest.approx(want, abs=1e-9)
        assert 1.0 <= f["airmass"] < 1.5
    assert np.sum(sci["transparency"] < 0.8) == 1  # one cloudy frame
    assert len(set(np.round(sci["seeing"], 4))) == len(sci)  # seeing changes every frame


def test_refcat_is_a_noisy_limited_copy_of_the_truth(small_night):
    out = small_night[0]
    ref = Table.read(out / "truth" / "refcat.fits")
    stars = Table.read(out / "truth" / "stars.ecsv")
    sc = yaml.safe_load((out / "truth" / "scenario.yaml").read_text())
    lim = sc["refcat"]
    assert len(ref) > 20
    true = stars[np.searchsorted(stars["id"], ref["source_id"])]
    assert np.all((true["r_mag"] > lim["bright_limit"]) & (true["r_mag"] < lim["mag_limit"]))
    for band in ("g", "r"):
        pull = (ref[f"{band}_mag"] - true[f"{band}_mag"]) / ref[f"{band}_err"]
        assert 0.75 < np.std(pull) < 1.25
        order = np.argsort(true[f"{band}_mag"])
        assert ref[f"{band}_err"][order][-1] > ref[f"{band}_err"][order][0]
    assert np.all(ref["g_err"] >= lim["error_floor"])
    sep_mas = (
        np.hypot(
            (ref["ra"] - true["ra"]) * np.cos(np.radians(true["dec"])), ref["dec"] - true["dec"]
        )
        * 3.6e6
    )
    assert np.median(sep_mas) < 100


# ------------------------------------------------------------ flats, defects
def test_flats_differ_by_band(small_night):
    truth = Truth(small_night[0])
    for chip in ("c1", "c2"):
        g, r = truth.flat("g", chip), truth.flat("r", chip)
        ratio = g / r
        assert np.std(ratio) > 0.003  # band-dependent large-scale response and dust donuts
        # the pixel-to-pixel response is shared by both bands
        hp_g, hp_r = g - np.roll(g, 1, axis=1), r - np.roll(r, 1, axis=1)
        assert np.corrcoef(hp_g[:, 1:].ravel(), hp_r[:, 1:].ravel())[0, 1] > 0.9
        # the raw dome flats carry the same band difference
        raw = {}
        for band in ("g", "r"):
            frames = truth.of_type("flat", band)["frame"]
            mean = np.mean([truth.adu(f, chip) for f in frames], axis=0)
            raw[band] = mean / np.median(mean)
        measured = raw["g"] / raw["r"]
        # 8x8 block means beat the photon noise down
        blocks = [a.reshape(32, 8, 32, 8).mean(axis=(1, 3)).ravel() for a in (measured, ratio)]
        assert np.corrcoef(*blocks)[0, 1] > 0.8


def test_darks_show_hot_pixels_and_cosmic_rays(small_night):
    truth = Truth(small_night[0])
    dark = truth.of_type("dark")[0]
    chip = "c1"
    adu = truth.adu(dark["frame"], chip)
    hot = (truth.badpix[chip] & 1).astype(bool)
    assert hot.sum() > 5
    expected = truth.dark[chip][hot] * dark["exptime"] / 1.5
    assert np.median(adu[hot] / expected) == pytest.approx(1.0, abs=0.1)
    mask = fits.getdata(truth.out / "truth" / "frames" / f"{dark['frame']}.fits", chip)
    row = truth.chips[(truth.chips["frame"] == dark["frame"]) & (truth.chips["chip"] == chip)][0]
    assert row["n_cosmic_rays"] > 0 and mask.sum() >= row["n_cosmic_rays"]
    assert np.median(adu[mask.astype(bool) & ~hot]) > 50


# ------------------------------------------------------------ reproducibility
def test_same_seed_gives_the_same_bytes(small_night, tmp_path):
    first, summary = small_night
    again = simulate_night(DEMO, tmp_path, small=True)
    assert [Path(p).name for p in again["files"]] == [Path(p).name for p in summary["files"]]
    for path in summary["files"]:
        name = Path(path).name
        assert _sha256(Path(path)) == _sha256(tmp_path / "raw" / name), name
    assert _sha256(first / "truth" / "refcat.fits") == _sha256(tmp_path / "truth" / "refcat.fits")


def test_another_seed_gives_other_bytes(sparse_night, tmp_path):
    _, summary = sparse_night
    other = simulate_night(_sparse_doc(), tmp_path, small=True, seed=7)
    assert other["seed"] == 7
    first = Path(summary["files"][0])
    assert _sha256(first) != _sha256(tmp_path / "raw" / first.name)


# ------------------------------------------------------------ headers
def test_every_raw_file_normalises(small_night):
    out, summary = small_night
    truth = Truth(out)
    inst = truth.instrument
    assert summary["n_files"] == len(truth.frames) == 20
    counts = {
        t: int(np.sum(truth.frames["imagetype"] == t)) for t in set(truth.frames["imagetype"])
    }
    assert counts == {"bias": 5, "dark": 3, "flat": 6, "science": 6}
    for row, path in zip(truth.frames, summary["files"], strict=True):
        with fits.open(path) as hdul:
            assert [h.name for h in hdul] == ["PRIMARY", "CCD1", "CCD2"]
            for chip in inst.chips:
                hdu = hdul[chip.extension]
                assert hdu.header["BITPIX"] == 16 and hdu.header["BZERO"] == 32768
                assert hdu.data.shape == (256, 276)
                values, problems = inst.normalise(merged_header(hdul[0].header, hdu.header), chip)
                assert problems == []
                assert values["imagetype"] == row["imagetype"]
                assert values["band"] == (None if np.ma.is_masked(row["band"]) else row["band"])
                assert values["exptime"] == row["exptime"]
                assert values["dateobs"] == row["dateobs"]
                assert values["gain"] == chip.gain
                if row["imagetype"] == "science":
                    assert values["ra"] == pytest.approx(row["ra_cmd"], abs=0.01 / 3600)
                    assert values["dec"] == pytest.approx(row["dec_cmd"], abs=0.01 / 3600)
                    assert values["target"] == "DEMOFIELD"


def test_twilight_flats_normalise_and_reach_the_wanted_level(tmp_path):
    doc = _demo_doc()
    doc["small"]["calibrations"] = {
        "bias": {"count": 0},
        "dark": {"count": 0},
        "flat": {"kind": "twilight", "count": 2},
    }
    doc["small"]["observing"] = {"science_frames_per_band": 1}
    summary = simulate_night(doc, tmp_path, small=True)
    truth = Truth(tmp_path)
    tw = truth.of_type("twilight-flat")
    assert len(tw) == 4
    assert np.all(np.diff(tw["mjd"]) > 0) and np.all((tw["exptime"] >= 1) & (tw["exptime"] <= 120))
    for band in ("g", "r"):  # the sky fades through each band's sequence; exposures lengthen
        seq = tw[tw["band"] == band]
        assert np.all(np.diff(seq["illumination"]) < 0), seq["illumination"]
        assert np.all(np.diff(seq["exptime"]) >= 0)
    for row in tw:
        path = next(p for p in summary["files"] if Path(p).name == row["file"])
        with fits.open(path) as hdul:
            merged = merged_header(hdul[0].header, hdul[1].header)
            values, problems = truth.instrument.normalise(merged, truth.instrument.chips[0])
        assert problems == [] and values["imagetype"] == "twilight-flat"
        level = np.median(truth.raw(row["frame"], "c1")[:256, :256]) / 60000
        assert 0.25 < level < 0.6


def test_full_demo_plan(tmp_path):
    sc, _, _ = load_scenario(DEMO)
    inst = load_instrument(sc["instrument"])
    layouts = optics.chip_layouts(inst, gain_enabled=True, distortion_arcsec_at_600=0.6)
    assert [lay.data_shape for lay in layouts] == [(1024, 1024), (1024, 1024)]
    assert [lay.raw_shape for lay in layouts] == [(1024, 1056), (1024, 1056)]
    frames = plan_night(sc, inst, layouts, "demo_20240315")
    kinds = [(f.imagetype, f.band) for f in frames]
    assert kinds.count(("bias", None)) >= 5
    assert kinds.count(("dark", None)) >= 3
    for band in ("g", "r"):
        assert kinds.count(("flat", band)) >= 3
        assert kinds.count(("science", band)) == 5
    assert [f.mjd for f in frames] == sorted(f.mjd for f in frames)
    sci = [f for f in frames if f.imagetype == "science"]
    assert len({(round(f.ra_cmd, 6), round(f.dec_cmd, 6)) for f in sci}) == 5  # dithered


# ------------------------------------------------------------ command line
def test_main_writes_and_says_where(tmp_path, capsys):
    scenario = tmp_path / "sparse.yaml"
    scenario.write_text(yaml.safe_dump(_sparse_doc()))
    assert main([str(scenario), "--out", str(tmp_path / "night"), "--seed", "3", "--small"]) == 0
    said = capsys.readouterr().out
    assert str(tmp_path / "night" / "raw") in said and str(tmp_path / "night" / "truth") in said
    assert len(list((tmp_path / "night" / "raw").glob("*.fits"))) == 6
    header = fits.getheader(next((tmp_path / "night" / "raw").glob("*.fits")))
    assert header["SIMSEED"] == 3


def test_user_errors_are_imred_errors(tmp_path):
    with pytest.raises(ImredError, match="does not exist"):
        main([str(tmp_path / "nope.yaml"), "--out", str(tmp_path)])
    doc = _demo_doc()
    doc["stars"]["densty_at_20"] = 5
    with pytest.raises(ImredError, match="did you mean 'density_at_20'"):
        simulate_night(doc, tmp_path)
    doc = _demo_doc()
    doc.pop("small")
    with pytest.raises(ImredError, match="small"):
        simulate_night(doc, tmp_path, small=True)
    doc = _demo_doc()
    doc["bands"].append({"name": "Ha"})
    with pytest.raises(ImredError, match="Ha"):
        simulate_night(doc, tmp_path, small=True)


def test_refuses_a_raw_folder_holding_another_night(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "other_0001.fits").write_bytes(b"")
    with pytest.raises(ImredError, match="already holds other files"):
        simulate_night(_sparse_doc(), tmp_path, small=True)


def test_every_effect_can_be_switched_off(tmp_path):
    doc = _demo_doc()
    off = {"enabled": False}
    for key in (
        "bias",
        "read_noise",
        "poisson",
        "gain",
        "dark",
        "flat",
        "bad_columns",
        "saturation",
        "nonlinearity",
        "sky",
        "dither",
        "rotator",
        "distortion",
        "extinction",
        "transparency",
        "cosmic_rays",
    ):
        doc["small"][key] = dict(off)
    doc["small"]["calibrations"] = {
        "bias": {"count": 1},
        "dark": {"count": 1},
        "flat": {"count": 1},
    }
    doc["small"]["observing"] = {"science_frames_per_band": 1}
    doc["small"]["stars"]["magnitudes"] = [18.0, 22.5]  # nothing reaches 65535 without a flat
    simulate_night(doc, tmp_path, small=True)
    truth = Truth(tmp_path)
    for kind in ("bias", "dark"):
        raw = truth.raw(truth.of_type(kind)["frame"][0], "c1")
        assert np.all(raw == 1000)  # the bias level, nothing else
    sci = truth.of_type("science")
    assert np.all(sci["transparency"] == 1) and np.all(sci["ra"] == sci["ra_cmd"])
    frame = sci[0]
    raw = truth.raw(frame["frame"], "c1") - 1000
    rows = truth.star_frames[
        (truth.star_frames["frame"] == frame["frame"]) & (truth.star_frames["chip"] == "c1")
    ]
    on = rows[(rows["x"] > 40) & (rows["x"] < 215) & (rows["y"] > 40) & (rows["y"] < 215)]
    # gain 1, no noise, no flat, no sky: the data section holds the stars' electrons (the ones
    # well inside entirely, those near the edges in part), rounded; the overscan holds nothing
    total = np.sum(raw[:256, :256])
    assert np.sum(on["flux"]) < total < np.sum(rows["flux"])
    assert len(on) > 0 and np.all(raw[:, 256:] == 0)
    header = fits.getheader(truth.out / "truth" / "frames" / f"{frame['frame']}.fits", "c1")
    assert header["A_3_0"] == 0 and frame["pa"] == frame["rotator"] == 0
