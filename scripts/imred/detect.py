"""Sky background, source detection and measurement on calibrated frames.

Three steps, each a pure function on in-memory arrays:

- :func:`estimate_background` - the sky level and noise maps (a :class:`Background`);
- :func:`detect_sources` - detection above the per-pixel noise and the measurement of
  every source (an :class:`astropy.table.Table`, columns below), with ``sep`` or with
  the ``source-extractor`` binary (which also writes the FITS_LDAC catalog SCAMP reads);
- :func:`frame_qa` - the frame's seeing, ellipticity, sky and source count for the QA
  table.

Conventions
-----------
Arrays are ``(ny, nx)``: ``SCI`` in electrons, ``VAR`` its variance (e-^2, *all* noise:
read noise, the Poisson noise of sky and sources, calibration errors) and ``MASK`` the
uint16 bitmask of :mod:`imred.mask` (0 is good). Pixels with a bit of
:data:`imred.mask.UNUSABLE` set, or a non-finite ``SCI``/``VAR``, or ``VAR <= 0`` are
*bad*: they take no part in the background, in aperture sums or in the PSF fit. For
*detection* only, SATURATED and NONLINEAR pixels with finite values are kept (they are
real, bright charge: masking them would punch holes in the cores of bright stars and
break them into rings of fragments); every other bad pixel is masked, so a masked
cosmic ray never makes a source. Pixel coordinates are 0-based, the centre of the first
pixel is ``(0, 0)``; ``x`` runs along the second (fast) axis.

Background
----------
Per mesh of ``box`` x ``box`` pixels, SExtractor's statistics on the usable pixels
(``photutils.Background2D`` with ``SExtractorBackground``: 3-sigma clipping, then the
mode ``2.5 median - 1.5 mean``, or the median where the distribution is too skewed;
``StdBackgroundRMS`` for the noise). A mesh with less than ``min_good_fraction`` of
its pixels usable is filled by inverse-distance weighting from the others. Our own
steps follow: a ``filter_size`` x ``filter_size`` median filter over the meshes,
applied to the residuals from a least-squares plane (then added back), and a
not-a-knot cubic spline through the mesh centres, extrapolated to the frame's edges.
A linear sky gradient is therefore reproduced exactly up to the edges (photutils'
own filter truncates its window at the border and shifts the border meshes of a
gradient by up to one mesh step). With ``mask_objects`` a first estimate is
subtracted, objects are detected at ``nsigma`` times its rms map over ``npixels``
connected pixels (sep, the 3x3 filter of detection), their footprints dilated by a
disk of radius ``dilate`` pixels are masked, and the background is estimated again.

Why photutils and not ``sep.Background`` (the same estimator, in C, ~20x faster):
sep, like SExtractor, drops every mesh with less than half of its pixels usable, so
in a crowded field the dilated object mask empties most meshes and cannot be used;
photutils keeps a mesh down to ``min_good_fraction``. On a 512x512 test field with
2000 stars the object-masked level is 0.25 % high with photutils; with sep the object
mask had to be dropped in most meshes, leaving it 1.3 % high (1.1 % without object
masking). It costs ~0.6 s for a 1024x1024 frame. The mode of a Poisson sky lies
~0.5 e- below its mean (~0.1 % of a 500 e- sky): SExtractor's estimator has the same
offset, and of mode, median and mean it is the one least lifted by faint unresolved
stars.

Detection and measurement
-------------------------
Detection runs on ``SCI - background.level`` convolved with SExtractor's 3x3
``default.conv`` kernel (normalised), against a threshold of ``threshold`` times
``sqrt(VAR)`` of each pixel (SExtractor's convention: sep's ``filter_type="conv"``;
the filtered noise is ~0.4 of the pixel noise, so 1.5 is ~4 sigma of the filtered
image), ``minarea`` connected pixels, deblending (32 levels, ``deblend_cont``) and
cleaning. Measurements, for both methods:

- ``x``, ``y``: windowed centroids (``sep.winpos`` / SExtractor ``XWIN_IMAGE - 1``),
  Gaussian window of sigma ``2 flux_radius / 2.35``; where the windowed centroid
  fails, the isophotal barycentre with the MEASUREMENT flag. ``x_err``, ``y_err``: 1-sigma
  error of the isophotal barycentre (from ``VAR``).
- ``flux``, ``flux_err``: Kron (``FLUX_AUTO``) flux: an ellipse of ``max(2.5 r_kron,
  3.5)`` times ``(a, b)`` (``kron_radius`` is ``r_kron``, in units of ``a``, measured
  within ``6 a``). Like the apertures it sums all the light in it, neighbours
  included (SExtractor with ``MASK_TYPE NONE``): blends are flagged, not corrected.
- ``flux_aper_{i}``, ``fluxerr_aper_{i}``: circular aperture of radius
  ``aperture_radii_px[i]`` (pixels, not diameters) at ``(x, y)``, 5x5 sub-pixels, bad
  pixels replaced by the aperture's mean (sep) or by the pixel symmetric about the
  centre (SExtractor). Errors are ``sqrt(sum VAR)``: ``VAR`` already holds the
  sources' Poisson noise, so no gain term is added.
- ``flux_radius`` (half-light radius of ``flux``), ``a``, ``b`` (isophotal rms
  semi-axes, px), ``theta`` (deg, counter-clockwise from +x, in (-90, 90]),
  ``ellipticity = 1 - b / a``, ``peak`` (highest background-subtracted pixel, e-),
  ``npix`` (isophotal area, px), ``snr = flux / flux_err``.
- ``fwhm_px``: FWHM of a circular Moffat profile ``(1 + r^2/alpha^2)^-beta`` (flux,
  centre, ``alpha`` and ``beta`` free) fitted by weighted least squares (1/VAR) to a
  square stamp reaching ~1.5 FWHM from the source (first guess: 1.8 times the median
  half-light radius of the S/N > 10 sources), the model integrated over each pixel
  (2x2-point Gauss-Legendre): the FWHM of the PSF *before* pixel sampling, as a
  seeing monitor quotes it, ``2 alpha sqrt(2^(1/beta) - 1)``. Bad pixels and other
  objects' pixels (segmentation map) are left out. NaN for sources with ``snr < 3`` or
  where the fit does not converge to a sensible profile. Why a fit: the second
  moments and the half-light radius depend on the profile; on a Moffat with ``beta =
  3`` a Gaussian-equivalent FWHM from the (untruncated) second moments is ~60 % too
  large and twice the half-light radius ~26 % too large, whereas the fit recovers
  the FWHM of Moffat stars within 1 % (0.3 % on the tests' bright stars).
- ``flags`` (normalised, the same for both methods, bits below), ``flags_extractor``
  (the native flags of the method: sep's ``OBJ_*``/``APER_*`` bits or SExtractor's
  ``FLAGS``), ``mask_bits`` (OR of the :mod:`imred.mask` bits of every pixel touching
  the largest aperture) and ``saturated`` (a SATURATED pixel touches the largest
  aperture).

=====  ===========  ================================================================
value  name         meaning
=====  ===========  ================================================================
1      NEIGHBOURS   another detection, at least 1 % as bright (``flux``), has its
                    centre inside the largest aperture
2      BLENDED      deblended from a region shared with other objects
4      SATURATED    a pixel of the largest aperture has the SATURATED mask bit
8      EDGE         the largest aperture or the object's footprint leaves the image
16     MASKED       a pixel of the largest aperture is bad (UNUSABLE bit, non-finite)
32     OVERFLOW     the extractor ran out of memory deblending or extracting it
64     MEASUREMENT  a measurement failed (windowed centroid, singular moments,
                    non-finite flux)
=====  ===========  ================================================================

Column units: pixels (``x`` ... ``flux_radius``, ``a``, ``b``, ``fwhm_px``; astropy
unit ``pix``), degrees (``theta``, ``deg``), electrons (fluxes and ``peak``, without an
astropy unit: FITS has none for electrons). ``mag_inst = -2.5 log10(flux / exptime)`` is
left to the caller. The table's ``meta`` (FITS-header ready) holds ``DETMETH`` (the
method), ``DETTHRSH``, ``DETMINAR``, ``DEBLCONT`` (threshold, minarea, deblend_cont),
``NAPER`` and ``APERRAD{i}`` (the aperture radii, px), and ``LDACPATH`` when SExtractor
kept its catalog. No source is not an error: the table is empty, with every column.

SExtractor
----------
``method="sextractor"`` runs the binary (``SExtractorOptions.binary``; Debian's
``source-extractor``, conda-forge's ``sex``) in a temporary folder on
``SCI - background.level`` (bad pixels set to 0; ``BACK_TYPE MANUAL``, ``BACK_VALUE 0``,
so both methods share :func:`estimate_background`), a ``VAR`` weight image
(``WEIGHT_TYPE MAP_VAR``, bad pixels at 1e30 above ``WEIGHT_THRESH``) and ``MASK`` as
the FLAG image (``IMAFLAGS_ISO``). The configuration is ``config/astromatic/imred.sex``
with our settings and absolute paths written over it into the temporary folder, the
output columns ``config/astromatic/imred.param`` (the aperture count filled in). The
FITS_LDAC catalog (``LDAC_IMHEAD``: the header given in the options, e.g. a first WCS
for SCAMP; ``LDAC_OBJECTS``: SExtractor's columns) is kept where
``SExtractorOptions.ldac_path`` says. The returned table is normalised like sep's;
``fwhm_px``, ``flags``, ``mask_bits`` and ``saturated`` are computed in Python for both.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import IntFlag
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits
from astropy.stats import SigmaClip
from astropy.table import Table
from astropy.utils.exceptions import AstropyWarning
from photutils.background import (
    Background2D,
    SExtractorBackground,
    StdBackgroundRMS,
)
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from scipy.spatial import cKDTree

from .errors import ImredError
from .mask import UNUSABLE, Bit

__all__ = [
    "ASTROMATIC_DIR",
    "Background",
    "Flag",
    "SExtractorOptions",
    "detect_sources",
    "estimate_background",
    "frame_qa",
]

ASTROMATIC_DIR = Path(__file__).resolve().parents[2] / "config" / "astromatic"
METHODS = ("sep", "sextractor")
DEFAULT_APERTURES_PX = (3.0, 5.0, 8.0, 12.0)


class Flag(IntFlag):
    """Normalised source flags (see the module docstring)."""

    NEIGHBOURS = 1
    BLENDED = 2
    SATURATED = 4
    EDGE = 8
    MASKED = 16
    OVERFLOW = 32
    MEASUREMENT = 64


# Kron aperture: PHOT_AUTOPARAMS 2.5, 3.5 (SExtractor's defaults); r_kron measured within 6 a.
KRON_FACTOR, KRON_MIN, KRON_RMAX = 2.5, 3.5, 6.0
NEIGHBOUR_FLUX_RATIO = 0.01
FWHM_MIN_SNR = 3.0
HALF_SIZE_FWHM = 1.5  # PSF-fit stamps reach this many (first-guess) FWHM from the centre
_BAD_WEIGHT = 1e30  # VAR given to SExtractor for bad pixels (above WEIGHT_THRESH)
# kept for detection although UNUSABLE: real charge, flagged in the measurements
_DETECT_KEEP = int(Bit.SATURATED | Bit.NONLINEAR)


# ----------------------------------------------------------------- inputs
def _as_image(name: str, array, shape=None) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim != 2:
        raise ImredError(f"{name} must be a 2-D (ny, nx) array, got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ImredError(f"{name} has shape {a.shape} but SCI has {shape}: pass the same frame")
    return a


def _bad_pixels(sci: np.ndarray, mask, var=None) -> np.ndarray:
    """True where a pixel is bad (UNUSABLE bit, non-finite SCI or VAR, VAR <= 0)."""
    bad = ~np.isfinite(sci)
    if mask is not None:
        bad |= (mask & int(UNUSABLE)) != 0
    if var is not None:
        with np.errstate(invalid="ignore"):
            bad |= ~(var > 0) | ~np.isfinite(var)
    return bad


def _native(a: np.ndarray, dtype=np.float64) -> np.ndarray:
    """A C-contiguous, native-byte-order copy (sep's requirement; FITS data is big-endian)."""
    return np.ascontiguousarray(a, dtype=np.dtype(dtype).newbyteorder("="))


def _size_sep_buffers(shape: tuple[int, int]) -> None:
    # sep's pixel stack (default 300 000) must hold the largest object: a bright star on a
    # big frame, or the whole frame; the sub-object limit bounds deblending of crowded blobs.
    sep.set_extract_pixstack(max(300_000, int(shape[0] * shape[1])))
    sep.set_sub_object_limit(4096)


# ----------------------------------------------------------------- background
@dataclass(frozen=True)
class Background:
    """The sky of a frame.

    Attributes
    ----------
    level, rms : ndarray (ny, nx)
        Sky level and its pixel-to-pixel noise (e-), interpolated between meshes.
    global_level, global_rms : float
        Medians of ``level`` and ``rms`` over the usable pixels (e-).
    object_mask : ndarray of bool (ny, nx)
        True where the final estimate left pixels out as belonging to objects (dilated
        footprints); all False without ``mask_objects``.
    """

    level: np.ndarray
    rms: np.ndarray
    global_level: float
    global_rms: float
    object_mask: np.ndarray


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


def _mesh_background(data, bad, box: int, filter_size: int, min_good_fraction: float):
    """Sky level and rms maps (ny, nx) from clipped statistics on a mesh.

    photutils gives the per-mesh statistics (excluded meshes filled by inverse-distance
    weighting); the median filter and the interpolation are ours because photutils'
    median filter truncates its window at the border, which shifts the border meshes
    of a sky gradient by up to one mesh step, and its zoom interpolation reflects at
    the border. Here the median filter runs on the residuals from a least-squares plane
    (added back after), and a not-a-knot cubic spline through the mesh centres
    (extrapolating its end pieces to the border) interpolates: a linear gradient is
    reproduced exactly, up to the frame's edges.
    """
    stats = Background2D(
        data,
        box,
        mask=bad,
        exclude_percentile=100.0 * (1.0 - min_good_fraction),
        filter_size=1,
        sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
        bkg_estimator=SExtractorBackground(sigma_clip=None),
        bkg_rms_estimator=StdBackgroundRMS(sigma_clip=None),
    )
    ny, nx = data.shape
    # centres of the meshes' data (a padded last mesh holds fewer rows or columns)
    starts_y, starts_x = np.arange(0, ny, box), np.arange(0, nx, box)
    yc = (starts_y + np.minimum(starts_y + box, ny) - 1) / 2.0
    xc = (starts_x + np.minimum(starts_x + box, nx) - 1) / 2.0
    maps = []
    for mesh in (stats.background_mesh, stats.background_rms_mesh):
        mesh = np.asarray(mesh, dtype=np.float64)
        if filter_size > 1 and mesh.size > 1:
            gy, gx = np.meshgrid(yc, xc, indexing="ij")
            design = np.column_stack([np.ones(mesh.size), gx.ravel(), gy.ravel()])
            coef = np.linalg.lstsq(design, mesh.ravel(), rcond=None)[0]
            plane = (design @ coef).reshape(mesh.shape)
            mesh = plane + ndimage.median_filter(mesh - plane, size=filter_size, mode="nearest")
        maps.append(_spline_grid(mesh, yc, xc, ny, nx))
    return maps[0], maps[1]


def _spline_grid(mesh, yc, xc, ny: int, nx: int) -> np.ndarray:
    """Separable cubic (not-a-knot) interpolation of mesh values onto the pixel grid."""
    out = mesh
    for axis, centres, n in ((0, yc, ny), (1, xc, nx)):
        pixels = np.arange(n, dtype=np.float64)
        if centres.size == 1:
            out = np.repeat(out, n, axis=axis)
        else:
            spline = make_interp_spline(centres, out, k=min(3, centres.size - 1), axis=axis)
            out = spline(pixels, extrapolate=True)
    return out


def estimate_background(
    sci: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    box: int = 64,
    filter_size: int = 3,
    mask_objects: bool = True,
    nsigma: float = 2.0,
    npixels: int = 5,
    dilate: int = 5,
    min_good_fraction: float = 0.1,
) -> Background:
    """Estimate the sky level and noise of a frame on a mesh.

    Parameters
    ----------
    sci : ndarray (ny, nx)
        The frame (e-).
    mask : ndarray of uint16 (ny, nx), optional
        :mod:`imred.mask` bitmask; pixels with an UNUSABLE bit (and non-finite pixels)
        are left out.
    box : int
        Mesh size (pixels): larger than the stars, smaller than the sky's structure.
        Frames whose size is not a multiple are padded (masked) at the top and right.
    filter_size : int
        Size (meshes, odd) of the median filter over the mesh values.
    mask_objects : bool
        Detect objects on a first estimate and leave their footprints out of the final
        one.
    nsigma : float
        Detection threshold of that first pass, in units of the first rms map (on the
        image filtered with the 3x3 ``default.conv`` kernel, as in detection).
    npixels : int
        Minimum connected pixels of an object of the first pass.
    dilate : int
        Radius (pixels) of the disk the object footprints are dilated with.
    min_good_fraction : float
        A mesh with a smaller fraction of usable pixels (after masking and clipping) is
        replaced by interpolation from its neighbours.

    Returns
    -------
    Background

    Raises
    ------
    ImredError
        If the frame has no usable pixel, too few for a single mesh, or a parameter is
        out of range.
    """
    sci = _as_image("SCI", sci)
    if mask is not None:
        mask = _as_image("MASK", mask, sci.shape)
    if box < 4:
        raise ImredError(f"background box {box} px is too small: use at least 4 (e.g. 64)")
    if filter_size < 1 or filter_size % 2 == 0:
        raise ImredError(f"background filter_size {filter_size} must be an odd number >= 1")
    if dilate < 0 or npixels < 1 or nsigma <= 0 or not 0 < min_good_fraction <= 1:
        raise ImredError(
            "background needs nsigma > 0, npixels >= 1, dilate >= 0 and "
            f"0 < min_good_fraction <= 1 (got {nsigma}, {npixels}, {dilate}, {min_good_fraction})"
        )
    bad = _bad_pixels(sci, mask)
    shape_text = f"{sci.shape[1]}x{sci.shape[0]}"
    if bad.all():
        raise ImredError(
            f"every pixel of the {shape_text} frame is masked or non-finite: no background "
            "can be estimated (check its MASK extension)"
        )
    data = _native(np.where(bad, 0.0, sci))
    try:
        level, rms = _mesh_background(data, bad, box, filter_size, min_good_fraction)
    except ValueError as exc:  # photutils: every mesh excluded
        raise ImredError(
            f"no {box}x{box} mesh of the {shape_text} frame has {min_good_fraction:.0%} of its "
            f"pixels usable ({bad.mean():.1%} masked): use a larger box ({exc})"
        ) from exc
    objects = np.zeros(sci.shape, dtype=bool)
    if mask_objects and np.all(rms > 0):  # (a noiseless frame has nothing to detect on)
        _size_sep_buffers(sci.shape)
        _, seg = sep.extract(
            _native(data - level),
            nsigma,
            err=_native(rms),
            mask=bad,
            minarea=npixels,
            filter_type="conv",
            deblend_cont=1.0,  # footprints only: no deblending
            segmentation_map=True,
        )
        objects = seg > 0
        if dilate > 0 and objects.any():
            objects = ndimage.binary_dilation(objects, structure=_disk(dilate))
        objects &= ~bad
        try:
            level, rms = _mesh_background(data, bad | objects, box, filter_size, min_good_fraction)
        except ValueError:  # objects cover every mesh: keep the first estimate
            objects[:] = False
    good = ~bad
    return Background(
        level=level,
        rms=rms,
        global_level=float(np.median(level[good])),
        global_rms=float(np.median(rms[good])),
        object_mask=objects,
    )


# ----------------------------------------------------------------- SExtractor options
@dataclass(frozen=True)
class SExtractorOptions:
    """How to run SExtractor for ``detect_sources(method="sextractor")``.

    Attributes
    ----------
    binary : str
        Executable: ``source-extractor`` (Debian) or ``sex`` (conda-forge), or a path.
    config_dir : str or Path, optional
        Folder with ``imred.sex``, ``imred.param``, ``default.conv``, ``default.nnw``
        (default: imred's ``config/astromatic``).
    ldac_path : str or Path, optional
        Where to keep the FITS_LDAC catalog (e.g. for SCAMP); not kept when None.
    header : astropy.io.fits.Header, optional
        Cards for the image SExtractor reads (a first WCS, EXPTIME, ...): they make the
        ``LDAC_IMHEAD`` of the catalog and SExtractor's world coordinates.
    seeing_fwhm_arcsec : float
        ``SEEING_FWHM`` for ``CLASS_STAR``.
    config : mapping
        More ``KEYWORD: value`` settings written over ``imred.sex`` (after ours).
    """

    binary: str = "source-extractor"
    config_dir: str | Path | None = None
    ldac_path: str | Path | None = None
    header: fits.Header | None = None
    seeing_fwhm_arcsec: float = 1.2
    config: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_value(cls, value) -> SExtractorOptions:
        """Options from None, an instance or a mapping (e.g. a config section)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ImredError(f"unknown SExtractor option(s) {unknown}: use {sorted(known)}")
            return cls(**value)
        raise ImredError(f"sextractor options must be a mapping, got {type(value).__name__}")


# ----------------------------------------------------------------- detection
# name, dtype, astropy unit; fluxes (e-) have none: FITS has no unit for electrons and
# astropy warns when it writes one (the catalog is written as a FITS table)
_COLUMNS = [
    ("id", np.int32, None),
    ("x", np.float64, "pix"),
    ("y", np.float64, "pix"),
    ("x_err", np.float64, "pix"),
    ("y_err", np.float64, "pix"),
    ("flux", np.float64, None),
    ("flux_err", np.float64, None),
    ("snr", np.float64, None),
    ("kron_radius", np.float64, None),
    ("flux_radius", np.float64, "pix"),
    ("fwhm_px", np.float64, "pix"),
    ("a", np.float64, "pix"),
    ("b", np.float64, "pix"),
    ("theta", np.float64, "deg"),
    ("ellipticity", np.float64, None),
    ("peak", np.float64, None),
    ("npix", np.int32, "pix2"),
]
_TAIL_COLUMNS = [
    ("flags", np.int32, None),
    ("flags_extractor", np.int32, None),
    ("mask_bits", np.uint16, None),
    ("saturated", bool, None),
]


def _empty_catalog(n_aper: int) -> dict[str, np.ndarray]:
    cols = {name: np.zeros(0, dtype) for name, dtype, _ in _COLUMNS + _TAIL_COLUMNS}
    for i in range(n_aper):
        cols[f"flux_aper_{i}"] = np.zeros(0)
        cols[f"fluxerr_aper_{i}"] = np.zeros(0)
    return cols


def _make_table(cols: dict[str, np.ndarray], n_aper: int, meta: dict) -> Table:
    table = Table(meta=meta)
    units = {name: unit for name, _, unit in _COLUMNS + _TAIL_COLUMNS}
    for name, dtype, _ in _COLUMNS:
        table[name] = np.asarray(cols[name], dtype=dtype)
    for i in range(n_aper):
        for key in (f"flux_aper_{i}", f"fluxerr_aper_{i}"):
            table[key] = np.asarray(cols[key], dtype=np.float64)
    for name, dtype, _ in _TAIL_COLUMNS:
        table[name] = np.asarray(cols[name], dtype=dtype)
    for name, unit in units.items():
        if unit:
            table[name].unit = unit
    return table


def detect_sources(
    sci: np.ndarray,
    var: np.ndarray | None,
    mask: np.ndarray | None,
    background: Background,
    *,
    method: str = "sep",
    threshold: float = 1.5,
    minarea: int = 5,
    deblend_cont: float = 0.005,
    gain: float = 1.0,
    aperture_radii_px: Sequence[float] = DEFAULT_APERTURES_PX,
    pixel_scale_arcsec: float | None = None,
    sextractor: SExtractorOptions | Mapping | None = None,
) -> Table:
    """Detect the sources of a frame above its per-pixel noise and measure them.

    Parameters
    ----------
    sci : ndarray (ny, nx)
        The frame (e-), background *not* subtracted.
    var : ndarray (ny, nx) or None
        Variance of ``sci`` (e-^2), all noise included. None: ``background.rms**2`` plus
        the sources' Poisson noise ``max(sci - level, 0) / gain``.
    mask : ndarray of uint16 (ny, nx) or None
        :mod:`imred.mask` bitmask (0 good).
    background : Background
        From :func:`estimate_background`; subtracted before detection.
    method : {"sep", "sextractor"}
        The extractor (see the module docstring).
    threshold : float
        Detection threshold: the filtered image must exceed ``threshold * sqrt(VAR)``
        (the pixel noise, as SExtractor's ``DETECT_THRESH``).
    minarea : int
        Minimum connected pixels above the threshold.
    deblend_cont : float
        Minimum contrast for deblending (1 switches deblending off).
    gain : float
        Electrons per unit of ``sci`` (1 for calibrated frames); only used when ``var``
        is None.
    aperture_radii_px : sequence of float
        Radii (pixels) of the circular apertures, in the order of ``flux_aper_{i}``.
        The largest one defines the NEIGHBOURS, SATURATED, EDGE, MASKED flags.
    pixel_scale_arcsec : float, optional
        Pixel scale; adds a ``fwhm_arcsec`` column and sets SExtractor's
        ``PIXEL_SCALE``.
    sextractor : SExtractorOptions or mapping, optional
        Options of ``method="sextractor"``.

    Returns
    -------
    astropy.table.Table
        One row per source, columns as in the module docstring (empty when nothing is
        detected).

    Raises
    ------
    ImredError
        Bad arguments, an all-masked frame, or SExtractor missing or failing.
    """
    sci = _as_image("SCI", sci)
    shape = sci.shape
    if var is not None:
        var = _as_image("VAR", var, shape)
    if mask is not None:
        mask = _as_image("MASK", mask, shape)
    if background.level.shape != shape:
        raise ImredError(
            f"background has shape {background.level.shape} but SCI has {shape}: "
            "estimate it on the same frame"
        )
    if method not in METHODS:
        raise ImredError(f"unknown detection method {method!r}: use one of {METHODS}")
    radii = tuple(float(r) for r in np.atleast_1d(aperture_radii_px))
    if not radii or min(radii) <= 0:
        raise ImredError(f"aperture radii must be positive pixels, got {aperture_radii_px}")
    if threshold <= 0 or minarea < 1 or not 0 < deblend_cont <= 1 or gain <= 0:
        raise ImredError(
            "detection needs threshold > 0, minarea >= 1, 0 < deblend_cont <= 1 and gain > 0 "
            f"(got {threshold}, {minarea}, {deblend_cont}, {gain})"
        )
    if pixel_scale_arcsec is not None and not pixel_scale_arcsec > 0:
        raise ImredError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}")

    data = np.asarray(sci, dtype=np.float64) - background.level
    if var is None:
        var = np.square(background.rms) + np.maximum(data, 0.0) / gain
    bad = _bad_pixels(sci, mask, var)
    if bad.all():
        raise ImredError(
            f"every pixel of the {shape[1]}x{shape[0]} frame is masked, non-finite or has "
            "VAR <= 0: nothing can be detected (check its MASK and VAR extensions)"
        )
    keep = np.zeros(shape, dtype=bool)
    if mask is not None:
        keep = bad & ((mask & _DETECT_KEEP) != 0) & np.isfinite(sci) & np.isfinite(var) & (var > 0)
        keep &= (mask & (int(UNUSABLE) & ~_DETECT_KEEP)) == 0
    data = _native(np.where(bad & ~keep, 0.0, data))
    var_m = _native(np.where(bad & ~keep, 1.0, var))

    meta = {
        "DETMETH": method,
        "DETTHRSH": float(threshold),
        "DETMINAR": int(minarea),
        "DEBLCONT": float(deblend_cont),
        "NAPER": len(radii),
    }
    meta.update({f"APERRAD{i}": r for i, r in enumerate(radii)})
    kwargs = dict(threshold=threshold, minarea=minarea, deblend_cont=deblend_cont, radii=radii)
    if method == "sep":
        cols, seg = _extract_sep(data, var_m, bad, keep, **kwargs)
    else:
        opts = SExtractorOptions.from_value(sextractor)
        cols, seg = _extract_sextractor(
            data, var_m, bad, keep, mask, opts, pixel_scale_arcsec, **kwargs
        )
        if opts.ldac_path is not None:
            meta["LDACPATH"] = str(opts.ldac_path)
    if cols is None:
        cols = _empty_catalog(len(radii))
    else:
        _finish(cols, data, var_m, bad, mask, seg, radii)
    table = _make_table(cols, len(radii), meta)
    if pixel_scale_arcsec is not None:
        table["fwhm_arcsec"] = table["fwhm_px"] * float(pixel_scale_arcsec)
        table["fwhm_arcsec"].unit = "arcsec"
    return table


def _extract_sep(data, var, bad, keep, *, threshold, minarea, deblend_cont, radii):
    """Detect and measure with sep; columns in imred's names, and the segmentation map."""
    _size_sep_buffers(data.shape)
    detect_mask = bad & ~keep
    try:
        objs, seg = sep.extract(
            data,
            threshold,
            var=var,
            mask=detect_mask,
            minarea=minarea,
            filter_type="conv",  # threshold x sqrt(VAR) on the filtered image, as SExtractor
            deblend_cont=deblend_cont,
            segmentation_map=True,
        )
    except Exception as exc:  # sep raises plain Exceptions for buffer overflows
        raise ImredError(
            f"sep could not extract sources ({exc}): raise the threshold or minarea"
        ) from exc
    n = len(objs)
    if n == 0:
        return None, seg
    x0, y0 = objs["x"].astype(np.float64), objs["y"].astype(np.float64)
    # sep refuses apertures with a, b < 0 or theta outside [-pi/2, pi/2]; saturated or
    # odd detections (real CAFOS frames) can give NaN or rounding just outside
    a = np.maximum(np.nan_to_num(objs["a"].astype(np.float64), nan=1e-3), 1e-3)
    b = np.minimum(np.maximum(np.nan_to_num(objs["b"].astype(np.float64), nan=1e-3), 1e-3), a)
    theta = np.clip(np.nan_to_num(objs["theta"].astype(np.float64)), -np.pi / 2, np.pi / 2)
    ids = np.arange(1, n + 1, dtype=np.int32)
    native = objs["flag"].astype(np.int32)
    meas_bad = bad.astype(np.uint8)

    kron, kflag = sep.kron_radius(data, x0, y0, a, b, theta, KRON_RMAX, mask=meas_bad)
    kron = np.where(np.isfinite(kron) & (kron > 0), kron, 0.0)
    factor = np.minimum(np.maximum(KRON_FACTOR * kron, KRON_MIN), KRON_FACTOR * KRON_RMAX)
    flux, flux_err, fflag = sep.sum_ellipse(
        data, x0, y0, a, b, theta, factor, var=var, mask=meas_bad, subpix=1
    )
    native |= kflag | fflag
    normflux = np.where(flux > 0, flux, np.nan)
    r50, _ = sep.flux_radius(
        data, x0, y0, KRON_RMAX * a, 0.5, normflux=np.nan_to_num(normflux, nan=1.0),
        mask=meas_bad, subpix=5,
    )  # fmt: skip
    r50 = np.where(np.isfinite(normflux) & (r50 > 0), r50, np.nan)
    sig = 2.0 / 2.35 * np.where(np.isfinite(r50), r50, np.sqrt(a * b))
    # the window keeps saturated pixels (clipped, but symmetric about the centre)
    xw, yw, wflag = sep.winpos(data, x0, y0, np.maximum(sig, 0.3), mask=detect_mask)
    # masked or truncated pixels in the window leave a valid (flagged) centroid
    wflag = wflag & ~int(sep.APER_HASMASKED | sep.APER_TRUNC)
    failed = (
        (wflag != 0) | ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x0, yw - y0) > 2 * a)
    )
    xw = np.where(failed, x0, xw)
    yw = np.where(failed, y0, yw)

    cols: dict[str, np.ndarray] = {
        "id": ids,
        "x": xw,
        "y": yw,
        "x_err": np.sqrt(np.maximum(objs["errx2"], 0.0)),
        "y_err": np.sqrt(np.maximum(objs["erry2"], 0.0)),
        "flux": flux,
        "flux_err": flux_err,
        "kron_radius": kron,
        "flux_radius": r50,
        "a": a,
        "b": b,
        "theta": np.degrees(theta),
        "peak": objs["peak"].astype(np.float64),
        "npix": objs["npix"],
    }
    for i, r in enumerate(radii):
        f, e, af = sep.sum_circle(data, xw, yw, r, var=var, mask=meas_bad, subpix=5)
        cols[f"flux_aper_{i}"], cols[f"fluxerr_aper_{i}"] = f, e
        native |= af
    norm = np.zeros(n, dtype=np.int32)
    norm[(native & sep.OBJ_MERGED) != 0] |= Flag.BLENDED
    norm[(native & (sep.OBJ_TRUNC | sep.APER_TRUNC)) != 0] |= Flag.EDGE
    norm[(native & sep.OBJ_DOVERFLOW) != 0] |= Flag.OVERFLOW
    norm[failed | ((native & sep.OBJ_SINGU) != 0)] |= Flag.MEASUREMENT
    cols["flags_extractor"] = native
    cols["flags"] = norm
    return cols, seg


