"""Benchmark: per-frame calibration against plain numpy doing the same arithmetic (not a test).

Uses the demo night (run `make demo` first): one science frame x chip and its masters.
`python tests/benchmarks/calibrate.py [--repeat N]`

Each line is the best of N runs (round robin, so that a load on a shared machine hits
every line alike) of the wall time and, separately, of the CPU time of this process
(``time.process_time``: user + system, all threads). Ratios are of CPU times.

- plain numpy, like for like: reads the raw chip and the masters' SCI, UNC and MASK
  (astropy), subtracts the overscan median (imred: a 3-sigma clipped median), corrects
  the non-linearity polynomial, subtracts bias and dark, applies gain and flat, makes
  the variance imred makes (read noise, Poisson, the masters' uncertainties) and the
  mask (the masters' bits, saturated, non-linear, not finite). The goal (issue #4) is
  imred's calibration within 3x of this.
- plain numpy, the issue's first version: the masters' SCI only; variance Poisson +
  read noise; no non-linearity, no mask. Less work than imred does: shown for reference.
- imred ``build_calibrated`` without cosmic rays: read, calibrate, header. Its header
  names each master with a BLAKE2b hash of the file (``provenance_cards``), which reads
  and hashes the three masters again: that is timed on its own, and imred is also timed
  with it skipped (``file_checksum`` patched out; plain numpy hashes nothing).
- writing the product (SCI, VAR, MASK, FITS checksums; ``write_image_product``), which
  plain numpy does not do; and the rule's whole job, build + write.
- the cosmic-ray step (L.A.Cosmic, astroscrappy): build with it minus build without.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from imred import products  # noqa: E402
from imred.masters import build_calibrated  # noqa: E402
from imred.obslog import read_obslog  # noqa: E402
from imred.run import Run  # noqa: E402
from imred.sections import parse_section  # noqa: E402


def plain_numpy_minimal(raw_path, ext, masters, gain, rn, t):
    """The issue's first comparison: less than imred does (see the module docstring)."""
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


def plain_numpy(raw_path, ext, masters, gain, rn, t, saturation, sections, nonlinearity):
    """imred's per-frame arithmetic, written the plain way (see the module docstring)."""
    (rows, cols), (orows, ocols) = sections
    with fits.open(raw_path, memmap=False) as h:
        raw = h[ext].data.astype(np.float32)
    m = {}
    for kind in ("bias", "dark", "flat"):
        with fits.open(masters[kind]) as h:
            m[kind] = [h[name].data for name in ("SCI", "UNC", "MASK")]
    (bias, bias_unc, bias_mask), (dark, dark_unc, dark_mask), (flat, flat_unc, flat_mask) = (
        m["bias"],
        m["dark"],
        m["flat"],
    )
    saturated = raw[rows, cols] >= saturation
    data = raw[rows, cols] - np.median(raw[orows, ocols])
    nonlinear = np.zeros(data.shape, bool)
    if nonlinearity:  # data x (c0 + c1 data + c2 data^2 + ...), in float32 (np.polyval: float64)
        coeffs = [float(c) for c in nonlinearity["polynomial"]]
        factor = coeffs[-1]
        for c in coeffs[-2::-1]:
            factor = factor * data + c
        nonlinear = data > nonlinearity["max_adu"]
        data = data * factor
    collected = (data - bias) * gain
    e = collected - dark * t
    sci = e / flat
    var = (rn**2 + (bias_unc * gain) ** 2 + np.maximum(collected, 0) + (dark_unc * t) ** 2) / (
        flat**2
    ) + (sci * flat_unc / flat) ** 2
    mask = bias_mask | dark_mask | flat_mask
    mask[saturated] |= 8
    mask[nonlinear] |= 16
    mask[~(np.isfinite(sci) & np.isfinite(var))] |= 64
    return sci, var, mask


