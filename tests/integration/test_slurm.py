"""The real workflow through a real one-node SLURM cluster on this machine (needs root).

The small simulated demo night is reduced twice, end to end (masters, calibrated
frames, astrometry, zero points, coadds and catalogs), locally (``--cores 2``) and with
the SLURM profile (``profiles/slurm``), and every product is compared: text products
byte for byte, FITS products card by card and pixel by pixel (their CHECKSUM cards
aside, which differ only with the folder's name inside provenance paths).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from slurm_cluster import LocalSlurm, SlurmUnavailableError, local_slurm_cluster

from conftest import BIN, ROOT, snakemake

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

PROFILE = ROOT / "profiles" / "slurm"
NIGHT = "20240315"  # the small demo night (config/scenarios/demo.yaml --small)
ACCOUNT = "imred"  # any name: without accounting, SLURM does not check accounts


@pytest.fixture
def slurm(tmp_path_factory) -> Iterator[LocalSlurm]:
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(local_slurm_cluster(tmp_path_factory.mktemp("cl")))
        except SlurmUnavailableError as err:
            pytest.skip(f"no local SLURM cluster: {err}")
        yield cluster


def raw_night(folder: Path) -> Path:
    """The small demo night (20 raw files of 2 chips: 94 jobs), and its reference catalog."""
    from imred.simulate import simulate_night

    simulate_night(ROOT / "config/scenarios/demo.yaml", folder, small=True)
    return folder


def work_folder(path: Path, night: Path) -> Path:
    path.mkdir()
    cfg = {
        "instruments": {"demo_small": {"raw": [str(night / "raw")]}},
        "reference_catalog": {"source": "file", "file": str(night / "truth/refcat.fits")},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


def products(work: Path) -> dict[str, Path]:
    """Every file under results/, by path relative to ``work``."""
    return {str(p.relative_to(work)): p for p in sorted(work.glob("results/**/*")) if p.is_file()}


def same_product(a: Path, b: Path, work_a: Path, work_b: Path) -> bool:
    """Equal content once each work folder's path is neutral (FITS: cards and pixels)."""

    def neutral(text: str, work: Path) -> str:
        return text.replace(str(work), "<WORK>")

    if a.suffix != ".fits":
        return neutral(a.read_text(), work_a) == neutral(b.read_text(), work_b)
    with fits.open(a) as ha, fits.open(b) as hb:
        if len(ha) != len(hb):
            return False
        for x, y in zip(ha, hb, strict=True):
            cards = [
                [(c.keyword, neutral(str(c.value), w)) for c in h.header.cards
                 if c.keyword not in ("CHECKSUM", "DATASUM")]
                for h, w in ((x, work_a), (y, work_b))
            ]  # fmt: skip
            if cards[0] != cards[1]:
                return False
            if x.data is None or y.data is None:
                if x.data is not y.data:
                    return False
            elif isinstance(x, fits.BinTableHDU):
                if x.data.tobytes() != y.data.tobytes():
                    return False
            elif not np.array_equal(x.data, y.data, equal_nan=x.data.dtype.kind == "f"):
                return False
    return True


def job_record(slurm: LocalSlurm, job_id: str) -> dict[str, str]:
    """``scontrol show job`` as {field: value} (finished jobs stay MinJobAge seconds)."""
    return dict(re.findall(r"(\w+)=(\S*)", slurm.run("scontrol", "show", "job", job_id)))


def default_resources(**override: str) -> list[str]:
    """The profile's default resources with some replaced (the command line replaces the
    profile's whole list, so pass all of them)."""
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    res = {**profile["default-resources"], **override}
    return [f"{k}={v}" for k, v in res.items()]


def test_workflow_through_slurm_matches_local_run(tmp_path, slurm):
    night = raw_night(tmp_path / "night")
    # the same length for both folder names: provenance paths wrap alike in FITS headers
    local = work_folder(tmp_path / "local_", night)
    remote = work_folder(tmp_path / "remote", night)

    snakemake(local, "--cores", "2")

    t0 = time.monotonic()
    proc = snakemake(
        remote,
        "--profile", str(PROFILE),
        "--default-resources",
        *default_resources(slurm_account=ACCOUNT, slurm_partition=slurm.partition),
        "--cores", "2",
        "--slurm-init-seconds-before-status-checks", "2",
        "--slurm-keep-successful-logs",
        "--verbose",
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    (tmp_path / "snakemake_slurm.log").write_text(out)

    # (1) the jobs went through SLURM: Snakemake submitted them with sbatch ...
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    sbatch_calls = re.findall(r"sbatch call: (.*)", out)
    assert len(job_ids) == len(sbatch_calls) >= 10, out[-3000:]
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    for call in sbatch_calls:
        assert f"-A {ACCOUNT} " in call and f"-p {slurm.partition} " in call, call
        # the job gets this environment (PATH starts with the venv's bin) and its python
        assert "--export=ALL " in call and f"{BIN}/python -m snakemake " in call, call
    # ... asked squeue (not sacct, which needs accounting) for their states ...
    assert "command=squeue" in out and "command=sacct" not in out, out[-3000:]
    # ... kept one log per job under .snakemake/slurm_logs, named by the SLURM job id ...
    logs = sorted((remote / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert sorted(p.stem for p in logs) == sorted(job_ids), logs
    # ... and SLURM ran them, on this node, in the partition, in the work folder.
    records = {job_id: job_record(slurm, job_id) for job_id in job_ids}
    for rec in records.values():
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", rec
        assert rec["Partition"] == slurm.partition and rec["NodeList"] == slurm.node, rec
        assert rec["JobName"] == run_id and rec["Account"] == ACCOUNT, rec
        assert rec["WorkDir"] == str(remote), rec
    comments = " ".join(rec["Comment"] for rec in records.values())
    # every stage ran on the cluster, small per-frame jobs in groups; the catalog
    # download is a local rule (compute nodes may have no network)
    for rule in ("master_bias", "master_flat", "coadd", "coadd_catalog", "per_frame"):
        assert f"rule_{rule}" in comments, comments
    assert "reference_catalog" not in comments, comments
    ctld = slurm.slurmctld_log.read_text()
    for job_id in job_ids:
        # started by the main scheduler or by the backfill scheduler (with many jobs)
        started = (
            f"sched: Allocate JobId={job_id} NodeList={slurm.node} ",
            f"sched/backfill: _start_job: Started JobId={job_id} in {slurm.partition} "
            f"on {slurm.node}\n",
        )
        assert any(line in ctld for line in started), ctld[-3000:]
        assert f"_job_complete: JobId={job_id} done" in ctld, ctld[-3000:]

    # (2) the same products: every file of the local run, equal in content
    got, want = products(remote), products(local)
    assert len(want) > 100  # masters, calibrated, sky-subtracted, catalogs, coadds, QA
    assert sorted(got) == sorted(want)
    differ = [n for n in want if not same_product(want[n], got[n], local, remote)]
    assert not differ, differ
    print(
        f"SLURM: {len(job_ids)} jobs ({sum(1 for _ in re.finditer('rule_', comments))} "
        f"rule tags), {elapsed:.0f} s; {len(want)} products equal"
    )
