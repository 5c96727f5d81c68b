"""The real workflow on the real CAFOS night (../shared/data/cafos_ngc2420)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import yaml
from astropy.io import fits

from conftest import CAFOS, snakemake

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CAFOS.is_dir(), reason=f"real CAFOS data not found at {CAFOS}"),
]


def test_cafos_night_runs_and_raw_statistics_match_the_pixels(tmp_path):
    raw_files = sorted((CAFOS / "raw").rglob("*.fits"))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in raw_files}
    cfg = {"instruments": {"cafos": {"raw": [str(CAFOS / "raw")]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snakemake(tmp_path, "--cores", "2")

    # one summary per night: calibrations (2021-03-18) and science (2021-03-28)
    summaries = sorted(p.parent.name for p in (tmp_path / "results/cafos").glob("*/summary.md"))
    assert summaries == ["20210318", "20210328"]
    reports = sorted((tmp_path / "results/cafos").glob("*/inspect/*.json"))
    assert len(reports) == 15

    # the recorded statistics are those of the pixels (independent recomputation)
    for rep_path in reports:
        rep = json.loads(rep_path.read_text())
        frame = rep["frame"]["frame"]
        raw = next(p for p in raw_files if p.stem == frame)
        data = fits.getdata(raw).astype(float)
        assert rep["data"]["median"] == pytest.approx(np.median(data), abs=0.5)
        assert rep["data"]["max"] == data.max()
        assert rep["provenance"]["inputs"] == [str(raw)]
        sat = np.count_nonzero(data >= 65000) / data.size
        assert rep["saturated_fraction"] == pytest.approx(sat)

    # some stars saturate in the 60 s frames (the data README says so); biases are ~level
    sci = tmp_path / "results/cafos/20210328/inspect"
    long = [json.loads(p.read_text()) for p in sci.glob("*.json")]
    assert any(r["saturated_fraction"] > 0 for r in long if r["frame"]["exptime"] == 60.0)
    summary = (tmp_path / "results/cafos/20210318/summary.md").read_text()
    assert "| bias | - | 2 |" in summary and "| flat | B | 1 |" in summary

    # raw data are read-only: untouched
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in raw_files} == before
