"""Benchmark: per-frame calibration against plain numpy doing the same arithmetic (not a test).

Uses the demo night (run `make demo` first): one science frame x chip and its masters.
Times, best of 3: (1) plain numpy + astropy: read the raw chip and the masters, overscan
median, bias, dark, gain, flat, variance; (2) imred's calibration of the same frame
without cosmic rays; (3) with cosmic rays (L.A.Cosmic). Prints a table.
`python tests/benchmarks/calibrate.py`
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from imred.masters import build_calibrated  # noqa: E402
from imred.obslog import read_obslog  # noqa: E402
from imred.run import Run  # noqa: E402


def plain_numpy(raw_path, ext, masters, gain, rn, t):
    with fits.open(raw_path, memmap=False) as h:
        raw = h[ext].data.astype(np.float32)
    bias = fits.getdata(masters["bias"], "SCI")
    dark = fits.getdata(masters["dark"], "SCI")
    flat = fits.getdata(masters["flat"], "SCI")
    data = raw[:, :1024] - np.median(raw[:, 1028:])
    e = (data - bias) * gain - dark * t
    sci = e / flat
    var = (np.maximum(e + dark * t, 0) + rn**2) / flat**2
    return sci, var


def best(fn, n=3):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    import os

    os.chdir(ROOT)
    run = Run({"instruments": {"demo": {"raw": ["data/demo/raw"]}}})
    row = run.science_rows("demo")[0]
    masters = run.frame_masters("demo", row["night"], row["frame"], row["chip"])
    missing = [p for p in masters.values() if not Path(p).exists()]
    if missing:
        sys.exit(f"run `make demo` first: {missing[0]} is missing")
    rows, _ = read_obslog("results/demo/obslog.tsv")
    row = next(r for r in rows if r["frame"] == row["frame"] and r["chip"] == row["chip"])
    chip = {k: v for k, v in vars(run.instruments["demo"].chip(row["chip"])).items()}
    settings = run.config["calibration"]
    nl = {"nonlinearity": run.instruments["demo"].detector.get("nonlinearity")}
    t_np = best(lambda: plain_numpy(row["path"], row["extension"], masters, row["gain"],
                                    row["read_noise"], row["exptime"]))  # fmt: skip
    no_cr = settings | {"cosmic_rays": settings["cosmic_rays"] | {"enabled": False}}
    t_im = best(lambda: build_calibrated(row, chip, no_cr, nl, masters))
    t_cr = best(lambda: build_calibrated(row, chip, settings, nl, masters), n=1)
    print(f"frame {row['frame']} chip {row['chip']} ({row['nx']}x{row['ny']}), best of 3")
    print(f"{'what':<48} {'seconds':>8} {'x numpy':>8}")
    print(f"{'plain numpy (read, overscan, bias, dark, flat, var)':<48} {t_np:>8.3f} {1:>8.2f}")
    print(f"{'imred calibration, no cosmic rays':<48} {t_im:>8.3f} {t_im / t_np:>8.2f}")
    print(f"{'imred calibration with L.A.Cosmic (1 run)':<48} {t_cr:>8.3f} {t_cr / t_np:>8.2f}")


if __name__ == "__main__":
    main()
