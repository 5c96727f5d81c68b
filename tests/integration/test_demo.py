"""The demo configuration on the small simulated night: DAG, a real run, statistics vs truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from imred.instrument import load_instrument
from imred.score import score
from imred.sections import parse_section
from imred.simulate import simulate_night

from conftest import ROOT, job_counts, snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """The small demo night, and a work folder whose config is the demo config pointed at it."""
    night = tmp_path_factory.mktemp("night")
    simulate_night(ROOT / "config/scenarios/demo.yaml", night, small=True)
    work = tmp_path_factory.mktemp("work")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["instruments"] = {"demo_small": {"raw": [str(night / "raw")]}}
    cfg["reference_catalog"]["file"] = str(night / "truth" / "refcat.fits")
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return night, work


def test_demo_config_dry_run_plans_the_expected_jobs(small_demo):
    night, work = small_demo
    n_files = len(list((night / "raw").glob("*.fits")))
    assert n_files == 20  # 5 bias, 3 dark, 3 flats x 2 bands, 3 science x 2 bands
    proc = snakemake(work, "--dry-run")
    assert job_counts(proc.stdout) == {
        "all": 1,
        "inspect": 2 * n_files,  # every frame x chip
        "night_summary": 1,
        "master_bias": 2,  # per chip
        "master_dark": 2,
        "master_flat": 4,  # per chip and band
        "master_qa": 1,
        "calibrate": 12,  # 6 science frames x 2 chips
        "detect": 12,
        "astrometry": 12,
        "photometry": 12,
        "frame_qa": 1,
        "reference_catalog": 1,
        "coadd": 2,  # one target (grouped by pointing) x 2 bands
        "coadd_catalog": 2,
        "total": 2 * n_files + 23 + 38 + 4,
    }


def test_demo_run_measures_the_true_bias(small_demo):
    night, work = small_demo
    snakemake(work, "--cores", "2")
    inst = load_instrument("demo_small")
    truth_bias = {
        c.name: fits.getdata(night / "truth/bias.fits", c.name.upper()) for c in inst.chips
    }
    offsets = Table.read(night / "truth/frame_chips.ecsv")
    reports = list((work / "results/demo_small").glob("*/inspect/*.json"))
    assert len(reports) == 2 * len(list((night / "raw").glob("*.fits")))
    n_bias = 0
    for path in reports:
        rep = json.loads(path.read_text())
        if rep["frame"]["imagetype"] != "bias":
            continue
        n_bias += 1
        frame, chip = rep["frame"]["frame"], rep["frame"]["chip"]
        row = offsets[(offsets["frame"] == frame) & (offsets["chip"] == chip)][0]
        spec = inst.chip(chip)
        true = truth_bias[chip] + row["bias_offset"]
        data_true = true[parse_section(spec.datasec)]
        over_true = true[parse_section(spec.amplifiers[0]["overscan"])]
        # the levels of the data section and of the overscan are the true bias levels
        # (clipped means: medians of integer ADU are quantised)
        assert rep["data"]["clipped_mean"] == pytest.approx(data_true.mean(), abs=0.1)
        assert rep["overscan"]["A"]["clipped_mean"] == pytest.approx(over_true.mean(), abs=0.3)
        # the noise is the bias structure plus read noise / gain (ADU)
        expect = np.hypot(np.std(data_true), row["read_noise"] / row["gain"])
        assert rep["data"]["clipped_std"] == pytest.approx(expect, rel=0.05)
        assert rep["flags"] == []
    assert n_bias >= 2 * 3
    summary = next((work / "results/demo_small").glob("*/summary.md")).read_text()
    assert "| science | g |" in summary and "| flat | r |" in summary


def test_demo_calibration_meets_its_bars_against_truth(small_demo):
    """The scorer (independent of the pipeline) on the masters and calibrated frames."""
    night, work = small_demo
    if not list((work / "results/demo_small").glob("*/calibrated/*.fits")):
        snakemake(work, "--cores", "2")
    scores = score(work, night / "truth")
    masters = scores["masters"]
    for chip in ("c1", "c2"):
        assert masters[f"bias.{chip}"]["error_over_noise"] < 1.2
        assert abs(masters[f"bias.{chip}"]["read_noise_error_pct"]) < 3
        for band in "gr":
            flat = masters[f"flat.{band}.{chip}"]
            assert flat["error_over_photon_limit"] <= 1.2
            assert abs(flat["gain_error_pct"]) < 3
        dark = masters[f"dark.{chip}"]
        # within the noise of the darks and of the master bias they carry
        assert dark["rms_error_e_per_s"] < 1.5 * dark["expected_noise_e_per_s"]
    cal = scores["calibration"]["all"]
    assert cal["cr_recall"] >= 0.95
    # the bar is < 0.1 % on the demo night's 1024^2 chips (0.03 % there, see the benchmark);
    # on these 256^2 chips a star cut by the edge is 4x as common and L.A.Cosmic flags
    # some of their cores: 0.4 % here
    assert cal["star_core_cr_false_positive_fraction"] < 0.005


def test_demo_frames_are_solved_and_calibrated_against_truth(small_demo):
    """First light per frame, scored independently: astrometry, zero points, seeing."""
    night, work = small_demo
    if not list((work / "results/demo_small").glob("*/qa/frames.ecsv")):
        snakemake(work, "--cores", "2")
    frames = score(work, night / "truth")["frames"]["all"]
    # solved frames within 0.05" of the true positions; a chip with too few catalog
    # stars may be flagged (and is then kept out of coadds), but most are solved
    assert frames["astrometric_rms_arcsec"] <= 0.05
    assert frames.get("n_astrometry_flagged", 0) <= 3
    # zero points within 0.02 mag of the truth (after the band's constant offset:
    # the truth is before the flat, whose normalisation the pipeline chooses)
    assert frames["zero_point_rms_rel_mag"] <= 0.02
    assert abs(frames["fwhm_median_ratio"] - 1) < 0.05


def test_demo_coadds_meet_the_first_light_bars(small_demo):
    """Coadds and their catalogs, scored against truth by the independent scorer."""
    night, work = small_demo
    if not list((work / "results/demo_small").glob("*/coadds/*.cat.fits")):
        snakemake(work, "--cores", "2")
    scores = score(work, night / "truth")
    for band in "gr":
        coadd = scores["coadds"][f"DEMOFIELD.{band}"]
        # star positions in the coadd image within 0.05" of the truth
        assert coadd["astrometric_rms_arcsec"] <= 0.05
        cat = scores["catalogs"][f"coadd DEMOFIELD.{band}"]
        # bright (S/N > 50), unflagged stars: calibrated magnitudes within 0.03 mag rms
        assert cat["n_bright"] >= 10
        assert cat["bright_mag_robust_rms"] <= 0.03
        assert abs(cat["bright_mag_median"]) <= 0.03
        assert cat["astrometric_rms_arcsec"] <= 0.05
        assert cat["completeness"] >= 0.8
    # what the coadd says about itself: its inputs, and the frames it left out and why
    head = fits.getheader(work / "results/demo_small/20240315/coadds/DEMOFIELD.r.fits")
    assert head["IMRTYPE"] == "COADD" and head["NCOMBINE"] >= 4
    left_out = [head[k] for k in head if k.startswith("IMRX")]
    assert head["NCOMBINE"] + len(left_out) == 6  # 3 frames x 2 chips
    assert all(": " in entry for entry in left_out)
