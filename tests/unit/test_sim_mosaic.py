"""Simulator: mosaics of many chips, cameras writing a file per chip, split detectors.

Every night here is tiny (chips of 100-200 pixels, a handful of exposures) and is read
back through the instrument file by the observation log, as the pipeline will.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import sep
import yaml
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred.errors import ImredError
from imred.instrument import load_instrument
from imred.obslog import update_obslog
from imred.simulate import simulate_night

from conftest import write_test_camera

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"


def _base_doc(**over) -> dict:
    """The demo scenario without its small block, few exposures, then ``over`` merged in."""
    doc = yaml.safe_load(DEMO.read_text())
    doc.pop("small")
    doc["calibrations"] = {"bias": {"count": 1}, "dark": {"count": 0}, "flat": {"count": 1}}
    doc["observing"] = {"science_frames_per_band": 2}
    doc.update(copy.deepcopy(over))
    return doc


def _truth(out: Path) -> dict:
    t = out / "truth"
    return {
        name: Table.read(t / f"{name}.ecsv")
        for name in ("frames", "frame_chips", "stars", "star_frames")
    }


# ------------------------------------------------------------------ 9-chip mosaic (pODI)
ODI_CHIP = 200


@pytest.fixture(scope="module")
def odi_night(tmp_path_factory):
    """WIYN pODI (3x3 OTAs in one multi-extension file, named extensions, no datasec)."""
    out = tmp_path_factory.mktemp("odi")
    doc = _base_doc(
        instrument="odi_podi",
        camera={"chip_size": [ODI_CHIP, ODI_CHIP], "gain": 1.5, "read_noise": 5.0},
        bands=[{"name": "r", "zero_point": 26.5, "exptime": 60}],
        stars={"density_at_20": 210000, "slope": 0.15, "magnitudes": [16.0, 18.0]},
        seeing={"fwhm_arcsec": 0.6},  # 5.5 pixels of 0.11"
        bad_columns={"enabled": False},
    )
    return out, simulate_night(doc, out)


def test_the_obslog_finds_every_chip_of_every_frame_of_a_mosaic(odi_night, tmp_path):
    out, summary = odi_night
    inst = load_instrument("odi_podi")
    truth = _truth(out)
    rows, stats = update_obslog(inst, [out / "raw"], tmp_path / "obslog.tsv")
    assert stats["read"] == summary["n_files"] == len(truth["frames"]) == 4
    assert len(rows) == 4 * 9
    found = {(r["frame"], r["chip"]) for r in rows}
    assert found == {(f, c.name) for f in truth["frames"]["frame"] for c in inst.chips}
    for r in rows:
        assert (r["use"], r["reason"]) == ("yes", "")
        assert r["extension"] == f"{r['chip']}.SCI"
        assert (r["nx"], r["ny"]) == (ODI_CHIP, ODI_CHIP)
        want = truth["frames"][truth["frames"]["frame"] == r["frame"]][0]
        assert r["imagetype"] == want["imagetype"] and r["exptime"] == want["exptime"]
        assert r["gain"] == 1.5 and r["read_noise"] == 5.0
    with fits.open(summary["files"][-1]) as hdul:
        assert [h.name for h in hdul[1:]] == [f"{c.name}.SCI" for c in inst.chips]
        assert all(h.header["BITPIX"] == 16 and h.header["BZERO"] == 32768 for h in hdul[1:])
        assert hdul[0].header["OBSTYPE"] == "object" and hdul[0].header["FILTER"] == "odi_r"


def test_mosaic_chips_sit_where_the_instrument_file_puts_them(odi_night):
    """The chip centres, seen through the true WCS, are the instrument file's offsets."""
    out, _ = odi_night
    inst = load_instrument("odi_podi")
    truth = _truth(out)
    worst = 0.0
    for frame in truth["frames"][truth["frames"]["imagetype"] == "science"]:
        axis = SkyCoord(frame["ra"] * u.deg, frame["dec"] * u.deg)
        theta = np.radians(frame["pa"])  # the ODI rotator offset is 0
        path = out / "truth" / "frames" / f"{frame['frame']}.fits"
        with fits.open(path) as hdul:
            for chip in inst.chips:
                wcs = WCS(hdul[chip.name].header)
                c = (ODI_CHIP - 1) / 2.0
                ra, dec = wcs.all_pix2world(c, c, 0)
                east, north = chip.geometry["offset_arcsec"]
                want_e = np.cos(theta) * east + np.sin(theta) * north
                want_n = -np.sin(theta) * east + np.cos(theta) * north
                de, dn = axis.spherical_offsets_to(SkyCoord(ra * u.deg, dec * u.deg))
                miss = np.hypot(de.to_value(u.arcsec) - want_e, dn.to_value(u.arcsec) - want_n)
                worst = max(worst, float(miss))
                # north up, east left: +x points west
                ra2, _ = wcs.all_pix2world(c + 50, c, 0)
                assert ra2 < ra
    # what is left is the radial distortion (0.6" at 10', cubic): < 1" at the corner OTAs
    assert worst < 1.0