def _finish(cols, data, var, bad, mask, seg, radii) -> None:
    """Measurements common to both methods: FWHM, mask bits, neighbours, edge, flags."""
    ny, nx = data.shape
    x, y = cols["x"], cols["y"]
    n = x.size
    rmax = max(radii)
    a, b = cols["a"], cols["b"]
    cols["ellipticity"] = 1.0 - b / a
    theta = np.mod(cols["theta"] + 90.0, 180.0) - 90.0
    cols["theta"] = np.where(theta == -90.0, 90.0, theta)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["snr"] = np.where(cols["flux_err"] > 0, cols["flux"] / cols["flux_err"], np.nan)

    # imred mask bits touching the largest aperture (exact overlap)
    bits = np.zeros(n, dtype=np.uint16)
    if mask is not None:
        for bit in Bit:
            plane = (mask & int(bit)) != 0
            if plane.any():
                s, _, _ = sep.sum_circle(_native(plane, np.float32), x, y, rmax, subpix=0)
                bits[s > 0] |= np.uint16(bit)
    nonfinite = bad & ((mask & int(UNUSABLE)) == 0) if mask is not None else bad
    if nonfinite.any():
        s, _, _ = sep.sum_circle(_native(nonfinite, np.float32), x, y, rmax, subpix=0)
        has_nonfinite = s > 0
    else:
        has_nonfinite = np.zeros(n, dtype=bool)
    flags = cols["flags"]
    saturated = (bits & int(Bit.SATURATED)) != 0
    flags[saturated] |= Flag.SATURATED
    flags[((bits & int(UNUSABLE)) != 0) | has_nonfinite] |= Flag.MASKED
    edge = (x - rmax < -0.5) | (y - rmax < -0.5) | (x + rmax > nx - 0.5) | (y + rmax > ny - 0.5)
    flags[edge] |= Flag.EDGE
    finite = (
        np.isfinite(cols["flux"]) & np.isfinite(cols["flux_err"]) & np.isfinite(x) & np.isfinite(y)
    )
    flags[~finite] |= Flag.MEASUREMENT

    # neighbours: another detection >= 1 % as bright with its centre in the largest aperture
    if n > 1:
        tree = cKDTree(np.column_stack([x, y]))
        flux = np.where(np.isfinite(cols["flux"]), cols["flux"], 0.0)
        pairs = tree.query_pairs(rmax, output_type="ndarray")
        if pairs.size:
            i, j = pairs[:, 0], pairs[:, 1]
            hit = np.zeros(n, dtype=bool)
            hit[i[flux[j] >= NEIGHBOUR_FLUX_RATIO * flux[i]]] = True
            hit[j[flux[i] >= NEIGHBOUR_FLUX_RATIO * flux[j]]] = True
            flags[hit] |= Flag.NEIGHBOURS
    cols["flags"] = flags
    cols["mask_bits"] = bits
    cols["saturated"] = saturated

    # PSF FWHM from a Moffat fit
    weight = np.where(bad, 0.0, 1.0 / var)
    fit = np.isfinite(cols["snr"]) & (cols["snr"] >= FWHM_MIN_SNR) & finite
    fwhm = np.full(n, np.nan)
    if fit.any():
        r50 = cols["flux_radius"]
        ref = fit & np.isfinite(r50) & (cols["snr"] >= 10)
        # start: Moffat beta=3 has FWHM = 1.58 half-light radii, a Gaussian 2.0
        fwhm0 = float(np.median(1.8 * r50[ref])) if ref.sum() >= 3 else 3.0
        fwhm0 = float(np.clip(fwhm0, 1.0, 30.0))
        flux0 = np.where(
            cols["flux"] > 0, cols["flux"], np.abs(cols[f"flux_aper_{len(radii) - 1}"])
        )
        idx = np.flatnonzero(fit)
        fwhm[idx] = _fit_moffat_fwhm(
            data, weight, seg, cols["id"][idx], x[idx], y[idx], flux0[idx], fwhm0
        )
    cols["fwhm_px"] = fwhm


