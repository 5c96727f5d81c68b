"""Benchmark: the SWarp and reproject coadd paths on the same inputs (asserts nothing).

Writes N_FRAMES dithered sky-subtracted frames (SIZE x SIZE, 0.4"/px, TAN-SIP WCS,
Gaussian stars of known magnitude, sky noise, a bad column and masked pixels) to a
temporary folder, then runs ``imred.coadd.coadd_frames`` once per method, each in a
fresh subprocess, and prints per method: wall and CPU seconds (the subprocess and its
children: SWarp), the peak resident memory of the Python worker (``VmHWM``) and of the
largest child (``ru_maxrss`` of the children: SWarp), and what came out: the median
and spread of (coadd flux / true flux) of isolated bright stars, and the rms of
blank-sky aperture sums over the square root of the summed VAR.

Run with ``python tests/benchmarks/coadd.py [N_FRAMES] [SIZE]`` (defaults 8 2048).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

SCALE, SIGMA, ZP_COMMON = 0.4, 1.7, 25.0
RA0, DEC0 = 150.0, 20.0


def frame_wcs(size, dx, dy, rot) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [RA0 + dx / 3600 / np.cos(np.radians(DEC0)), DEC0 + dy / 3600]
    w.wcs.crpix = [size / 2 + 0.5, size / 2 + 0.5]
    t, s = np.radians(rot), SCALE / 3600
    w.wcs.cd = s * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[2, 0], b[0, 2] = 2e-7 * 1024 / size, 2e-7 * 1024 / size
    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.set()
    w.pixel_shape = (size, size)
    return w


def make_inputs(folder: Path, n_frames: int, size: int):
    from imred.products import write_image_product

    rng = np.random.default_rng(3)
    half = size * SCALE / 2
    gx, gy = np.meshgrid(
        np.arange(-half + 20, half - 20, 12.0), np.arange(-half + 20, half - 20, 12.0)
    )
    n = gx.size
    ra = RA0 + (gx.ravel() + rng.uniform(-2, 2, n)) / 3600 / np.cos(np.radians(DEC0))
    dec = DEC0 + (gy.ravel() + rng.uniform(-2, 2, n)) / 3600
    mag = rng.uniform(16.0, 21.0, n)
    members = []
    r = np.arange(-8, 9)
    for i in range(n_frames):
        dx, dy = rng.uniform(-40, 40, 2)
        w = frame_wcs(size, dx, dy, rng.uniform(-0.2, 0.2))
        zp, t = 25.5 - rng.uniform(0, 0.3), 60.0 * (1 + i % 2)
        x, y = w.all_world2pix(ra, dec, 0)
        model = np.zeros((size, size))
        flux = t * 10 ** (-0.4 * (mag - zp))
        for xs, ys, f in zip(x, y, flux, strict=True):
            ix, iy = round(xs), round(ys)
            if not (8 <= ix < size - 8 and 8 <= iy < size - 8):
                continue
            px = np.exp(-0.5 * ((ix + r - xs) / SIGMA) ** 2)
            py = np.exp(-0.5 * ((iy + r - ys) / SIGMA) ** 2)
            model[iy - 8 : iy + 9, ix - 8 : ix + 9] += f * np.outer(py, px) / (px.sum() * py.sum())
        var = 100.0 + model
        sci = (model + rng.normal(0, np.sqrt(var))).astype(np.float32)
        mask = np.zeros((size, size), np.uint16)
        mask[:, size // 3] = 1
        path = folder / f"f{i}.fits"
        write_image_product(path, fits.Header({"EXPTIME": t}), sci, var=var, mask=mask)
        members.append(
            {"path": str(path), "header": w.to_header(relax=True).tostring(), "zp": zp, "t": t}
        )
    truth = {"ra": ra.tolist(), "dec": dec.tolist(), "mag": mag.tolist(), "size": size}
    (folder / "inputs.json").write_text(json.dumps({"members": members, "truth": truth}))


WORKER = r"""
import json, sys, time, resource
sys.path.insert(0, sys.argv[3])
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from imred.coadd import CoaddInput, coadd_frames
spec = json.load(open(sys.argv[1]))
size = spec["truth"]["size"]
inputs = []
for m in spec["members"]:
    w = WCS(fits.Header.fromstring(m["header"]))
    w.pixel_shape = (size, size)
    inputs.append(CoaddInput(m["path"], m["path"], w, m["zp"], m["t"]))