def test_mosaic_stars_land_on_the_right_chip_where_the_true_wcs_says(odi_night):
    out, _ = odi_night
    inst = load_instrument("odi_podi")
    truth = _truth(out)
    stars, sf = truth["stars"], truth["star_frames"]
    bias = {c.name: fits.getdata(out / "truth" / "bias.fits", c.name) for c in inst.chips}
    offsets, chips_with_stars = [], set()
    for frame in truth["frames"][truth["frames"]["imagetype"] == "science"]:
        tf = out / "truth" / "frames" / f"{frame['frame']}.fits"
        with fits.open(tf) as masks, fits.open(out / "raw" / frame["file"]) as raw:
            for chip in inst.chips:
                wcs = WCS(masks[chip.name].header)
                image = raw[f"{chip.name}.SCI"].data.astype(float) - bias[chip.name]
                rows = sf[(sf["frame"] == frame["frame"]) & (sf["chip"] == chip.name)]
                # every star the true WCS puts well inside this chip is listed on it
                px, py = wcs.all_world2pix(stars["ra"], stars["dec"], 0)
                inside = (px > 5) & (px < ODI_CHIP - 6) & (py > 5) & (py < ODI_CHIP - 6)
                assert set(stars["id"][inside]) <= set(rows["id"][rows["on_chip"]])
                sig = frame["seeing"] / 0.11 / 2.3548
                for s in rows[rows["on_chip"]]:
                    if not (15 < s["x"] < ODI_CHIP - 16 and 15 < s["y"] < ODI_CHIP - 16):
                        continue
                    d = np.hypot(rows["x"] - s["x"], rows["y"] - s["y"])
                    crowded = np.any((d > 0) & (d < 30) & (rows["flux"] > 0.002 * s["flux"]))
                    if s["peak"] < 2000 or crowded:
                        continue
                    star = stars[stars["id"] == s["id"]][0]
                    x0, y0 = wcs.all_world2pix(star["ra"], star["dec"], 0)
                    r = np.hypot(*np.meshgrid(np.arange(ODI_CHIP) - x0, np.arange(ODI_CHIP) - y0))
                    if masks[chip.name].data[r < 12].any():  # a cosmic ray on the star
                        continue
                    data = np.ascontiguousarray(image - np.median(image[(r > 12) & (r < 18)]))
                    mx, my, _ = sep.winpos(data, np.array([x0]), np.array([y0]), np.array([sig]))
                    offsets.append((mx[0] - x0, my[0] - y0))
                    chips_with_stars.add(chip.name)
    offsets = np.array(offsets)
    assert len(offsets) >= 15 and len(chips_with_stars) >= 6
    assert np.sqrt(np.mean(offsets**2, axis=0)).max() < 0.05, offsets


# -------------------------------------------------------- a file per chip (RATIR's CCDs)
def _ratir_doc() -> dict:
    return _base_doc(
        instrument="ratir",
        camera={"chips": ["C0", "C1"], "read_noise": 5.0},
        bands=[{"name": "r", "zero_point": 25.0, "exptime": 30}],
        stars={"density_at_20": 3000, "magnitudes": [15.0, 19.0]},
        observing={"science_frames_per_band": 1},
    )


