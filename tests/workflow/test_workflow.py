"""Workflow tests: the DAG of a small night (dry-run), user errors, lint."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ROOT, job_counts, snakemake, write_demo_frame


def small_night(tmp_path: Path, config_extra: dict | None = None) -> Path:
    raw = tmp_path / "raw"
    for i in range(3):
        write_demo_frame(raw / f"sci.{i:04d}.fits", band="g", dateobs=f"2026-03-02T0{4 + i}:00:00")
    write_demo_frame(raw / "r_0001.fits", band="r", dateobs="2026-03-02T08:00:00")
    for i in range(5):
        write_demo_frame(raw / f"bias_{i}.fits", imagetype="BIAS", band=None, exptime=0.0)
    for band in "gr":
        for i in range(3):
            write_demo_frame(raw / f"flat_{band}{i}.fits", imagetype="FLAT", band=band, exptime=5)
    write_demo_frame(raw / "next.fits", dateobs="2026-03-03T05:00:00")  # the next night
    write_demo_frame(raw / "focus.fits", imagetype="FOCUS")  # logged, not reduced
    (raw / "junk.fits").write_text("not a FITS file")
    cfg = {"instruments": {"demo": {"raw": [str(raw)]}}, **(config_extra or {})}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def test_dry_run_plans_one_inspection_per_frame_and_chip(tmp_path):
    work = small_night(tmp_path)
    proc = snakemake(work, "--dry-run")
    # 16 usable frames x 2 chips; 2 nights -> 2 summaries; masters of night 1 (bias per
    # chip, flat per chip and band) calibrate the 5 science frames of both nights
    # and per science frame x chip: sources, astrometry, photometry; a QA table per night
    # and a reference catalog for the one target; a coadd and its catalog per night and band
    assert job_counts(proc.stdout) == {
        "all": 1, "inspect": 32, "night_summary": 2, "master_bias": 2, "master_flat": 4,
        "calibrate": 10, "master_qa": 1, "detect": 10, "astrometry": 10, "photometry": 10,
        "frame_qa": 2, "reference_catalog": 1, "coadd": 3, "coadd_catalog": 3, "total": 91,
    }  # fmt: skip
    assert "18 files read, 0 unchanged, 0 removed; 32 frame x chip rows in use, 3 excluded" in (
        proc.stderr
    )
    # each excluded file is named with its reason
    assert re.search(r"excluded \S+/raw/junk.fits \[-\]: not FITS: ", proc.stderr)
    assert re.search(
        r"excluded \S+/raw/focus.fits \[c1\]: not reduced: image type focus", proc.stderr
    )
    # frame ids with dots stay unambiguous next to the chip name
    assert "results/demo/20260301/inspect/sci.0001.c2.json" in proc.stdout
    # a second dry-run reads no header again
    proc = snakemake(work, "--dry-run")
    assert "files read" not in proc.stderr


def test_nights_setting_restricts_the_run(tmp_path):
    work = small_night(tmp_path)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg["instruments"]["demo"]["nights"] = ["20260302"]
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    # the night's frames, and the masters of the night before that calibrate them
    assert job_counts(snakemake(work, "--dry-run").stdout) == {
        "all": 1, "inspect": 2, "night_summary": 1, "calibrate": 2, "master_bias": 2,
        "master_flat": 2, "detect": 2, "astrometry": 2, "photometry": 2, "frame_qa": 1,
        "reference_catalog": 1, "coadd": 1, "coadd_catalog": 1, "total": 20,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"instruments": {"demo": {"raw": ["nowhere"]}}},
            "imred: {cfg}: instruments.demo.raw names 'nowhere', which is not a folder",
        ),
        (
            {"instruments": {"nosuch": {"raw": ["raw"]}}},
            "imred: unknown instrument 'nosuch': no file",
        ),
        (
            {"instruments": {"demo": {"raw": ["raw"]}}, "inspect": {"clip_sigam": 3}},
            "imred: {cfg}: unknown key 'clip_sigam' (did you mean 'clip_sigma'?) in 'inspect'",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(tmp_path, cfg, message):
    (tmp_path / "raw").mkdir()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(tmp_path, "--dry-run", check=False)
    assert proc.returncode != 0
    assert message.format(cfg=tmp_path / "config.yaml") in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_snakemake_lint_is_clean(tmp_path):
    work = small_night(tmp_path)
    proc = snakemake(work, "--lint", check=False)
    out = proc.stdout + proc.stderr
    assert (
        proc.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out
    ), out


def test_snakefmt_and_ruff_are_clean():
    for cmd in (
        [str(BIN / "snakefmt"), "--check", "Snakefile", "rules/"],
        [str(BIN / "ruff"), "check", "."],
        [str(BIN / "ruff"), "format", "--check", "."],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout}{proc.stderr}"


def test_conda_directives_name_existing_envs():
    # every rule that runs code names an environment that exists (for --sdm conda)
    text = "".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    rules = re.findall(r"^rule (\w+):", text, flags=re.M)
    envs = re.findall(r'conda:\n\s+"\.\./(envs/[\w.]+)"', text)
    assert len(envs) == len(rules), (rules, envs)
    assert all((ROOT / e).is_file() for e in envs)
