"""Score a reduced night against the simulator's truth (``imred score``).

:func:`score` reads a results folder (the products of :mod:`imred.paths`) and a truth
folder written by :mod:`imred.simulate`, and returns the metrics below as a nested
dict ``{section: {product: {metric: value}}}``; :func:`format_markdown` renders it as
one table per section; :func:`main` is the command line. A product whose file does
not exist is reported as ``"not produced"`` (in place of the product's dict, or of the
metric when a product is built from several files); that is not a failure.

The scorer is independent of the pipeline it judges: it reads products only through
their file layout (:mod:`imred.products`, :mod:`imred.paths`, the instrument file for
chip sections) and does its own matching (one-to-one nearest neighbours on unit
vectors, :class:`scipy.spatial.cKDTree`), centroiding (Gaussian-windowed moments),
aperture sums and statistics. Robust rms = 1.4826 x median absolute deviation; rms =
sqrt(mean(x**2)) (about zero, so offsets count).

Frame ids: products and QA rows are named by the pipeline's frame id, which the
observation log takes from the raw file's name (without FITS/compression suffixes,
path-safe; restated in :func:`raw_frame_id`). For a camera writing one file per chip
that id differs from chip to chip and from the truth's exposure name (``frame``); the
scorer takes each chip's file from ``frame_chips.ecsv`` (``file``), finds its products
under that id and reports them as ``{id}.{chip}`` (the product's file name); ``meta``
``product_frames`` maps truth exposures to those ids where they differ. Nights of NIR
reads (``nir_reads.ecsv``) keep the truth's exposure name, which is the reads' common
prefix the observation log gives the exposure.

Grids: truth dark, flat, bad pixels and cosmic-ray masks are on the chip's data grid,
the truth bias on the raw grid; products are on the trimmed grid (``TRIMSEC`` in the
product's primary header; else the chip's ``trimsec``, else its ``datasec``). Only the
overlap is compared. Truth star pixel positions (``star_frames.ecsv``) are mapped to
the trimmed grid the same way.

Metrics
-------
masters (every setup found: the key is ``bias.{chip}`` etc. when a chip has one master,
the file name without ``.fits`` when it has several) / ``bias.{chip}``
    ``rms_error_adu``: rms over pixels of (master - its median) - (truth bias on the
    master's raw section - its median) -- offsets do not count, structure and noise do;
    ``rms_error_line_adu``: the same after removing each row's median of the difference
    (blind to a line-by-line overscan level); ``expected_noise_adu`` = read noise / gain
    / sqrt(NCOMBINE) (NCOMBINE from the master, else the number of truth biases);
    ``error_over_noise`` = rms_error_adu / expected_noise_adu; ``read_noise_error_pct``
    = 100 (RDNOISE / true read noise - 1) when the master has ``RDNOISE`` (e-).
masters / ``dark.{chip}``
    ``rms_error_e_per_s`` and ``median_error_e_per_s`` over pixels that are not hot
    (truth bad-pixel bits 1, 2); ``expected_noise_e_per_s`` = sqrt(sum over truth darks
    of (rate t + read noise**2)) / sum t; ``hot_pixel_recovery`` /
    ``hot_column_recovery``: fraction of true hot pixels (bit 1) / hot-column pixels
    (bit 2) whose master rate is within 10 % of the truth.
masters / ``flat.{band}.{chip}``
    over pixels without a truth bad-pixel bit, both flats divided by their median over
    those pixels: ``rms_error`` = rms(master / truth - 1), ``robust_rms_error``,
    ``rms_error_after_plane`` (a least-squares plane in x, y removed: the pixel-scale
    part); ``photon_noise_limit`` = sqrt(mean over pixels of 1 / N_e) with N_e = sum over
    the band's truth flats of illumination x exptime x true flat; ``error_over_photon_limit``
    = rms_error / photon_noise_limit (goal <= 1.2); ``gain_error_pct`` = 100 (GAINMEAS /
    true gain - 1) when the master has ``GAINMEAS`` (e-/ADU).
calibration / ``{frame}.{chip}`` (calibrated science frames; ``frame`` is the product's
frame id, see Frame ids) and ``all``
    ``cr_recall``: fraction of true cosmic-ray pixels with the COSMIC_RAY bit (null when
    the frame has none; a frame without a MASK extension flags nothing); in ``all`` the
    counts of every frame are summed first; ``cr_false_positive_fraction``: fraction of the other pixels
    with the bit; ``star_core_cr_false_positive_fraction``: among pixels whose centre is
    within FWHM/2 of a true star centre (on-chip stars; FWHM = truth seeing / pixel
    scale) and that are not true CR pixels, the fraction with the bit.
    Non-linearity: for bright (truth S/N >= 100 in the aperture), unsaturated (truth
    peak + sky, x 1.1 for the flat, < 80 % of the smaller of saturation and the
    correction's ``max_adu``), isolated (no star above 0.1 % of the flux within 8 FWHM)
    stars with clean apertures (no MASK bit but INTERPOLATED, no true CR), the ratio of
    the background-subtracted flux in SCI (radius 2.5 FWHM, sub-pixel weights; median of
    an annulus at 4-6 FWHM) to the truth flux; ``flux_ratio_median`` per frame; in
    ``all``, ratio = a_group + b x peak + c x seeing with one intercept per band x chip
    (the flat normalisation, gain and aperture loss drop out; the truth flux already holds
    the exposure's zero point; the seeing term takes up aperture losses that change with
    the FWHM, which also sets the peak) is fitted with 3-sigma clipping, and
    ``nonlinearity_residual`` = b x P / mean ratio with P = half the saturation level in e-: the fractional flux
    error left for a star peaking at half full scale (goal |.| < 0.1 %), with
    ``nonlinearity_residual_err`` (the result is "inconclusive" when that exceeds the goal).
calibration / NIR exposures (truth ``nir_reads.ecsv``: a night of NIR arrays)
    the calibrated rate ``SCI / EXPTIME`` (e-/s) against the truth ``rate/{frame}.fits``
    (light after the flat, and dark current) minus the truth dark when a master dark was
    subtracted (``IMRDARK``), plus the persistence the exposure measures
    (``persistence/{frame}.fits``), divided by the truth flat normalised to its median
    over the product's pixels when a master flat was used (``IMRFLAT``); in units of the
    expected noise sigma: ``sigma^2 = rn^2 sum(w^2) + f w.M.w`` (rn the truth read noise of
    one read, e-; ``f`` the truth charge rate, persistence included; ``M_ij =
    min(t_i, t_j)``; ``w`` the rate weights of the product's ``READMODE``, else the
    truth sampling: CDS/Fowler ``(mean signal - mean pedestal) / exposure time``, ramp
    the least-squares slope), plus the master dark's noise from the truth darks the
    same way, all over the normalised flat squared (the master flat's own noise is not
    counted). Pixels: no MASK bit, no true cosmic ray, and a true level (reset + charge
    at the last read) below 90 % of saturation. Per frame: ``nir_rate_pull_mean``,
    ``nir_rate_pull_std``, ``nir_rate_pull_robust_std``, ``nir_rate_ratio_median``
    (measured / expected where expected > 5 sigma), ``n_nir_pixels``; in ``all`` the
    same over every frame's pixels.
frames / ``{frame}.{chip}`` and ``all``
    ``astrometric_rms_arcsec``: rms of the angular separation between each on-chip true
    star (stars.ecsv ra, dec) and the product WCS (``astrometry/{frame}.{chip}.wcs.fits``)
    evaluated at its true pixel position; ``astrometric_offset_ra_arcsec`` /
    ``_dec_arcsec``: mean offsets (RA x cos Dec); from ``qa/frames.ecsv``:
    ``zero_point_error_mag`` = product - truth, ``zero_point_error_rel_mag`` = the same
    minus the band's median error (the truth ZP is before the flat, so a flat
    normalisation shifts every frame alike), ``fwhm_error_arcsec`` = product - truth
    seeing and ``fwhm_ratio``; ``all`` holds the rms / robust statistics of these.
coadds / ``{target}.{band}``
    ``astrometric_rms_arcsec``: rms separation between true positions and the coadd WCS at
    the windowed centroids measured in the coadd image of bright (single-frame S/N >= 50),
    unsaturated, isolated true stars; ``depth_5sigma_mag`` and ``completeness_50_mag``
    from the coadd catalog (see catalogs); ``single_frame_depth_5sigma_mag`` (median over
    the frame catalogs of the target and band), ``depth_ideal_mag`` = single-frame depth
    + 1.25 log10 N (N science frames), ``depth_minus_ideal_mag``; the same for 50 %
    completeness.
catalogs / ``{frame}.{chip}`` and ``coadd {target}.{band}``
    sources matched one-to-one to truth stars within 1 arcsec (nearest pairs first);
    truth = on-chip stars of the frame (coadds: stars on a chip of at least one of the
    target's frames in the band, inside the coadd's finite pixels when the image exists);
    ``completeness`` = matched truth / truth; ``n_false`` and ``false_detection_rate``:
    sources with no truth star (nor, with galaxies, a true galaxy) within 1 arcsec / sources; ``astrometric_rms_arcsec``:
    rms separation of matches with S/N > 50 (mag_err < 0.0217) whose ``flags`` (when the
    catalog has them) do not say the measurement is compromised (bits 4 saturated, 8
    edge, 16 masked pixels: the catalog format of imred.paths; ``n_bright_flagged``
    counts those left out); ``bright_mag_median`` and ``bright_mag_robust_rms`` of
    mag - true mag for those; ``depth_5sigma_mag``:
    where the median mag_err in 0.5-mag bins (>= 3 sources) of catalog magnitude last
    crosses 0.2171 (interpolated in log mag_err); ``completeness_50_mag``: where the
    completeness in 0.5-mag bins (>= 2 stars) of true magnitude last falls below 50 %
    (interpolated); ``colour_term_slope`` (and
    ``_err``): slope of a 3-sigma-clipped line fit of (mag - true mag) against the true
    colour (first two scenario bands) for S/N > 50 matches, when catalogs of that kind
    exist in two bands; next to it, when the band has a simulated colour term
    (scenario ``bands[].colour_term``), ``colour_term_true``: the slope it should give
    (k, or -k when its colour is the reversed one; None when its colour is another) and
    ``colour_term_true_colour`` (e.g. ``g-r``); ``bins``: per 1-mag bin, completeness
    and residuals by true magnitude and false detections by catalog magnitude.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import string
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS, FITSFixedWarning
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy.spatial import cKDTree

from . import paths
from .errors import ImredError
from .instrument import Chip, Instrument, load_instrument, safe_name
from .mask import Bit
from .products import read_image_product
from .sections import parse_section

NOT_PRODUCED = "not produced"
ROBUST = 1.4826  # rms of a Gaussian / its median absolute deviation
MATCH_RADIUS_ARCSEC = 1.0
SN50_MAG_ERR = 2.5 / math.log(10) / 50  # 0.0217 mag: S/N = 50
SN5_MAG_ERR = 2.5 / math.log(10) / 5  # 0.2171 mag: S/N = 5
COMPROMISED = 4 | 8 | 16  # catalog flags: saturated, edge, masked (imred.paths)
SN_NONLINEARITY = 100  # stars used for the non-linearity trend
HOT_PIXEL, HOT_COLUMN = 1, 2  # truth bad-pixel bits (imred.sim.detector), restated here
SECTIONS = ("masters", "calibration", "frames", "coadds", "catalogs")
_NIGHT_DIR = re.compile(r"^\d{8}$")
# raw-file suffixes the observation log drops from a file name to make the frame id
_FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fit.gz", ".fits", ".fit", ".fts", ".fz")
_PREFIX = "results/{instrument}/{night}/"

# metric -> (test, threshold, text); metrics not listed have no goal
GOALS: dict[str, tuple[str, float, str]] = {
    "error_over_photon_limit": ("<=", 1.2, "≤ 1.2"),
    "read_noise_error_pct": ("abs<=", 3.0, "within ±3 %"),
    "gain_error_pct": ("abs<=", 3.0, "within ±3 %"),
    "cr_recall": (">=", 0.95, "≥ 0.95"),
    "star_core_cr_false_positive_fraction": ("<", 0.001, "< 0.1 %"),
    "nonlinearity_residual": ("abs<", 0.001, "< 0.1 %"),
    "astrometric_rms_arcsec": ("<=", 0.05, '≤ 0.05"'),
    "zero_point_error_rel_mag": ("abs<=", 0.02, "within ±0.02 mag"),
    "zero_point_rms_rel_mag": ("<=", 0.02, "≤ 0.02 mag"),
    "bright_mag_robust_rms": ("<=", 0.03, "≤ 0.03 mag"),
    "nir_rate_pull_mean": ("abs<=", 0.1, "within ±0.1"),
    "nir_rate_pull_std": ("<=", 1.1, "≤ 1.1"),
}


# ------------------------------------------------------------------ statistics
def robust_rms(values: Iterable[float]) -> float:
    """1.4826 x the median absolute deviation from the median (NaN when empty)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    return float(ROBUST * np.median(np.abs(x - np.median(x))))


