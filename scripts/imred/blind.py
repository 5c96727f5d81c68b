"""Blind astrometry with astrometry.net's ``solve-field`` (``astrometry.blind``).

:func:`solve_field` finds a chip's WCS from its detections alone (no pointing needed):
the usable sources (saturated ones included: Tycho-2 stars are often saturated, and
their centroids are good enough for the index's quads; see :data:`BLIND_FLAG_MASK`)
are written as an xylist (a FITS table ``X``, ``Y`` 1-based, ``FLUX``) and
``solve-field`` runs on it in a temporary folder::

    solve-field xy.fits --x-column X --y-column Y --sort-column FLUX
        --width NX --height NY --scale-units arcsecperpix --scale-low S(1-t)
        --scale-high S(1+t) --crpix-center --tweak-order N --cpulimit C
        --no-plots --overwrite --no-remove-lines --dir TMP --temp-dir TMP

(no ``--ra``/``--dec``: a frame whose match failed may have a wrong pointing, and an
all-sky search with the Tycho-2 index files took 0.5-1 s for a 1.2 deg field in the
tests), and its ``.wcs`` (TAN-SIP, CRPIX at the chip centre) is read with
:func:`imred.astrometry.read_wcs`. ``--no-verify`` is not used: it only makes
solve-field ignore a WCS already in an input *image*, and an xylist has none.
``--no-remove-lines`` because the detections are already cleaned of bad columns by the
mask. The caller refines the result with ``match_and_fit`` against the reference
catalog (the blind WCS is only good to about an arcsecond).

Index files and the field size
------------------------------
solve-field reads ``/etc/astrometry.cfg`` (Debian: ``add_path /usr/share/astrometry``,
``autoindex``), where Debian's ``astrometry-data-tycho2-*`` packages put
``index-tycho2-NN.littleendian.fits``. Index NN is built from quads of stars of a given
size (08: 30'-44', 09: 44'-60', 10 to 19: 60' and more); a quad must fit in the
image, so with the 08-19 files fields smaller than about half a degree do not solve.
A chip whose larger side is below ``min_field_deg`` is not tried: the reason says
"field too small for the index files" (index 07, 22'-30', or the 4100/5200 series reach
smaller fields).

solve-field runs Debian's ``/usr/bin/python3`` for some steps; the environment it gets
has no ``PYTHONPATH``/``PYTHONHOME``/``VIRTUAL_ENV`` and ``/usr/bin`` first in
``PATH`` (the venv's ``bin`` removed), so the venv's numpy and astropy do not leak in.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from .astrometry import _column, read_wcs, usable_sources
from .detect import Flag
from .errors import ImredError

__all__ = [
    "BLIND_FLAG_MASK",
    "TOO_SMALL",
    "field_size_deg",
    "solve_field",
    "solve_field_environment",
]

#: source flags that keep a source out of the xylist: EDGE, OVERFLOW, MEASUREMENT (not
#: SATURATED and MASKED: the bright stars of the index are often saturated)
BLIND_FLAG_MASK = int(Flag.EDGE | Flag.OVERFLOW | Flag.MEASUREMENT)

#: start of the reason when a chip is too small for the index files
TOO_SMALL = "field too small for the index files"


def field_size_deg(shape: tuple[int, int], pixel_scale_arcsec: float) -> float:
    """The larger side of a chip of ``shape`` (ny, nx) at ``pixel_scale_arcsec``, degrees."""
    return max(int(shape[0]), int(shape[1])) * float(pixel_scale_arcsec) / 3600.0


def solve_field_environment() -> dict[str, str]:
    """The environment for solve-field: this one without the venv, ``/usr/bin`` first."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    }
    venv_bins = set()
    if sys.prefix != sys.base_prefix:
        venv_bins.add(str(Path(sys.prefix) / "bin"))
    if os.environ.get("VIRTUAL_ENV"):
        venv_bins.add(str(Path(os.environ["VIRTUAL_ENV"]) / "bin"))
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in venv_bins]
    env["PATH"] = os.pathsep.join(["/usr/bin", *[p for p in parts if p != "/usr/bin"]])
    return env


