"""The scorer on a camera that writes one raw file per chip.

The pipeline names a frame by its raw file (the observation log's frame id), so for
such a camera each chip of an exposure has its own frame id, unlike the truth's
exposure name. A tiny night of a 2-chip test camera (files ``cam0001_a.fits`` and
``cam0001_b.fits`` per exposure) is simulated; hand-made products with known errors,
named by those frame ids, must be scored under them, chip by chip.
"""

from __future__ import annotations

import copy
import math
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from imred import paths
from imred.instrument import load_instrument
from imred.mask import Bit
from imred.obslog import frame_id, update_obslog
from imred.products import write_image_product
from imred.score import NOT_PRODUCED, format_markdown, raw_frame_id, score
from imred.simulate import simulate_night

from conftest import write_test_camera

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "config" / "scenarios" / "demo.yaml"
NAME, NIGHT, N = "twofile", "20240315", 200
CHIPS = ("a", "b")


def _camera(folder: Path) -> Path:
    """Two 200x200 CCDs at 0.4"/pixel, each in its own file (selected by name)."""
    chips = [
        {
            "name": chip,
            "select": {"filename": f"cam????_{chip}.fits"},
            "datasec": f"[1:{N},1:{N}]",
            "amplifiers": [{"data": f"[1:{N},1:{N}]", "overscan": f"[{N + 3}:{N + 10},1:{N}]"}],
            "geometry": {"offset_arcsec": [(-45.0, 45.0)[k], 0.0]},
        }
        for k, chip in enumerate(CHIPS)
    ]
    return write_test_camera(folder, NAME, chips)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score_files")
    inst_path = _camera(tmp)
    doc = yaml.safe_load(DEMO.read_text())
    doc.pop("small")
    doc["instrument"] = str(inst_path)
    doc["calibrations"] = {"bias": {"count": 1}, "dark": {"count": 0}, "flat": {"count": 1}}
    doc["observing"] = {"science_frames_per_band": 2}
    doc["stars"] = {**copy.deepcopy(doc["stars"]), "density_at_20": 60000, "magnitudes": [15, 20]}
    out = tmp / "night"
    simulate_night(doc, out)
    truth = out / "truth"
    tables = {n: Table.read(truth / f"{n}.ecsv") for n in ("frames", "frame_chips", "stars")}
    tables["star_frames"] = Table.read(truth / "star_frames.ecsv")
    return {"out": out, "truth": truth, "inst": load_instrument(inst_path), **tables}


def _science(night) -> list[str]:
    f = night["frames"]
    return [str(x) for x in f["frame"][f["imagetype"] == "science"]]


def _pid(night, frame: str, chip: str) -> str:
    """The product frame id: the chip's raw file name without .fits (from the truth)."""
    fc = night["frame_chips"]
    row = fc[(fc["frame"] == frame) & (fc["chip"] == chip)][0]
    return str(row["file"]).removesuffix(".fits")


