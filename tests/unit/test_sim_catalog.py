"""Simulator with a real star catalog: the simulated stars are the file's stars in the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred.errors import ImredError
from imred.simulate import simulate_night

from conftest import CAFOS

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
SDSS = CAFOS / "refcat" / "sdss_ngc2420.fits"
N = 256  # demo_small chips
RA0, DEC0 = 114.602, 21.575  # NGC 2420 (the SDSS file's cone centre)


def _doc(catalog: dict, dec: float = DEC0, **small) -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    doc["field"] = {"name": "NGC2420", "ra_deg": RA0, "dec_deg": dec}
    doc["stars"]["catalog"] = catalog
    doc["small"].pop("stars")
    doc["small"]["calibrations"] = {
        "bias": {"count": 0},
        "dark": {"count": 0},
        "flat": {"count": 0},
    }
    doc["small"].update(small)
    return doc


def _fake_catalog(path: Path, rng: np.random.Generator) -> Table:
    """Stars over a 8' disc with oddly named columns, a NaN row and a masked row."""
    n = 3000
    rad = 480.0 * np.sqrt(rng.uniform(0, 1, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    t = Table()
    t["OBJID"] = np.arange(5_000_001, 5_000_001 + n, dtype=np.int64)
    t["RAJ2000"] = RA0 + rad * np.sin(ang) / 3600.0 / np.cos(np.radians(DEC0))
    t["DEJ2000"] = DEC0 + rad * np.cos(ang) / 3600.0
    t["gmag"] = rng.uniform(15.0, 21.0, n)
    t["rmag"] = t["gmag"] - rng.uniform(0.2, 1.4, n)
    t["gmag"][5] = np.nan
    t = Table(t, masked=True)
    t["rmag"].mask[7] = True
    t.write(path)
    return t


def _on_chip_by_wcs(out: Path, frame: str, chip: str, stars: Table) -> set[int]:
    header = fits.getheader(out / "truth" / "frames" / f"{frame}.fits", chip)
    x, y = WCS(header).all_world2pix(stars["ra"], stars["dec"], 0)
    inside = (x >= -0.5) & (x < N - 0.5) & (y >= -0.5) & (y < N - 0.5)
    return {int(i) for i in stars["id"][inside]}


def _check_exact_stars(out: Path, file_stars: Table, id_col: str | None, cols: dict) -> None:
    """stars.ecsv holds exactly the file's usable stars within the simulated disc, with
    their magnitudes, and every science frame shows exactly those the true WCS puts on
    each chip."""
    truth = out / "truth"
    stars = Table.read(truth / "stars.ecsv")
    sc = yaml.safe_load((truth / "scenario.yaml").read_text())
    assert sc["stars"]["catalog"]["columns"] == cols
    ids = np.asarray(file_stars[id_col]) if id_col else np.arange(1, len(file_stars) + 1)
    row_of = {int(i): k for k, i in enumerate(ids)}
    assert len(stars) > 50
    for band in ("g", "r"):
        want = np.asarray(file_stars[cols[f"{band}_mag"]], dtype=float)
        got = np.array([want[row_of[int(i)]] for i in stars["id"]])
        assert np.array_equal(got, np.asarray(stars[f"{band}_mag"]))
    ra = np.asarray(file_stars[cols["ra"]], dtype=float)
    assert np.allclose(stars["ra"], [ra[row_of[int(i)]] for i in stars["id"]], rtol=0, atol=1e-12)
    # i and z from the colour polynomials (scenario defaults) with g - r from the file
    gr = stars["g_mag"] - stars["r_mag"]
    assert np.allclose(stars["gr"], gr)
    assert np.allclose(stars["i_mag"], stars["r_mag"] + 0.02 - 0.2 * gr - 0.35 * gr**2)
    # every file star near the field is in, unless a value is missing
    frames = Table.read(truth / "frames.ecsv")
    sf = Table.read(truth / "star_frames.ecsv")
    n_checked = 0
    for frame in frames[frames["imagetype"] == "science"]:
        for chip in ("c1", "c2"):
            on = sf[(sf["frame"] == frame["frame"]) & (sf["chip"] == chip) & sf["on_chip"]]
            assert {int(i) for i in on["id"]} == _on_chip_by_wcs(out, frame["frame"], chip, stars)
            # and the file's stars on the chip are all among the simulated ones
            good = np.isfinite(
                np.ma.filled(np.ma.asarray(file_stars[cols["g_mag"]], float), np.nan)
            )
            good &= np.isfinite(
                np.ma.filled(np.ma.asarray(file_stars[cols["r_mag"]], float), np.nan)
            )
            usable = Table({"id": ids, "ra": ra, "dec": np.asarray(file_stars[cols["dec"]], float)})
            assert {int(i) for i in on["id"]} == _on_chip_by_wcs(
                out, frame["frame"], chip, usable[good]
            )
            # fluxes from the file's magnitudes and the frame's zero point
            mags = np.array(
                [
                    stars["g_mag" if frame["band"] == "g" else "r_mag"][k]
                    for k in [int(np.flatnonzero(stars["id"] == i)[0]) for i in on["id"]]
                ]
            )
            want = frame["exptime"] * 10 ** (-0.4 * (mags - frame["zero_point"]))
            assert np.allclose(on["flux"], want, rtol=1e-9)
            n_checked += len(on)
    assert n_checked > 30


def test_stars_come_from_a_catalog_file(tmp_path):
    cat = tmp_path / "cat" / "mystars.fits"
    cat.parent.mkdir()
    file_stars = _fake_catalog(cat, np.random.default_rng(5))
    cols = {"ra": "RAJ2000", "dec": "DEJ2000", "id": "OBJID", "g_mag": "gmag", "r_mag": "rmag"}
    scenario = tmp_path / "cat" / "night.yaml"  # the catalog path is relative to this file
    scenario.write_text(yaml.safe_dump(_doc({"file": "mystars.fits", "columns": cols})))
    out = tmp_path / "night"
    simulate_night(scenario, out, small=True)
    _check_exact_stars(out, file_stars, "OBJID", cols)
    stars = Table.read(out / "truth" / "stars.ecsv")
    assert 5_000_006 not in set(stars["id"]) and 5_000_008 not in set(stars["id"])  # NaN, masked
    ref = Table.read(out / "truth" / "refcat.fits")
    assert set(ref["source_id"]) <= set(stars["id"]) and len(ref) > 20


@pytest.mark.skipif(not SDSS.is_file(), reason=f"real SDSS catalog not present ({SDSS})")
def test_stars_come_from_the_real_sdss_catalog(tmp_path):
    cols = {"ra": "ra", "dec": "dec", "g_mag": "g", "r_mag": "r"}
    out = tmp_path / "night"
    dec = DEC0 + 0.1  # 6' north of the cluster core, which SDSS leaves empty
    simulate_night(_doc({"file": str(SDSS), "columns": cols}, dec=dec), out, small=True)
    file_stars = Table.read(SDSS)
    _check_exact_stars(out, file_stars, None, cols)
    stars = Table.read(out / "truth" / "stars.ecsv")
    # the simulated disc (radius ~ 2.4') holds every SDSS star within it, and only those
    d = np.hypot((file_stars["ra"] - RA0) * np.cos(np.radians(dec)), file_stars["dec"] - dec)
    assert np.sum(d * 3600 < 120) <= len(stars) <= np.sum(d * 3600 < 200)


def test_catalog_errors_name_the_key(tmp_path):
    cat = tmp_path / "stars.fits"
    _fake_catalog(cat, np.random.default_rng(1))
    cols = {"ra": "RAJ2000", "dec": "DEJ2000", "g_mag": "gmag", "r_mag": "rmag"}
    with pytest.raises(ImredError, match=r"stars\.catalog\.file 'nope\.fits' does not exist"):
        simulate_night(_doc({"file": "nope.fits", "columns": cols}), tmp_path / "a", small=True)
    bad = {**cols, "g_mag": "G"}
    with pytest.raises(ImredError, match=r"stars\.catalog\.columns .*g_mag: G.*its columns: OBJID"):
        simulate_night(_doc({"file": str(cat), "columns": bad}), tmp_path / "b", small=True)
    with pytest.raises(ImredError, match=r"stars\.catalog\.columns.*gr"):
        only_r = {"ra": "RAJ2000", "dec": "DEJ2000", "r_mag": "rmag"}
        simulate_night(_doc({"file": str(cat), "columns": only_r}), tmp_path / "c", small=True)
    with pytest.raises(ImredError, match=r"stars\.catalog\.columns"):
        odd = {**cols, "gmag": "gmag"}  # not ra, dec, id, gr or {band}_mag
        simulate_night(_doc({"file": str(cat), "columns": odd}), tmp_path / "d", small=True)
    with pytest.raises(ImredError, match=r"stars\.catalog.*'file'"):
        simulate_night(_doc({"columns": cols}), tmp_path / "e", small=True)