settings = {"method": sys.argv[2], "zero_point": 25.0, "clip_sigma": 4.0, "clip_ampfrac": 0.3,
            "swarp_resampling": "LANCZOS3", "reproject_order": "bilinear", "pixel_scale_arcsec": None}
t0 = time.perf_counter()
res = coadd_frames(inputs, settings, swarp="SWarp", threads=2)
wall = time.perf_counter() - t0
t = spec["truth"]
x, y = res.wcs.all_world2pix(np.array(t["ra"]), np.array(t["dec"]), 0)
ny, nx = res.sci.shape
ratios = []
full = res.exposure.max()
for xi, yi, m in zip(x, y, t["mag"]):
    ix, iy = int(round(xi)), int(round(yi))
    if not (12 <= ix < nx - 12 and 12 <= iy < ny - 12) or m > 19 or res.exposure[iy, ix] < full:
        continue
    yy, xx = np.mgrid[iy - 12:iy + 13, ix - 12:ix + 13]
    ap = (xx - xi) ** 2 + (yy - yi) ** 2 <= (5 * 1.7) ** 2
    if res.mask[iy - 12:iy + 13, ix - 12:ix + 13][ap].any():
        continue
    ratios.append(res.sci[iy - 12:iy + 13, ix - 12:ix + 13][ap].sum() / 10 ** (-0.4 * (m - 25.0)))
rng = np.random.default_rng(0)
z = []
for _ in range(3000):
    cx, cy = rng.integers(10, nx - 10), rng.integers(10, ny - 10)
    if np.min((x - cx) ** 2 + (y - cy) ** 2) < 15 ** 2 or res.exposure[cy, cx] < full:
        continue
    s = res.sci[cy - 2:cy + 3, cx - 2:cx + 3]
    v = res.var[cy - 2:cy + 3, cx - 2:cx + 3]
    if (res.mask[cy - 2:cy + 3, cx - 2:cx + 3] != 0).any():
        continue
    z.append(s.sum() / np.sqrt(v.sum()))
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"wall": wall, "hwm_mb": hwm / 1024, "child_mb": child / 1024,
                  "flux_ratio_median": float(np.median(ratios)), "flux_ratio_rms": float(np.std(ratios)),
                  "n_stars": len(ratios), "noise_ratio": float(np.std(z)), "shape": [nx, ny]}))
"""


def main() -> None:
    n_frames = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 2048
    with tempfile.TemporaryDirectory(prefix="imred-bench-coadd-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        make_inputs(folder, n_frames, size)
        print(
            f"inputs: {n_frames} frames of {size}x{size} made in {time.perf_counter() - t0:.1f} s"
        )
        print(
            f"{'method':10s} {'wall s':>7s} {'cpu s':>7s} {'worker MB':>10s} {'child MB':>9s} "
            f"{'flux ratio':>11s} {'rms':>7s} {'noise/VAR':>9s} grid"
        )
        for method in ("swarp", "reproject"):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", WORKER, str(folder / "inputs.json"), method, str(ROOT / "scripts")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{method:10s} {wall:7.1f} {cpu:7.1f} {r['hwm_mb']:10.0f} {r['child_mb']:9.0f} "
                f"{r['flux_ratio_median']:11.4f} {r['flux_ratio_rms']:7.4f} {r['noise_ratio']:9.3f} "
                f"{r['shape'][0]}x{r['shape'][1]} (coadd call {r['wall']:.1f} s, {r['n_stars']} stars)"
            )


if __name__ == "__main__":
    main()
