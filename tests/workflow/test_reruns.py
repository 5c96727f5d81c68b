"""Partial re-runs: a change re-runs what it invalidates and nothing else.

One real run of the small simulated night in a copy of the workflow, then dry-runs
after each change, asserting the exact jobs Snakemake plans.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from imred.simulate import simulate_night

from conftest import ROOT, job_counts

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
PER_FRAME = ("calibrate", "detect", "astrometry", "photometry")
COADDS = {"coadd": 2, "coadd_catalog": 2}  # one target x 2 bands


def run(wf: Path, work: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "snakemake"), "--snakefile", str(wf / "Snakefile"), "--directory", str(work),
        "--configfile", str(work / "config.yaml"), "--cores", "2", *args,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def planned(wf: Path, work: Path) -> dict[str, int]:
    proc = run(wf, work, "--dry-run")
    if "Nothing to be done" in proc.stdout + proc.stderr:
        return {}
    return job_counts(proc.stdout)


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    """A copy of the workflow and the small night, reduced once."""
    base = tmp_path_factory.mktemp("reruns")
    wf = base / "workflow"
    wf.mkdir()
    for part in ("Snakefile", "rules", "scripts", "config", "profiles", "envs"):
        src = ROOT / part
        if src.is_dir():
            shutil.copytree(src, wf / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, wf / part)
    night = base / "night"
    simulate_night(ROOT / "config/scenarios/demo.yaml", night, small=True)
    work = base / "work"
    work.mkdir()
    cfg = {
        "instruments": {"demo_small": {"raw": [str(night / "raw")]}},
        "reference_catalog": {"source": "file", "file": str(night / "truth/refcat.fits")},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    run(wf, work)
    assert planned(wf, work) == {}
    return wf, work, night, cfg


def set_config(work: Path, cfg: dict) -> None:
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))


def test_a_flat_setting_reruns_the_flats_and_what_follows_not_the_bias(reduced):
    wf, work, _, cfg = reduced
    changed = yaml.safe_load(yaml.safe_dump(cfg))
    changed["calibration"] = {"flat": {"dead_threshold": 0.4}}
    set_config(work, changed)
    try:
        jobs = planned(wf, work)
    finally:
        set_config(work, cfg)
    assert jobs == {
        "master_flat": 4, "master_qa": 1, **dict.fromkeys(PER_FRAME, 12), "frame_qa": 1,
        **COADDS, "all": 1, "total": 4 + 1 + 48 + 1 + 4 + 1,
    }  # fmt: skip


def test_editing_a_stage_script_or_its_library_reruns_that_stage_and_what_follows(reduced):
    wf, work, _, _ = reduced
    script = wf / "scripts/detect_frame.py"
    library = wf / "scripts/imred/detect.py"
    expected = {
        "detect": 12, "astrometry": 12, "photometry": 12, "frame_qa": 1, **COADDS, "all": 1,
        "total": 42,
    }  # fmt: skip
    for path in (script, library):
        original, stat = path.read_text(), path.stat()
        path.write_text(original + "\n# an edit\n")
        try:
            assert planned(wf, work) == expected, path.name
        finally:
            path.write_text(original)
            # Snakemake judges a script's code by its time stamp too: put both back
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned(wf, work) == {}


def test_new_science_frames_rerun_only_their_chain(reduced):
    wf, work, night, _ = reduced
    raw = night / "raw"
    science = sorted(raw.glob("*_0015.fits"))[0]
    added = [raw / "extra_a.fits", raw / "extra_b.fits"]
    try:
        for path in added:
            shutil.copy2(science, path)
        jobs = planned(wf, work)
    finally:
        for path in added:
            path.unlink()
    # 2 frames x 2 chips: inspected, calibrated, detected, solved, measured; the night's
    # summary and frame QA table gain rows, the coadd of their band (g) and its catalog
    # gain frames; no master, no other frame, not the other band's coadd
    assert jobs == {
        "inspect": 4, **dict.fromkeys(PER_FRAME, 4), "night_summary": 1, "frame_qa": 1,
        "coadd": 1, "coadd_catalog": 1, "all": 1, "total": 4 + 16 + 5,
    }  # fmt: skip
    # the log forgets them again: nothing left to do
    assert planned(wf, work) == {}


def test_a_coadd_setting_reruns_only_the_coadds_and_their_catalogs(reduced):
    wf, work, _, cfg = reduced
    changed = yaml.safe_load(yaml.safe_dump(cfg))
    changed["coadd"] = {"clip_sigma": 3.0}
    set_config(work, changed)
    try:
        jobs = planned(wf, work)
    finally:
        set_config(work, cfg)
    assert jobs == {**COADDS, "all": 1, "total": 5}


def test_a_deleted_intermediate_is_rebuilt_alone_and_nothing_downstream_reruns(reduced):
    """What Snakemake really does when an intermediate product is deleted.

    1. Nothing, at first: the products made from it exist and are newer than their
       inputs, so no job needs it.
    2. Asked for by name, it is rebuilt alone (its job also re-makes the frame's
       sources), byte for byte the same (imred's products are deterministic).
    3. Nothing downstream re-runs, although the file is newer than what was made from
       it: Snakemake records the checksums of inputs smaller than
       ``--max-checksum-file-size`` (default 1 MB) and treats a newer input with the
       recorded checksum as unchanged. Larger files are judged by their time stamp
       alone, so everything that reads them runs again (and gives the same bytes);
       raising the limit makes every DAG build hash every input, which costs more
       than it saves on real frames. Shown by setting the limit to 1 byte.
    """
    wf, work, _, _ = reduced
    skysub = sorted((work / "results/demo_small/20240315/skysub").glob("*_0016.c1.fits"))[0]
    saved = skysub.with_suffix(".saved")
    skysub.rename(saved)
    try:
        assert planned(wf, work) == {}
        target = str(skysub.relative_to(work))
        jobs = job_counts(run(wf, work, "--dry-run", target).stdout)
        assert jobs == {"detect": 1, "total": 1}
        run(wf, work, target)
        assert skysub.read_bytes() == saved.read_bytes()
        assert skysub.stat().st_size < 1_000_000  # under Snakemake's checksum limit
        assert planned(wf, work) == {}
        without_checksums = job_counts(
            run(wf, work, "--dry-run", "--max-checksum-file-size", "1").stdout
        )
        assert without_checksums == {
            "astrometry": 1, "photometry": 1, "frame_qa": 1, "coadd": 1, "coadd_catalog": 1,
            "all": 1, "total": 6,
        }  # fmt: skip
    finally:
        saved.replace(skysub)  # the original file, with its time stamp
    assert planned(wf, work) == {}


def test_a_run_killed_mid_way_completes_with_identical_products(reduced, tmp_path):
    """SIGKILL during the run, start again: the same bytes, no partial file left."""
    import filecmp
    import signal
    import time

    wf, work, _, cfg = reduced
    killed = tmp_path / "killed"
    killed.mkdir()
    set_config(killed, cfg)
    cmd = [
        str(BIN / "snakemake"), "--snakefile", str(wf / "Snakefile"), "--directory", str(killed),
        "--configfile", str(killed / "config.yaml"), "--cores", "2",
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen(
        cmd, cwd=killed, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    calibrated = killed / "results/demo_small/20240315/calibrated"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(calibrated.glob("*.fits"))) < 3:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job tree, mid-way
    proc.wait()
    run(wf, killed, "--unlock")
    run(wf, killed, "--rerun-incomplete")
    ours = sorted(p.relative_to(killed) for p in (killed / "results").rglob("*") if p.is_file())
    theirs = sorted(p.relative_to(work) for p in (work / "results").rglob("*") if p.is_file())
    # no temporary file of a killed job survives: the job that re-made the product
    # removed it
    assert ours == theirs
    different = [str(p) for p in ours if not filecmp.cmp(killed / p, work / p, shallow=False)]
    assert different == []
