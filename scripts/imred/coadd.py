"""Resample solved frames of one target and band onto a common grid and coadd them.

The inputs are sky-subtracted frames (``SCI`` in e-, ``VAR``, ``MASK``; see
:mod:`imred.frames`) with their solved WCS (TAN-SIP) and zero point (mag of 1 e-/s).
Every frame is scaled to a common zero point ``zero_point``: after scaling, a source
of magnitude ``m`` sums to ``10**(-0.4 (m - zero_point))`` on the coadd, whatever
the frames' exposure times, transparency or airmass. The scale of a frame is

    ``s = 10**(0.4 (zero_point - ZP_frame)) / EXPTIME``

Grid (:func:`coadd_grid`): a TAN projection, north up and east left, centred on the
frames' footprints, at the frames' median pixel scale (or the configured one), just
large enough to hold every frame. Both methods resample onto exactly this grid.

Methods (``method``):

``swarp`` (default)
    The ``SWarp`` binary (name from ``tools.swarp``) with ``config/astromatic/imred.swarp``:
    LANCZOS3 resampling, weights ``1/VAR`` (0 on masked pixels), ``FLXSCALE`` per frame,
    ``COMBINE_TYPE CLIPPED``. SWarp does not read SIP distortion, so each frame is
    handed over with its WCS converted, exactly, to the TPV convention
    (:func:`tpv_header`).
``reproject``
    ``reproject.reproject_interp`` (bilinear by default) of ``SCI`` and ``VAR``, masked
    pixels as NaN (an output pixel touching one gets no value from that frame), then
    the same clipping rule as SWarp's ``CLIPPED`` (:func:`clipped_mean`).

Both write the coadd ``SCI`` (scaled counts), its ``VAR`` (``1 / sum of weights``, the
per-pixel variance of the inputs carried through resampling: interpolation smooths
the noise of single pixels, but the variance of a sum over an aperture is what
``VAR`` says), the weight ``WHT = 1/VAR`` (0 where nothing contributes), the
exposure map ``EXP`` (seconds of exposure contributing to each pixel) and ``MASK``
(NO_DATA where the weight is 0, SATURATED where a frame was saturated).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales

from .astrometry import read_wcs, wcs_header
from .errors import ImredError
from .mask import UNUSABLE, Bit
from .products import read_image_product
from .targets import mean_direction

ASTROMATIC_DIR = Path(__file__).resolve().parents[2] / "config" / "astromatic"
METHODS = ("swarp", "reproject")


@dataclass
class CoaddInput:
    """One solved frame x chip going into a coadd."""

    label: str  # "frame.chip", for messages and headers
    skysub: str  # path of the sky-subtracted product (SCI, VAR, MASK)
    wcs: WCS  # solved WCS of the chip's grid, pixel_shape set
    zero_point: float  # mag of 1 e-/s
    exptime: float  # s


@dataclass
class CoaddResult:
    sci: np.ndarray
    var: np.ndarray
    weight: np.ndarray
    exposure: np.ndarray
    mask: np.ndarray
    wcs: WCS


def flux_scale(zero_point: float, exptime: float, common_zero_point: float) -> float:
    """The factor that brings a frame in e- to the coadd's common zero point."""
    return float(10 ** (0.4 * (common_zero_point - zero_point)) / exptime)