def rms(values: Iterable[float]) -> float:
    """sqrt(mean(x**2)) of the finite values (NaN when empty)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x**2))) if x.size else math.nan


def _median(values: Iterable[float]) -> float:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else math.nan


def _unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def separation_arcsec(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular separation (arcsec) of two sets of positions (deg), element by element."""
    chord = np.linalg.norm(_unit_vectors(ra1, dec1) - _unit_vectors(ra2, dec2), axis=1)
    return np.degrees(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))) * 3600.0


def _offsets_arcsec(ra1, dec1, ra2, dec2) -> tuple[np.ndarray, np.ndarray]:
    """(RA x cos Dec, Dec) offsets of positions 1 from positions 2, arcsec (small angles)."""
    dra = (np.asarray(ra1, float) - np.asarray(ra2, float) + 180.0) % 360.0 - 180.0
    ddec = np.asarray(dec1, float) - np.asarray(dec2, float)
    return dra * np.cos(np.radians(np.asarray(dec2, float))) * 3600.0, ddec * 3600.0


def match_sky(
    ra1, dec1, ra2, dec2, radius_arcsec: float = MATCH_RADIUS_ARCSEC
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one match of two position lists within ``radius_arcsec``.

    Candidate pairs (up to 8 nearest neighbours within the radius, on unit vectors) are
    accepted nearest first; each position is used at most once.

    Returns
    -------
    i1, i2 : ndarray of int
        Indices of matched pairs into list 1 and list 2.
    sep : ndarray
        Their separations, arcsec.
    """
    n1, n2 = len(ra1), len(ra2)
    empty = np.zeros(0, dtype=int)
    if n1 == 0 or n2 == 0:
        return empty, empty, np.zeros(0)
    u1, u2 = _unit_vectors(ra1, dec1), _unit_vectors(ra2, dec2)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    k = min(8, n2)
    dist, idx = cKDTree(u2).query(u1, k=k, distance_upper_bound=chord)
    dist, idx = dist.reshape(n1, k), idx.reshape(n1, k)
    ok = np.isfinite(dist)
    pairs_i1 = np.broadcast_to(np.arange(n1)[:, None], (n1, k))[ok]
    pairs_i2, pairs_d = idx[ok], dist[ok]
    order = np.argsort(pairs_d, kind="stable")
    used1, used2 = np.zeros(n1, bool), np.zeros(n2, bool)
    out1, out2 = [], []
    for j in order:
        a, b = pairs_i1[j], pairs_i2[j]
        if not used1[a] and not used2[b]:
            used1[a] = used2[b] = True
            out1.append(a)
            out2.append(b)
    i1, i2 = np.array(out1, dtype=int), np.array(out2, dtype=int)
    sep = separation_arcsec(
        np.asarray(ra1)[i1], np.asarray(dec1)[i1], np.asarray(ra2)[i2], np.asarray(dec2)[i2]
    )
    return i1, i2, sep


def _crossing(centres: np.ndarray, values: np.ndarray, level: float, *, rising: bool) -> float:
    """Where a binned curve crosses ``level`` for the last time going to fainter bins.

    The last bin still on the bright side of ``level`` (below it when ``rising``, at or
    above it otherwise) and the next one are interpolated linearly; NaN when the curve
    never reaches the level or starts beyond it.
    """
    bright = (values < level) if rising else (values >= level)
    idx = np.flatnonzero(bright)
    if idx.size == 0 or idx[-1] == len(values) - 1:
        return math.nan
    i = int(idx[-1])
    a, b = values[i], values[i + 1]
    return float(centres[i] + (level - a) / (b - a) * (centres[i + 1] - centres[i]))


def _clipped_line(x: np.ndarray, y: np.ndarray, nsigma: float = 3.0) -> tuple[float, float, int]:
    """Slope, its standard error and the number of points kept of a clipped line fit."""
    keep = np.isfinite(x) & np.isfinite(y)
    for _ in range(10):
        if keep.sum() < 3 or np.ptp(x[keep]) == 0:
            return math.nan, math.nan, int(keep.sum())
        slope, icpt = np.polyfit(x[keep], y[keep], 1)
        resid = y - (slope * x + icpt)
        scatter = robust_rms(resid[keep]) or rms(resid[keep])
        new = keep & (np.abs(resid) <= nsigma * scatter) if scatter > 0 else keep
        if np.array_equal(new, keep):
            break
        keep = new
    n = int(keep.sum())
    xs, rs = x[keep], resid[keep]
    sxx = np.sum((xs - xs.mean()) ** 2)
    err = math.sqrt(np.sum(rs**2) / max(n - 2, 1) / sxx) if sxx > 0 else math.nan
    return float(slope), err, n


def raw_frame_id(file_name: str) -> str:
    """The pipeline's frame id of a raw file: the name without its FITS/compression
    suffix, path-safe (the observation log's rule, restated)."""
    name = Path(file_name).name
    for suffix in _FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_name(name)


# ----------------------------------------------------------------- truth folder
class Truth:
    """The simulator's truth folder (see :mod:`imred.simulate`); images are read on demand."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        scenario = self.dir / "scenario.yaml"
        if not scenario.is_file():
            raise ImredError(
                f"{self.dir} is not a simulator truth folder (no scenario.yaml); give the "
                "'truth' folder written by 'imred simulate'"
            )
        self.scenario = yaml.safe_load(scenario.read_text())
        self.frames = Table.read(self.dir / "frames.ecsv")
        self.frame_chips = Table.read(self.dir / "frame_chips.ecsv")
        self.stars = Table.read(self.dir / "stars.ecsv")
        self.star_frames = Table.read(self.dir / "star_frames.ecsv")
        galaxies = self.dir / "galaxies.ecsv"
        self.galaxy_positions = None  # (ra, dec) of the simulated galaxies, if any
        if galaxies.is_file():
            g = Table.read(galaxies)
            self.galaxy_positions = (np.asarray(g["ra"], float), np.asarray(g["dec"], float))
        self._star_index = {int(i): n for n, i in enumerate(self.stars["id"])}
        self._images: dict[tuple[str, str], np.ndarray] = {}
        self.imagetype = np.array([str(v) for v in self.frames["imagetype"]])
        self.band = np.array(
            [str(v) for v in np.ma.filled(np.ma.asarray(self.frames["band"]).astype(str), "")]
        )
        self.bands = [b["name"] for b in self.scenario.get("bands", [])]
        self._product_frames = self._frame_ids()

    def _frame_ids(self) -> dict[tuple[str, str], str]:
        """(truth frame, chip) -> the product frame id where it is not the truth frame."""
        fc = self.frame_chips
        if (self.dir / "nir_reads.ecsv").is_file() or "file" not in fc.colnames:
            return {}  # NIR reads: the obslog names the exposure by their common prefix
        files = np.ma.filled(np.ma.asarray(fc["file"]).astype(str), "")
        out = {}
        for frame, chip, name in zip(fc["frame"], fc["chip"], files, strict=True):
            pid = raw_frame_id(str(name)) if str(name) else str(frame)
            if pid != str(frame):
                out[(str(frame), str(chip))] = pid
        return out

    def product_frame(self, frame: str, chip: str) -> str:
        """The pipeline's frame id for one chip of a truth exposure (see Frame ids)."""
        return self._product_frames.get((str(frame), str(chip)), str(frame))

    def product_frames(self) -> dict[str, dict[str, str]]:
        """``{truth frame: {chip: product frame id}}`` where the two differ."""
        out: dict[str, dict[str, str]] = {}
        for (frame, chip), pid in self._product_frames.items():
            out.setdefault(frame, {})[chip] = pid
        return out

    @property
    def night(self) -> str:
        """The night as ``YYYYMMDD``."""
        return str(self.scenario["night"]).replace("-", "")

    def frame_row(self, frame: str):
        return self.frames[int(np.flatnonzero(self.frames["frame"] == frame)[0])]

    def frames_of(self, *types: str, band: str | None = None) -> list[str]:
        sel = np.isin(self.imagetype, types)
        if band is not None:
            sel &= self.band == band
        return [str(f) for f in self.frames["frame"][sel]]

    def chip_value(self, chip: str, key: str) -> float:
        """Median over exposures of ``gain`` or ``read_noise`` in frame_chips.ecsv."""
        sel = self.frame_chips["chip"] == chip
        return float(np.median(self.frame_chips[key][sel]))

    def image(self, name: str, chip: str) -> np.ndarray:
        """A per-chip truth image: ``bias``, ``dark``, ``badpix`` or ``flat_{band}``."""
        key = (name, chip)
        if key not in self._images:
            path = self.dir / f"{name}.fits"
            if not path.is_file():
                raise ImredError(f"truth file {path} is missing")
            with fits.open(path, memmap=False) as hdul:
                hdu = _chip_hdu(hdul, chip, path)
                self._images[key] = np.asarray(hdu.data)
        return self._images[key]

    def frame_truth(self, frame: str, chip: str) -> tuple[np.ndarray, fits.Header]:
        """The cosmic-ray mask (bool, data grid) and the header (true WCS) of a chip."""
        path = self.dir / "frames" / f"{frame}.fits"
        with fits.open(path, memmap=False) as hdul:
            hdu = _chip_hdu(hdul, chip, path)
            return np.asarray(hdu.data) > 0, hdu.header.copy()

    def stars_on(self, frame: str, chip: str, *, on_chip: bool = True) -> Table:
        """star_frames rows of one frame and chip, with ``ra``, ``dec`` and magnitudes."""
        sf = self.star_frames
        sel = (sf["frame"] == frame) & (sf["chip"] == chip)
        if on_chip:
            sel &= sf["on_chip"]
        rows = sf[sel]
        idx = self.star_rows(rows["id"])
        for col in self.stars.colnames:
            if col != "id":
                rows[col] = np.asarray(self.stars[col])[idx]
        return rows

    def star_rows(self, ids: Iterable[int]) -> np.ndarray:
        return np.array([self._star_index[int(i)] for i in ids], dtype=int)

    def mag(self, band: str) -> np.ndarray | None:
        col = f"{band}_mag"
        return np.asarray(self.stars[col], dtype=float) if col in self.stars.colnames else None


def _chip_hdu(hdul: fits.HDUList, chip: str, path: Path):
    for hdu in hdul[1:]:
        if str(hdu.header.get("CHIP", hdu.name)).lower() == chip.lower():
            return hdu
    raise ImredError(f"truth file {path} has no extension for chip '{chip}'")


# ---------------------------------------------------------------- product grids
def _data_slices(chip: Chip, shape: tuple[int, int]) -> tuple[slice, slice]:
    if chip.datasec:
        return parse_section(chip.datasec)
    return slice(0, shape[0]), slice(0, shape[1])


def _trim_slices(chip: Chip, header: fits.Header | None, shape) -> tuple[slice, slice]:
    text = (header or {}).get("TRIMSEC") or chip.trimsec or chip.datasec
    return parse_section(text) if text else (slice(0, shape[0]), slice(0, shape[1]))


def _data_offset(chip: Chip, header: fits.Header | None, data_shape) -> tuple[int, int]:
    """(dy, dx) with data-grid pixel = product pixel + (dy, dx)."""
    data = _data_slices(chip, data_shape)
    trim = _trim_slices(chip, header, data_shape)
    return trim[0].start - data[0].start, trim[1].start - data[1].start


def _overlap(product_shape, truth_shape, offset):
    """Slices of the product and of a truth array (truth = product + offset) that overlap."""
    sp, st = [], []
    for n_p, n_t, o in zip(product_shape, truth_shape, offset, strict=True):
        a, b = max(0, -o), min(n_p, n_t - o)
        if b <= a:
            return None
        sp.append(slice(a, b))
        st.append(slice(a + o, b + o))
    return tuple(sp), tuple(st)


def _on_product_grid(truth: np.ndarray, product_shape, offset, fill=0) -> np.ndarray:
    out = np.full(product_shape, fill, dtype=truth.dtype)
    ov = _overlap(product_shape, truth.shape, offset)
    if ov is not None:
        out[ov[0]] = truth[ov[1]]
    return out


# ------------------------------------------------------------ masters (arrays)
def score_bias(master: np.ndarray, truth_bias: np.ndarray, expected_noise: float) -> dict:
    """Structure error of a master bias (ADU) against the truth bias on the same pixels."""
    ok = np.isfinite(master) & np.isfinite(truth_bias)
    diff = np.where(
        ok, (master - np.median(master[ok])) - (truth_bias - np.median(truth_bias[ok])), np.nan
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # rows without finite pixels
        line = diff - np.nanmedian(diff, axis=1, keepdims=True)
    err = rms(diff[ok])
    return {
        "rms_error_adu": err,
        "rms_error_line_adu": rms(line[ok]),
        "expected_noise_adu": expected_noise,
        "error_over_noise": err / expected_noise if expected_noise > 0 else math.nan,
        "n_pixels": int(ok.sum()),
    }


def score_dark(
    master: np.ndarray, truth_dark: np.ndarray, badpix: np.ndarray, expected_noise: float
) -> dict:
    """Dark-current error (e-/s) off hot pixels and the recovery of hot pixels."""
    ok = np.isfinite(master)
    cold = ok & ((badpix & (HOT_PIXEL | HOT_COLUMN)) == 0)
    diff = (master - truth_dark)[cold]
    out: dict[str, Any] = {
        "rms_error_e_per_s": rms(diff),
        "median_error_e_per_s": _median(diff),
        "expected_noise_e_per_s": expected_noise,
    }
    for name, bit in (("hot_pixel", HOT_PIXEL), ("hot_column", HOT_COLUMN)):
        hot = (badpix & bit) > 0
        n = int(hot.sum())
        good = ok[hot] & (np.abs(master[hot] / truth_dark[hot] - 1.0) <= 0.10)
        out[f"n_{name}s"] = n
        out[f"{name}_recovery"] = float(good.sum() / n) if n else None
    return out


def score_flat(
    master: np.ndarray, truth_flat: np.ndarray, badpix: np.ndarray, electrons: np.ndarray
) -> dict:
    """Flat error against the truth flat (both median-normalised over good pixels).

    ``electrons`` is the total photo-electrons per pixel in the band's flat frames.
    """
    good = np.isfinite(master) & (master > 0) & (badpix == 0) & (truth_flat > 0)
    m = master / np.median(master[good])
    t = truth_flat / np.median(truth_flat[good])
    rel = (m / t - 1.0)[good]
    yy, xx = np.nonzero(good)
    design = np.column_stack([np.ones(rel.size), xx, yy]).astype(float)
    coef, *_ = np.linalg.lstsq(design, rel, rcond=None)
    err = rms(rel)
    limit = (
        float(np.sqrt(np.mean(1.0 / electrons[good]))) if np.all(electrons[good] > 0) else math.nan
    )
    return {
        "rms_error": err,
        "robust_rms_error": robust_rms(rel),
        "rms_error_after_plane": rms(rel - design @ coef),
        "photon_noise_limit": limit,
        "error_over_photon_limit": err / limit if limit > 0 else math.nan,
        "n_pixels": int(good.sum()),
    }


# -------------------------------------------------------- calibrated (arrays)
def star_core_mask(shape, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose centre (integer coordinates) lies within ``radius`` of any (x, y)."""
    core = np.zeros(shape, dtype=bool)
    r = math.ceil(radius)
    for xc, yc in zip(x, y, strict=True):
        x0, y0 = round(float(xc)), round(float(yc))
        ys = slice(max(y0 - r, 0), max(min(y0 + r + 1, shape[0]), 0))
        xs = slice(max(x0 - r, 0), max(min(x0 + r + 1, shape[1]), 0))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            continue
        yy, xx = np.mgrid[ys, xs]
        core[ys, xs] |= (xx - xc) ** 2 + (yy - yc) ** 2 <= radius**2
    return core


def cosmic_ray_counts(mask: np.ndarray, true_cr: np.ndarray, core: np.ndarray) -> dict:
    """Counts behind the cosmic-ray metrics of one calibrated frame."""
    flagged = (mask & int(Bit.COSMIC_RAY)) > 0
    not_cr = ~true_cr
    return {
        "n_true_cr_pixels": int(true_cr.sum()),
        "n_true_cr_flagged": int((flagged & true_cr).sum()),
        "n_other_pixels": int(not_cr.sum()),
        "n_other_flagged": int((flagged & not_cr).sum()),
        "n_core_pixels": int((core & not_cr).sum()),
        "n_core_flagged": int((core & not_cr & flagged).sum()),
    }


def cosmic_ray_metrics(c: dict) -> dict:
    """Recall and false-positive fractions from :func:`cosmic_ray_counts` (summable)."""

    def frac(a, b):
        return c[a] / c[b] if c[b] else None

    return {
        "cr_recall": frac("n_true_cr_flagged", "n_true_cr_pixels"),
        "cr_false_positive_fraction": frac("n_other_flagged", "n_other_pixels"),
        "star_core_cr_false_positive_fraction": frac("n_core_flagged", "n_core_pixels"),
        **c,
    }


def aperture_fluxes(image, x, y, radius, annulus, *, bad=None, oversample=5) -> tuple:
    """Background-subtracted aperture sums (sub-pixel weights) and whether each is clean.

    ``annulus`` = (inner, outer) radii of the median background; ``bad`` (bool) marks
    pixels that must not fall in the aperture.
    """
    ny, nx = image.shape
    flux = np.full(len(x), np.nan)
    clean = np.zeros(len(x), dtype=bool)
    r_out = annulus[1]
    h = math.ceil(r_out) + 1
    sub = (np.arange(oversample) + 0.5) / oversample - 0.5
    for i, (xc, yc) in enumerate(zip(x, y, strict=True)):
        x0, y0 = round(float(xc)), round(float(yc))
        if x0 - h < 0 or y0 - h < 0 or x0 + h >= nx or y0 + h >= ny:
            continue
        stamp = image[y0 - h : y0 + h + 1, x0 - h : x0 + h + 1].astype(float)
        yy, xx = np.mgrid[y0 - h : y0 + h + 1, x0 - h : x0 + h + 1]
        r = np.hypot(xx - xc, yy - yc)
        ring = (r >= annulus[0]) & (r <= annulus[1]) & np.isfinite(stamp)
        if ring.sum() < 10:
            continue
        dx = (xx[..., None, None] + sub[None, None, None, :]) - xc
        dy = (yy[..., None, None] + sub[None, None, :, None]) - yc
        w = ((dx**2 + dy**2) <= radius**2).mean(axis=(2, 3))
        inside = w > 0
        ok = np.all(np.isfinite(stamp[inside]))
        if bad is not None:
            ok &= not np.any(bad[y0 - h : y0 + h + 1, x0 - h : x0 + h + 1][inside])
        flux[i] = np.sum(w[inside] * (stamp[inside] - np.median(stamp[ring])))
        clean[i] = ok
    return flux, clean


def fit_nonlinearity(groups, peak, ratio, p_ref: float, fwhm=None) -> dict:
    """Fit ratio = a_group + b peak (+ c fwhm); return b x p_ref / mean ratio and its error.

    One intercept per group (e.g. band x chip); the optional common FWHM term takes up
    aperture losses that change with the seeing (which also sets the peak). Points more
    than 3 robust sigma off the fit are dropped, iteratively.
    """
    groups, peak, ratio = np.asarray(groups), np.asarray(peak, float), np.asarray(ratio, float)
    extra = [] if fwhm is None else [np.asarray(fwhm, float)]
    keep = np.isfinite(peak) & np.isfinite(ratio)
    for col in extra:
        keep &= np.isfinite(col)
    out = {
        "nonlinearity_residual": None,
        "nonlinearity_residual_err": None,
        "nonlinearity_n_stars": int(keep.sum()),
        "nonlinearity_ref_peak_e": p_ref,
    }
    scale = p_ref if p_ref > 0 else 1.0
    for _ in range(10):
        if keep.sum() < 3:  # too few stars (a small chip): nothing to fit
            return out
        names = np.unique(groups[keep])
        cols = [(groups == g).astype(float) for g in names] + [peak / scale]
        cols += [c - np.mean(c[keep]) for c in extra if np.ptp(c[keep]) > 0]
        design = np.column_stack(cols)
        if keep.sum() <= design.shape[1] + 1:
            return out
        coef, *_ = np.linalg.lstsq(design[keep], ratio[keep], rcond=None)
        resid = ratio - design @ coef
        scatter = robust_rms(resid[keep])
        new = keep & (np.abs(resid) <= 3.0 * scatter) if scatter > 0 else keep
        if np.array_equal(new, keep):
            break
        keep = new
    n, k = int(keep.sum()), design.shape[1]
    sigma2 = np.sum(resid[keep] ** 2) / max(n - k, 1)
    cov = sigma2 * np.linalg.pinv(design[keep].T @ design[keep])
    b, b_err = coef[len(names)], math.sqrt(max(cov[len(names), len(names)], 0.0))
    mean_ratio = float(np.mean(ratio[keep]))
    if not mean_ratio > 0:
        return out
    out.update(
        nonlinearity_residual=float(b / mean_ratio),
        nonlinearity_residual_err=float(b_err / mean_ratio),
        nonlinearity_n_stars=n,
    )
    return out


def windowed_centroids(image, x, y, fwhm) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-windowed centroids (XWIN-like, sigma = FWHM/2.355) started at (x, y).

    NaN where the stamp leaves the image, holds a non-finite pixel, or the centroid
    wanders more than one FWHM.
    """
    ny, nx = image.shape
    sigma = fwhm / 2.3548
    h = math.ceil(3 * fwhm)
    xs, ys = np.full(len(x), np.nan), np.full(len(x), np.nan)
    for i, (xa, ya) in enumerate(zip(x, y, strict=True)):
        x0, y0 = round(float(xa)), round(float(ya))
        if x0 - h < 0 or y0 - h < 0 or x0 + h >= nx or y0 + h >= ny:
            continue
        stamp = image[y0 - h : y0 + h + 1, x0 - h : x0 + h + 1].astype(float)
        if not np.all(np.isfinite(stamp)):
            continue
        yy, xx = np.mgrid[y0 - h : y0 + h + 1, x0 - h : x0 + h + 1]
        edge = np.hypot(xx - xa, yy - ya) >= 2.5 * fwhm
        s = stamp - np.median(stamp[edge])
        xc, yc = float(xa), float(ya)
        for _ in range(30):
            w = np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / (2 * sigma**2)) * s
            tot = w.sum()
            if tot <= 0:
                xc = math.nan
                break
            ddx, ddy = 2 * np.sum(w * (xx - xc)) / tot, 2 * np.sum(w * (yy - yc)) / tot
            xc, yc = xc + ddx, yc + ddy
            if abs(ddx) < 1e-6 and abs(ddy) < 1e-6:
                break
        if np.isfinite(xc) and math.hypot(xc - xa, yc - ya) <= fwhm:
            xs[i], ys[i] = xc, yc
    return xs, ys


# ----------------------------------------------------------- catalogs (arrays)
def _bin_edges(mags: np.ndarray, width: float) -> np.ndarray:
    m = mags[np.isfinite(mags)]
    if m.size == 0:
        return np.zeros(0)
    lo, hi = math.floor(m.min() / width) * width, math.ceil(m.max() / width) * width
    return np.arange(lo, hi + width / 2 + (width if hi == lo else 0), width)


def score_catalog(
    cat: Table,
    truth_ra: np.ndarray,
    truth_dec: np.ndarray,
    truth_mag: np.ndarray | None,
    footprint: np.ndarray,
    *,
    colour: np.ndarray | None = None,
    radius_arcsec: float = MATCH_RADIUS_ARCSEC,
    galaxies: tuple[np.ndarray, np.ndarray] | None = None,
    colour_term_true: tuple[float | None, str] | None = None,
) -> dict:
    """Compare a source catalog with the truth stars (see the module docstring).

    ``truth_*`` cover every truth star (all are candidates for a match); ``footprint``
    (bool) marks those the catalog should contain (completeness); ``colour`` is the true
    colour per truth star for the colour-term fit. ``galaxies`` (ra, dec of the true
    galaxies): sources nearer to a galaxy than ``radius_arcsec`` and not matched to a
    star are neither stars nor false detections (``n_galaxies`` counts them).
    ``colour_term_true``: (true slope or None, colour) of the band's simulated colour
    term, reported next to the fitted slope.
    """
    for col in ("ra", "dec", "mag"):
        if col not in cat.colnames:
            raise ImredError(f"catalog has no '{col}' column; columns: {', '.join(cat.colnames)}")
    # sources without a sky position (a frame that was not solved) cannot be scored
    placed = np.isfinite(np.asarray(cat["ra"], float)) & np.isfinite(np.asarray(cat["dec"], float))
    cat = cat[placed]
    ra, dec = np.asarray(cat["ra"], float), np.asarray(cat["dec"], float)
    mag = np.asarray(cat["mag"], float)
    err = (
        np.asarray(cat["mag_err"], float)
        if "mag_err" in cat.colnames
        else np.full(len(cat), np.nan)
    )
    i_cat, i_true, sep = match_sky(ra, dec, truth_ra, truth_dec, radius_arcsec)
    matched_cat = np.zeros(len(cat), bool)
    matched_cat[i_cat] = True
    n_galaxies = 0
    if galaxies is not None and len(galaxies[0]) and (~matched_cat).any():
        rest = np.flatnonzero(~matched_cat)
        j, _, _ = match_sky(ra[rest], dec[rest], galaxies[0], galaxies[1], radius_arcsec)
        n_galaxies = int(j.size)
        matched_cat[rest[j]] = True  # not a false detection (and not a star)
    matched_true = np.zeros(len(truth_ra), bool)
    matched_true[i_true] = True
    n_fp = int(footprint.sum())
    out: dict[str, Any] = {
        "n_sources": len(cat),
        "n_truth": n_fp,
        "n_matched": int(matched_true[footprint].sum()),
        "completeness": float(matched_true[footprint].sum() / n_fp) if n_fp else None,
        "n_false": int((~matched_cat).sum()),
        "false_detection_rate": float((~matched_cat).sum() / len(cat)) if len(cat) else None,
    }
    if galaxies is not None:
        out["n_galaxies"] = n_galaxies
    bright = err[i_cat] < SN50_MAG_ERR
    if "flags" in cat.colnames:
        compromised = (np.asarray(cat["flags"], int)[i_cat] & COMPROMISED) != 0
        out["n_bright_flagged"] = int((bright & compromised).sum())
        bright &= ~compromised
    use = bright if bright.sum() >= 3 else np.ones(i_cat.size, bool)
    out["astrometric_rms_arcsec"] = rms(sep[use]) if use.any() else None
    out["n_astrometric"] = int(use.sum())
    if truth_mag is None:
        return out
    resid = mag[i_cat] - truth_mag[i_true]
    out["bright_mag_median"] = _median(resid[bright]) if bright.any() else None
    out["bright_mag_robust_rms"] = robust_rms(resid[bright]) if bright.any() else None
    out["n_bright"] = int(bright.sum())

    # depth: median mag_err in 0.5-mag bins of catalog magnitude
    fin = np.isfinite(mag) & np.isfinite(err) & (err > 0)
    edges = _bin_edges(mag[fin], 0.5)
    centres, med = [], []
    for lo, hi in itertools.pairwise(edges):
        s = fin & (mag >= lo) & (mag < hi)
        if s.sum() >= 3:
            centres.append((lo + hi) / 2)
            med.append(math.log10(np.median(err[s])))
    out["depth_5sigma_mag"] = _crossing(
        np.array(centres), np.array(med), math.log10(SN5_MAG_ERR), rising=True
    )

    # 50 % completeness: 0.5-mag bins of true magnitude
    tm = truth_mag[footprint]
    hit = matched_true[footprint]
    edges = _bin_edges(tm, 0.5)
    centres, comp = [], []
    for lo, hi in itertools.pairwise(edges):
        s = (tm >= lo) & (tm < hi)
        if s.sum() >= 2:
            centres.append((lo + hi) / 2)
            comp.append(hit[s].mean())
    out["completeness_50_mag"] = _crossing(np.array(centres), np.array(comp), 0.5, rising=False)

    # colour term
    if colour is not None:
        x, y = colour[i_true][bright], resid[bright]
        slope, slope_err, n = _clipped_line(x, y)
        out["colour_term_slope"] = slope
        out["colour_term_slope_err"] = slope_err
        out["colour_term_n_stars"] = n
        if colour_term_true is not None:
            out["colour_term_true"], out["colour_term_true_colour"] = colour_term_true

    # per 1-mag bin
    both = np.concatenate([tm, mag[np.isfinite(mag)]])
    edges = _bin_edges(both, 1.0)
    fp_idx = np.flatnonzero(footprint)
    true_to_resid = dict(zip(i_true.tolist(), resid.tolist(), strict=True))
    bins = []
    for lo, hi in itertools.pairwise(edges):
        s_true = fp_idx[(tm >= lo) & (tm < hi)]
        res = np.array([true_to_resid[i] for i in s_true if i in true_to_resid])
        s_cat = (mag >= lo) & (mag < hi)
        n_det = int(s_cat.sum())
        bins.append(
            {
                "mag_lo": float(lo),
                "mag_hi": float(hi),
                "n_truth": int(s_true.size),
                "n_matched": int(res.size),
                "completeness": float(res.size / s_true.size) if s_true.size else None,
                "median_residual": _median(res) if res.size else None,
                "robust_rms_residual": robust_rms(res) if res.size else None,
                "n_detected": n_det,
                "n_false": int((s_cat & ~matched_cat).sum()),
                "false_detection_rate": float((s_cat & ~matched_cat).sum() / n_det)
                if n_det
                else None,
            }
        )
    out["bins"] = bins
    return out


# ------------------------------------------------------------------ the scorer
class _Results:
    """Where the products of one instrument and night are."""

    def __init__(self, results_dir: Path, instrument: str, night_hint: str):
        if not results_dir.is_dir():
            raise ImredError(f"results folder {results_dir} does not exist")
        self.dir = results_dir
        self.instrument = instrument
        if (results_dir / "results" / instrument).is_dir():
            inst_dir = results_dir / "results" / instrument
        elif (results_dir / instrument).is_dir():
            inst_dir = results_dir / instrument
        elif _NIGHT_DIR.match(results_dir.name) and results_dir.parent.name == instrument:
            inst_dir = results_dir.parent
        else:
            inst_dir = results_dir / "results" / instrument
        nights = sorted(
            p.name for p in inst_dir.glob("*") if p.is_dir() and _NIGHT_DIR.match(p.name)
        )
        if night_hint in nights or not nights:
            self.night = night_hint
        elif len(nights) == 1:
            self.night = nights[0]
        else:
            raise ImredError(
                f"{inst_dir} holds several nights ({', '.join(nights)}) and none is the truth's "
                f"night {night_hint}; give the night's folder ({inst_dir}/NIGHT)"
            )
        self.night_dir = inst_dir / self.night

    def path(self, template: str, **fields: str) -> Path:
        """The product's path; wildcards not given become ``*`` (see :meth:`find`)."""
        if not template.startswith(_PREFIX):
            raise ValueError(f"path template {template} is not under {_PREFIX}")
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        fields = {**dict.fromkeys(names, "*"), **fields}
        return self.night_dir / template[len(_PREFIX) :].format(**fields)

    def find(self, template: str, **fields: str) -> list[Path]:
        """Existing files matching a template, wildcards not given matching anything."""
        pattern = self.path(template, **fields)
        return sorted(p for p in pattern.parent.glob(pattern.name) if p.is_file())


class _Scorer:
    def __init__(self, results_dir: Path, truth: Truth, inst: Instrument):
        self.truth = truth
        self.inst = inst
        self.res = _Results(results_dir, inst.name, truth.night)
        self.chips = [c.name for c in inst.chips]
        self.science = truth.frames_of("science", "standard")
        self.out: dict[str, dict] = {s: {} for s in SECTIONS}
        self.frame_catalog_scores: dict[tuple[str, str], dict] = {}

    # ------------------------------------------------------------- helpers
    def _pixel_scale(self, chip: str) -> float:
        return float(self.inst.chip_value(self.inst.chip(chip), "pixel_scale"))

    def _saturation_e(self, chip: str) -> float:
        sat = float(self.inst.chip_value(self.inst.chip(chip), "saturation") or 65535.0)
        nl = self.inst.detector.get("nonlinearity") or {}
        if nl.get("max_adu"):
            sat = min(sat, float(nl["max_adu"]))
        return sat * self.truth.chip_value(chip, "gain")

    def _key(self, frame: str, chip: str) -> str:
        """The report key of a frame x chip: the product's ``{frame id}.{chip}``."""
        return f"{self.truth.product_frame(frame, chip)}.{chip}"

    def _frame_path(self, template: str, frame: str, chip: str) -> Path:
        """Path of the per-frame x chip product of a truth exposure (its frame id)."""
        return self.res.path(
            template,
            instrument=self.inst.name,
            night=self.res.night,
            frame=self.truth.product_frame(frame, chip),
            chip=chip,
        )

    def _true_colour_term(self, band: str) -> tuple[float | None, str] | None:
        """(slope the colour-term fit should give, colour) of a simulated colour term."""
        b = self.truth.bands
        for entry in self.truth.scenario.get("bands", []):
            term = entry.get("colour_term") if entry.get("name") == band else None
            if term:
                c1, c2 = (str(c) for c in term["colour"])
                k = float(term["k"])
                slope = k if [c1, c2] == b[:2] else -k if [c2, c1] == b[:2] else None
                return slope, f"{c1}-{c2}"
        return None

    def _colour(self) -> np.ndarray | None:
        b = self.truth.bands
        if len(b) < 2:
            return None
        m1, m2 = self.truth.mag(b[0]), self.truth.mag(b[1])
        return None if m1 is None or m2 is None else m1 - m2

    # ------------------------------------------------------------- masters
    def _masters_of(self, template: str, key: str, **fields: str) -> list[tuple[str, Path | None]]:
        """(product key, path) of every master matching a template (any setup)."""
        found = self.res.find(template, instrument=self.inst.name, night=self.res.night, **fields)
        if not found:
            return [(key, None)]
        if len(found) == 1:
            return [(key, found[0])]
        return [(p.name.removesuffix(".fits"), p) for p in found]

    def masters(self) -> None:
        t = self.truth
        flat_bands = sorted(
            {
                t.band[i]
                for i in np.flatnonzero(np.isin(t.imagetype, ("flat", "twilight-flat", "sky-flat")))
                if t.band[i]
            }
        )
        out = self.out["masters"]
        for chip in self.chips:
            for key, path in self._masters_of(paths.MASTER_BIAS, f"bias.{chip}", chip=chip):
                out[key] = NOT_PRODUCED if path is None else self._bias(path, chip)
            for key, path in self._masters_of(paths.MASTER_DARK, f"dark.{chip}", chip=chip):
                out[key] = NOT_PRODUCED if path is None else self._dark(path, chip)
            for band in flat_bands:
                for key, path in self._masters_of(
                    paths.MASTER_FLAT, f"flat.{band}.{chip}", band=band, chip=chip
                ):
                    out[key] = NOT_PRODUCED if path is None else self._flat(path, band, chip)

    def _bias(self, path: Path, chip: str) -> dict:
        t, ch = self.truth, self.inst.chip(chip)
        gain, rn = t.chip_value(chip, "gain"), t.chip_value(chip, "read_noise")
        prod = _read_product(path)
        sci, hdr = prod["SCI"].astype(float), prod["header"]
        raw = t.image("bias", chip)
        trim = _trim_slices(ch, hdr, raw.shape)
        ov = _overlap(sci.shape, raw.shape, (trim[0].start, trim[1].start))
        if ov is None:
            raise ImredError(f"{path}: TRIMSEC does not overlap the chip's raw array")
        n = int(hdr.get("NCOMBINE", 0)) or len(t.frames_of("bias"))
        m = score_bias(sci[ov[0]], raw[ov[1]].astype(float), rn / gain / math.sqrt(max(n, 1)))
        m["ncombine"] = n
        m["read_noise_error_pct"] = (
            100.0 * (float(hdr["RDNOISE"]) / rn - 1.0) if "RDNOISE" in hdr else NOT_PRODUCED
        )
        return m

    def _dark(self, path: Path, chip: str) -> dict:
        t, ch = self.truth, self.inst.chip(chip)
        rn = t.chip_value(chip, "read_noise")
        prod = _read_product(path)
        sci = prod["SCI"].astype(float)
        dark, bad = t.image("dark", chip), t.image("badpix", chip)
        ov = _overlap(sci.shape, dark.shape, _data_offset(ch, prod["header"], dark.shape))
        if ov is None:
            raise ImredError(f"{path}: TRIMSEC does not overlap the chip's data section")
        texp = np.array([float(t.frame_row(f)["exptime"]) for f in t.frames_of("dark")])
        rate = float(np.median(dark))
        total = float(texp.sum())
        noise = math.sqrt(np.sum(rate * texp + rn**2)) / total if total > 0 else math.nan
        return score_dark(sci[ov[0]], dark[ov[1]].astype(float), bad[ov[1]], noise)

    def _flat(self, path: Path, band: str, chip: str) -> dict:
        t, ch = self.truth, self.inst.chip(chip)
        prod = _read_product(path)
        sci, hdr = prod["SCI"].astype(float), prod["header"]
        flat, bad = t.image(f"flat_{band}", chip), t.image("badpix", chip)
        ov = _overlap(sci.shape, flat.shape, _data_offset(ch, hdr, flat.shape))
        if ov is None:
            raise ImredError(f"{path}: TRIMSEC does not overlap the chip's data section")
        flats = t.frames_of("flat", "twilight-flat", "sky-flat", band=band)
        dose = sum(
            float(t.frame_row(f)["illumination"]) * float(t.frame_row(f)["exptime"]) for f in flats
        )
        tf = flat[ov[1]].astype(float)
        m = score_flat(sci[ov[0]], tf, bad[ov[1]], dose * tf)
        m["n_flat_frames"] = len(flats)
        gain = t.chip_value(chip, "gain")
        m["gain_error_pct"] = (
            100.0 * (float(hdr["GAINMEAS"]) / gain - 1.0) if "GAINMEAS" in hdr else NOT_PRODUCED
        )
        return m

    # ---------------------------------------------------------- calibrated
    def calibration(self) -> None:
        t = self.truth
        total: dict[str, int] = {}
        groups, peaks, ratios, fwhms = [], [], [], []
        any_produced = False
        sat_ref = []
        for frame in self.science:
            row = t.frame_row(frame)
            for chip in self.chips:
                key = self._key(frame, chip)
                path = self._frame_path(paths.CALIBRATED, frame, chip)
                prod = _read_product(path) if path.is_file() else None
                if prod is None:
                    self.out["calibration"][key] = NOT_PRODUCED
                    continue
                any_produced = True
                ch = self.inst.chip(chip)
                sci = prod["SCI"].astype(float)
                mask = prod.get("MASK", np.zeros(sci.shape, dtype=np.uint16)).astype(np.int64)
                cr, _ = t.frame_truth(frame, chip)
                dy, dx = _data_offset(ch, prod["header"], cr.shape)
                cr_p = _on_product_grid(cr, sci.shape, (dy, dx), fill=False)
                stars = t.stars_on(frame, chip)
                fwhm = float(row["seeing"]) / self._pixel_scale(chip)
                core = star_core_mask(
                    sci.shape, np.asarray(stars["x"]) - dx, np.asarray(stars["y"]) - dy, fwhm / 2
                )
                counts = cosmic_ray_counts(mask, cr_p, core)
                for k, v in counts.items():
                    total[k] = total.get(k, 0) + v
                metrics = cosmic_ray_metrics(counts)
                # non-linearity
                peak, ratio = self._flux_ratios(sci, mask, cr_p, frame, chip, row, (dy, dx), fwhm)
                metrics["flux_ratio_median"] = _median(ratio) if ratio.size else None
                metrics["n_flux_stars"] = int(ratio.size)
                groups += [f"{row['band']}.{chip}"] * ratio.size
                peaks += peak.tolist()
                fwhms += [float(row["seeing"])] * ratio.size
                ratios += ratio.tolist()
                sat_ref.append(self._saturation_e(chip))
                self.out["calibration"][key] = metrics
        if not any_produced:
            self.out["calibration"]["all"] = NOT_PRODUCED
            return
        summary = cosmic_ray_metrics(total)
        summary.update(
            fit_nonlinearity(groups, peaks, ratios, 0.5 * float(np.median(sat_ref)), fwhms)
        )
        self.out["calibration"]["all"] = summary

    def _flux_ratios(self, sci, mask, cr_p, frame, chip, row, offset, fwhm):
        """(peak, measured / true flux) of bright, unsaturated, isolated, clean stars."""
        t = self.truth
        dy, dx = offset
        allst = t.stars_on(frame, chip, on_chip=False)
        if len(allst) == 0:
            return np.zeros(0), np.zeros(0)
        x, y = np.asarray(allst["x"], float) - dx, np.asarray(allst["y"], float) - dy
        flux, peak = np.asarray(allst["flux"], float), np.asarray(allst["peak"], float)
        exptime, sky = float(row["exptime"]), float(row["sky"]) * float(row["exptime"])
        rn = t.chip_value(chip, "read_noise")
        r_ap = 2.5 * fwhm
        area = math.pi * r_ap**2
        sn = flux / np.sqrt(flux + area * (sky + rn**2))
        flat_max = 1.1
        unsat = (peak + sky) * flat_max < 0.8 * self._saturation_e(chip)
        # isolation: no other star above 0.1 % of this one's flux within 8 FWHM
        tree = cKDTree(np.column_stack([x, y]))
        isolated = np.ones(len(x), bool)
        for i, near in enumerate(tree.query_ball_point(np.column_stack([x, y]), 8 * fwhm)):
            isolated[i] = not any(j != i and flux[j] > 0.001 * flux[i] for j in near)
        pick = np.asarray(allst["on_chip"], bool) & (sn >= SN_NONLINEARITY) & unsat & isolated
        if exptime <= 0 or not pick.any():
            return np.zeros(0), np.zeros(0)
        bad = ((mask & ~int(Bit.INTERPOLATED)) != 0) | cr_p
        meas, clean = aperture_fluxes(sci, x[pick], y[pick], r_ap, (4 * fwhm, 6 * fwhm), bad=bad)
        ok = clean & np.isfinite(meas)
        return peak[pick][ok], meas[ok] / flux[pick][ok]

    # ------------------------------------------------------------ NIR rates
    def nir_rates(self) -> None:
        """NIR exposures: the calibrated rate against the truth, in expected-noise units."""
        t = self.truth
        path = t.dir / "nir_reads.ecsv"
        if not path.is_file():
            return
        reads = Table.read(path)
        sampling = str(reads.meta.get("sampling", "fowler"))

        def exposure(frame):
            sel = reads["frame"] == frame
            return np.asarray(reads["time_s"][sel], float), [str(g) for g in reads["group"][sel]]

        pooled: list[np.ndarray] = []
        for frame in self.science:
            for chip in self.chips:
                metrics = self.out["calibration"].get(self._key(frame, chip))
                path = self._frame_path(paths.CALIBRATED, frame, chip)
                prod = _read_product(path) if path.is_file() else None
                if prod is None or not isinstance(metrics, dict):
                    continue
                pull, ratio = self._nir_pull(prod, frame, chip, exposure, sampling)
                pooled.append(pull)
                metrics.update(_pull_metrics(pull, ratio))
        if pooled and isinstance(self.out["calibration"].get("all"), dict):
            both = np.concatenate(pooled)
            self.out["calibration"]["all"].update(_pull_metrics(both, None))

    def _nir_pull(self, prod, frame, chip, exposure, sampling):
        t, ch = self.truth, self.inst.chip(chip)
        hdr = prod["header"]
        sci = prod["SCI"].astype(float)
        mask = prod.get("MASK", np.zeros(sci.shape, np.uint16))
        truth_rate = _truth_chip(t.dir / "rate" / f"{frame}.fits", chip)
        offset = _data_offset(ch, hdr, truth_rate.shape)

        def grid(image, fill=0.0):
            return _on_product_grid(np.asarray(image, float), sci.shape, offset, fill=fill)

        rate = grid(truth_rate, np.nan)
        pers_path = t.dir / "persistence" / f"{frame}.fits"
        pers = grid(_truth_chip(pers_path, chip)) if pers_path.is_file() else np.zeros(sci.shape)
        dark = grid(t.image("dark", chip))
        rn = float(t.chip_value(chip, "read_noise"))
        mode = str(hdr.get("READMODE") or sampling)
        times, groups = exposure(frame)
        w = _rate_weights(times, groups, mode)
        moments = np.minimum.outer(times, times)
        charge = np.clip(rate + pers, 0, None)  # e-/s collected (dark current included)
        var = rn**2 * np.sum(w**2) + charge * float(w @ moments @ w)
        expected = rate + pers
        if "IMRDARK" in hdr:
            expected = expected - dark
            darks = [d for d in t.frames_of("dark") if exposure(d)[0].size >= 2]
            if darks:
                dvar = np.zeros(sci.shape)
                for d in darks:
                    dt, dg = exposure(d)
                    wd = _rate_weights(dt, dg, mode)
                    dm = np.minimum.outer(dt, dt)
                    dvar += rn**2 * np.sum(wd**2) + np.clip(dark, 0, None) * float(wd @ dm @ wd)
                var = var + dvar / len(darks) ** 2
        if "IMRFLAT" in hdr:
            band = str(t.frame_row(frame)["band"])
            flat = grid(t.image(f"flat_{band}", chip), np.nan)
            flat = flat / np.nanmedian(flat)
            expected, var = expected / flat, var / flat**2
        measured = sci / float(hdr["EXPTIME"])
        sigma = np.sqrt(var)
        cr_mask, _ = t.frame_truth(frame, chip)
        cr = _on_product_grid(cr_mask, sci.shape, offset, fill=False)
        bias = t.image("bias", chip).astype(float)
        trim = _trim_slices(ch, hdr, bias.shape)
        ov = _overlap(sci.shape, bias.shape, (trim[0].start, trim[1].start))
        level = np.full(sci.shape, np.inf)
        if ov is not None:
            sel = (t.frame_chips["frame"] == frame) & (t.frame_chips["chip"] == chip)
            offset_adu = float(np.asarray(t.frame_chips["bias_offset"][sel], float)[0])
            gain = float(np.asarray(t.frame_chips["gain"][sel], float)[0])
            level[ov[0]] = bias[ov[1]] + offset_adu + (charge[ov[0]] * times[-1]) / gain
        saturation = float(self.inst.chip_value(ch, "saturation") or np.inf)
        good = (mask == 0) & ~cr & np.isfinite(measured) & np.isfinite(expected)
        good &= (sigma > 0) & (level < 0.9 * saturation)
        pull = ((measured - expected) / sigma)[good]
        bright = good & (expected > 5 * sigma)
        return pull, (measured / expected)[bright]

    # --------------------------------------------------------------- frames
    def frames(self) -> None:
        t = self.truth
        qa_path = self.res.path(paths.FRAME_QA, instrument=self.inst.name, night=self.res.night)
        qa = Table.read(qa_path) if qa_path.is_file() else None
        if qa is not None:
            for col in ("frame", "chip"):
                if col not in qa.colnames:
                    raise ImredError(f"{qa_path} has no '{col}' column")
            # compared as text, whatever type the table gave the columns
            qa_frame = np.array([str(v) for v in qa["frame"]])
            qa_chip = np.array([str(v) for v in qa["chip"]])
        all_sep, zp_err, zp_band, fwhm_err, fwhm_ratio = [], [], [], [], []
        n_flagged = 0
        entries: dict[str, dict] = {}
        band_of: dict[str, str] = {}
        for frame in self.science:
            row = t.frame_row(frame)
            for chip in self.chips:
                key = self._key(frame, chip)
                band_of[key] = t.band[list(t.frames["frame"]).index(frame)]
                m: dict[str, Any] = {}
                wcs_path = self._frame_path(paths.FRAME_WCS, frame, chip)
                flagged = wcs_path.is_file() and fits.getheader(wcs_path).get("ASTOK") is False
                if flagged:
                    # the pipeline says it failed (and keeps the frame out of coadds):
                    # counted apart, not scored as a solution
                    m["astrometry_flagged"] = str(fits.getheader(wcs_path).get("ASTREAS", ""))
                    n_flagged += 1
                elif wcs_path.is_file():
                    m.update(self._frame_astrometry(wcs_path, frame, chip, all_sep))
                else:
                    m["astrometric_rms_arcsec"] = NOT_PRODUCED
                qrow = None
                if qa is not None:
                    pid = t.product_frame(frame, chip)
                    sel = np.flatnonzero((qa_frame == pid) & (qa_chip == chip))
                    qrow = qa[int(sel[0])] if sel.size else None
                if qrow is not None and "zero_point" in qa.colnames and _finite(qrow["zero_point"]):
                    m["zero_point_error_mag"] = float(qrow["zero_point"]) - float(row["zero_point"])
                    zp_err.append(m["zero_point_error_mag"])
                    zp_band.append(band_of[key])
                else:
                    m["zero_point_error_mag"] = NOT_PRODUCED
                if (
                    qrow is not None
                    and "fwhm_arcsec" in qa.colnames
                    and _finite(qrow["fwhm_arcsec"])
                ):
                    m["fwhm_error_arcsec"] = float(qrow["fwhm_arcsec"]) - float(row["seeing"])
                    m["fwhm_ratio"] = float(qrow["fwhm_arcsec"]) / float(row["seeing"])
                    fwhm_err.append(m["fwhm_error_arcsec"])
                    fwhm_ratio.append(m["fwhm_ratio"])
                else:
                    m["fwhm_error_arcsec"] = NOT_PRODUCED
                entries[key] = m
        # zero points relative to the band's median error
        offsets = {}
        zp_err_a, zp_band_a = np.array(zp_err), np.array(zp_band)
        for band in sorted(set(zp_band)):
            offsets[band] = float(np.median(zp_err_a[zp_band_a == band]))
        for key, m in entries.items():
            if isinstance(m["zero_point_error_mag"], float):
                m["zero_point_error_rel_mag"] = m["zero_point_error_mag"] - offsets[band_of[key]]
            self.out["frames"][key] = m
        summary: dict[str, Any] = {}
        summary["astrometric_rms_arcsec"] = rms(all_sep) if all_sep else NOT_PRODUCED
        if all_sep:
            summary["astrometric_max_frame_rms_arcsec"] = max(
                m["astrometric_rms_arcsec"]
                for m in entries.values()
                if isinstance(m.get("astrometric_rms_arcsec"), float)
            )
            summary["n_astrometric_stars"] = len(all_sep)
        if n_flagged:
            summary["n_astrometry_flagged"] = n_flagged
        if zp_err:
            rel = zp_err_a - np.array([offsets[b] for b in zp_band_a])
            summary["zero_point_rms_mag"] = rms(zp_err_a)
            summary["zero_point_rms_rel_mag"] = rms(rel)
            summary["zero_point_max_abs_rel_mag"] = float(np.max(np.abs(rel)))
            for band, off in offsets.items():
                summary[f"zero_point_offset_{band}_mag"] = off
        else:
            summary["zero_point_rms_rel_mag"] = NOT_PRODUCED
        if fwhm_err:
            summary["fwhm_median_ratio"] = _median(fwhm_ratio)
            summary["fwhm_robust_rms_ratio"] = robust_rms(fwhm_ratio)
            summary["fwhm_rms_error_arcsec"] = rms(fwhm_err)
        else:
            summary["fwhm_median_ratio"] = NOT_PRODUCED
        self.out["frames"]["all"] = summary

    def _frame_astrometry(self, wcs_path: Path, frame: str, chip: str, all_sep: list) -> dict:
        t = self.truth
        with fits.open(wcs_path, memmap=False) as hdul:
            header = hdul[0].header.copy()
        wcs = _wcs(header, wcs_path)
        stars = t.stars_on(frame, chip)
        if len(stars) == 0:
            return {"astrometric_rms_arcsec": None, "n_stars": 0}
        cr, _ = t.frame_truth(frame, chip)
        dy, dx = _data_offset(self.inst.chip(chip), header, cr.shape)
        ra, dec = wcs.all_pix2world(np.asarray(stars["x"]) - dx, np.asarray(stars["y"]) - dy, 0)
        sep = separation_arcsec(ra, dec, stars["ra"], stars["dec"])
        dra, ddec = _offsets_arcsec(ra, dec, stars["ra"], stars["dec"])
        all_sep.extend(sep.tolist())
        return {
            "astrometric_rms_arcsec": rms(sep),
            "astrometric_offset_ra_arcsec": float(np.mean(dra)),
            "astrometric_offset_dec_arcsec": float(np.mean(ddec)),
            "n_stars": len(sep),
        }

    # ------------------------------------------------------------- catalogs
    def catalogs(self) -> None:
        t = self.truth
        colour = self._colour()
        ra, dec = np.asarray(t.stars["ra"], float), np.asarray(t.stars["dec"], float)
        found = {}
        for frame in self.science:
            for chip in self.chips:
                p = self._frame_path(paths.FRAME_CATALOG, frame, chip)
                found[(frame, chip)] = p if p.is_file() else None
        bands_with = {t.band[list(t.frames["frame"]).index(f)] for (f, _), p in found.items() if p}
        for (frame, chip), p in found.items():
            key = self._key(frame, chip)
            if p is None:
                self.out["catalogs"][key] = NOT_PRODUCED
                continue
            band = t.band[list(t.frames["frame"]).index(frame)]
            on = t.stars_on(frame, chip)
            footprint = np.zeros(len(ra), bool)
            footprint[t.star_rows(on["id"])] = True
            m = score_catalog(
                _read_table(p),
                ra,
                dec,
                t.mag(band),
                footprint,
                colour=colour if len(bands_with) >= 2 else None,
                galaxies=t.galaxy_positions,
                colour_term_true=self._true_colour_term(band),
            )
            self.frame_catalog_scores[(frame, chip)] = m
            self.out["catalogs"][key] = m

    # --------------------------------------------------------------- coadds
    def coadds(self) -> None:
        t = self.truth
        colour = self._colour()
        ra, dec = np.asarray(t.stars["ra"], float), np.asarray(t.stars["dec"], float)
        sci_rows = np.isin(t.imagetype, ("science", "standard"))
        targets = sorted({str(t.frames["target"][i]) for i in np.flatnonzero(sci_rows)})
        combos = [
            (tg, b)
            for tg in targets
            for b in t.bands
            if np.any(sci_rows & (t.frames["target"] == tg) & (t.band == b))
        ]
        cat_paths = {}
        for tg, band in combos:
            p = self.res.path(
                paths.COADD_CATALOG,
                instrument=self.inst.name,
                night=self.res.night,
                target=safe_name(tg),
                band=band,
            )
            cat_paths[(tg, band)] = p if p.is_file() else None
        cat_bands = {b for (_, b), p in cat_paths.items() if p}
        for tg, band in combos:
            key = f"{safe_name(tg)}.{band}"
            frames = [
                str(f)
                for f in t.frames["frame"][sci_rows & (t.frames["target"] == tg) & (t.band == band)]
            ]
            footprint = np.zeros(len(ra), bool)
            for f in frames:
                for chip in self.chips:
                    footprint[t.star_rows(t.stars_on(f, chip)["id"])] = True
            m: dict[str, Any] = {"n_frames": len(frames)}
            img_path = self.res.path(
                paths.COADD,
                instrument=self.inst.name,
                night=self.res.night,
                target=safe_name(tg),
                band=band,
            )
            if img_path.is_file():
                footprint &= self._coadd_footprint(img_path, ra, dec)
                m.update(self._coadd_astrometry(img_path, frames, footprint, band))
            else:
                m["astrometric_rms_arcsec"] = NOT_PRODUCED
            cat_path = cat_paths[(tg, band)]
            if cat_path is None:
                self.out["catalogs"][f"coadd {key}"] = NOT_PRODUCED
                m["depth_5sigma_mag"] = NOT_PRODUCED
            else:
                cm = score_catalog(
                    _read_table(cat_path),
                    ra,
                    dec,
                    t.mag(band),
                    footprint,
                    colour=colour if len(cat_bands) >= 2 else None,
                    galaxies=t.galaxy_positions,
                    colour_term_true=self._true_colour_term(band),
                )
                self.out["catalogs"][f"coadd {key}"] = cm
                m["astrometric_rms_catalog_arcsec"] = cm["astrometric_rms_arcsec"]
                for name in ("depth_5sigma_mag", "completeness_50_mag"):
                    m[name] = cm.get(name)
                    single = [
                        self.frame_catalog_scores[(f, c)].get(name)
                        for f in frames
                        for c in self.chips
                        if (f, c) in self.frame_catalog_scores
                    ]
                    single = [v for v in single if _finite(v)]
                    stem = name[: -len("_mag")]
                    if single and _finite(m[name]):
                        s = float(np.median(single))
                        ideal = s + 1.25 * math.log10(len(frames))
                        m[f"single_frame_{stem}_mag"] = s
                        m[f"{stem}_ideal_mag"] = ideal
                        m[f"{stem}_minus_ideal_mag"] = m[name] - ideal
            produced = img_path.is_file() or cat_path is not None
            self.out["coadds"][key] = m if produced else NOT_PRODUCED

    def _coadd_footprint(self, path: Path, ra, dec) -> np.ndarray:
        sci, wcs = _coadd_image(path)
        x, y = wcs.all_world2pix(ra, dec, 0)
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        inside = (ix >= 0) & (iy >= 0) & (ix < sci.shape[1]) & (iy < sci.shape[0])
        ok = np.zeros(len(ra), bool)
        vals = sci[iy[inside], ix[inside]]
        ok[inside] = np.isfinite(vals) & (vals != 0)
        return ok

    def _coadd_astrometry(self, path: Path, frames: list[str], footprint, band) -> dict:
        t = self.truth
        sci, wcs = _coadd_image(path)
        scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial))) * 3600.0
        seeing = float(np.median([float(t.frame_row(f)["seeing"]) for f in frames]))
        fwhm = seeing / scale
        # single-frame S/N and saturation of each truth star, from star_frames
        sf = t.star_frames
        sel = np.isin(sf["frame"], frames) & sf["on_chip"]
        ids = np.asarray(sf["id"][sel])
        rows = t.star_rows(ids)
        flux, peak = np.asarray(sf["flux"][sel], float), np.asarray(sf["peak"][sel], float)
        fr = np.asarray(sf["frame"][sel])
        ch = np.asarray(sf["chip"][sel])
        sky = np.array(
            [float(t.frame_row(f)["sky"]) * float(t.frame_row(f)["exptime"]) for f in fr]
        )
        rn = np.array([t.chip_value(c, "read_noise") for c in ch])
        sat = np.array([self._saturation_e(c) for c in ch])
        area = math.pi * (seeing / self._pixel_scale(self.chips[0])) ** 2
        sn = flux / np.sqrt(flux + area * (sky + rn**2))
        n = len(t.stars)
        sn_star = np.zeros(n)
        np.maximum.at(sn_star, rows, sn)
        saturated = np.zeros(n, bool)
        np.logical_or.at(saturated, rows, (peak + sky) * 1.1 >= 0.8 * sat)
        mag = t.mag(band)
        x, y = wcs.all_world2pix(
            np.asarray(t.stars["ra"], float), np.asarray(t.stars["dec"], float), 0
        )
        # isolation: no star brighter than m + 5 within 4 FWHM
        tree = cKDTree(np.column_stack([x, y]))
        isolated = np.ones(n, bool)
        for i, near in enumerate(tree.query_ball_point(np.column_stack([x, y]), 4 * fwhm)):
            isolated[i] = not any(j != i and mag[j] < mag[i] + 5 for j in near)
        pick = footprint & (sn_star >= 50) & ~saturated & isolated
        if not pick.any():
            return {"astrometric_rms_arcsec": None, "n_astrometric": 0}
        xc, yc = windowed_centroids(sci, x[pick], y[pick], fwhm)
        ok = np.isfinite(xc)
        if not ok.any():
            return {"astrometric_rms_arcsec": None, "n_astrometric": 0}
        ra_m, dec_m = wcs.all_pix2world(xc[ok], yc[ok], 0)
        sep = separation_arcsec(
            ra_m, dec_m, np.asarray(t.stars["ra"])[pick][ok], np.asarray(t.stars["dec"])[pick][ok]
        )
        return {"astrometric_rms_arcsec": rms(sep), "n_astrometric": int(ok.sum())}


