"""The real workflow through a real one-node SLURM cluster on this machine (needs root).

The same small raw night is reduced twice, locally (``--cores 2``) and with the SLURM
profile (``profiles/slurm``), and the products are compared byte for byte.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from slurm_cluster import LocalSlurm, SlurmUnavailableError, local_slurm_cluster

from conftest import BIN, ROOT, snakemake, write_demo_frame

pytestmark = [pytest.mark.slurm, pytest.mark.integration]

PROFILE = ROOT / "profiles" / "slurm"
NIGHT = "20260301"  # the evening of the frames' 2026-03-02 UT dates
TARGET = f"results/demo/{NIGHT}/summary.md"  # its inspections, then the summary
ACCOUNT = "imred"  # any name: without accounting, SLURM does not check accounts


@pytest.fixture
def slurm(tmp_path_factory) -> Iterator[LocalSlurm]:
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(local_slurm_cluster(tmp_path_factory.mktemp("cl")))
        except SlurmUnavailableError as err:
            pytest.skip(f"no local SLURM cluster: {err}")
        yield cluster


def raw_night(raw: Path) -> None:
    """2 science frames and a bias of one night, 2 chips each: 6 inspections (each one a
    job step of its own in the group job, a few seconds each: keep them few)."""
    for i in range(2):
        write_demo_frame(raw / f"sci.{i:04d}.fits", dateobs=f"2026-03-02T0{4 + i}:00:00")
    write_demo_frame(raw / "bias_0.fits", imagetype="BIAS", band=None, exptime=0.0, level=300.0)


def work_folder(path: Path, raw: Path) -> Path:
    path.mkdir()
    cfg = {
        "instruments": {"demo": {"raw": [str(raw)]}},
        # too few calibration frames for masters: allowed (the test builds the summary)
        "calibration": {"bias": {"allow_overscan_only": True}, "flat": {"allow_missing": True}},
    }
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return path


def products(work: Path) -> dict[str, bytes]:
    """results/**/*.json and results/**/*.md of a run, by path relative to ``work``."""
    found = sorted([*work.glob("results/**/*.json"), *work.glob("results/**/*.md")])
    return {str(p.relative_to(work)): p.read_bytes() for p in found}


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
    raw = tmp_path / "raw"
    raw_night(raw)
    local = work_folder(tmp_path / "local", raw)
    remote = work_folder(tmp_path / "remote", raw)

    snakemake(local, "--cores", "2", TARGET)

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
        TARGET,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    (tmp_path / "snakemake_slurm.log").write_text(out)

    # (1) the jobs went through SLURM: Snakemake submitted them with sbatch ...
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(job_ids) == 2, out  # the 6 inspections as one group job, then the summary
    run_id = re.search(r"SLURM run ID: (\S+)", out).group(1)
    sbatch_calls = re.findall(r"sbatch call: (.*)", out)
    assert len(sbatch_calls) == 2, out
    for call in sbatch_calls:
        assert f"-A {ACCOUNT} " in call and f"-p {slurm.partition} " in call, call
        # the job gets this environment (PATH starts with the venv's bin) and its python
        assert "--export=ALL " in call and f"{BIN}/python -m snakemake " in call, call
    # ... asked squeue (not sacct, which needs accounting) for their states ...
    assert "command=squeue" in out and "command=sacct" not in out, out
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
    assert sorted(rec["Comment"] for rec in records.values()) == [
        f"rule_night_summary_wildcards_demo_{NIGHT}",
        "rule_per_frame_inspect",
    ], records
    ctld = slurm.slurmctld_log.read_text()
    for job_id in job_ids:
        assert f"sched: Allocate JobId={job_id} NodeList={slurm.node} " in ctld, ctld[-3000:]
        assert f"_job_complete: JobId={job_id} done" in ctld, ctld[-3000:]

    # (2) the same products, byte for byte, once the work folder's path inside them is
    # replaced (the raw data are shared, so the provenance names the same inputs)
    got, want = products(remote), products(local)
    assert len(want) == 7  # 6 inspections + 1 night summary
    assert sorted(got) == sorted(want)

    def neutral(data: bytes, work: Path) -> bytes:
        return data.replace(str(work).encode(), b"<WORK>")

    differ = [n for n in want if neutral(got[n], remote) != neutral(want[n], local)]
    assert not differ, "\n".join(
        f"{n}:\n{want[n].decode()}\n---\n{got[n].decode()}" for n in differ
    )
    with_path = [n for n in want if got[n] != want[n]]
    print(
        f"SLURM jobs {', '.join(job_ids)}; SLURM run {elapsed:.0f} s; "
        f"{len(want)} products equal ({len(with_path)} only after replacing the work folder)"
    )