# ----------------------------------------------------------------- PSF fit
# the model is integrated over each pixel with the 2x2-point Gauss-Legendre rule (exact for
# cubics along each axis, so the pixel's 1/12 px^2 variance is exact)
_SUB_OFFSETS = np.array([-0.5, 0.5]) / math.sqrt(3.0)
_CHUNK = 512  # sources fitted at once (bounds memory: chunk x stamp x sub-pixels x 5)


def _moffat_model(p, u, v, sub_u, sub_v):
    """Pixel-integrated circular Moffat and its Jacobian.

    ``p`` (N, 5): total flux, x0, y0 (relative to the stamp's integer centre), ln alpha,
    ln(beta - 1). ``u``, ``v`` (P,): pixel offsets; ``sub_u``, ``sub_v`` (S,): sub-pixel
    offsets. Returns model (N, P) and Jacobian (N, P, 5).
    """
    flux, x0, y0 = p[:, 0], p[:, 1], p[:, 2]
    alpha2 = np.exp(2 * p[:, 3])
    bm1 = np.exp(p[:, 4])
    beta = 1.0 + bm1
    norm = bm1 / (np.pi * alpha2)
    du = u[None, :, None] + sub_u[None, None, :] - x0[:, None, None]  # (N, P, S)
    dv = v[None, :, None] + sub_v[None, None, :] - y0[:, None, None]
    q = (du * du + dv * dv) / alpha2[:, None, None]
    t = 1.0 + q
    lt = np.log(t)
    prof = np.exp(-beta[:, None, None] * lt)
    k = (flux * norm)[:, None]
    mean = prof.mean(axis=2)
    model = k * mean
    g = prof / t * (2.0 * beta[:, None, None] / alpha2[:, None, None])
    jac = np.empty((*model.shape, 5))
    jac[..., 0] = norm[:, None] * mean
    jac[..., 1] = k * (g * du).mean(axis=2)
    jac[..., 2] = k * (g * dv).mean(axis=2)
    jac[..., 3] = k * (-2.0 * mean + 2.0 * beta[:, None] * (prof * q / t).mean(axis=2))
    jac[..., 4] = k * (mean - bm1[:, None] * (prof * lt).mean(axis=2))
    return model, jac


