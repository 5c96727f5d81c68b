"""The small NIR night through the workflow: reads grouped into exposures, calibrated rates.

config/scenarios/nir_small.yaml: the nir_demo camera (IO:I-like, 128x128, one file per
read, Fowler-2), 5 darks, 3 dome flats, 3 science exposures of 10 s in H with a few
saturated stars and their persistence. Snakemake runs up to the calibrated frames; the
scorer (independent of the pipeline) compares their rates with the truth.
"""

from __future__ import annotations

import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from imred.obslog import read_obslog, usable
from imred.score import score

from conftest import ROOT, job_counts, snakemake

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nir_night(tmp_path_factory):
    """The simulated night, a work folder, and the calibrated science frames made there."""
    from imred.simulate import simulate_night

    night = tmp_path_factory.mktemp("nir_night")
    summary = simulate_night(ROOT / "config/scenarios/nir_small.yaml", night)
    work = tmp_path_factory.mktemp("nir_work")
    cfg = {
        "instruments": {"nir_demo": {"raw": [str(night / "raw")]}},
        # no bias frames and no setting needed: NIR arrays take none (the reset level
        # cancels in the reads' difference)
        "reference_catalog": {"source": "file", "file": str(night / "truth" / "refcat.fits")},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    frames = Table.read(night / "truth" / "frames.ecsv")
    science = [str(f) for f in frames["frame"][frames["imagetype"] == "science"]]
    targets = [
        f"results/nir_demo/{summary['night']}/calibrated/{frame}.h2rg.fits" for frame in science
    ]
    plan = snakemake(work, "--dry-run", *targets)
    snakemake(work, "--cores", "2", *targets)
    return night, work, summary, science, job_counts(plan.stdout)


def test_one_frame_per_exposure_with_its_reads_combined(nir_night):
    night, work, summary, science, jobs = nir_night
    assert summary["n_files"] == 44  # 11 exposures x 4 reads
    assert jobs == {"master_dark": 1, "master_flat": 1, "calibrate": 3, "total": 5}
    rows, _ = read_obslog(work / "results/nir_demo/obslog.tsv")
    assert len(rows) == 44 and all(r["use"] == "yes" for r in rows)
    frames = usable(rows)
    truth = Table.read(night / "truth/frames.ecsv")
    assert [r["frame"] for r in frames] == list(truth["frame"])
    for frame in science:
        path = work / f"results/nir_demo/{summary['night']}/calibrated/{frame}.h2rg.fits"
        h = fits.getheader(path)
        assert (h["EXPTIME"], h["NREADS"], h["READMODE"]) == (10.0, 4, "fowler")
        steps = h["IMRSTEPS"].split(",")
        assert steps[:4] == ["reference:ramp", "trim", "fowler", "nonlinearity"]
        assert "dark" in steps and "flat" in steps
        assert [h[f"IMRIN{i}"].rsplit("/", 1)[1] for i in range(1, 5)] == [
            f"{frame}_{m}_{n}.fits" for m in (1, 2) for n in (1, 2)
        ]


def test_calibrated_rates_equal_the_truth_within_the_noise(nir_night):
    night, work, _, science, _ = nir_night
    result = score(work, night / "truth")
    cal = result["calibration"]
    for frame in science:
        m = cal[f"{frame}.h2rg"]
        # found means 0.042 / 0.028 / 0.004, stds 1.005 / 1.005 / 1.015, ratios 1.0017 /
        # 1.0015 / 0.9994 (14390 pixels each)
        assert abs(m["nir_rate_pull_mean"]) < 0.1
        assert m["nir_rate_pull_std"] == pytest.approx(1.0, abs=0.05)
        assert m["nir_rate_ratio_median"] == pytest.approx(1.0, abs=0.005)
        assert m["n_nir_pixels"] > 14000
    # all frames: found mean 0.025, std 1.008, robust std 1.007 over 43156 pixels
    assert abs(cal["all"]["nir_rate_pull_mean"]) < 0.06
    assert cal["all"]["nir_rate_pull_std"] == pytest.approx(1.0, abs=0.03)
    # the persistence of the first science frame's saturated stars is in the truth of the
    # next ones (and in the expected rate the pulls are taken against)
    persisted = [fits.getdata(night / f"truth/persistence/{f}.fits", "h2rg") for f in science]
    assert not persisted[0].any() and persisted[1].max() > 5.0  # found 16.9 e-/s
    # the masters against the truth (the scorer's CCD metrics)
    assert result["masters"]["flat.H.h2rg"]["error_over_photon_limit"] < 1.3  # found 1.10
    dark = result["masters"]["dark.h2rg"]
    assert dark["rms_error_e_per_s"] < 1.2 * dark["expected_noise_e_per_s"]  # found 1.01x