def test_a_camera_writing_a_file_per_chip(tmp_path):
    out = tmp_path / "night"
    summary = simulate_night(_ratir_doc(), out)
    inst = load_instrument("ratir")
    truth = _truth(out)
    frames = truth["frames"]
    assert summary["n_files"] == 2 * len(frames) == 6
    rows, _ = update_obslog(inst, [out / "raw"], tmp_path / "obslog.tsv")
    assert len(rows) == 6
    by_file = {Path(r["path"]).name: r for r in rows}
    chips = truth["frame_chips"]
    for frame in frames:
        names = frame["file"].split(",")
        assert len(names) == 2
        for chip in ("C0", "C1"):
            row = chips[(chips["frame"] == frame["frame"]) & (chips["chip"] == chip)][0]
            assert row["file"] in names
            ob = by_file[row["file"]]  # each file carries exactly its own chip
            assert ob["chip"] == chip and (ob["use"], ob["reason"]) == ("yes", "")
            assert ob["imagetype"] == frame["imagetype"] and ob["exptime"] == frame["exptime"]
            assert ob["gain"] == {"C0": 16.80, "C1": 18.64}[chip]  # divided by SOFTGAIN = 1
    for name in by_file:
        assert inst.wants_file(name)
    # both cameras see the sky through dichroics: one star lands on both chips
    sf = truth["star_frames"]
    sci = frames[frames["imagetype"] == "science"][0]["frame"]
    on = {
        c: set(sf["id"][(sf["frame"] == sci) & (sf["chip"] == c) & sf["on_chip"]])
        for c in ("C0", "C1")
    }
    assert len(on["C0"] & on["C1"]) >= 5
    with fits.open(out / "raw" / by_file_name(chips, sci, "C1")) as hdul:
        assert len(hdul) == 1 and hdul[0].data.shape == (1000, 1000)
        assert hdul[0].header["SOFTGAIN"] == 1.0 and hdul[0].header["OBSTYPE"] == "object"


def by_file_name(chips: Table, frame: str, chip: str) -> str:
    return chips[(chips["frame"] == frame) & (chips["chip"] == chip)][0]["file"]


def test_mixing_ccd_and_nir_chips_is_refused_naming_the_key(tmp_path):
    doc = _ratir_doc()
    doc["camera"]["chips"] = []  # all six, four of them NIR halves
    with pytest.raises(ImredError, match=r"nir-ramp.*camera\.chips"):
        simulate_night(doc, tmp_path)


# ----------------------------------------------- a test camera: select by keyword, split CCD