def _fit_moffat_fwhm(data, weight, seg, ids, x, y, flux0, fwhm0, iterations: int = 40):
    """FWHM (px) of a circular Moffat fitted to each source (NaN where it fails).

    Levenberg-Marquardt on all sources at once (numpy, no per-source Python), each
    source leaving the iteration once a step no longer lowers its chi^2 by 1e-6
    relative (or its damping grows past 1e6).
    """
    ny, nx = data.shape
    h = int(np.clip(math.ceil(HALF_SIZE_FWHM * fwhm0), 3, 20))
    off = np.arange(-h, h + 1)
    v, u = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    sv, su = (a.ravel() for a in np.meshgrid(_SUB_OFFSETS, _SUB_OFFSETS, indexing="ij"))
    uf, vf = u.astype(np.float64), v.astype(np.float64)
    out = np.full(x.size, np.nan)
    for start in range(0, x.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        ix, iy = np.rint(x[sl]).astype(int), np.rint(y[sl]).astype(int)
        gx, gy = ix[:, None] + u[None, :], iy[:, None] + v[None, :]
        inside = (gx >= 0) & (gx < nx) & (gy >= 0) & (gy < ny)
        gx, gy = np.clip(gx, 0, nx - 1), np.clip(gy, 0, ny - 1)
        d = data[gy, gx]
        s = seg[gy, gx]
        w = weight[gy, gx] * inside * ((s == 0) | (s == ids[sl, None]))
        ok = (w > 0).sum(axis=1) >= 8
        p = np.column_stack(
            [
                flux0[sl],
                x[sl] - ix,
                y[sl] - iy,
                np.full(ix.size, math.log(fwhm0 / 1.0196)),  # alpha for beta = 3
                np.full(ix.size, math.log(2.0)),
            ]
        )
        model, jac = _moffat_model(p, uf, vf, su, sv)
        chi2 = (w * (d - model) ** 2).sum(axis=1)
        lam = np.full(ix.size, 1e-3)
        active = np.flatnonzero(ok)
        for _ in range(iterations):
            if active.size == 0:
                break
            jw = jac[active] * w[active, :, None]
            mat = np.einsum("npi,npj->nij", jw, jac[active])
            grad = np.einsum("npi,np->ni", jw, d[active] - model[active])
            diag = np.einsum("nii->ni", mat) + 1e-300
            damped = mat + (lam[active, None] * diag)[..., None] * np.eye(5)
            try:
                step = np.linalg.solve(damped, grad[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = np.einsum("nij,nj->ni", np.linalg.pinv(damped), grad)
            trial = p[active] + step
            trial[:, 0] = np.maximum(trial[:, 0], 1e-3 * np.abs(p[active, 0]) + 1e-12)
            trial[:, 1:3] = np.clip(trial[:, 1:3], -h / 2, h / 2)
            trial[:, 3] = np.clip(trial[:, 3], math.log(0.2), math.log(4.0 * h))
            trial[:, 4] = np.clip(trial[:, 4], math.log(0.05), math.log(50.0))
            m_t, j_t = _moffat_model(trial, uf, vf, su, sv)
            chi2_t = (w[active] * (d[active] - m_t) ** 2).sum(axis=1)
            better = chi2_t < chi2[active]
            drop = np.where(better, chi2[active] - chi2_t, 0.0)
            acc = active[better]
            p[acc], model[acc], jac[acc], chi2[acc] = (
                trial[better],
                m_t[better],
                j_t[better],
                chi2_t[better],
            )
            lam[active] = np.where(better, lam[active] / 3.0, lam[active] * 4.0)
            done = (better & (drop <= 1e-6 * chi2[active])) | (lam[active] > 1e6)
            active = active[~done]
        alpha, beta = np.exp(p[:, 3]), 1.0 + np.exp(p[:, 4])
        fwhm = 2.0 * alpha * np.sqrt(2.0 ** (1.0 / beta) - 1.0)
        sane = ok & np.isfinite(fwhm) & (fwhm > 0.3) & (fwhm < 2.0 * h) & (p[:, 0] > 0)
        out[sl] = np.where(sane, fwhm, np.nan)
    return out


# ----------------------------------------------------------------- SExtractor
def _read_sex_config(path: Path) -> list[tuple[str, str]]:
    """``(keyword, value)`` pairs of a SExtractor configuration file, in order."""
    out = []
    for line in path.read_text().splitlines():
        body = line.split("#", 1)[0].strip()
        if body:
            key, *value = body.split(None, 1)
            out.append((key, value[0].strip() if value else ""))
    return out


def _write_sex_config(path: Path, base: list[tuple[str, str]], settings: Mapping[str, object]):
    values = dict(base)
    values.update({k: str(v) for k, v in settings.items()})
    path.write_text("".join(f"{k:<16} {v}\n" for k, v in values.items()))


def _write_params(src: Path, dst: Path, n_aper: int) -> None:
    """Copy a .param file with the aperture vectors sized ``n_aper``."""
    lines = []
    for line in src.read_text().splitlines():
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        name = body.split("(")[0].strip()
        if name in ("FLUX_APER", "FLUXERR_APER", "MAG_APER", "MAGERR_APER"):
            body = f"{name}({n_aper})"
        lines.append(body)
    dst.write_text("\n".join(lines) + "\n")


def _astromatic_file(config_dir: Path, name: str) -> Path:
    path = (config_dir / name).resolve()
    if not path.is_file():
        raise ImredError(
            f"SExtractor configuration file {path} is missing: restore it from imred's "
            "config/astromatic or point SExtractorOptions.config_dir at a folder holding it"
        )
    return path


def _extract_sextractor(
    data, var, bad, keep, mask, opts, pixel_scale, *, threshold, minarea, deblend_cont, radii
):
    """Detect and measure with the SExtractor binary; columns in imred's names."""
    binary = shutil.which(opts.binary)
    if binary is None:
        raise ImredError(
            f"SExtractor binary {opts.binary!r} not found on PATH: install SExtractor "
            "(Debian: apt install source-extractor; conda-forge: astromatic-source-extractor, "
            "binary 'sex') or set the binary name in the sextractor options"
        )
    config_dir = Path(opts.config_dir) if opts.config_dir is not None else ASTROMATIC_DIR
    sex_file = _astromatic_file(config_dir, "imred.sex")
    param_file = _astromatic_file(config_dir, "imred.param")
    conv_file = _astromatic_file(config_dir, "default.conv")
    nnw_file = _astromatic_file(config_dir, "default.nnw")
    detect_bad = bad & ~keep
    with tempfile.TemporaryDirectory(prefix="imred-sex-") as tmp:
        tmp = Path(tmp)
        header = fits.Header() if opts.header is None else opts.header.copy()
        for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "EXTEND", "BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True, remove_all=True)
        sci = np.where(detect_bad, 0.0, data).astype(np.float32)
        wvar = np.where(detect_bad, _BAD_WEIGHT, var).astype(np.float32)
        flag = np.zeros(data.shape, np.int32) if mask is None else mask.astype(np.int32)
        fits.PrimaryHDU(sci, header=header).writeto(tmp / "sci.fits")
        fits.PrimaryHDU(wvar).writeto(tmp / "var.fits")
        fits.PrimaryHDU(flag).writeto(tmp / "flag.fits")
        n_aper = len(radii)
        _write_params(param_file, tmp / "imred.param", n_aper)
        settings = {
            "CATALOG_NAME": tmp / "cat.ldac",
            "CATALOG_TYPE": "FITS_LDAC",
            "PARAMETERS_NAME": tmp / "imred.param",
            "FILTER_NAME": conv_file,
            "STARNNW_NAME": nnw_file,
            "DETECT_THRESH": threshold,
            "ANALYSIS_THRESH": threshold,
            "DETECT_MINAREA": minarea,
            "DEBLEND_MINCONT": deblend_cont,
            "WEIGHT_TYPE": "MAP_VAR",
            "WEIGHT_IMAGE": tmp / "var.fits",
            "WEIGHT_THRESH": _BAD_WEIGHT / 10,
            "FLAG_IMAGE": tmp / "flag.fits",
            "PHOT_APERTURES": ",".join(f"{2 * r:g}" for r in radii),
            "PIXEL_SCALE": pixel_scale if pixel_scale is not None else 1.0,
            "SEEING_FWHM": opts.seeing_fwhm_arcsec,
            "CHECKIMAGE_TYPE": "SEGMENTATION",
            "CHECKIMAGE_NAME": tmp / "seg.fits",
            "MEMORY_PIXSTACK": max(300_000, data.size),
            "VERBOSE_TYPE": "QUIET",
            **dict(opts.config),
        }
        _write_sex_config(tmp / "imred.sex", _read_sex_config(sex_file), settings)
        proc = subprocess.run(
            [binary, str(tmp / "sci.fits"), "-c", str(tmp / "imred.sex")],
            capture_output=True,
            text=True,
            cwd=tmp,
        )
        if proc.returncode != 0 or not (tmp / "cat.ldac").is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise ImredError(
                f"{opts.binary} failed (exit {proc.returncode}): {' | '.join(tail)}; "
                f"check the settings in {sex_file}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(tmp / "cat.ldac", memmap=False) as hdul:
                objs = Table(hdul["LDAC_OBJECTS"].data)
            seg = fits.getdata(tmp / "seg.fits").astype(np.int32)
        if opts.ldac_path is not None:
            dst = Path(opts.ldac_path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tmp / "cat.ldac", dst)
    n = len(objs)
    if n == 0:
        return None, seg

    def col(name):
        return np.asarray(objs[name], dtype=np.float64)

    native = np.asarray(objs["FLAGS"], dtype=np.int32)
    x0, y0 = col("X_IMAGE") - 1.0, col("Y_IMAGE") - 1.0
    xw, yw = col("XWIN_IMAGE") - 1.0, col("YWIN_IMAGE") - 1.0
    failed = ~np.isfinite(xw) | ~np.isfinite(yw) | (np.hypot(xw - x0, yw - y0) > 2 * col("A_IMAGE"))
    aper = np.asarray(objs["FLUX_APER"], dtype=np.float64).reshape(n, n_aper)
    aper_err = np.asarray(objs["FLUXERR_APER"], dtype=np.float64).reshape(n, n_aper)
    r50 = col("FLUX_RADIUS")
    cols = {
        "id": np.asarray(objs["NUMBER"], dtype=np.int32),
        "x": np.where(failed, x0, xw),
        "y": np.where(failed, y0, yw),
        "x_err": np.sqrt(np.maximum(col("ERRX2_IMAGE"), 0.0)),
        "y_err": np.sqrt(np.maximum(col("ERRY2_IMAGE"), 0.0)),
        "flux": col("FLUX_AUTO"),
        "flux_err": col("FLUXERR_AUTO"),
        "kron_radius": col("KRON_RADIUS"),
        "flux_radius": np.where(r50 > 0, r50, np.nan),
        "a": np.maximum(col("A_IMAGE"), 1e-3),
        "b": np.maximum(col("B_IMAGE"), 1e-3),
        "theta": col("THETA_IMAGE"),
        "peak": col("FLUX_MAX"),
        "npix": np.asarray(objs["ISOAREA_IMAGE"], dtype=np.int32),
    }
    for i in range(n_aper):
        cols[f"flux_aper_{i}"], cols[f"fluxerr_aper_{i}"] = aper[:, i], aper_err[:, i]
    norm = np.zeros(n, dtype=np.int32)
    norm[(native & 2) != 0] |= Flag.BLENDED
    norm[(native & 8) != 0] |= Flag.EDGE
    norm[(native & (64 | 128)) != 0] |= Flag.OVERFLOW
    norm[failed] |= Flag.MEASUREMENT
    cols["flags_extractor"] = native
    cols["flags"] = norm
    return cols, seg


# ----------------------------------------------------------------- QA
def frame_qa(
    table: Table,
    background: Background,
    pixel_scale_arcsec: float,
    *,
    min_snr: float = 20.0,
    min_sources: int = 10,
    min_psf_stars: int = 5,
    max_ellipticity: float = 0.2,
) -> dict:
    """Image-quality numbers of a frame for the frame QA table.

    PSF stars are sources without flags but BLENDED (no neighbour in the largest
    aperture, unsaturated, inside the frame, no bad pixel in the largest aperture; a
    deblended source with its neighbour farther away is fine, the neighbour's pixels
    are out of the PSF fit), ``snr > min_snr`` and a fitted FWHM, that are point-like:
    within 3 robust sigma (1.4826 MAD, at least 5 %) of the median ``fwhm_px`` and of
    the median ``flux_radius`` (clipped up to three times), which leaves out galaxies
    and unmasked cosmic rays as long as stars are most of the bright sources.

    Parameters
    ----------
    table : astropy.table.Table
        From :func:`detect_sources`.
    background : Background
        The frame's background.
    pixel_scale_arcsec : float
        Pixel scale (arcsec/pixel).
    min_snr : float
        S/N (``flux / flux_err``) of a PSF star.
    min_sources, min_psf_stars : int
        Fewer sources / PSF stars than this are flagged.
    max_ellipticity : float
        A median PSF ellipticity above this is flagged.

    Returns
    -------
    dict
        ``n_sources``, ``n_psf_stars``, ``fwhm_px``, ``fwhm_arcsec`` (median over PSF
        stars; NaN without PSF stars), ``fwhm_scatter_arcsec`` (their robust rms),
        ``ellipticity`` (median), ``sky_level``, ``sky_noise`` (e-, per pixel:
        ``background.global_level`` / ``global_rms``) and ``flags`` (list of short
        messages, empty when all is well).
    """
    if not pixel_scale_arcsec > 0:
        raise ImredError(f"pixel_scale_arcsec must be positive, got {pixel_scale_arcsec}")
    n = len(table)
    flags: list[str] = []
    out = {
        "n_sources": n,
        "n_psf_stars": 0,
        "fwhm_px": math.nan,
        "fwhm_arcsec": math.nan,
        "fwhm_scatter_arcsec": math.nan,
        "ellipticity": math.nan,
        "sky_level": float(background.global_level),
        "sky_noise": float(background.global_rms),
        "flags": flags,
    }
    if n == 0:
        flags.append("no sources")
        return out
    if n < min_sources:
        flags.append(f"few sources ({n} < {min_sources})")
    fwhm = np.asarray(table["fwhm_px"], dtype=np.float64)
    r50 = np.asarray(table["flux_radius"], dtype=np.float64)
    snr = np.asarray(table["snr"], dtype=np.float64)
    use = (
        ((np.asarray(table["flags"]) & ~int(Flag.BLENDED)) == 0)
        & ~np.asarray(table["saturated"], dtype=bool)
        & (snr > min_snr)
        & np.isfinite(fwhm)
        & np.isfinite(r50)
    )
    for _ in range(3):
        if use.sum() < 3:
            break
        keep = use.copy()
        for v in (fwhm, r50):
            med = np.median(v[use])
            spread = max(1.4826 * np.median(np.abs(v[use] - med)), 0.05 * med)
            keep &= np.abs(v - med) <= 3.0 * spread
        if (keep == use).all():
            break
        use = keep
    n_psf = int(use.sum())
    out["n_psf_stars"] = n_psf
    if n_psf == 0:
        flags.append(f"no PSF stars (no clean point-like source with S/N > {min_snr:g})")
        return out
    if n_psf < min_psf_stars:
        flags.append(f"few PSF stars ({n_psf} < {min_psf_stars})")
    f = fwhm[use]
    med = float(np.median(f))
    out["fwhm_px"] = med
    out["fwhm_arcsec"] = med * pixel_scale_arcsec
    out["fwhm_scatter_arcsec"] = float(1.4826 * np.median(np.abs(f - med))) * pixel_scale_arcsec
    ell = float(np.median(np.asarray(table["ellipticity"], dtype=np.float64)[use]))
    out["ellipticity"] = ell
    if ell > max_ellipticity:
        flags.append(f"elongated PSF (median ellipticity {ell:.2f} > {max_ellipticity:g})")
    return out