def measure(jobs: dict, repeat: int) -> dict:
    """Best wall and best CPU time (s) of each job, over ``repeat`` round-robin runs."""
    for fn in jobs.values():  # warm up: imports, file cache
        fn()
    best = {name: [np.inf, np.inf] for name in jobs}
    for _ in range(repeat):
        for name, fn in jobs.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            w, c = time.perf_counter() - w, time.process_time() - c
            best[name] = [min(best[name][0], w), min(best[name][1], c)]
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", "-n", type=int, default=10, help="runs per line (best of)")
    parser.add_argument("--cr-repeat", type=int, default=3, help="runs with cosmic rays")
    args = parser.parse_args()

    os.chdir(ROOT)
    run = Run({"instruments": {"demo": {"raw": ["data/demo/raw"]}}})
    row = run.science_rows("demo")[0]
    masters = run.frame_masters("demo", row["night"], row["frame"], row["chip"])
    missing = [p for p in masters.values() if not Path(p).exists()]
    if missing:
        sys.exit(f"run `make demo` first: {missing[0]} is missing")
    rows, _ = read_obslog("results/demo/obslog.tsv")
    row = next(r for r in rows if r["frame"] == row["frame"] and r["chip"] == row["chip"])
    chip_spec = run.instruments["demo"].chip(row["chip"])
    chip = dict(vars(chip_spec))
    settings = run.config["calibration"]
    detector = run.instruments["demo"].detector
    nl = {"nonlinearity": detector.get("nonlinearity")}
    (amp,) = chip_spec.amplifiers  # the plain version knows the demo chip: one amplifier
    sections = (parse_section(chip_spec.datasec), parse_section(amp["overscan"]))
    args_np = (row["path"], row["extension"], masters, row["gain"], row["read_noise"])
    no_cr = settings | {"cosmic_rays": settings["cosmic_rays"] | {"enabled": False}}

    tmp = tempfile.TemporaryDirectory(prefix="imred-bench-")
    out = Path(tmp.name) / "calibrated.fits"
    cal, header = build_calibrated(row, chip, no_cr, nl, masters)

    def no_hashes():
        with mock.patch.object(products, "file_checksum", lambda path: "0" * 16):
            build_calibrated(row, chip, no_cr, nl, masters)

    def write():
        products.write_image_product(
            out, header, cal.sci, var=cal.var, mask=cal.mask, unit="electron"
        )

    def job():  # the calibrate rule's work (scripts/calibrate.py)
        c, h = build_calibrated(row, chip, no_cr, nl, masters)
        products.write_image_product(out, h, c.sci, var=c.var, mask=c.mask, unit="electron")

    jobs = {
        "np": lambda: plain_numpy(
            *args_np,
            row["exptime"],
            float(row["saturation"]),
            sections,
            detector.get("nonlinearity"),
        ),
        "np_min": lambda: plain_numpy_minimal(*args_np, row["exptime"]),
        "imred": lambda: build_calibrated(row, chip, no_cr, nl, masters),
        "imred_nohash": no_hashes,
        "hashes": lambda: [products.file_checksum(p) for p in masters.values()],
        "write": write,
        "job": job,
    }
    best = measure(jobs, args.repeat)
    cr = measure({"cr": lambda: build_calibrated(row, chip, settings, nl, masters)}, args.cr_repeat)
    tmp.cleanup()

    ref, ref_min = best["np"][1], best["np_min"][1]
    lines = [
        ("plain numpy, like for like (the reference)", best["np"]),
        ("plain numpy, the issue's first version", best["np_min"]),
        ("imred, no cosmic rays (build_calibrated)", best["imred"]),
        ("  of which: BLAKE2b of the 3 masters", best["hashes"]),
        ("imred, no cosmic rays, master hashes skipped", best["imred_nohash"]),
        ("writing the product (SCI/VAR/MASK+checksums)", best["write"]),
        ("the rule's job: build + write, no cosmic rays", best["job"]),
        ("imred with L.A.Cosmic (build_calibrated)", cr["cr"]),
        (
            "  of which: cosmic rays (with - without)",
            [cr["cr"][0] - best["imred"][0], cr["cr"][1] - best["imred"][1]],
        ),
    ]
    print(
        f"frame {row['frame']} chip {row['chip']} ({row['nx']}x{row['ny']}); best of "
        f"{args.repeat} ({args.cr_repeat} with cosmic rays); load average "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    print("ratios: CPU time (time.process_time) over plain numpy's CPU time")
    print(f"{'what':<47} {'wall s':>7} {'CPU s':>7} {'x numpy':>8} {'x first':>8}")
    for name, (wall, cpu) in lines:
        print(f"{name:<47} {wall:>7.3f} {cpu:>7.3f} {cpu / ref:>8.2f} {cpu / ref_min:>8.2f}")
    print(
        "goal (issue #4): imred's calibration without cosmic rays within 3x of plain numpy, "
        f"CPU time, like for like: {best['imred'][1] / ref:.2f}x "
        f"({best['imred_nohash'][1] / ref:.2f}x without the master hashes)"
    )


if __name__ == "__main__":
    main()
