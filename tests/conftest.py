"""Shared fixtures: small synthetic raw frames written in the demo camera's conventions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
CAFOS = SHARED_DATA / "cafos_ngc2420"
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run snakemake on imred's Snakefile in ``workdir`` (its config.yaml)."""
    cmd = [
        SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
        "--configfile", str(workdir / "config.yaml"), "--cores", "1", *args,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry-run, as {rule: count}."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("Job stats:"))
    for ln in lines[start + 3 :]:
        m = re.match(r"^(\S+)\s+(\d+)$", ln.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def write_demo_frame(
    path: Path,
    *,
    imagetype: str = "OBJECT",
    band: str | None = "g",
    exptime: float | None = 60.0,
    dateobs: str = "2026-03-02T04:00:00",
    target: str = "FIELD1",
    ra: str = "10:00:00.0",
    dec: str = "+20:00:00",
    shape: tuple[int, int] = (8, 10),
    level: float = 1000.0,
    chips: tuple[str, ...] = ("CCD1", "CCD2"),
    drop: tuple[str, ...] = (),
) -> Path:
    """A tiny multi-extension raw frame of the demo camera (keywords as it writes them)."""
    primary = fits.PrimaryHDU()
    h = primary.header
    h["IMAGETYP"] = imagetype
    if band is not None:
        h["FILTER"] = band
    if exptime is not None:
        h["EXPTIME"] = exptime
    h["DATE-OBS"] = dateobs
    h["OBJECT"] = target
    h["RA"] = ra
    h["DEC"] = dec
    h["CCDSUM"] = "1 1"
    for key in drop:
        del h[key]
    hdus = [primary]
    for i, name in enumerate(chips):
        data = np.full(shape, level + 10 * i, dtype=np.float32)
        ext = fits.ImageHDU(data.astype(np.uint16), name=name)
        ext.header["GAIN"] = 1.5 + 0.1 * i
        ext.header["RDNOISE"] = 4.5
        hdus.append(ext)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path


@pytest.fixture
def demo_frame():
    return write_demo_frame


# A test camera's site and header map (instrument files written by simulator tests)
SITE = {"name": "Kitt Peak", "longitude_deg": -111.5967, "latitude_deg": 31.9583}
HEADER = {
    "imagetype": {
        "keyword": "IMAGETYP",
        "required": True,
        "map": {"bias": "bias", "dark": "dark", "flat": "flat", "object": "science"},
    },
    "band": {"keyword": "FILTER"},
    "exptime": {"keyword": "EXPTIME", "format": "float", "required": True},
    "dateobs": {"keyword": "DATE-OBS", "format": "isot", "required": True},
    "target": {"keyword": "OBJECT"},
    "ra": {"keyword": "RA", "format": "degrees"},
    "dec": {"keyword": "DEC", "format": "degrees"},
}


def write_test_camera(folder: Path, name: str, chips: list[dict], pixel_scale: float = 0.4) -> Path:
    """An instrument file for a test camera (SITE, HEADER, a CCD): its path."""
    doc = {
        "name": name,
        "site": SITE,
        "files": {"patterns": ["*.fits"]},
        "detector": {"kind": "ccd", "saturation": 60000, "gain": 1.5, "read_noise": 4.0},
        "pixel_scale": pixel_scale,
        "header": HEADER,
        "chips": chips,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path
