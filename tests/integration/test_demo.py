"""The demo configuration on the small simulated night: DAG, a real run, statistics vs truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from imred.instrument import load_instrument
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
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    return night, work


def test_demo_config_dry_run_plans_the_expected_jobs(small_demo):
    night, work = small_demo
    n_files = len(list((night / "raw").glob("*.fits")))
    proc = snakemake(work, "--dry-run")
    assert job_counts(proc.stdout) == {
        "all": 1,
        "inspect": 2 * n_files,  # every frame x chip
        "night_summary": 1,
        "total": 2 * n_files + 2,
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
