"""Benchmark: simulate the demo night, reduce it, score it against the truth (not a test).

Prints the time of each step and the scorer's Markdown table: the table we steer by.
Run with `make bench-demo` or `python tests/benchmarks/demo_score.py [--small] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from imred.score import format_markdown, score  # noqa: E402
from imred.simulate import simulate_night  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the small night (tests' size)")
    parser.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        summary = simulate_night(
            ROOT / "config/scenarios/demo.yaml", work / "night", small=args.small
        )
        t_sim = time.perf_counter() - t0
        cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
        cfg["instruments"] = {summary["instrument"]: {"raw": [str(work / "night" / "raw")]}}
        cfg["reference_catalog"]["file"] = str(work / "night" / "truth" / "refcat.fits")
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        cmd = [
            str(Path(sys.executable).parent / "snakemake"), "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(work), "--configfile", str(work / "config.yaml"), "--cores", "2",
            "--quiet",
        ]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        t_run = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"the workflow failed:\n{proc.stderr[-4000:]}")
        t0 = time.perf_counter()
        scores = score(work, work / "night" / "truth")
        t_score = time.perf_counter() - t0
        print(f"simulate {t_sim:.1f} s, workflow {t_run:.1f} s (2 cores), score {t_score:.1f} s")
        print(format_markdown(scores))


if __name__ == "__main__":
    main()