def test_files_selected_by_a_header_keyword(tmp_path):
    chips = [
        {
            "name": f"q{n}",
            "select": {"keyword": "CCDNAME", "value": f"ccd{n}"},
            "datasec": "[1:100,1:100]",
            "amplifiers": [{"data": "[1:100,1:100]", "overscan": "[103:110,1:100]"}],
            "geometry": {"offset_arcsec": [(-1) ** n * 22.0, (-1) ** (n // 2) * 22.0]},
        }
        for n in range(4)
    ]
    inst_path = write_test_camera(tmp_path, "quad", chips)
    doc = _base_doc(
        instrument=str(inst_path),
        bands=[{"name": "r"}],
        stars={"density_at_20": 20000, "magnitudes": [15.0, 20.0]},
        observing={"science_frames_per_band": 1},
    )
    out = tmp_path / "night"
    summary = simulate_night(doc, out)
    inst = load_instrument(inst_path)
    rows, _ = update_obslog(inst, [out / "raw"], tmp_path / "obslog.tsv")
    frames = _truth(out)["frames"]
    assert summary["n_files"] == len(rows) == 4 * len(frames)
    assert all((r["use"], r["reason"]) == ("yes", "") for r in rows)
    for r in rows:
        header = fits.getheader(r["path"])
        assert header["CCDNAME"] == f"ccd{r['chip'][1]}"
        assert Path(r["path"]).name.endswith(f"_ccd{r['chip'][1]}.fits")


@pytest.fixture(scope="module")
def split_night(tmp_path_factory):
    """Chip A behind the filter wheel (r) and one CCD split into an i half and a z half."""
    tmp = tmp_path_factory.mktemp("split")
    chips = [
        {
            "name": "A",
            "extension": "A",
            "datasec": "[1:128,1:128]",
            "amplifiers": [{"data": "[1:128,1:128]", "overscan": "[131:140,1:128]"}],
            "geometry": {"offset_arcsec": [-40.0, 0.0]},
        },
        {
            "name": "B-i",
            "extension": "B",
            "band": "i",
            "gain": 2.0,
            "datasec": "[1:128,1:60]",
            "geometry": {"offset_arcsec": [40.0, -13.6]},
        },
        {
            "name": "B-z",
            "extension": "B",
            "band": "z",
            "gain": 2.5,
            "datasec": "[1:128,69:128]",
            "geometry": {"offset_arcsec": [40.0, 13.6]},
        },
    ]
    inst_path = write_test_camera(tmp, "splitcam", chips)
    doc = _base_doc(
        instrument=str(inst_path),
        bands=[
            {"name": "r", "zero_point": 25.6, "sky_mag_arcsec2": 21.0, "exptime": 100},
            {"name": "i", "zero_point": 25.2, "sky_mag_arcsec2": 20.2, "extinction": 0.05},
            {"name": "z", "zero_point": 24.4, "sky_mag_arcsec2": 18.8, "seeing_factor": 0.9},
        ],
        stars={"density_at_20": 30000, "magnitudes": [15.0, 21.0]},
        nonlinearity={"enabled": False},
        calibrations={"bias": {"count": 1}, "dark": {"count": 0}, "flat": {"count": 2}},
    )
    out = tmp / "night"
    return out, simulate_night(doc, out), load_instrument(inst_path)


def _electrons(out: Path, inst, frame_row, chips: Table, chip: str) -> np.ndarray:
    """Data section of a chip minus the true bias and drift, in e-, divided by the true flat."""
    lay = inst.chip(chip)
    from imred.sections import parse_section

    rows, cols = parse_section(lay.datasec)
    cr = chips[(chips["frame"] == frame_row["frame"]) & (chips["chip"] == chip)][0]
    raw = fits.getdata(out / "raw" / cr["file"], cr["extension"]).astype(float)
    bias = fits.getdata(out / "truth" / "bias.fits", chip)
    dark = fits.getdata(out / "truth" / "dark.fits", chip)
    flat = fits.getdata(out / "truth" / f"flat_{cr['band']}.fits", chip)
    e = (raw - bias - cr["bias_offset"])[rows, cols] * cr["gain"] - dark * frame_row["exptime"]
    return e / flat


def test_split_detector_halves_see_their_own_band(split_night, tmp_path):
    out, _, inst = split_night
    truth = _truth(out)
    frames, chips = truth["frames"], truth["frame_chips"]
    rows, _ = update_obslog(inst, [out / "raw"], tmp_path / "obslog.tsv")
    assert len(rows) == 3 * len(frames)
    assert all((r["use"], r["reason"]) == ("yes", "") for r in rows)
    for r in rows:
        f = frames[frames["frame"] == r["frame"]][0]
        if r["chip"] == "A":
            assert r["band"] == (f["band"] if f["imagetype"] != "bias" else None)
        else:
            assert r["band"] == r["chip"][-1]  # the half's fixed band, whatever the filter
            assert r["extension"] == "B"
    # each half has only its own band's flat in the truth
    for band, names in (("i", ["B-i"]), ("z", ["B-z"]), ("r", ["A"])):
        with fits.open(out / "truth" / f"flat_{band}.fits") as hdul:
            assert [h.header["CHIP"] for h in hdul[1:]] == names

    sci = frames[frames["imagetype"] == "science"]
    assert len(sci) == 2 and set(sci["band"]) == {"r"}  # the sequence runs through r only
    measured, expected = {}, {}
    for f in sci:
        for chip in ("A", "B-i", "B-z"):
            cr = chips[(chips["frame"] == f["frame"]) & (chips["chip"] == chip)][0]
            e = _electrons(out, inst, f, chips, chip)
            measured[f["frame"], chip] = np.median(e) / f["exptime"]
            expected[f["frame"], chip] = cr["sky"]
            assert cr["band"] == {"A": "r", "B-i": "i", "B-z": "z"}[chip]
            # zero points: the band's own, with its own extinction, the frame's clouds
            band = {"A": (25.6, 0.15), "B-i": (25.2, 0.05), "B-z": (24.4, 0.15)}[chip]
            want = band[0] - band[1] * f["airmass"] + 2.5 * np.log10(f["transparency"])
            assert cr["zero_point"] == pytest.approx(want, abs=1e-9)
        # the seeing of the z half is 0.9 of the r band's (same atmosphere)
        z = chips[(chips["frame"] == f["frame"]) & (chips["chip"] == "B-z")][0]
        assert z["seeing"] == pytest.approx(0.9 * f["seeing"], rel=1e-9)
    for key, value in measured.items():  # the sky, star light and gradient add < 3 %
        assert value == pytest.approx(expected[key], rel=0.03), key
    for f in sci["frame"]:  # z is ~1.5x brighter than i, as the truth says
        ratio = measured[f, "B-z"] / measured[f, "B-i"]
        assert ratio == pytest.approx(expected[f, "B-z"] / expected[f, "B-i"], rel=0.03)
        assert ratio > 1.3

    # star fluxes on each half follow that half's band and zero point
    sf, stars = truth["star_frames"], truth["stars"]
    for chip, band in (("B-i", "i"), ("B-z", "z")):
        for f in sci:
            cr = chips[(chips["frame"] == f["frame"]) & (chips["chip"] == chip)][0]
            rows_ = sf[(sf["frame"] == f["frame"]) & (sf["chip"] == chip)]
            mags = stars[np.searchsorted(stars["id"], rows_["id"])][f"{band}_mag"]
            want = f["exptime"] * 10 ** (-0.4 * (mags - cr["zero_point"]))
            assert len(rows_) > 3 and np.allclose(rows_["flux"], want, rtol=1e-9)


def test_split_detector_dome_flats_carry_each_half_s_flat(split_night):
    out, _, inst = split_night
    truth = _truth(out)
    frames, chips = truth["frames"], truth["frame_chips"]
    flats = frames[frames["imagetype"] == "flat"]
    assert len(flats) == 2
    level = {}
    for chip in ("B-i", "B-z"):
        e = np.mean([_electrons(out, inst, f, chips, chip) for f in flats], axis=0)
        level[chip] = np.median(e)
        # flattened by its own band's true flat, a half is smooth to the photon noise
        photon = np.sqrt(level[chip] / 2)  # two flats averaged
        assert np.std(e - np.median(e)) < 1.25 * photon, chip
    # one lamp, one illumination: the two halves agree after their own flats
    assert level["B-i"] == pytest.approx(level["B-z"], rel=0.02)


def test_split_detector_errors_name_the_key(tmp_path):
    chips = [
        {"name": "h1", "band": "i", "datasec": "[1:64,1:30]"},
        {"name": "h2", "band": "z", "datasec": "[1:64,20:64]"},
    ]
    overlapping = write_test_camera(tmp_path, "overlap", chips)
    doc = _base_doc(instrument=str(overlapping), bands=[{"name": "i"}, {"name": "z"}])
    with pytest.raises(ImredError, match="share extension 0 and their data sections overlap"):
        simulate_night(doc, tmp_path / "a")
    chips[1]["datasec"] = "[1:64,33:64]"
    ok = write_test_camera(tmp_path, "halves", chips)
    doc = _base_doc(instrument=str(ok), bands=[{"name": "i"}])
    with pytest.raises(ImredError, match="bands has no entry for z, the fixed band of chip"):
        simulate_night(doc, tmp_path / "b")
    # every chip behind its own filter: one sequence, no filter keyword, each half its band
    doc = _base_doc(instrument=str(ok), bands=[{"name": "i"}, {"name": "z"}])
    simulate_night(doc, tmp_path / "c")
    frames = _truth(tmp_path / "c")["frames"]
    assert np.sum(frames["imagetype"] == "science") == 2
    rows, _ = update_obslog(load_instrument(ok), [tmp_path / "c" / "raw"], tmp_path / "c.tsv")
    assert all(r["use"] == "yes" and r["band"] == {"h1": "i", "h2": "z"}[r["chip"]] for r in rows)
    assert "FILTER" not in fits.getheader(rows[-1]["path"])


def test_chip_size_and_camera_chips_errors_name_the_key(tmp_path):
    doc = _base_doc(instrument="odi_podi", camera={"gain": 1.5, "read_noise": 5.0})
    with pytest.raises(ImredError, match=r"camera\.chip_size"):
        simulate_night(doc, tmp_path / "a")
    doc["camera"].update(chip_size=[64, 64], chips=["OTA33", "OTA99"])
    with pytest.raises(ImredError, match=r"camera\.chips names OTA99"):
        simulate_night(doc, tmp_path / "b")
    doc["camera"] = {"chip_size": [64, 64]}
    with pytest.raises(ImredError, match=r"camera\.gain"):
        simulate_night(doc, tmp_path / "c")


def test_the_mosaic_scenario_runs_small_from_the_command_line(tmp_path, capsys):
    from imred.simulate import main

    assert main(["mosaic_podi", "--small", "--out", str(tmp_path / "night")]) == 0
    assert "odi_podi" in capsys.readouterr().out
    out = tmp_path / "night"
    inst = load_instrument("odi_podi")
    rows, _ = update_obslog(inst, [out / "raw"], tmp_path / "obslog.tsv")
    frames = _truth(out)["frames"]
    assert len(rows) == 9 * len(frames) and all(r["use"] == "yes" for r in rows)
    assert {r["band"] for r in rows if r["imagetype"] == "science"} == {"i", "z"}
    assert {r["imagetype"] for r in rows} == {"bias", "twilight-flat", "science"}
    for name in ("fringe_i", "fringe_z", "galaxies", "galaxy_frames"):
        assert next((out / "truth").glob(f"{name}.*")).stat().st_size > 0