def _product_path(workdir: Path, template: str, **fields) -> Path:
    names = {n for _, n, _, _ in string.Formatter().parse(template) if n}
    fields = {"instrument": NAME, "night": NIGHT, **fields}
    if "setup" in names:
        fields.setdefault("setup", "1x1_normal")
    path = workdir / template.format(**fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _truth_frame(night, frame: str, chip: str) -> tuple[np.ndarray, fits.Header]:
    with fits.open(night["truth"] / "frames" / f"{frame}.fits") as hdul:
        return np.asarray(hdul[chip].data) > 0, hdul[chip].header.copy()


def _on_chip(night, frame: str, chip: str) -> Table:
    sf = night["star_frames"]
    rows = sf[(sf["frame"] == frame) & (sf["chip"] == chip) & sf["on_chip"]]
    stars = night["stars"]
    idx = np.searchsorted(stars["id"], rows["id"])
    for col in ("ra", "dec", "g_mag", "r_mag"):
        rows[col] = np.asarray(stars[col])[idx]
    return rows


def _primary(kind: str, chip: str) -> fits.Header:
    h = fits.Header()
    h["IMRTYPE"] = kind
    h["INSTRUME"] = NAME
    h["CHIP"] = chip
    h["NIGHT"] = NIGHT
    h["TRIMSEC"] = f"[1:{N},1:{N}]"
    return h


def _shifted_wcs(night, frame: str, chip: str, dra: float, ddec: float) -> fits.Header:
    _, hdr = _truth_frame(night, frame, chip)
    h = WCS(hdr).to_header(relax=True)
    h["CRVAL2"] += ddec / 3600
    h["CRVAL1"] += dra / 3600 / math.cos(math.radians(h["CRVAL2"]))
    return h


def test_the_night_has_a_file_per_chip_and_the_obslog_names_frames_by_file(night, tmp_path):
    """The premise: per-chip frame ids that differ from the truth's exposure names, and
    the scorer's restated rule gives the observation log's ids."""
    rows, _ = update_obslog(night["inst"], [night["out"] / "raw"], tmp_path / "obslog.tsv")
    assert len(rows) == 2 * len(night["frames"])
    for r in rows:
        assert raw_frame_id(Path(r["path"]).name) == r["frame"] == frame_id(r["path"])
    for frame in _science(night):
        files = night["frames"][night["frames"]["frame"] == frame][0]["file"].split(",")
        assert len(files) == 2
        ids = {r["frame"] for r in rows if Path(r["path"]).name in files}
        assert ids == {_pid(night, frame, c) for c in CHIPS}
        assert frame not in ids
    for name, pid in (("cam0001_a.fits", "cam0001_a"), ("x.fits.fz", "x"), ("y z.FITS", "y_z")):
        assert raw_frame_id(name) == pid == frame_id(name)


def test_products_of_a_file_per_chip_camera_are_found_and_scored_per_chip(night, tmp_path):
    frames = _science(night)
    assert len(frames) == 4
    f0, f1, f2 = frames[:3]
    pid = {(f, c): _pid(night, f, c) for f in frames for c in CHIPS}

    # astrometry: f0.a 0.1" north, f1.b 0.1" east, f0.b exact, f1.a missing
    for (frame, chip), (dra, ddec) in {
        (f0, "a"): (0.0, 0.1),
        (f1, "b"): (0.1, 0.0),
        (f0, "b"): (0.0, 0.0),
    }.items():
        fits.PrimaryHDU(header=_shifted_wcs(night, frame, chip, dra, ddec)).writeto(
            _product_path(tmp_path, paths.FRAME_WCS, frame=pid[frame, chip], chip=chip)
        )
    # a solution of f1.a named by the truth's exposure: not the pipeline's name, not found
    fits.PrimaryHDU(header=_shifted_wcs(night, f1, "a", 0.0, 3.0)).writeto(
        _product_path(tmp_path, paths.FRAME_WCS, frame=f1, chip="a")
    )

    # QA table: zero points 0.03 mag too bright, f0.b a further 0.05; seeing x 1.1; no row
    # for f2.a (but one under its exposure name, which must not be taken)
    ft = night["frames"]
    rows = []
    for frame in frames:
        row = ft[ft["frame"] == frame][0]
        for chip in CHIPS:
            if (frame, chip) == (f2, "a"):
                rows.append((frame, chip, row["zero_point"] + 1.0, 2.0 * row["seeing"]))
                continue
            extra = 0.05 if (frame, chip) == (f0, "b") else 0.0
            zp = row["zero_point"] + 0.03 + extra
            rows.append((pid[frame, chip], chip, zp, 1.1 * row["seeing"]))
    qa = Table(rows=rows, names=("frame", "chip", "zero_point", "fwhm_arcsec"))
    qa.write(_product_path(tmp_path, paths.FRAME_QA), format="ascii.ecsv")

    # calibrated: the science frame x chip with the most true cosmic-ray pixels, its mask
    # flagging half of them
    best, best_n = None, 0
    for frame in frames:
        for chip in CHIPS:
            n = int(_truth_frame(night, frame, chip)[0].sum())
            if n % 2 == 0 and n > best_n:
                best, best_n = (frame, chip), n
    assert best_n >= 2
    cr, _ = _truth_frame(night, *best)
    mask = np.zeros((N, N), np.uint16)
    mask.flat[np.flatnonzero(cr.ravel())[: best_n // 2]] = int(Bit.COSMIC_RAY)
    sci = np.full((N, N), 100.0)
    write_image_product(
        _product_path(tmp_path, paths.CALIBRATED, frame=pid[best], chip=best[1]),
        _primary("CALIBRATED", best[1]),
        sci,
        var=sci,
        mask=mask,
    )

    # frame catalog of f0.b: its on-chip stars 0.05 mag faint
    st = _on_chip(night, f0, "b")
    band = str(ft[ft["frame"] == f0][0]["band"])
    mag = np.asarray(st[f"{band}_mag"]) + 0.05
    cat = Table(
        {
            "ra": st["ra"],
            "dec": st["dec"],
            "mag": mag,
            "mag_err": np.full(len(st), 0.005),
            "flags": np.zeros(len(st), np.int16),
        }
    )
    cat.write(_product_path(tmp_path, paths.FRAME_CATALOG, frame=pid[f0, "b"], chip="b"))

    result = score(tmp_path, night["truth"], instrument=night["inst"])
    out = result["frames"]
    want_keys = {f"{pid[f, c]}.{c}" for f in frames for c in CHIPS}
    for section in ("frames", "calibration", "catalogs"):
        keys = {k for k in result[section] if k != "all" and not k.startswith("coadd ")}
        assert keys == want_keys, section
    assert result["meta"]["product_frames"] == {
        f: {c: pid[f, c] for c in CHIPS} for f in frames
    } | {
        str(f): {c: _pid(night, str(f), c) for c in CHIPS}
        for f in night["frames"]["frame"]
        if str(f) not in frames
    }

    a0, b0, a1, b1, a2 = (
        f"{pid[f0, 'a']}.a",
        f"{pid[f0, 'b']}.b",
        f"{pid[f1, 'a']}.a",
        f"{pid[f1, 'b']}.b",
        f"{pid[f2, 'a']}.a",
    )
    measured = {
        "a0 rms": out[a0]["astrometric_rms_arcsec"],
        "a0 dec": out[a0]["astrometric_offset_dec_arcsec"],
        "b1 rms": out[b1]["astrometric_rms_arcsec"],
        "b1 ra": out[b1]["astrometric_offset_ra_arcsec"],
        "b0 rms": out[b0]["astrometric_rms_arcsec"],
        "a0 stars": out[a0]["n_stars"],
        "b1 stars": out[b1]["n_stars"],
    }
    print(measured)
    assert out[a0]["astrometric_rms_arcsec"] == pytest.approx(0.1, abs=0.005)
    assert out[a0]["astrometric_offset_dec_arcsec"] == pytest.approx(0.1, abs=0.005)
    assert out[b1]["astrometric_rms_arcsec"] == pytest.approx(0.1, abs=0.005)
    assert out[b1]["astrometric_offset_ra_arcsec"] == pytest.approx(0.1, abs=0.005)
    assert out[b0]["astrometric_rms_arcsec"] < 0.005
    assert out[a0]["n_stars"] >= 5 and out[b1]["n_stars"] >= 5
    assert out[a1]["astrometric_rms_arcsec"] == NOT_PRODUCED  # only under the exposure name
    assert out[b0]["zero_point_error_mag"] == pytest.approx(0.08, abs=1e-9)
    assert out[b0]["zero_point_error_rel_mag"] == pytest.approx(0.05 - 0.0, abs=1e-9)
    assert out[a0]["zero_point_error_rel_mag"] == pytest.approx(0.0, abs=1e-9)
    assert out[a0]["fwhm_ratio"] == pytest.approx(1.1)
    assert out[a2]["zero_point_error_mag"] == NOT_PRODUCED
    assert out[a2]["fwhm_error_arcsec"] == NOT_PRODUCED
    assert out["all"]["fwhm_median_ratio"] == pytest.approx(1.1)
    for b in {str(ft[ft["frame"] == f][0]["band"]) for f in frames}:
        assert out["all"][f"zero_point_offset_{b}_mag"] == pytest.approx(0.03, abs=1e-9)

    cal = result["calibration"]
    best_key = f"{pid[best]}.{best[1]}"
    assert cal[best_key]["cr_recall"] == pytest.approx(0.5)
    assert cal["all"]["cr_recall"] == pytest.approx(0.5)
    assert all(v == NOT_PRODUCED for k, v in cal.items() if k not in (best_key, "all"))

    cats = result["catalogs"]
    print({"b0 catalog": {k: cats[b0][k] for k in ("completeness", "bright_mag_median")}})
    assert cats[b0]["completeness"] == 1.0 and cats[b0]["n_false"] == 0
    assert cats[b0]["bright_mag_median"] == pytest.approx(0.05, abs=1e-9)
    assert all(v == NOT_PRODUCED for k, v in cats.items() if k not in (b0,) and "coadd" not in k)

    text = format_markdown(result)
    assert f"| {a0} | astrometric_rms_arcsec | 0.1" in text
