"""Instrumental colour terms in the simulator (scenario ``bands[].colour_term``).

A small night whose g band has ``m_inst = m_g + 0.1 (g - r)`` (r has none): the raw
images carry the instrumental fluxes, the truth keeps the catalog magnitudes (and adds
``g_mag_inst``), and the scorer's colour-term fit on catalogs measured from the images
recovers the 0.1 it reports as ``colour_term_true``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from imred import paths
from imred.errors import ImredError
from imred.score import score
from imred.simulate import simulate_night

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
K = 0.1
RADIUS = 15.0  # aperture (px): > 99.9 % of a Moffat beta = 3 star of FWHM <= 3.5 px


def _doc(k: float = K) -> dict:
    doc = yaml.safe_load(DEMO.read_text())
    doc["bands"][0]["colour_term"] = {"colour": ["g", "r"], "k": k}
    small = doc["small"]
    small["calibrations"] = {"bias": {"count": 0}, "dark": {"count": 0}, "flat": {"count": 0}}
    small["stars"] = {"density_at_20": 80000, "slope": 0.15, "magnitudes": [16.0, 17.2]}
    small["bad_columns"] = {"enabled": False}
    return doc


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("colour_night")
    simulate_night(_doc(), out, small=True)
    return out


def _measure(out: Path) -> Table:
    """Aperture photometry (truth-calibrated e-, before the flat) of isolated bright stars."""
    t = out / "truth"
    frames, chips = Table.read(t / "frames.ecsv"), Table.read(t / "frame_chips.ecsv")
    sf, stars = Table.read(t / "star_frames.ecsv"), Table.read(t / "stars.ecsv")
    idx = {int(i): n for n, i in enumerate(stars["id"])}
    poly = np.asarray(Table.read(t / "nonlinearity.ecsv")["coefficient"])
    yy, xx = np.mgrid[0:256, 0:256]
    rows = []
    for f in frames[frames["imagetype"] == "science"]:
        for chip, ext in (("c1", "CCD1"), ("c2", "CCD2")):
            row = chips[(chips["frame"] == f["frame"]) & (chips["chip"] == chip)][0]
            raw = fits.getdata(out / "raw" / f"{f['frame']}.fits", ext).astype(float)
            adu = (raw - fits.getdata(t / "bias.fits", chip) - row["bias_offset"])[:256, :256]
            e = adu * np.polyval(poly[::-1], adu) * row["gain"]
            e -= fits.getdata(t / "dark.fits", chip) * f["exptime"]
            e /= fits.getdata(t / f"flat_{f['band']}.fits", chip)
            cosmic = fits.getdata(t / "frames" / f"{f['frame']}.fits", chip).astype(bool)
            here = sf[(sf["frame"] == f["frame"]) & (sf["chip"] == chip)]
            for s in here[here["on_chip"]]:
                x, y = s["x"], s["y"]
                if not (25 < x < 230 and 25 < y < 230) or s["flux"] < 3e4:
                    continue
                d = np.hypot(here["x"] - x, here["y"] - y)
                if np.any((d > 0) & (d < 40) & (here["flux"] > 0.002 * s["flux"])):
                    continue
                r = np.hypot(xx - x, yy - y)
                if cosmic[r < 25].any():
                    continue
                sky = np.median(e[(r > 18) & (r < 25)])
                flux = float((e[r < RADIUS] - sky).sum())
                st = stars[idx[int(s["id"])]]
                rows.append(
                    {
                        "frame": str(f["frame"]),
                        "chip": chip,
                        "band": str(f["band"]),
                        "id": int(s["id"]),
                        "ra": float(st["ra"]),
                        "dec": float(st["dec"]),
                        "colour": float(st["g_mag"] - st["r_mag"]),
                        "m_cat": float(st[f"{f['band']}_mag"]),
                        "true_flux": float(s["flux"]),
                        "flux": flux,
                        # instrumental magnitude on the frame's true zero point
                        "mag": -2.5 * np.log10(flux / f["exptime"]) + row["zero_point"],
                    }
                )
    return Table(rows=rows)


def test_truth_keeps_catalog_magnitudes_and_adds_the_instrumental_ones(night):
    t = night / "truth"
    stars = Table.read(t / "stars.ecsv")
    assert stars.meta["COLOUR_TERMS"] == {"g": {"colour": ["g", "r"], "k": K}}
    assert "r_mag_inst" not in stars.colnames
    np.testing.assert_allclose(
        stars["g_mag_inst"], stars["g_mag"] + K * (stars["g_mag"] - stars["r_mag"]), atol=1e-12
    )
    refcat = Table.read(t / "refcat.fits")  # the catalog magnitudes (plus their errors)
    assert "g_mag_inst" not in refcat.colnames
    s = stars[np.searchsorted(stars["id"], refcat["source_id"])]
    d = np.asarray(refcat["g_mag"] - s["g_mag"]) / np.asarray(refcat["g_err"])
    assert abs(np.mean(d)) < 0.2 and 0.8 < np.std(d) < 1.2
    # truth fluxes follow the instrumental magnitudes
    frames, chips = Table.read(t / "frames.ecsv"), Table.read(t / "frame_chips.ecsv")
    sf = Table.read(t / "star_frames.ecsv")
    idx = {int(i): n for n, i in enumerate(stars["id"])}
    for f in frames[frames["imagetype"] == "science"]:
        zp = chips[(chips["frame"] == f["frame"]) & (chips["chip"] == "c1")][0]["zero_point"]
        rows = sf[(sf["frame"] == f["frame"]) & (sf["chip"] == "c1")]
        col = "g_mag_inst" if f["band"] == "g" else "r_mag"
        m = np.asarray(stars[col])[[idx[int(i)] for i in rows["id"]]]
        np.testing.assert_allclose(rows["flux"], f["exptime"] * 10 ** (-0.4 * (m - zp)), rtol=1e-9)


def test_raw_star_fluxes_follow_the_instrumental_magnitudes(night):
    m = _measure(night)
    for band, want in (("g", K), ("r", 0.0)):
        s = m[m["band"] == band]
        assert len(s) >= 15 and np.ptp(s["colour"]) > 0.8
        # catalog magnitude -> flux on the frame's zero point: the ratio's colour slope
        dm = s["mag"] - s["m_cat"]
        slope, icpt = np.polyfit(s["colour"], dm, 1)
        res = dm - (slope * s["colour"] + icpt)
        err = np.std(res) / np.sqrt(np.sum((s["colour"] - s["colour"].mean()) ** 2))
        ratio = np.median(s["flux"] / s["true_flux"])
        print(f"{band}: {len(s)} stars, slope of -2.5 log(flux ratio) vs g-r {slope:.4f} "
              f"+- {err:.4f} (k = {want}), measured/truth flux {ratio:.4f}")  # fmt: skip
        assert slope == pytest.approx(want, abs=max(3 * err, 0.005))
        assert ratio == pytest.approx(1.0, abs=0.005)


def _write(path: Path, s: Table) -> None:
    cat = Table({"ra": s["ra"], "dec": s["dec"], "mag": s["mag"]})
    cat["mag_err"] = np.full(len(s), 0.005)  # S/N > 50: the scorer's bright sample
    path.parent.mkdir(parents=True, exist_ok=True)
    cat.write(path)


def test_scorer_recovers_the_colour_term(night, tmp_path):
    m = _measure(night)
    fields = {"instrument": "demo_small", "night": "20240315"}
    for frame, chip in sorted(set(zip(m["frame"], m["chip"], strict=True))):
        s = m[(m["frame"] == frame) & (m["chip"] == chip)]
        _write(tmp_path / paths.FRAME_CATALOG.format(frame=frame, chip=chip, **fields), s)
    for band in ("g", "r"):  # a coadd catalog per band: each star's mean measured magnitude
        s = m[m["band"] == band]["id", "ra", "dec", "mag"].group_by("id").groups.aggregate(np.mean)
        _write(tmp_path / paths.COADD_CATALOG.format(target="DEMOFIELD", band=band, **fields), s)
    out = score(tmp_path, night / "truth")["catalogs"]
    bands = dict(zip(m["frame"], m["band"], strict=True))
    per_frame = {"g": [], "r": []}
    for key, metrics in out.items():
        if not isinstance(metrics, dict) or "colour_term_slope" not in metrics:
            continue
        band = key.rsplit(".", 1)[1] if key.startswith("coadd ") else bands[key.rsplit(".")[0]]
        if band == "g":
            assert metrics["colour_term_true"] == K
            assert metrics["colour_term_true_colour"] == "g-r"
        else:
            assert "colour_term_true" not in metrics
        if not key.startswith("coadd ") and metrics["colour_term_slope_err"] is not None:
            per_frame[band].append(metrics)
    for band, want in (("g", K), ("r", 0.0)):
        c = out[f"coadd DEMOFIELD.{band}"]
        slope, err = c["colour_term_slope"], c["colour_term_slope_err"]
        # frame catalogs hold 3-8 stars each: their slopes and errors are rough
        frame_slopes = np.array([x["colour_term_slope"] for x in per_frame[band]])
        print(f"scorer {band}: coadd catalog colour_term_slope {slope:.4f} +- {err:.4f} "
              f"({c['colour_term_n_stars']} stars), true {c.get('colour_term_true', 0.0)}; "
              f"{frame_slopes.size} frame catalogs: slopes {np.round(frame_slopes, 3).tolist()}")  # fmt: skip
        assert c["colour_term_n_stars"] >= 10
        assert err < 0.01
        assert slope == pytest.approx(want, abs=3 * err)
        assert frame_slopes.size >= 3
        assert np.median(frame_slopes) == pytest.approx(want, abs=0.02)


def test_colour_term_needs_catalog_magnitudes_of_its_bands(tmp_path):
    doc = _doc()
    doc["bands"][0]["colour_term"] = {"colour": ["g", "y"], "k": K}
    with pytest.raises(ImredError, match="colour_term needs stars magnitudes in y"):
        simulate_night(doc, tmp_path, small=True)