def solve_field(
    sources: Table,
    shape: tuple[int, int],
    pixel_scale_arcsec: float,
    *,
    binary: str = "solve-field",
    min_field_deg: float = 0.4,
    scale_tolerance: float = 0.1,
    tweak_order: int = 2,
    cpulimit_s: float = 60.0,
    max_sources: int = 500,
    flag_mask: int = BLIND_FLAG_MASK,
) -> tuple[WCS | None, str]:
    """Blind-solve one chip from its detections with astrometry.net's solve-field.

    Parameters
    ----------
    sources : Table
        Detections: ``x``, ``y`` (0-based), optionally ``flux`` (brightest are tried
        first) and ``flags`` (rows with ``flags & flag_mask`` are left out).
    shape : (ny, nx)
        The chip's grid.
    pixel_scale_arcsec : float
        Expected scale (arcsec per pixel of this grid, binning included); solve-field
        searches within ``scale_tolerance`` of it.
    binary : str
        The solve-field program (setting ``tools.solve_field``).
    min_field_deg : float
        Chips whose larger side is smaller are not tried (setting
        ``astrometry.blind_min_field_deg``).
    tweak_order : int
        SIP order solve-field fits (``--tweak-order``).
    cpulimit_s : float
        solve-field gives up after this much CPU time (``--cpulimit``).
    max_sources : int
        At most this many of the brightest sources are written.

    Returns
    -------
    (WCS or None, str)
        The blind WCS (TAN-SIP, ``pixel_shape`` set) and ``""``; or None and the
        reason (field too small, too few sources, no solution, solve-field failed).

    Raises
    ------
    ImredError
        solve-field (``binary``) is not installed.
    """
    ny, nx = (int(n) for n in shape)
    size = field_size_deg(shape, pixel_scale_arcsec)
    if size < min_field_deg:
        return None, (
            f"{TOO_SMALL}: the chip spans {size:.3g} deg, less than "
            f"astrometry.blind_min_field_deg = {min_field_deg:g} deg (the Tycho-2 index files "
            "08-19 need fields of about 0.5 deg)"
        )
    program = shutil.which(binary)
    if program is None:
        raise ImredError(
            f"solve-field binary {binary!r} not found on PATH (setting tools.solve_field): "
            "install astrometry.net and its index files (Debian: apt install astrometry.net "
            "astrometry-data-tycho2) or set tools.solve_field, or astrometry.blind: never"
        )
    rows, _ = usable_sources(sources, 0, flag_mask)
    if len(rows) < 5:
        return None, f"too few usable sources for blind solving ({len(rows)})"
    x, y = _column(sources, "x", None), _column(sources, "y", None)
    flux = _column(sources, "flux", None) if "flux" in sources.colnames else np.ones(len(x))
    flux = np.where(np.isfinite(flux), flux, -np.inf)
    rows = rows[np.argsort(-flux[rows], kind="stable")][:max_sources]
    xylist = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="X", format="D", array=x[rows] + 1.0),
            fits.Column(name="Y", format="D", array=y[rows] + 1.0),
            fits.Column(name="FLUX", format="D", array=np.maximum(flux[rows], 0.0)),
        ]
    )
    with tempfile.TemporaryDirectory(prefix="imred-blind-") as tmp:
        tmp = Path(tmp)
        xylist.writeto(tmp / "xy.fits")
        command = [
            program, str(tmp / "xy.fits"),
            "--x-column", "X", "--y-column", "Y", "--sort-column", "FLUX",
            "--width", str(nx), "--height", str(ny),
            "--scale-units", "arcsecperpix",
            "--scale-low", f"{pixel_scale_arcsec * (1.0 - scale_tolerance):.6g}",
            "--scale-high", f"{pixel_scale_arcsec * (1.0 + scale_tolerance):.6g}",
            "--crpix-center", "--tweak-order", str(int(tweak_order)),
            "--cpulimit", f"{cpulimit_s:g}",
            "--no-plots", "--overwrite", "--no-remove-lines",
            "--dir", str(tmp), "--temp-dir", str(tmp), "--out", "field",
            "--new-fits", "none", "--index-xyls", "none", "--rdls", "none",
            "--match", "none", "--corr", "none",
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                command,
                cwd=tmp,
                capture_output=True,
                env=solve_field_environment(),
                timeout=cpulimit_s * 3 + 60,
            )
        except subprocess.TimeoutExpired:
            return None, f"solve-field did not finish within {cpulimit_s * 3 + 60:g} s"
        output = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
        wcs_path = tmp / "field.wcs"
        if "at least one index" in output:
            return None, (
                "solve-field found no index files: install them (Debian: apt install "
                "astrometry-data-tycho2) or list their folder in /etc/astrometry.cfg"
            )
        if proc.returncode != 0:
            tail = " | ".join(line.strip() for line in output.strip().splitlines()[-3:])
            return None, f"solve-field failed (exit {proc.returncode}): {tail}"
        if not wcs_path.is_file():
            return None, (
                f"solve-field found no solution ({len(rows)} sources, scale "
                f"{pixel_scale_arcsec:.3g} arcsec/px +- {100 * scale_tolerance:g} %, "
                f"cpulimit {cpulimit_s:g} s)"
            )
        wcs = read_wcs(wcs_path)
    wcs.pixel_shape = (nx, ny)
    return wcs, ""
