"""Near-infrared detector arrays: reference pixels, non-destructive reads, non-linearity.

Pure functions on numpy arrays (the workflow reads the files and calls them). They
follow what ioi_pipeline does for the Liverpool Telescope's IO:I (a Teledyne H2RG),
written for any array with a reference-pixel border and several outputs.

Conventions
-----------
* A frame is ``(ny, nx)``; x (columns, axis 1) runs across the readout outputs. A stack
  of reads is ``(n_reads, ny, nx)``, in time order.
* Read times are seconds since the reset of the array (IO:I's ``INTTIME`` of the read).
* Signals are ADU. A *difference* (CDS, Fowler, a read minus the first read) has lost
  the charge collected before its first read: ``rate * t_first``. The non-linearity
  correction takes that ``lost_signal`` so it is evaluated where the pixel really is on
  its curve (see :func:`correct_nonlinearity`).
* Masks returned here are boolean (True = flagged); the caller sets the named bits of
  :mod:`imred.mask` (``SATURATED``, ``NONLINEAR``, ``BAD``).

Exposure time of a combined frame (the value for ``EXPTIME``)
-------------------------------------------------------------
=========  ===========================================================================
CDS        ``t_last - t_first`` (:func:`cds_exptime`); IO:I: INTTIME(read) -
           INTTIME(pedestal)
Fowler-N   mean(signal read times) - mean(pedestal read times), the time between the
           pedestal and the signal group (:func:`fowler_exptime`)
ramp       :func:`ramp_slope` returns a *rate* (ADU/s); the ramp's span is
           ``t[n_used - 1] - t[0]`` (:func:`ramp_exptime`). To keep counts, write
           ``rate * exptime`` with that exptime (:func:`ramp_exptime` of the whole ramp
           for the frame's EXPTIME; pixels with a shorter span are flagged by ``n_used``).
=========  ===========================================================================

One exposure from its reads (the workflow's calibrate step): :func:`combine_reads`
combines a set of reads by ``cds``, ``fowler`` or ``ramp`` (:func:`combine_mode`: by
detector kind, or ``calibration.nir.combine``), ignoring each pixel's reads from its
first saturated one on (a pixel with fewer than 2 usable reads is flagged), and gives
the noise factors of the result; :func:`exposure_time` is the EXPTIME of such a set.

The signal lost before the first read, for :func:`correct_nonlinearity`: ``rate *
t_first`` with ``t_first`` the first (pedestal) read's time since reset (IO:I: one read,
1.4 s in 32-output mode) and ``rate = difference / exptime`` (:func:`rate_image`). A
Fowler set is corrected pair by pair (ioi_pipeline: each pedestal/signal pair is CDS'd,
linearity-corrected, then averaged), each pair with its own pedestal time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb

import numpy as np
from scipy.ndimage import gaussian_filter1d

from .errors import ImredError

REFERENCE_MODES = ("ramp", "constant", "column", "full", "trim")

# ioi_pipeline smooths the side reference columns with exp(-y^2/100): sigma = sqrt(50) rows
DEFAULT_SMOOTH_SIGMA = 7.0

_ROW_BLOCK = 128  # rows per block when fitting per-pixel polynomials (memory bound)
# build_nonlinearity_cube refines the first read's level until it moves less than this
_LOST_TOLERANCE = 1e-3  # ADU
_LOST_MAX_ITERATIONS = 30


# --------------------------------------------------------------------------------------
# reference pixels
# --------------------------------------------------------------------------------------


def _check_frame(frame: np.ndarray, width: int) -> np.ndarray:
    data = np.asarray(frame, dtype=float)
    if data.ndim != 2:
        raise ImredError(f"expected one 2-D frame (ny, nx), got an array of shape {data.shape}")
    if int(width) != width or width < 0:
        raise ImredError(f"reference-pixel width must be a whole number >= 0, got {width!r}")
    ny, nx = data.shape
    if 2 * width >= min(ny, nx):
        raise ImredError(
            f"a reference border of {width} pixels leaves nothing of a {ny}x{nx} frame: "
            "check detector.reference_pixels in the instrument file"
        )
    return data


def trim_reference_pixels(frame: np.ndarray, width: int) -> np.ndarray:
    """Crop the reference-pixel border.

    Parameters
    ----------
    frame : ndarray, shape (ny, nx)
    width : int
        Border width in pixels on every edge (IO:I: 4, so a 2048x2048 read becomes
        2040x2040, the 1-based section ``[5:2044,5:2044]``).

    Returns
    -------
    ndarray, shape (ny - 2 width, nx - 2 width)
        A view of ``frame``'s light-sensitive pixels.
    """
    _check_frame(frame, width)
    if width == 0:
        return frame
    return frame[width:-width, width:-width]


def _channel_parity_groups(nx: int, n_outputs: int) -> np.ndarray:
    """Group index per column: ``2 * output + (column % 2)``."""
    if n_outputs < 1 or nx % n_outputs:
        raise ImredError(
            f"{nx} columns do not split into {n_outputs} equal outputs: check "
            "detector.outputs in the instrument file (IO:I: 32 outputs of 64 columns)"
        )
    columns = np.arange(nx)
    return 2 * (columns // (nx // n_outputs)) + columns % 2


def _subtract_ramp(data: np.ndarray, width: int, n_outputs: int) -> np.ndarray:
    ny, nx = data.shape
    groups = _channel_parity_groups(nx, n_outputs)
    n_groups = 2 * n_outputs
    counts = np.bincount(groups, minlength=n_groups) * width
    bottom = np.bincount(groups, weights=data[:width].sum(axis=0), minlength=n_groups) / counts
    top = np.bincount(groups, weights=data[-width:].sum(axis=0), minlength=n_groups) / counts
    # the line passes through the group means at the centres of the bottom/top rows
    y_bottom = (width - 1) / 2.0
    y_top = ny - 1 - (width - 1) / 2.0
    slope = (top - bottom) / (y_top - y_bottom)
    rows = np.arange(ny, dtype=float)[:, None]
    return data - (bottom[groups] + slope[groups] * (rows - y_bottom))


def _subtract_column(data: np.ndarray, width: int, smooth_sigma: float) -> np.ndarray:
    side = np.concatenate([data[:, :width], data[:, -width:]], axis=1).mean(axis=1)
    if smooth_sigma > 0:
        side = gaussian_filter1d(side, smooth_sigma, mode="reflect")
    return data - side[:, None]


def correct_reference_pixels(
    frame: np.ndarray,
    mode: str,
    *,
    width: int = 4,
    n_outputs: int = 32,
    smooth_sigma: float = DEFAULT_SMOOTH_SIGMA,
) -> np.ndarray:
    """Subtract the bias drifts that the reference pixels measure (ioi_pipeline's modes).

    The reference pixels are the ``width`` rows and columns on every edge of the array:
    read like the others but insensitive to light. All of them are used (ioi_pipeline
    leaves out the outermost row and column as possibly wrong).

    Parameters
    ----------
    frame : ndarray, shape (ny, nx)
        One raw read (ADU).
    mode : {"ramp", "constant", "column", "full", "trim"}
        Case-insensitive.

        ``ramp``
            Per output (``n_outputs`` equal groups of columns across x) and separately
            for even and odd columns (0-based column index): the mean of the bottom
            ``width`` reference rows and the mean of the top ones, joined by a straight
            line in y (through the centres of the two row groups), subtracted row by row.
            Removes offsets that differ per output and parity and drift linearly during
            the read.
        ``constant``
            The mean of all reference pixels (the whole border) subtracted everywhere.
        ``column``
            Per row, the mean of the left and right reference columns, smoothed with a
            Gaussian of ``smooth_sigma`` rows along y, subtracted from the whole row.
            Removes a row-by-row (common-mode) term that varies slowly along y.
        ``full``
            ``ramp`` then ``column``.
        ``trim``
            No correction (a copy); crop with :func:`trim_reference_pixels`.
    width : int
        Reference border width on each edge (``detector.reference_pixels``).
    n_outputs : int
        Readout outputs across x (``detector.outputs``); must divide nx.
    smooth_sigma : float
        Gaussian sigma (rows) of the ``column`` smoothing; 0 = none. The default follows
        ioi_pipeline's kernel ``exp(-y^2/100)`` (sigma = sqrt(50) ~ 7 rows).

    Returns
    -------
    ndarray, shape (ny, nx), float64
        The corrected frame, reference border included (crop it afterwards).
    """
    key = str(mode).strip().lower()
    if key not in REFERENCE_MODES:
        raise ImredError(
            f"unknown reference-pixel mode {mode!r}: use one of {', '.join(REFERENCE_MODES)}"
        )
    data = _check_frame(frame, width).copy()
    if key == "trim":
        return data
    if width == 0:
        raise ImredError(
            f"reference-pixel mode {key!r} needs reference pixels, but the width is 0: "
            "set detector.reference_pixels or use mode 'trim'"
        )
    if smooth_sigma < 0:
        raise ImredError(f"smooth_sigma must be >= 0 rows, got {smooth_sigma}")
    if key == "constant":
        border = np.ones(data.shape, dtype=bool)
        border[width:-width, width:-width] = False
        return data - data[border].mean()
    if key in ("ramp", "full"):
        data = _subtract_ramp(data, width, n_outputs)
    if key in ("column", "full"):
        data = _subtract_column(data, width, smooth_sigma)
    return data


# --------------------------------------------------------------------------------------
# combining non-destructive reads
# --------------------------------------------------------------------------------------


def _as_stack(reads: np.ndarray | Sequence[np.ndarray], what: str) -> np.ndarray:
    stack = np.asarray(reads, dtype=float)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ImredError(f"{what}: expected reads of shape (n_reads, ny, nx), got {stack.shape}")
    return stack


def _check_times(read_times: Sequence[float], n_reads: int) -> np.ndarray:
    times = np.asarray(read_times, dtype=float)
    if times.shape != (n_reads,):
        raise ImredError(
            f"{n_reads} reads but {times.size} read times: give one time (s since reset) per read"
        )
    if n_reads > 1 and not np.all(np.diff(times) > 0):
        raise ImredError(
            f"read times must increase strictly (reads in time order), got {times.tolist()}"
        )
    return times


def cds(first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Correlated double sampling: ``last - first``.

    The result is the signal collected between the two reads: its exposure time is
    :func:`cds_exptime` (``t_last - t_first``).
    """
    first = np.asarray(first, dtype=float)
    last = np.asarray(last, dtype=float)
    if first.shape != last.shape:
        raise ImredError(f"CDS reads differ in shape: {first.shape} and {last.shape}")
    return last - first


def fowler(
    pedestal_reads: np.ndarray | Sequence[np.ndarray],
    signal_reads: np.ndarray | Sequence[np.ndarray],
) -> np.ndarray:
    """Fowler-N sampling: mean of the signal reads minus mean of the pedestal reads.

    Equal to the mean of the N pairwise CDS frames ``signal[i] - pedestal[i]``. Read
    noise falls as ``1/sqrt(N)`` (std of a Fowler-N frame ``= read_noise * sqrt(2/N)``
    for read-noise-limited pixels).

    Parameters
    ----------
    pedestal_reads, signal_reads : array_like, shape (N, ny, nx)
        The N reads just after reset and the N reads at the end (a single 2-D frame
        counts as N = 1). IO:I: SEQNUM_M = 1 and 2, paired by SEQNUM_N.

    Returns
    -------
    ndarray, shape (ny, nx)
        Exposure time :func:`fowler_exptime`.
    """
    pedestal = _as_stack(pedestal_reads, "Fowler pedestal")
    signal = _as_stack(signal_reads, "Fowler signal")
    if pedestal.shape != signal.shape:
        raise ImredError(
            f"Fowler sampling needs as many pedestal as signal reads of one shape: got "
            f"{pedestal.shape} and {signal.shape} (a read missing from the set?)"
        )
    return signal.mean(axis=0) - pedestal.mean(axis=0)


def cds_exptime(t_first: float, t_last: float) -> float:
    """Exposure time (s) of a CDS frame: ``t_last - t_first`` (read times since reset)."""
    exptime = float(t_last) - float(t_first)
    if not exptime > 0:
        raise ImredError(f"the last read ({t_last} s) must come after the first ({t_first} s)")
    return exptime


def fowler_exptime(pedestal_times: Sequence[float], signal_times: Sequence[float]) -> float:
    """Exposure time (s) of a Fowler frame: mean(signal times) - mean(pedestal times).

    For the usual symmetric set (pair i read ``T`` after pedestal i) this is ``T``,
    IO:I's INTTIME(read) - INTTIME(pedestal).
    """
    pedestal = np.atleast_1d(np.asarray(pedestal_times, dtype=float))
    signal = np.atleast_1d(np.asarray(signal_times, dtype=float))
    if pedestal.size == 0 or pedestal.size != signal.size:
        raise ImredError(
            f"Fowler sampling needs as many pedestal as signal read times, got "
            f"{pedestal.size} and {signal.size}"
        )
    return cds_exptime(pedestal.mean(), signal.mean())


def ramp_exptime(read_times: Sequence[float], n_used: np.ndarray | int | None = None):
    """The span ``t[n_used - 1] - t[0]`` (s) a ramp fit covers.

    Parameters
    ----------
    read_times : sequence of float
        Read times (s since reset), in order.
    n_used : int or ndarray of int, optional
        Reads used (from :func:`ramp_slope`); default all. Where fewer than 2 reads were
        used the span is 0.

    Returns
    -------
    float or ndarray
        Per pixel when ``n_used`` is an array.
    """
    times = np.asarray(read_times, dtype=float)
    if n_used is None:
        return float(times[-1] - times[0])
    n = np.clip(np.asarray(n_used), 1, times.size)
    return times[n - 1] - times[0]


def rate_image(difference: np.ndarray, exptime: float) -> np.ndarray:
    """Count rate (ADU/s) of a CDS/Fowler frame: ``difference / exptime``.

    ioi_pipeline uses this rate to estimate the signal lost before the first read
    (``rate * t_first``) for :func:`correct_nonlinearity`.
    """
    if not exptime > 0:
        raise ImredError(f"exposure time must be > 0 s to make a rate, got {exptime}")
    return np.asarray(difference, dtype=float) / float(exptime)


def _prefix_ols_weights(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope weights for every prefix of the reads.

    Returns ``W`` of shape (n + 1, n) with ``slope = W[k] @ y`` for a fit to the first
    ``k`` reads (zero rows for k < 2), and ``Sxx`` (n + 1,), the sum of squared
    deviations of the first k times.
    """
    n = times.size
    weights = np.zeros((n + 1, n))
    sxx = np.zeros(n + 1)
    for k in range(2, n + 1):
        dt = times[:k] - times[:k].mean()
        sxx[k] = np.sum(dt**2)
        weights[k, :k] = dt / sxx[k]
    return weights, sxx


def ramp_slope(
    reads: np.ndarray,
    read_times: Sequence[float],
    saturation: float,
    *,
    read_noise: float | None = None,
    gain: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Up-the-ramp count rate: a per-pixel least-squares line through the reads.

    A read at or above ``saturation`` (or not finite) ends the pixel's ramp: it and every
    later read are ignored, so each pixel is fitted on the reads before its first
    saturated one. The fit is unweighted (ordinary least squares: optimal when read
    noise dominates, unbiased always). Vectorised over pixels; the only loop is over
    reads.

    Parameters
    ----------
    reads : ndarray, shape (n_reads, ny, nx)
        Successive non-destructive reads of one exposure (ADU; raw or reference-pixel
        corrected, the same units as ``saturation``), in time order.
    read_times : sequence of float, length n_reads
        Time of each read (s since reset), strictly increasing.
    saturation : float
        ADU level at or above which a read is saturated.
    read_noise : float, optional
        Read noise of one read (ADU). With ``gain`` it gives ``rate_err`` from the noise
        model: read noise plus Poisson noise of the fitted rate, including the
        correlation between cumulative reads. Without it ``rate_err`` comes from the scatter
        of the reads about the line (needs >= 3 reads; it ignores that correlation, so
        it underestimates the error of Poisson-limited pixels).
    gain : float, optional
        e-/ADU, for the Poisson term (without it, read noise only).

    Returns
    -------
    rate : ndarray, shape (ny, nx)
        ADU/s; NaN where fewer than 2 reads are usable.
    rate_err : ndarray, shape (ny, nx)
        1-sigma error of ``rate`` (ADU/s); NaN where it cannot be estimated.
    n_used : ndarray of int, shape (ny, nx)
        Reads used; ``n_used < n_reads`` marks a pixel that saturated during the ramp.
    saturated_mask : ndarray of bool, shape (ny, nx)
        True where fewer than 2 reads are usable (no rate: saturated from the start).
        The span a pixel's rate covers is :func:`ramp_exptime` of ``n_used``.
    """
    stack = _as_stack(reads, "ramp")
    n_reads = stack.shape[0]
    times = _check_times(read_times, n_reads)
    if n_reads < 2:
        raise ImredError("a ramp fit needs at least 2 reads")

    ok = np.isfinite(stack[0]) & (stack[0] < saturation)
    n_used = ok.astype(np.int64)
    for i in range(1, n_reads):
        ok &= np.isfinite(stack[i]) & (stack[i] < saturation)
        n_used += ok

    weights, sxx = _prefix_ols_weights(times)
    rate = np.zeros(stack.shape[1:])
    for i in range(n_reads):
        w = weights[n_used, i]
        rate += w * np.where(w != 0, stack[i], 0.0)

    fitted = n_used >= 2
    if read_noise is not None:
        # var(slope) = sum_ij w_i w_j C_ij with C_ij = rn^2 delta_ij + (rate/gain) min(t_i, t_j)
        read_term = np.sum(weights**2, axis=1) * float(read_noise) ** 2
        poisson_term = np.einsum("ki,kj,ij->k", weights, weights, np.minimum.outer(times, times))
        var = read_term[n_used]
        if gain is not None:
            if not gain > 0:
                raise ImredError(f"gain must be > 0 e-/ADU, got {gain}")
            var = var + np.clip(rate, 0, None) / float(gain) * poisson_term[n_used]
        rate_err = np.sqrt(var)
    else:
        # scatter about the line, n - 2 degrees of freedom
        mean_t = np.zeros(n_reads + 1)
        for k in range(1, n_reads + 1):
            mean_t[k] = times[:k].mean()
        safe_n = np.maximum(n_used, 1)
        mean_y = np.zeros(rate.shape)
        for i in range(n_reads):
            mean_y += np.where(i < n_used, stack[i], 0.0)
        mean_y /= safe_n
        chi2 = np.zeros(rate.shape)
        for i in range(n_reads):
            resid = stack[i] - (mean_y + rate * (times[i] - mean_t[safe_n]))
            chi2 += np.where(i < n_used, resid, 0.0) ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            rate_err = np.sqrt(chi2 / (n_used - 2) / sxx[n_used])
        rate_err[n_used < 3] = np.nan

    rate[~fitted] = np.nan
    rate_err = np.where(fitted, rate_err, np.nan)
    return rate, rate_err, n_used, ~fitted


# --------------------------------------------------------------------------------------
# one exposure from its reads (the workflow's calibrate step)
# --------------------------------------------------------------------------------------

COMBINE_MODES = ("cds", "fowler", "ramp")
_KIND_COMBINE = {"nir-cds": "cds", "nir-fowler": "fowler", "nir-ramp": "ramp"}


def combine_mode(kind: str, setting: str = "auto") -> str:
    """How the reads of an exposure are combined: ``setting``, or by detector kind if ``auto``.

    ``nir-cds`` -> ``cds``, ``nir-fowler`` -> ``fowler``, ``nir-ramp`` -> ``ramp``
    (``calibration.nir.combine`` in the config; any mode works on any set of reads that
    it can use: a ramp fit on Fowler reads, CDS on two reads).
    """
    key = str(setting or "auto").strip().lower()
    if key != "auto":
        if key not in COMBINE_MODES:
            raise ImredError(
                f"unknown read combination {setting!r}: use auto or one of {', '.join(COMBINE_MODES)}"
            )
        return key
    if kind not in _KIND_COMBINE:
        raise ImredError(
            f"detector kind {kind!r} has no non-destructive reads to combine "
            f"(kinds with reads: {', '.join(_KIND_COMBINE)})"
        )
    return _KIND_COMBINE[kind]


def _fowler_split(n_reads: int, n_pedestal: int | None) -> int:
    p = n_reads // 2 if n_pedestal is None else int(n_pedestal)
    if p < 1 or n_reads - p != p:
        raise ImredError(
            f"Fowler sampling needs as many pedestal as signal reads: {p} pedestal and "
            f"{n_reads - p} signal reads (a read missing from the set?)"
        )
    return p


def exposure_time(read_times: Sequence[float], mode: str, n_pedestal: int | None = None) -> float:
    """The exposure time (s) of a set of reads combined by ``mode`` (the frame's EXPTIME).

    ``cds``: :func:`cds_exptime` of the two reads; ``fowler``: :func:`fowler_exptime` of
    the pedestal (first ``n_pedestal``, default half) and signal reads; ``ramp``:
    :func:`ramp_exptime` (first to last read).
    """
    times = np.asarray(read_times, dtype=float)
    if times.ndim != 1 or times.size < 2:
        raise ImredError(f"an exposure needs at least 2 reads, got {times.size}")
    if mode == "cds":
        if times.size != 2:
            raise ImredError(f"CDS takes 2 reads (reset + one read), got {times.size}")
        return cds_exptime(times[0], times[1])
    if mode == "fowler":
        p = _fowler_split(times.size, n_pedestal)
        return fowler_exptime(times[:p], times[p:])
    if mode == "ramp":
        return cds_exptime(times[0], times[-1])
    raise ImredError(f"unknown read combination {mode!r}: use one of {', '.join(COMBINE_MODES)}")


def combination_weights(
    read_times: Sequence[float], mode: str, n_pedestal: int | None = None
) -> np.ndarray:
    """Weights ``w`` (n_reads,) with ``rate = sum_i w_i read_i`` (ADU/s) for a whole set.

    ``cds``: ``(read_1 - read_0) / (t_1 - t_0)``; ``fowler``: ``(mean(signal) -
    mean(pedestal)) / fowler_exptime``, the first ``n_pedestal`` reads (default half)
    being the pedestal group; ``ramp``: the least-squares slope through all reads. Every
    set has ``sum(w) = 0`` (a pixel's reset level cancels) and ``sum(w t) = 1``.
    """
    times = np.asarray(read_times, dtype=float)
    exptime = exposure_time(times, mode, n_pedestal)
    n = times.size
    if mode == "ramp":
        return _prefix_ols_weights(times)[0][n]
    p = 1 if mode == "cds" else _fowler_split(n, n_pedestal)
    return np.concatenate([np.full(p, -1.0 / p), np.full(n - p, 1.0 / p)]) / exptime


@dataclass
class CombinedReads:
    """One exposure's rate from its reads, and what its noise is made of.

    ``var(rate) = read_factor * read_noise**2 + poisson_factor * rate / gain`` (ADU/s,
    read noise of one read in ADU, gain e-/ADU): for a frame of ``rate * T`` ADU the
    factors of the variance in electrons are ``read_factor * T**2`` (times the read
    noise in e- squared) and ``poisson_factor * T`` (times the electrons).
    """

    rate: np.ndarray  # ADU/s, (ny, nx)
    n_used: np.ndarray  # reads used per pixel (those before its first unusable read)
    saturated: np.ndarray  # fewer than 2 usable reads: no rate (the whole set's value kept)
    read_factor: np.ndarray  # s^-2
    poisson_factor: np.ndarray  # s^-1
    mode: str


def combine_reads(
    reads: np.ndarray | Sequence[np.ndarray],
    read_times: Sequence[float],
    mode: str,
    *,
    n_pedestal: int | None = None,
    bad: np.ndarray | None = None,
) -> CombinedReads:
    """Combine the non-destructive reads of one exposure into a rate (CDS, Fowler or ramp).

    A read flagged in ``bad`` (saturated; or not finite) ends its pixel's set: it and
    every later read are ignored. Pixels with all reads usable get the mode's
    combination (:func:`combination_weights`); pixels with ``2 <= n_used < n_reads``
    the least-squares slope through their usable reads (the rate is the same quantity,
    with more noise); pixels with fewer than 2 usable reads keep the whole set's value
    and are flagged ``saturated`` (saturated before the second read: no rate).

    Parameters
    ----------
    reads : array_like, shape (n_reads, ny, nx)
        The reads in time order (ADU; reference-pixel corrected or not, or differences
        to the first read: a per-pixel constant cancels).
    read_times : sequence of float
        Time of each read since reset (s), strictly increasing.
    mode : {"cds", "fowler", "ramp"}
    n_pedestal : int, optional
        Fowler: the number of pedestal reads (the first ones; default half).
    bad : ndarray of bool, shape (n_reads, ny, nx), optional
        Reads not to use (e.g. ``raw >= saturation``, judged on the raw values).

    Returns
    -------
    CombinedReads
    """
    stack = _as_stack(reads, "read combination")
    n = stack.shape[0]
    times = _check_times(read_times, n)
    full = combination_weights(times, mode, n_pedestal)
    good = np.isfinite(stack)
    if bad is not None:
        bad = np.asarray(bad, dtype=bool)
        if bad.shape != stack.shape:
            raise ImredError(f"bad-read mask of shape {bad.shape} does not fit reads {stack.shape}")
        good &= ~bad
    ok = good[0].copy()
    n_used = ok.astype(np.int64)
    for i in range(1, n):
        ok &= good[i]
        n_used += ok
    # weights per number of usable reads: the mode's for a whole set, a line through the
    # usable reads for a partial one, the whole set's (flagged) with fewer than two
    table, _ = _prefix_ols_weights(times)
    table[n] = full
    table[:2] = full
    read_factor = np.sum(table**2, axis=1)
    poisson_factor = np.einsum("ki,kj,ij->k", table, table, np.minimum.outer(times, times))
    rate = np.zeros(stack.shape[1:])
    for i in range(n):
        w = table[n_used, i]
        rate += w * np.where(w != 0, stack[i], 0.0)
    return CombinedReads(
        rate=rate,
        n_used=n_used,
        saturated=n_used < 2,
        read_factor=read_factor[n_used],
        poisson_factor=poisson_factor[n_used],
        mode=mode,
    )


# --------------------------------------------------------------------------------------
# non-linearity
# --------------------------------------------------------------------------------------


def _factor(x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """``c0 + c1 x + c2 x^2 + ...`` with ``coeffs`` of shape (order + 1, ...) (Horner)."""
    out = np.empty(np.broadcast_shapes(x.shape, coeffs.shape[1:]), dtype=x.dtype)
    out[...] = coeffs[-1]
    for c in coeffs[-2::-1]:
        out *= x
        out += c
    return out


def correct_nonlinearity(
    data: np.ndarray,
    polynomial: Sequence[float] | None = None,
    cube: np.ndarray | None = None,
    max_adu: float | None = None,
    *,
    lost_signal: float | np.ndarray = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Linearise a frame: ``corrected = data * (c0 + c1 data + c2 data^2 + ...)``.

    The convention of ``detector.nonlinearity`` in the instrument schema: the
    coefficients give the *factor* that multiplies the observed signal (ADU above the
    bias/reset level). Give either one global ``polynomial`` or a per-pixel ``cube``.

    A difference frame (CDS, Fowler pair, read minus first read) misses the signal
    collected before its first read, ``lost_signal`` (ADU, ``rate * t_first``; see
    the module notes), so the pixel's true level is ``x = data + lost_signal``. ioi_pipeline
    then writes ``data * P(x) / x`` with ``P`` its observed-to-linear polynomial, i.e.
    ``data * F(x)`` with ``F`` our factor. We use the exact form of the same idea::

        L(s) = s * F(s)                      (linearised level of a level s)
        corrected = L(data + lost) - L(lost)

    which is ``data * F(data)`` when ``lost_signal`` is 0 and differs from ioi's first-order
    form by ``data * lost * dF/dx`` (0.15 % for 1000 ADU lost at a 4.5 % non-linearity
    near 40000 ADU).

    Parameters
    ----------
    data : ndarray, shape (ny, nx) or (..., ny, nx)
        Bias-free signal (ADU): a difference of reads, or a read minus the bias; a stack
        of such frames (e.g. every read of a ramp minus the first) is corrected plane by
        plane.
    polynomial : sequence of float, optional
        Global coefficients ``[c0, c1, ...]``.
    cube : ndarray, shape (order + 1, ny, nx), optional
        Per-pixel coefficients, plane k multiplying ``data**k`` (same convention; from
        :func:`build_nonlinearity_cube`).
    max_adu : float, optional
        Highest level (ADU, of ``x = data + lost_signal``) where the correction is valid.
    lost_signal : float or ndarray, shape (ny, nx)
        Signal (ADU) collected before the first read of a difference frame; 0 for a frame
        measured from the bias level.

    Returns
    -------
    corrected : ndarray, shape of ``data``; float32 for float32 data, else float64
    nonlinear_mask : ndarray of bool, shape of ``data``
        True where ``x > max_adu`` (beyond the calibrated range: set the NONLINEAR bit);
        all False without ``max_adu``.
    """
    values = np.asarray(data)
    # float32 frames stay float32 (the factor is ~1: float32 keeps 1e-7 of it; half the
    # memory traffic of float64); anything else is computed in float64
    dtype = values.dtype if values.dtype in (np.float32, np.float64) else np.float64
    values = values.astype(dtype, copy=False)
    if (polynomial is None) == (cube is None):
        raise ImredError(
            "give exactly one of a global non-linearity polynomial "
            "(detector.nonlinearity.polynomial) or a per-pixel coefficient cube "
            "(detector.nonlinearity.coefficient_cube)"
        )
    if polynomial is not None:
        coeffs = np.asarray(polynomial, dtype=dtype)
        if coeffs.ndim != 1 or coeffs.size == 0:
            raise ImredError(
                f"non-linearity polynomial must be a list [c0, c1, ...], got {polynomial!r}"
            )
        coeffs = coeffs.reshape((coeffs.size,) + (1,) * values.ndim)
    else:
        coeffs = np.asarray(cube, dtype=dtype)
        if coeffs.ndim != 3 or values.ndim < 2 or coeffs.shape[1:] != values.shape[-2:]:
            raise ImredError(
                f"non-linearity cube of shape {coeffs.shape} does not fit data of shape "
                f"{values.shape}: it must be (order + 1, ny, nx) on the same (trimmed or "
                "untrimmed) grid as the data"
            )
    lost = np.asarray(lost_signal, dtype=dtype)
    level = values + lost if np.any(lost != 0) else values
    corrected = level * _factor(level, coeffs)
    if np.any(lost != 0):
        corrected = corrected - lost * _factor(lost, coeffs)
    flagged = np.zeros(level.shape, dtype=bool) if max_adu is None else level > max_adu
    return corrected, flagged


def _line_fit(t: np.ndarray, y: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masked least-squares line per pixel: reads on axis 0. Returns slope and count."""
    n = m.sum(axis=0)
    st = np.einsum("i,ip->p", t, m)
    sy = np.sum(m * y, axis=0)
    stt = np.einsum("i,ip->p", t**2, m)
    sty = np.einsum("i,ip->p", t, m * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (n * sty - st * sy) / (n * stt - st**2)
    return slope, n


def _fit_moments(
    d: np.ndarray, times: np.ndarray, use: np.ndarray, hi: float, order: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel sums over the used reads: ``S_j = sum v^j``, ``T_j = sum v^j t`` (v = d/hi).

    ``S`` for j = 0 .. 2 (order + 1), ``T`` for j = 0 .. order + 1. With them the normal
    equations for any level offset are a binomial sum (see :func:`_fit_factor`), so the
    refinement of the first read's level costs no pass over the reads.
    """
    k = order + 1
    v = np.where(use > 0, d / hi, 0.0)
    s_sums, t_sums = [], []
    term = use.copy()
    for j in range(2 * k + 1):
        if j:
            term *= v
        s_sums.append(term.sum(axis=0))
        if j <= k:
            t_sums.append(times @ term)
    return np.array(s_sums), np.array(t_sums)


def _fit_factor(
    s_sums: np.ndarray,
    t_sums: np.ndarray,
    lost: np.ndarray,
    rate: np.ndarray,
    good: np.ndarray,
    hi: float,
    order: int,
) -> np.ndarray:
    """Least squares ``x F(x) = rate t`` per pixel, ``x = d + lost``, over the used reads.

    Solved in ``u = x / hi = v + lost / hi`` for conditioning: ``sum_k a_k u^(k+1) =
    rate t / hi``, then ``c_k = a_k / hi^k``. The sums of powers of u come from the
    moments of v by the binomial theorem (all terms positive: no cancellation).
    Returns the coefficients (order + 1, n_pixels), identity where not ``good``.
    """
    k = order + 1
    n_pix = s_sums.shape[1]
    mu = lost / hi
    mu_powers = [np.ones(n_pix)]
    for _ in range(2 * k):
        mu_powers.append(mu_powers[-1] * mu)
    u_sums = [
        sum(comb(p, j) * mu_powers[p - j] * s_sums[j] for j in range(p + 1))
        for p in range(2 * k + 1)
    ]
    normal = np.empty((n_pix, k, k))
    rhs = np.empty((n_pix, k))
    for i in range(k):
        rhs[:, i] = (
            rate / hi * sum(comb(i + 1, j) * mu_powers[i + 1 - j] * t_sums[j] for j in range(i + 2))
        )
        for j in range(k):
            normal[:, i, j] = u_sums[i + j + 2]
    coeffs = np.zeros((k, n_pix))
    coeffs[0] = 1.0
    if np.any(good):
        solved = np.linalg.solve(normal[good], rhs[good][:, :, None])[:, :, 0]
        coeffs[:, good] = (solved / hi ** np.arange(k)).T
    return coeffs


def _fit_block(
    reads: np.ndarray,
    times: np.ndarray,
    linear_max_adu: float,
    fit_range: tuple[float, float],
    order: int,
    bad_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`build_nonlinearity_cube` on reads of shape (n_reads, n_pixels)."""
    n_pix = reads.shape[1]
    lo, hi = fit_range
    finite = np.all(np.isfinite(reads), axis=0)
    d = np.where(finite, reads - reads[0], 0.0)

    # 1. rate from the early, linear part of the ramp
    in_linear = np.logical_and.accumulate(d <= linear_max_adu, axis=0)
    rate, n_linear = _line_fit(times, d, in_linear.astype(float))
    alive = finite & (n_linear >= 2) & np.isfinite(rate) & (rate > 0)
    rate = np.where(alive, rate, 0.0)
    lost = rate * times[0]

    # 2. the reads in fit_range by their level since reset, chosen once (so that the
    #    refinement of step 5 is a smooth map)
    x = d + lost
    below_top = np.logical_and.accumulate(x <= hi, axis=0)
    use = (below_top & (x >= lo) & alive).astype(float)
    good = alive & (use.sum(axis=0) >= order + 2)
    s_sums, t_sums = _fit_moments(d, times, use, hi, order)
    for _ in range(_LOST_MAX_ITERATIONS):
        # 3. the factor over fit_range, for levels x = d + lost
        coeffs = _fit_factor(s_sums, t_sums, lost, rate, good, hi, order)
        # 4. unity at zero signal (removes the early slope's bias); the rate on that scale
        c0 = coeffs[0].copy()
        good &= np.isfinite(c0) & (c0 > 0)
        coeffs[:, good] /= c0[good]
        coeffs[:, ~good] = 0.0
        coeffs[0, ~good] = 1.0
        rate = np.where(good, rate / np.where(good, c0, 1.0), rate)
        # 5. the first read's level: lost * F(lost) = rate * t0 (a contraction: F ~ 1;
        #    the error shrinks about fourfold per pass)
        fitted_lost, lost = lost, rate * times[0] / _factor(lost, coeffs)
        if not np.any(np.abs(lost - fitted_lost)[good] > _LOST_TOLERANCE):
            break

    # 6. residual non-linearity after correction, median over the fitted reads
    x = d + fitted_lost
    linear = rate * times[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        residual = np.abs(x * _factor(x, coeffs) - linear) / linear
    residual = np.where(use > 0, residual, np.nan)
    median = np.full(n_pix, np.inf)
    if np.any(good):
        median[good] = np.nanmedian(residual[:, good], axis=0)
    bad = ~good | ~(median <= bad_threshold)
    return coeffs, bad


def build_nonlinearity_cube(
    reads: np.ndarray,
    read_times: Sequence[float],
    *,
    linear_max_adu: float,
    fit_range: tuple[float, float] = (2500.0, 40000.0),
    order: int = 3,
    bad_threshold: float = 0.008,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel non-linearity coefficients from an up-the-ramp series (ioi_pipeline).

    For each pixel, with ``t`` the read times since reset and ``d_i = read_i - read_0``:

    1. a straight line is fitted to the early reads (``d <= linear_max_adu``, up to the
       first read above it); its slope is the rate ``r``;
    2. the level since reset is ``x_i = d_i + r t_0`` (the first read's signal added
       back) and the linear prediction ``L_i = r t_i``;
    3. the factor ``F`` (degree ``order``) is fitted by least squares so that
       ``x F(x) = L`` over the reads with ``x`` in ``fit_range`` (up to the first read
       above its top);
    4. ``F`` is divided by ``F(0)``: the "linear" part is itself slightly non-linear,
       so the slope of step 1 is low by its mean non-linearity; that scales ``F`` and is
       removed by asking for unity at zero signal, so faint signals are left unchanged
       (the rate is rescaled with it, ``r' = r / F(0)``);
    5. the first read's level ``x_0`` is then solved from ``x_0 F(x_0) = r' t_0`` and
       steps 3-4 repeated until it settles (to 0.001 ADU; ~10 passes). Taking it as
       ``r t_0`` (step 2) offsets every ``x`` by a few ADU, which the extrapolation to
       zero signal in step 4 turns into ~0.1 % errors of ``F``; with the refinement a
       polynomial response is recovered exactly;
    6. a pixel is bad when the median over the fitted reads of ``|x F(x) - r' t| / r' t``
       exceeds ``bad_threshold`` (ioi_pipeline: 0.8 %), or it cannot be fitted (no
       positive rate, fewer than ``order + 2`` reads in ``fit_range``, not finite).

    Noise: a ramp's Poisson and read noise go straight into ``F``. One 60-read ramp
    reaching 50000 ADU (read noise 15 ADU, 2 e-/ADU) gives ~2 % rms per pixel in
    ``F(40000)``; the error falls as 1/sqrt(K) for the mean of K ramps (0.5 % for 16):
    average many ramps (or flat series) before calling this.

    Parameters
    ----------
    reads : ndarray, shape (n_reads, ny, nx)
        One up-the-ramp sequence (reference-pixel corrected), in time order, under
        constant illumination; or a flat series at increasing exposure times, each
        frame the signal since reset.
    read_times : sequence of float
        Time of each read (s since reset, IO:I INTTIME), strictly increasing.
    linear_max_adu : float
        Signal above the first read (ADU) up to which the ramp is taken as linear.
    fit_range : (float, float)
        Range of levels (ADU since reset) the polynomial is fitted over; its top is also
        the highest level the correction is valid for (``max_adu``).
    order : int
        Polynomial degree of the factor (ioi_pipeline: 3).
    bad_threshold : float
        Largest accepted residual non-linearity (fraction).

    Returns
    -------
    cube : ndarray, shape (order + 1, ny, nx), float64
        Plane k multiplies ``data**k`` in :func:`correct_nonlinearity` (plane 0 is 1).
        Bad pixels get the identity (1, 0, 0, ...): left uncorrected, to be masked.
    bad_mask : ndarray of bool, shape (ny, nx)
        True for bad pixels (set the BAD bit).
    """
    stack = _as_stack(reads, "non-linearity ramp")
    n_reads, ny, nx = stack.shape
    times = _check_times(read_times, n_reads)
    order = int(order)
    if order < 1:
        raise ImredError(f"non-linearity polynomial order must be >= 1, got {order}")
    lo, hi = (float(v) for v in fit_range)
    if not 0 <= lo < hi:
        raise ImredError(f"fit_range must be (low, high) ADU with 0 <= low < high, got {fit_range}")
    if not linear_max_adu > 0:
        raise ImredError(f"linear_max_adu must be > 0 ADU, got {linear_max_adu}")
    if n_reads < order + 3:
        raise ImredError(
            f"{n_reads} reads cannot constrain a line and a degree-{order} polynomial: "
            f"use a ramp of at least {order + 3} reads (tens in practice)"
        )
    cube = np.empty((order + 1, ny, nx))
    bad = np.empty((ny, nx), dtype=bool)
    for y0 in range(0, ny, _ROW_BLOCK):
        block = stack[:, y0 : y0 + _ROW_BLOCK].reshape(n_reads, -1)
        rows = block.shape[1] // nx
        coeffs, flagged = _fit_block(block, times, linear_max_adu, (lo, hi), order, bad_threshold)
        cube[:, y0 : y0 + rows] = coeffs.reshape(order + 1, rows, nx)
        bad[y0 : y0 + rows] = flagged.reshape(rows, nx)
    return cube, bad