def _rate_weights(times: np.ndarray, groups: list[str], mode: str) -> np.ndarray:
    """Weights ``w`` of the reads with ``rate = sum w_i read_i`` for a sampling mode."""
    n = times.size
    if mode == "ramp":
        dt = times - times.mean()
        return dt / np.sum(dt**2)
    p = 1 if mode == "cds" else (groups.count("pedestal") or n // 2)
    w = np.concatenate([np.full(p, -1.0 / p), np.full(n - p, 1.0 / (n - p))])
    return w / float(times[p:].mean() - times[:p].mean())


def _truth_chip(path: Path, chip: str) -> np.ndarray:
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(_chip_hdu(hdul, chip, path).data)


def _pull_metrics(pull: np.ndarray, ratio: np.ndarray | None) -> dict:
    pull = pull[np.isfinite(pull)]
    out = {
        "nir_rate_pull_mean": float(np.mean(pull)) if pull.size else None,
        "nir_rate_pull_std": float(np.std(pull)) if pull.size else None,
        "nir_rate_pull_robust_std": robust_rms(pull),
        "n_nir_pixels": int(pull.size),
    }
    if ratio is not None:
        out["nir_rate_ratio_median"] = _median(ratio)
    return out


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _wcs(header: fits.Header, path: Path) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(header, naxis=2)
    if not wcs.has_celestial:
        raise ImredError(f"{path}: the header holds no celestial WCS")
    return wcs


def _coadd_image(path: Path) -> tuple[np.ndarray, WCS]:
    with fits.open(path, memmap=False) as hdul:
        if "SCI" not in hdul:
            raise ImredError(f"{path} has no SCI extension (see imred.products)")
        sci = np.asarray(hdul["SCI"].data, dtype=float)
        header = hdul["SCI"].header.copy()
    return sci, _wcs(header, path)


def _read_product(path: Path) -> dict:
    prod = read_image_product(path)
    if "SCI" not in prod:
        raise ImredError(f"{path} has no SCI extension (see imred.products)")
    return prod


def _read_table(path: Path) -> Table:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unit strings astropy does not know
        return Table.read(path, hdu=1)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def score(
    results_dir: str | Path,
    truth_dir: str | Path,
    *,
    instrument: str | Path | Instrument | None = None,
) -> dict:
    """Score the products of a night against the simulator's truth.

    Parameters
    ----------
    results_dir : str or Path
        The workflow's working directory (holding ``results/``), the ``results`` folder,
        or the night's folder ``results/{instrument}/{night}``.
    truth_dir : str or Path
        The ``truth`` folder written by ``imred simulate``.
    instrument : str, Path or Instrument, optional
        The camera; default: the one the truth's ``scenario.yaml`` names.

    Returns
    -------
    dict
        ``{"meta": {...}, section: {product: {metric: value} or "not produced"}}`` for
        the sections ``masters``, ``calibration``, ``frames``, ``coadds``, ``catalogs``
        (see the module docstring); NaN becomes None.
    """
    truth = Truth(truth_dir)
    if instrument is None:
        instrument = truth.scenario["instrument"]
    inst = instrument if isinstance(instrument, Instrument) else load_instrument(instrument)
    scorer = _Scorer(Path(results_dir), truth, inst)
    scorer.masters()
    scorer.calibration()
    scorer.nir_rates()
    scorer.frames()
    scorer.catalogs()
    scorer.coadds()
    out = {
        "meta": {
            "instrument": inst.name,
            "night": scorer.res.night,
            "results": str(scorer.res.night_dir),
            "truth": str(truth.dir),
            "match_radius_arcsec": MATCH_RADIUS_ARCSEC,
            **({"product_frames": truth.product_frames()} if truth.product_frames() else {}),
        },
        **{s: scorer.out[s] for s in SECTIONS},
    }
    return _jsonable(out)


# ------------------------------------------------------------------- markdown
def _status(metric: str, value, metrics: dict | None = None) -> str:
    """pass / fail against :data:`GOALS`; inconclusive when ``{metric}_err`` exceeds the goal."""
    goal = GOALS.get(metric)
    if goal is None or not _finite(value) or isinstance(value, bool):
        return "—"
    test, limit, _ = goal
    err = (metrics or {}).get(f"{metric}_err")
    if _finite(err) and float(err) > limit:
        return "inconclusive"
    v = float(value)
    ok = {
        "<=": v <= limit,
        "<": v < limit,
        ">=": v >= limit,
        "abs<=": abs(v) <= limit,
        "abs<": abs(v) < limit,
    }[test]
    return "pass" if ok else "fail"


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_markdown(score_dict: dict) -> str:
    """One Markdown table per section (product, metric, value, goal, result).

    Products not produced get one row saying so; the per-magnitude ``bins`` of coadd
    catalogs follow as their own tables (frame catalogs keep them in the JSON only).
    """
    meta = score_dict.get("meta", {})
    lines = [f"# imred score: {meta.get('instrument', '?')} night {meta.get('night', '?')}", ""]
    if meta:
        lines += [f"results `{meta.get('results')}`, truth `{meta.get('truth')}`", ""]
    for section in SECTIONS:
        products = score_dict.get(section, {})
        lines += [f"## {section}", ""]
        if not products:
            lines += ["nothing to score", ""]
            continue
        lines += ["| product | metric | value | goal | result |", "|---|---|---|---|---|"]
        missing = []
        extra = []
        for product, metrics in products.items():
            if not isinstance(metrics, dict):
                missing.append(product)
                continue
            for metric, value in metrics.items():
                if metric == "bins":
                    if product.startswith("coadd "):
                        extra.append((product, value))
                    continue
                if value == NOT_PRODUCED:
                    missing.append(metric)
                    continue
                goal = GOALS.get(metric, ("", 0, ""))[2]
                lines.append(
                    f"| {product} | {metric} | {_fmt(value)} | {goal} | {_status(metric, value, metrics)} |"
                )
        lines.append("")
        if missing:
            counts = {m: missing.count(m) for m in dict.fromkeys(missing)}
            listed = ", ".join(f"{m} ({n})" if n > 1 else m for m, n in counts.items())
            lines += [f"Not produced yet: {listed}.", ""]
        for product, bins in extra:
            lines += [
                f"### {section}: {product} by magnitude",
                "",
                "| mag | n truth | completeness | median resid | robust rms | n det | n false | false rate |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for b in bins:
                lines.append(
                    f"| {b['mag_lo']:g}-{b['mag_hi']:g} | {b['n_truth']} | {_fmt(b['completeness'])} "
                    f"| {_fmt(b['median_residual'])} | {_fmt(b['robust_rms_residual'])} "
                    f"| {b['n_detected']} | {b['n_false']} | {_fmt(b['false_detection_rate'])} |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ----------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """``imred score RESULTS TRUTH [--json OUT] [--markdown OUT] [--instrument NAME]``."""
    parser = argparse.ArgumentParser(
        prog="imred score",
        description="Score a reduced night against the simulator's truth folder.",
    )
    parser.add_argument(
        "results", help="working directory (with results/), results/, or a night folder"
    )
    parser.add_argument("truth", help="truth folder written by 'imred simulate' (DIR/truth)")
    parser.add_argument("--json", metavar="OUT", help="write the scores as JSON here")
    parser.add_argument("--markdown", metavar="OUT", help="write the Markdown tables here")
    parser.add_argument("--instrument", help="instrument name or file (default: the truth's)")
    args = parser.parse_args(argv)
    result = score(args.results, args.truth, instrument=args.instrument)
    text = format_markdown(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except ImredError as err:
        print(f"imred score: error: {err}", file=sys.stderr)
        sys.exit(2)