def _edge_pixels(shape_xy: tuple[int, int], n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (0-based) along the outer edge of a grid of (nx, ny) pixels."""
    nx, ny = shape_xy
    tx = np.linspace(-0.5, nx - 0.5, n)
    ty = np.linspace(-0.5, ny - 0.5, n)
    x = np.concatenate([tx, tx, np.full(n, -0.5), np.full(n, nx - 0.5)])
    y = np.concatenate([np.full(n, -0.5), np.full(n, ny - 0.5), ty, ty])
    return x, y


def _tan_wcs(ra: float, dec: float, scale_deg: float, crpix=(1.0, 1.0)) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = list(crpix)
    w.wcs.cd = np.array([[-scale_deg, 0.0], [0.0, scale_deg]])
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def pixel_scale_arcsec(wcs: WCS) -> float:
    return float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs.celestial)))) * 3600.0


def coadd_grid(
    wcss: Sequence[WCS],
    *,
    pixel_scale: float | None = None,
    centre: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
) -> WCS:
    """The common grid of a coadd (see the module docstring); ``pixel_shape`` is set.

    ``pixel_scale`` in arcsec (default: the median of the frames'), ``centre`` (ra, dec)
    in degrees and ``size`` (nx, ny) in pixels (default: to hold every frame).
    """
    if not wcss:
        raise ImredError("coadd grid: no frames")
    ra, dec = [], []
    for w in wcss:
        if w.pixel_shape is None:
            raise ImredError("coadd grid: a frame WCS has no image size (IMAGEW/IMAGEH)")
        r, d = w.all_pix2world(*_edge_pixels(w.pixel_shape), 0)
        ra.append(r)
        dec.append(d)
    ra, dec = np.concatenate(ra), np.concatenate(dec)
    scale = pixel_scale or float(np.median([pixel_scale_arcsec(w) for w in wcss]))
    scale_deg = scale / 3600.0
    if centre is None:
        # the centre of the footprints' bounding box in a tangent plane at their mean
        mean = mean_direction(ra, dec)
        plane = _tan_wcs(*mean, scale_deg)
        x, y = plane.wcs_world2pix(ra, dec, 0)
        centre = tuple(
            float(c)
            for c in plane.wcs_pix2world((x.min() + x.max()) / 2, (y.min() + y.max()) / 2, 0)
        )
    grid = _tan_wcs(centre[0], centre[1], scale_deg)
    if size is None:
        x, y = grid.wcs_world2pix(ra, dec, 0)
        half_x = float(np.max(np.abs(x))) + 1.0
        half_y = float(np.max(np.abs(y))) + 1.0
        size = (int(np.ceil(2 * half_x)) + 1, int(np.ceil(2 * half_y)) + 1)
    nx, ny = int(size[0]), int(size[1])
    grid.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    grid.wcs.set()
    grid.pixel_shape = (nx, ny)
    return grid


# TPV: PV1_k multiplies the k-th term of (1, x, y, r, x^2, xy, y^2, x^3, x^2y, xy^2, y^3,
# r^3, x^4, ...); PV2_k the same with x and y swapped. The first index of each degree:
_TPV_START = {0: 0, 1: 1, 2: 4, 3: 7, 4: 12, 5: 17, 6: 24, 7: 31}


def tpv_header(wcs: WCS) -> fits.Header:
    """The celestial WCS as TPV header cards (CD + PV), the form SWarp and SCAMP read.

    A TAN-SIP WCS becomes TPV exactly: SIP adds a polynomial in pixel offsets before
    the CD matrix, TPV a polynomial in the CD-transformed offsets after it, and a
    linear change of variables keeps a polynomial's degree. The coefficients are a
    least-squares fit on a grid over the image (exact to rounding; tested).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        lin = wcs.celestial.deepcopy()
    lin.sip = None
    header = wcs_header(lin)
    cd = np.array([[header[f"CD{i}_{j}"] for j in (1, 2)] for i in (1, 2)])
    header["CTYPE1"], header["CTYPE2"] = "RA---TPV", "DEC--TPV"
    order = 1 if wcs.sip is None else max(int(wcs.sip.a_order), int(wcs.sip.b_order))
    if order > 7:
        raise ImredError(f"SIP order {order} has no TPV equivalent (TPV stops at 7)")
    nx, ny = wcs.pixel_shape or (2 * lin.wcs.crpix[0], 2 * lin.wcs.crpix[1])
    gx, gy = np.meshgrid(np.linspace(0, nx - 1, 24), np.linspace(0, ny - 1, 24))
    gx, gy = gx.ravel(), gy.ravel()
    ra, dec = wcs.celestial.all_pix2world(gx, gy, 0)
    # gnomonic (xi, eta) in degrees: a TAN plane at CRVAL with an identity CD matrix
    plane = _tan_wcs(float(lin.wcs.crval[0]), float(lin.wcs.crval[1]), 1.0)
    plane.wcs.cd = np.eye(2)
    plane.wcs.set()
    xi, eta = plane.wcs_world2pix(ra, dec, 1)
    xi, eta = xi - 1.0, eta - 1.0
    u = gx + 1 - lin.wcs.crpix[0]
    v = gy + 1 - lin.wcs.crpix[1]
    x, y = cd @ np.vstack([u, v])
    for axis, (p, q, target) in enumerate(((x, y, xi), (y, x, eta)), start=1):
        columns, index = [], []
        for d in range(order + 1):
            for j in range(d + 1):
                columns.append(p ** (d - j) * q**j)
                index.append(_TPV_START[d] + j)
        coeffs, *_ = np.linalg.lstsq(np.column_stack(columns), target, rcond=None)
        for k, c in zip(index, coeffs, strict=True):
            header[f"PV{axis}_{k}"] = float(c)
    return header


def _good_pixels(p: dict) -> np.ndarray:
    sci, var, mask = p["SCI"], p["VAR"], p["MASK"]
    return (
        ((mask & np.uint16(int(UNUSABLE))) == 0) & np.isfinite(sci) & np.isfinite(var) & (var > 0)
    )


def _bbox_on_grid(wcs: WCS, grid: WCS) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) of the part of the grid a frame covers (None if none)."""
    ra, dec = wcs.all_pix2world(*_edge_pixels(wcs.pixel_shape), 0)
    x, y = grid.wcs_world2pix(ra, dec, 0)
    nx, ny = grid.pixel_shape
    x0, x1 = max(int(np.floor(x.min())) - 2, 0), min(int(np.ceil(x.max())) + 3, nx)
    y0, y1 = max(int(np.floor(y.min())) - 2, 0), min(int(np.ceil(y.max())) + 3, ny)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _resample(wcs: WCS, grid: WCS, box, images: np.ndarray, order: str) -> np.ndarray:
    """``images`` (k, ny, nx) of one frame on the grid's ``box`` with reproject (k, y, x)."""
    from reproject import reproject_interp

    y0, y1, x0, x1 = box
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        # no round-trip check of the coordinates: the box is the frame's footprint, where
        # the WCS inverts cleanly; the check doubles the time
        out = reproject_interp(
            (images, wcs), grid[y0:y1, x0:x1], shape_out=(y1 - y0, x1 - x0), order=order,
            return_footprint=False, roundtrip_coords=False,
        )  # fmt: skip
    return np.asarray(out, dtype=np.float32)


def _nearest_pixels(wcs: WCS, grid: WCS, box) -> tuple[np.ndarray, np.ndarray]:
    """Index (row, column) of the frame pixel nearest each pixel of the grid's ``box``.

    Our own mapping rather than reproject's: it is computed once and serves every map
    of the frame (reproject recomputes it per call, through the slower high-level
    coordinate API: 2.8 s against 0.8 s for a 1024^2 frame here).
    """
    y0, y1, x0, x1 = box
    yy, xx = np.mgrid[y0:y1, x0:x1]
    ra, dec = grid.wcs_pix2world(xx, yy, 0)
    px, py = wcs.all_world2pix(ra, dec, 0)
    return np.rint(py).astype(np.int64), np.rint(px).astype(np.int64)


def _scaled_frame(p: dict, inp: CoaddInput, common_zero_point: float, grid_scale: float):
    """SCI and VAR of a frame scaled to the common zero point (and pixel area), NaN where bad."""
    good = _good_pixels(p)
    s = flux_scale(inp.zero_point, inp.exptime, common_zero_point)
    s *= (grid_scale / pixel_scale_arcsec(inp.wcs)) ** 2  # flux per pixel follows its area
    sci = np.where(good, p["SCI"].astype(np.float64) * s, np.nan)
    var = np.where(good, p["VAR"].astype(np.float64) * s * s, np.nan)
    return sci, var


class _Maps:
    """The exposure map (seconds of exposure with a usable pixel at each grid pixel) and
    where any frame was saturated, both from the nearest input pixel; filled frame by
    frame while each is read for the coadd."""

    def __init__(self, grid: WCS):
        nx, ny = grid.pixel_shape
        self.grid = grid
        self.exposure = np.zeros((ny, nx), np.float32)
        self.saturated = np.zeros((ny, nx), bool)

    def add(self, p: dict, inp: CoaddInput, box) -> None:
        good = _good_pixels(p)
        sat = (p["MASK"] & np.uint16(int(Bit.SATURATED))) != 0
        iy, ix = _nearest_pixels(inp.wcs, self.grid, box)
        inside = (iy >= 0) & (ix >= 0) & (iy < good.shape[0]) & (ix < good.shape[1])
        iy, ix = np.where(inside, iy, 0), np.where(inside, ix, 0)
        y0, y1, x0, x1 = box
        seconds = np.where(inside & good[iy, ix], inp.exptime, 0.0)
        self.exposure[y0:y1, x0:x1] += seconds.astype(np.float32)
        self.saturated[y0:y1, x0:x1] |= inside & sat[iy, ix]


def clipped_mean(
    values: np.ndarray, variances: np.ndarray, clip_sigma: float, clip_ampfrac: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-variance mean over axis 0 after rejecting outliers from the median.

    ``values``/``variances`` are (n, ...) with NaN where a frame has no pixel. With at
    least 3 values, a value is rejected when it differs from the median by more than
    ``sqrt(clip_sigma**2 var + (clip_ampfrac median)**2)`` (SWarp's CLIPPED rule: the
    second term spares star cores, whose peaks change with seeing). Returns
    (mean, variance of the mean, number of values kept); NaN/inf/0 where none.
    """
    valid = np.isfinite(values) & np.isfinite(variances) & (variances > 0)
    n_valid = valid.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        median = np.nanmedian(np.where(valid, values, np.nan), axis=0)
    limit2 = clip_sigma**2 * variances + (clip_ampfrac * median) ** 2
    outlier = (values - median) ** 2 > limit2
    keep = valid & ~(outlier & (n_valid >= 3))
    w = np.where(keep, 1.0 / np.where(keep, variances, 1.0), 0.0)
    wsum = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(wsum > 0, (w * np.where(keep, values, 0.0)).sum(axis=0) / wsum, np.nan)
        var = np.where(wsum > 0, 1.0 / wsum, np.inf)
    return mean, var, keep.sum(axis=0)


def _coadd_reproject(inputs, grid, settings, maps: _Maps) -> tuple[np.ndarray, np.ndarray]:
    nx, ny = grid.pixel_shape
    scale = pixel_scale_arcsec(grid)
    parts = []
    for inp in inputs:
        box = _bbox_on_grid(inp.wcs, grid)
        if box is None:
            continue
        p = read_image_product(inp.skysub)
        maps.add(p, inp, box)
        sci, var = _scaled_frame(p, inp, settings["zero_point"], scale)
        parts.append(
            (box, *_resample(inp.wcs, grid, box, np.stack([sci, var]), settings["reproject_order"]))
        )
    sci_out = np.zeros((ny, nx), np.float32)
    var_out = np.full((ny, nx), np.inf, np.float32)
    rows = max(1, int(4e6 // max(nx * max(len(parts), 1), 1)))  # ~4M values per tile
    for r0 in range(0, ny, rows):
        r1 = min(r0 + rows, ny)
        stack_v = np.full((len(parts), r1 - r0, nx), np.nan, np.float32)
        stack_var = np.full((len(parts), r1 - r0, nx), np.nan, np.float32)
        for i, ((y0, y1, x0, x1), s, v) in enumerate(parts):
            a, b = max(y0, r0), min(y1, r1)
            if a >= b:
                continue
            stack_v[i, a - r0 : b - r0, x0:x1] = s[a - y0 : b - y0]
            stack_var[i, a - r0 : b - r0, x0:x1] = v[a - y0 : b - y0]
        mean, var, _ = clipped_mean(
            stack_v, stack_var, settings["clip_sigma"], settings["clip_ampfrac"]
        )
        sci_out[r0:r1] = np.nan_to_num(mean)
        var_out[r0:r1] = var
    return sci_out, var_out


def _coadd_swarp(
    inputs, grid, settings, maps: _Maps, binary: str, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    exe = shutil.which(binary)
    if exe is None:
        raise ImredError(
            f"SWarp not found: tools.swarp is '{binary}' (Debian: SWarp, package swarp; "
            "conda-forge: swarp). Install it, set tools.swarp, or set coadd.method: reproject"
        )
    conf = ASTROMATIC_DIR / "imred.swarp"
    with tempfile.TemporaryDirectory(prefix="imred-swarp-") as tmp:
        tmp = Path(tmp)
        images, weights = [], []
        for i, inp in enumerate(inputs):
            p = read_image_product(inp.skysub)
            box = _bbox_on_grid(inp.wcs, grid)
            if box is not None:
                maps.add(p, inp, box)
            good = _good_pixels(p)
            header = tpv_header(inp.wcs)
            header["FLXSCALE"] = flux_scale(inp.zero_point, inp.exptime, settings["zero_point"])
            header["EXPTIME"] = inp.exptime
            # VAR already holds the sources' Poisson noise: an "infinite" gain keeps SWarp
            # from adding it again. Not 0, SWarp's word for infinite: in CLIPPED
            # combination a gain of 0 makes the clipping limit infinite
            # (astromatic/swarp issue 29), so nothing would be rejected
            header["GAIN"] = 1e30
            sci = np.where(good, p["SCI"], 0.0).astype(np.float32)
            with np.errstate(divide="ignore"):
                wht = np.where(good, 1.0 / np.where(good, p["VAR"], 1.0), 0.0).astype(np.float32)
            img, wfile = tmp / f"in{i:04d}.fits", tmp / f"in{i:04d}.weight.fits"
            fits.PrimaryHDU(sci, header=header).writeto(img)
            fits.PrimaryHDU(wht, header=header).writeto(wfile)
            images.append(img.name)
            weights.append(wfile.name)
        (tmp / "images.lis").write_text("\n".join(images) + "\n")
        out = tmp / "coadd.fits"
        nx, ny = grid.pixel_shape
        head = fits.Header([("NAXIS", 2), ("NAXIS1", nx), ("NAXIS2", ny)])
        head.extend(wcs_header(grid))
        (tmp / "coadd.head").write_text("\n".join(c.image.rstrip() for c in head.cards) + "\nEND\n")
        cmd = [
            exe, "@images.lis", "-c", str(conf),
            "-IMAGEOUT_NAME", out.name, "-WEIGHTOUT_NAME", "coadd.weight.fits",
            "-WEIGHT_IMAGE", ",".join(weights),
            "-COMBINE_TYPE", "CLIPPED", "-CLIP_SIGMA", str(settings["clip_sigma"]),
            "-CLIP_AMPFRAC", str(settings["clip_ampfrac"]),
            "-RESAMPLING_TYPE", settings["swarp_resampling"],
            "-RESAMPLE_DIR", ".", "-VMEM_DIR", ".", "-NTHREADS", str(max(1, threads)),
        ]  # fmt: skip
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ImredError(f"SWarp failed (exit {proc.returncode}): " + " | ".join(tail))
        sci = fits.getdata(out).astype(np.float32)
        weight = fits.getdata(tmp / "coadd.weight.fits").astype(np.float64)
        out_head = fits.getheader(out)
    nx, ny = grid.pixel_shape
    if sci.shape != (ny, nx) or abs(out_head["CRPIX1"] - grid.wcs.crpix[0]) > 1e-6:
        raise ImredError("SWarp did not write the requested grid (coadd.head was ignored)")
    # SWarp's output weight is in the units of its input weights after flux scaling
    # (1/VAR scaled by 1/FLXSCALE^2), i.e. the inverse variance of the coadd; the pixel
    # area factor of FSCALASTRO_TYPE FIXED is 1 when the scales agree
    with np.errstate(divide="ignore"):
        var = np.where(weight > 0, 1.0 / weight, np.inf).astype(np.float32)
    return sci, var


def coadd_frames(
    inputs: Sequence[CoaddInput],
    settings: dict,
    *,
    grid: WCS | None = None,
    swarp: str = "SWarp",
    threads: int = 1,
) -> CoaddResult:
    """Coadd frames of one target and band (see the module docstring).

    ``settings``: ``method`` (swarp|reproject), ``zero_point``, ``clip_sigma``,
    ``clip_ampfrac``, ``swarp_resampling``, ``reproject_order``, ``pixel_scale_arcsec``
    (None: the frames'). ``grid``: the output grid (default :func:`coadd_grid`).
    """
    if not inputs:
        raise ImredError("nothing to coadd: no frame with a solved WCS and a zero point")
    method = settings["method"]
    if method not in METHODS:
        raise ImredError(f"coadd.method '{method}' is not one of {', '.join(METHODS)}")
    if grid is None:
        grid = coadd_grid([i.wcs for i in inputs], pixel_scale=settings.get("pixel_scale_arcsec"))
    maps = _Maps(grid)
    if method == "swarp":
        sci, var = _coadd_swarp(inputs, grid, settings, maps, swarp, threads)
    else:
        sci, var = _coadd_reproject(inputs, grid, settings, maps)
    with np.errstate(divide="ignore"):
        weight = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0).astype(np.float32)
    no_data = weight <= 0
    mask = np.where(no_data, np.uint16(int(Bit.NO_DATA)), np.uint16(0)).astype(np.uint16)
    mask |= np.where(maps.saturated, np.uint16(int(Bit.SATURATED)), np.uint16(0)).astype(np.uint16)
    sci = np.where(no_data, 0.0, sci).astype(np.float32)
    var = np.where(no_data, 0.0, var).astype(np.float32)
    return CoaddResult(sci, var, weight, maps.exposure, mask, grid)


# ------------------------------------------------------------------ file layer
def select_inputs(
    members: Sequence[dict], max_zero_point_offset: float | None = None
) -> tuple[list[CoaddInput], list[tuple[str, str]]]:
    """The frames a coadd can use, and (label, reason) for those it cannot.

    ``members``: per frame x chip ``label``, ``skysub``, ``wcs`` (the frame WCS
    product), ``zp`` (the zero-point JSON) and ``exptime``. A frame is left out when
    its astrometry or zero point failed, or (``max_zero_point_offset``) when its zero
    point is that many magnitudes below the best of the stack (thick cloud).
    """
    import json

    usable, excluded = [], []
    for m in members:
        head = fits.getheader(m["wcs"])
        if not head.get("ASTOK", False):
            excluded.append((m["label"], f"no astrometric solution ({head.get('ASTREAS', '')})"))
            continue
        with open(m["zp"]) as fh:
            zp = json.load(fh)
        value = zp.get("zero_point")
        if not zp.get("ok") or value is None or not np.isfinite(value):
            excluded.append((m["label"], f"no zero point ({zp.get('reason', '')})"))
            continue
        usable.append(
            CoaddInput(
                m["label"], m["skysub"], read_wcs(m["wcs"]), float(value), float(m["exptime"])
            )
        )
    if usable and max_zero_point_offset is not None:
        best = max(i.zero_point for i in usable)
        keep = []
        for i in usable:
            if i.zero_point < best - max_zero_point_offset:
                excluded.append(
                    (
                        i.label,
                        f"zero point {i.zero_point:.2f} is more than {max_zero_point_offset} mag below the best ({best:.2f})",
                    )
                )
            else:
                keep.append(i)
        usable = keep
    return usable, excluded


def coadd_header(result: CoaddResult, inputs, excluded, settings: dict, what: dict) -> fits.Header:
    """The coadd's primary header: what it is, its zero point, what went in and what not."""
    from .products import provenance_cards

    header = fits.Header()
    header["IMRTYPE"] = ("COADD", "imred product type")
    header["INSTRUME"] = (what["instrument"], "imred instrument")
    header["NIGHT"] = (what["night"], "night (YYYYMMDD of the evening)")
    header["TARGET"] = (what["target"], "target (frames grouped by pointing)")
    header["BAND"] = (what["band"], "band")
    header["COADDZP"] = (settings["zero_point"], "mag = COADDZP - 2.5 log10(flux in SCI units)")
    header["NCOMBINE"] = (len(inputs), "frames x chips combined")
    header["EXPTOTAL"] = (float(result.exposure.max()), "[s] largest exposure of any pixel")
    header["COADDMET"] = (settings["method"], "resampling and combination")
    for key, value, comment in provenance_cards(
        settings=settings, inputs=[i.skysub for i in inputs]
    ):
        header[key] = (value, comment)
    for n, (label, reason) in enumerate(excluded, start=1):
        header[f"IMRX{n}"] = f"{label}: {reason}"
    return header


def coadd_catalog(coadd_path: str, refcat, mag_column: str | None, settings: dict):
    """Detect and measure the sources of a coadd and calibrate them against the catalog.

    The zero point is measured on the coadd (aperture of ``photometry.aperture_fwhm``
    FWHM, as for frames); where that fails (no catalog stars) the coadd's nominal
    ``COADDZP`` is used and ``ZPSOURCE`` says so. Magnitudes are aperture magnitudes in
    the same aperture. Returns the catalog Table (see imred.paths for its columns).
    """
    from astropy.table import Table

    from .detect import detect_sources, estimate_background, frame_qa
    from .photometry import aperture_photometry, frame_zero_point

    p = read_image_product(coadd_path)
    sci, var, mask = p["SCI"], p["VAR"], p["MASK"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(p["SCI_header"], naxis=2)
    scale = pixel_scale_arcsec(wcs)
    bkg_set, det = settings["background"], settings["detection"]
    bkg = estimate_background(
        sci, mask, box=bkg_set["box"], filter_size=bkg_set["filter_size"], mask_objects=True
    )
    catalog = detect_sources(
        sci, var, mask, bkg, method=det["method"], threshold=det["threshold"], minarea=det["minarea"],
        aperture_radii_px=[r / scale for r in det["aperture_radii_arcsec"]], pixel_scale_arcsec=scale,
        sextractor={"binary": settings["tools"]["sextractor"]} if det["method"] == "sextractor" else None,
    )  # fmt: skip
    qa = frame_qa(catalog, bkg, scale)
    data = sci - bkg.level
    phot = settings["photometry"]
    nominal = float(p["header"]["COADDZP"])
    zp = {"ok": False, "reason": "no catalog magnitude for this band"}
    if mag_column:
        zp = frame_zero_point(
            data, var, mask, wcs, refcat, mag_column, exptime=1.0, fwhm_px=float(qa["fwhm_px"]),
            aperture_fwhm=phot["aperture_fwhm"], min_snr=phot["min_snr"],
        )  # fmt: skip
    radius = zp.get("aperture_px") or phot["aperture_fwhm"] * float(qa["fwhm_px"])
    x, y = np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    flux, err, bad = aperture_photometry(data, var, mask, x, y, radius) if len(x) else ([], [], [])
    flux, err = np.asarray(flux, float), np.asarray(err, float)
    zero = zp["zero_point"] if zp.get("ok") else nominal
    out = Table()
    ra, dec = wcs.all_pix2world(x, y, 0)
    out["ra"], out["dec"] = ra, dec
    with np.errstate(divide="ignore", invalid="ignore"):
        out["mag"] = np.where(flux > 0, zero - 2.5 * np.log10(flux), np.nan)
        out["mag_err"] = np.where(flux > 0, 1.0857 * err / flux, np.nan)
        kron = np.asarray(catalog["flux"], float)
        out["mag_auto"] = np.where(kron > 0, zero - 2.5 * np.log10(kron), np.nan)
    out["x"], out["y"] = x, y
    out["flux"], out["flux_err"] = flux, err
    out["flags"] = np.asarray(catalog["flags"]) | np.where(np.asarray(bad, bool), 16, 0)
    out["snr"] = np.where(err > 0, flux / np.where(err > 0, err, 1), np.nan)
    out["fwhm_px"] = catalog["fwhm_px"]
    out["exposure"] = p["EXP"][np.clip(np.rint(y).astype(int), 0, sci.shape[0] - 1),
                               np.clip(np.rint(x).astype(int), 0, sci.shape[1] - 1)] if len(x) else []  # fmt: skip
    out.meta.update(
        {
            "ZP": float(zero),
            "ZPERR": float(zp["zero_point_err"]) if zp.get("ok") else None,
            "ZPNSTAR": int(zp.get("n_stars", 0)),
            "ZPSOURCE": "catalog" if zp.get("ok") else f"nominal COADDZP ({zp.get('reason', '')})",
            "COADDZP": nominal,
            "APERPX": float(radius),
            "FWHM": float(qa["fwhm_arcsec"]) if np.isfinite(qa["fwhm_arcsec"]) else None,
            "NSOURCE": len(out),
        }
    )
    return out
