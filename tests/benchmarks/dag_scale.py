"""Benchmark: how long `snakemake --dry-run` takes as a night grows (not a test).

For N frames x 4 chips (N = 250, 1000, 2000 by default) it writes placeholder raw
files and an up-to-date observation log for a 4-chip camera, then times a full
`snakemake -n` process (start-up, config validation, log check, DAG) and, apart,
the parse-time work of imred itself (building the Run: log check + wildcard
constraints). Prints a table; run with `make bench-dag` or
`python tests/benchmarks/dag_scale.py [N ...]`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from imred.instrument import load_instrument  # noqa: E402
from imred.obslog import write_obslog  # noqa: E402
from imred.run import Run  # noqa: E402


def make_night(work: Path, n_frames: int) -> None:
    doc = yaml.safe_load((ROOT / "config/instruments/demo.yaml").read_text())
    doc["name"] = "bench4"
    doc["chips"] = [
        {**doc["chips"][0], "name": f"c{i + 1}", "extension": f"CCD{i + 1}"} for i in range(4)
    ]
    inst_file = work / "bench4.yaml"
    inst_file.write_text(yaml.safe_dump(doc))
    inst = load_instrument(inst_file)
    raw = work / "raw"
    raw.mkdir()
    rows = []
    for i in range(n_frames):
        path = raw / f"frame{i:05d}.fits"
        path.write_bytes(b"placeholder")
        st = path.stat()
        # 10 % biases, 10 % flats, the rest science: every stage of the workflow has jobs
        kind = {0: "bias", 1: "flat"}.get(i % 10, "science")
        for c in range(4):
            rows.append({
                "frame": path.stem, "path": str(path), "extension": f"CCD{c + 1}",
                "instrument": "bench4", "chip": f"c{c + 1}", "imagetype": kind,
                "band": None if kind == "bias" else "gr"[(i // 10) % 2], "exptime": 60.0,
                "binning": "1x1", "readout_mode": "normal", "dateobs": "2026-03-02T04:00:00",
                "mjd": 61101.1667, "night": "20260301", "target": "F1", "ra": 150.0,
                "dec": 20.0, "airmass": 1.1, "gain": 1.5, "read_noise": 4.5,
                "saturation": 60000.0, "nx": 1056, "ny": 1024, "use": "yes", "reason": "",
                "file_bytes": st.st_size, "file_mtime": f"{st.st_mtime:.6f}",
            })  # fmt: skip
    os.chdir(work)
    write_obslog(rows, work / "results/bench4/obslog.tsv", inst)
    cfg = {"instruments": {"bench4": {"raw": [str(raw)], "instrument_file": str(inst_file)}}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))


def _count_jobs(output: str) -> int:
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return -1


def main(sizes: list[int]) -> None:
    bin_dir = Path(sys.executable).parent
    print(f"{'frames':>7} {'jobs':>7} {'snakemake -n (s)':>17} {'imred Run (s)':>14} {'ms/job':>7}")
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            make_night(work, n)
            cfg = yaml.safe_load((work / "config.yaml").read_text())
            t0 = time.perf_counter()
            run = Run(cfg)
            run.wildcard_constraints()
            t_run = time.perf_counter() - t0
            assert len(run.rows["bench4"]) == 4 * n
            cmd = [
                str(bin_dir / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
                "--directory", str(work), "--configfile", str(work / "config.yaml"),
                "--cores", "1", "--dry-run", "--quiet", "rules",
            ]  # fmt: skip
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            t_dry = time.perf_counter() - t0
            if proc.returncode != 0:
                sys.exit(f"snakemake failed for N={n}:\n{proc.stderr[-3000:]}")
            jobs = _count_jobs(proc.stdout)
            print(f"{n:>7} {jobs:>7} {t_dry:>17.1f} {t_run:>14.2f} {1000 * t_dry / jobs:>7.2f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [250, 1000, 2000])
