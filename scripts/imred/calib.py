"""CCD calibration: overscan, trim, non-linearity, master bias/dark/flat, per-frame calibration.

Everything between a raw CCD chip and a calibrated frame in electrons. Functions
take arrays and return arrays (plus small dicts of measured numbers); file I/O is
in the rule scripts. Conventions:

- arrays are ``(ny, nx)``; sections come from the instrument file (FITS 1-based,
  inclusive, unbinned pixels; :func:`imred.sections.parse_section`);
- a *prepared* frame is a raw chip after overscan subtraction, trim and
  non-linearity correction, in ADU (:func:`prepare_chip`);
- master bias: ADU (what is left after overscan subtraction); master dark: e-/s;
  master flat: normalised to a median of 1; each with a 1-sigma uncertainty;
- a calibrated frame is in electrons, with a variance (e-^2) and a bitmask
  (:mod:`imred.mask`).

The order of per-frame calibration (:func:`calibrate_chip`): overscan -> trim ->
non-linearity -> bias -> dark (scaled by exposure time) -> gain (to e-) -> flat ->
bad pixels and saturation -> cosmic rays.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from astropy.stats import sigma_clipped_stats

from .combine import combine_arrays
from .errors import ImredError
from .instrument import Chip
from .mask import Bit
from .nir import combine_reads, correct_nonlinearity, correct_reference_pixels
from .sections import parse_section


def _robust_std(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


# ------------------------------------------------------------------ raw -> prepared
@dataclass
class Prepared:
    """A raw chip after overscan, trim and non-linearity (ADU), with what was measured.

    ``read_factor`` and ``poisson_factor`` (NIR exposures combined from reads,
    :func:`prepare_exposure`; None for a single image) give the frame's variance in
    electrons: ``read_factor * read_noise**2 + poisson_factor * electrons``, with the
    read noise of one read; a single image has factors 1 and 1.
    """

    data: np.ndarray
    saturated: np.ndarray
    nonlinear: np.ndarray
    overscan_levels: dict = field(default_factory=dict)
    steps: list = field(default_factory=list)
    read_factor: np.ndarray | None = None
    poisson_factor: np.ndarray | None = None


def subtract_overscan(
    raw: np.ndarray, chip: Chip, binning: tuple[int, int], method: str = "median", order: int = 3
) -> tuple[np.ndarray, dict]:
    """Subtract each amplifier's overscan level from its data section.

    ``method``: ``median`` or ``mean`` (one sigma-clipped level per amplifier), or
    ``fit`` (a polynomial of ``order`` along the readout direction, fitted to the
    per-row (``readout_axis: x``) or per-column (``y``) clipped means of the overscan).
    Returns the corrected array (float32, same shape) and each amplifier's mean level.
    Amplifiers without an overscan section are left as they are.
    """
    out = raw.astype(np.float32, copy=True)
    levels = {}
    for i, amp in enumerate(chip.amplifiers):
        if not amp.get("overscan"):
            continue
        name = amp.get("name") or str(i + 1)
        orows, ocols = parse_section(amp["overscan"], binning)
        drows, dcols = parse_section(amp["data"], binning)
        over = raw[orows, ocols].astype(np.float64)
        if over.size == 0:
            raise ImredError(
                f"chip {chip.name}: overscan section {amp['overscan']} is outside the "
                f"{raw.shape[1]}x{raw.shape[0]} raw array (fix the instrument file)"
            )
        axis_x = amp.get("readout_axis", "x") == "x"
        if method in ("median", "mean"):
            mean, median, _ = sigma_clipped_stats(over, sigma=3.0, maxiters=5)
            level = median if method == "median" else mean
            out[drows, dcols] -= np.float32(level)
            levels[name] = float(level)
        elif method == "fit":
            profile = sigma_clipped_stats(over, sigma=3.0, maxiters=5, axis=1 if axis_x else 0)[0]
            index = np.arange(profile.size, dtype=float)
            good = np.isfinite(profile)
            coeff = np.polyfit(index[good], profile[good], min(order, max(int(good.sum()) - 1, 0)))
            model = np.polyval(coeff, index)
            # the overscan runs along the same rows (x) or columns (y) as the data
            if axis_x:
                rows = np.arange(drows.start, drows.stop) - orows.start
                out[drows, dcols] -= model[np.clip(rows, 0, model.size - 1)][:, None].astype(
                    np.float32
                )
            else:
                cols = np.arange(dcols.start, dcols.stop) - ocols.start
                out[drows, dcols] -= model[np.clip(cols, 0, model.size - 1)][None, :].astype(
                    np.float32
                )
            levels[name] = float(np.mean(model))
        else:
            raise ImredError(f"overscan method {method!r} is not one of median, mean, fit")
    return out, levels


def trim_section(chip: Chip, shape: tuple[int, int], binning: tuple[int, int]):
    """The slices ``(rows, cols)`` kept after trim: trimsec, else datasec, else all."""
    text = chip.trimsec or chip.datasec or f"[1:{shape[1] * binning[0]},1:{shape[0] * binning[1]}]"
    rows, cols = parse_section(text, binning)
    if rows.stop > shape[0] or cols.stop > shape[1]:
        raise ImredError(
            f"chip {chip.name}: trim section {text} (binning {binning[0]}x{binning[1]}) is "
            f"outside the {shape[1]}x{shape[0]} raw array (fix the instrument file)"
        )
    return rows, cols


def prepare_chip(
    raw: np.ndarray,
    chip: Chip,
    binning: tuple[int, int],
    *,
    saturation: float,
    overscan: dict,
    nonlinearity: dict | None,
    reference: dict | None = None,
) -> Prepared:
    """Overscan or reference pixels -> trim -> non-linearity: ADU on the trimmed grid.

    ``overscan`` is the config block (``enabled``, ``method``, ``fit_order``);
    ``nonlinearity`` the instrument's ``detector.nonlinearity`` (or None to skip);
    ``reference`` the NIR reference-pixel correction (``mode``, ``width``,
    ``outputs``, ``smooth_sigma``; :func:`imred.nir.correct_reference_pixels`) or None.
    Saturation is judged on the raw values (ADU, bias included).
    """
    if raw.ndim != 2:
        raise ImredError(f"chip {chip.name}: expected a 2-D image, got shape {raw.shape}")
    steps = []
    rows, cols = trim_section(chip, raw.shape, binning)
    saturated = raw[rows, cols] >= saturation
    levels = {}
    if reference and reference.get("width", 0) > 0:
        data = correct_reference_pixels(
            raw,
            reference.get("mode", "ramp"),
            width=int(reference["width"]),
            n_outputs=int(reference.get("outputs") or 1),
            smooth_sigma=float(reference.get("smooth_sigma", 7.0)),
        ).astype(np.float32)
        steps.append(f"reference:{reference.get('mode', 'ramp')}")
    elif overscan.get("enabled", True) and any(a.get("overscan") for a in chip.amplifiers):
        data, levels = subtract_overscan(
            raw, chip, binning, overscan.get("method", "median"), overscan.get("fit_order", 3)
        )
        steps.append(f"overscan:{overscan.get('method', 'median')}")
    else:
        data = None
    # the trimmed pixels, float32 (of the corrected frame, or a copy of the raw one)
    data = raw[rows, cols].astype(np.float32) if data is None else data[rows, cols]
    steps.append("trim")
    nonlinear = np.zeros(data.shape, dtype=bool)
    if nonlinearity and (nonlinearity.get("polynomial") or nonlinearity.get("coefficient_cube")):
        cube = None
        if nonlinearity.get("coefficient_cube"):
            from astropy.io import fits

            cube = fits.getdata(nonlinearity["coefficient_cube"]).astype(np.float32)
            cube = cube[:, rows, cols] if cube.shape[1:] != data.shape else cube
        data, nonlinear = correct_nonlinearity(
            data,
            polynomial=nonlinearity.get("polynomial"),
            cube=cube,
            max_adu=nonlinearity.get("max_adu"),
        )
        data = np.asarray(data, dtype=np.float32)
        steps.append("nonlinearity")
    return Prepared(data, saturated, np.asarray(nonlinear, bool), levels, steps)


def prepare_exposure(
    reads: list[np.ndarray],
    read_times,
    chip: Chip,
    binning: tuple[int, int],
    *,
    saturation: float,
    nonlinearity: dict | None,
    reference: dict | None,
    combine: str,
    exptime: float,
    n_pedestal: int | None = None,
) -> Prepared:
    """The non-destructive reads of one NIR exposure -> one prepared frame (ADU in ``exptime``).

    Each read is reference-pixel corrected (``reference`` as in :func:`prepare_chip`)
    and trimmed; a read at or above ``saturation`` (raw ADU, judged before any
    correction) is ignored with every later read of its pixel. The reads minus the first
    are combined (``combine``: ``cds``, ``fowler`` with ``n_pedestal`` pedestal reads,
    ``ramp``; :func:`imred.nir.combine_reads`) into a rate; with ``nonlinearity`` they
    are linearised first, with the signal lost before the first read (``rate x
    t_first``, :func:`imred.nir.correct_nonlinearity`). The frame is ``rate x exptime``
    (``exptime``: the frame's exposure time, the observation log's), so that it reads
    like a CCD frame of that exposure. ``saturated``: fewer than two usable reads
    (saturated before the second read); ``nonlinear``: a used read beyond ``max_adu``.
    The variance factors (:class:`Prepared`) follow from the combination's weights.
    """
    times = np.asarray(read_times, dtype=float)
    if len(reads) != times.size:
        raise ImredError(f"chip {chip.name}: {len(reads)} reads but {times.size} read times")
    if not exptime > 0:
        raise ImredError(f"chip {chip.name}: exposure time must be > 0 s, got {exptime}")
    first = np.asarray(reads[0])
    if first.ndim != 2:
        raise ImredError(f"chip {chip.name}: expected 2-D reads, got shape {first.shape}")
    rows, cols = trim_section(chip, first.shape, binning)
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    stack = np.empty((times.size, *shape))
    bad = np.empty(stack.shape, dtype=bool)
    use_reference = bool(reference and reference.get("width", 0) > 0)
    for i, raw in enumerate(reads):
        raw = np.asarray(raw)
        if raw.shape != first.shape:
            raise ImredError(
                f"chip {chip.name}: read {i + 1} is {raw.shape[1]}x{raw.shape[0]}, the first "
                f"{first.shape[1]}x{first.shape[0]}"
            )
        bad[i] = ~(raw[rows, cols] < saturation)
        if use_reference:
            raw = correct_reference_pixels(
                raw,
                reference.get("mode", "ramp"),
                width=int(reference["width"]),
                n_outputs=int(reference.get("outputs") or 1),
                smooth_sigma=float(reference.get("smooth_sigma", 7.0)),
            )
        stack[i] = raw[rows, cols]
    steps = [f"reference:{reference.get('mode', 'ramp')}"] if use_reference else []
    steps += ["trim", combine]  # the read combination: cds, fowler or ramp
    stack -= stack[0]  # differences to the first read (the reset level cancels)
    combined = combine_reads(stack, times, combine, n_pedestal=n_pedestal, bad=bad)
    nonlinear = np.zeros(shape, dtype=bool)
    if nonlinearity and (nonlinearity.get("polynomial") or nonlinearity.get("coefficient_cube")):
        cube = None
        if nonlinearity.get("coefficient_cube"):
            from astropy.io import fits

            cube = fits.getdata(nonlinearity["coefficient_cube"]).astype(np.float32)
            cube = cube[:, rows, cols] if cube.shape[1:] != shape else cube
        lost = np.clip(np.nan_to_num(combined.rate), 0, None) * times[0]
        linear, flagged = correct_nonlinearity(
            stack,
            polynomial=nonlinearity.get("polynomial"),
            cube=cube,
            max_adu=nonlinearity.get("max_adu"),
            lost_signal=lost,
        )
        used = np.arange(times.size)[:, None, None] < combined.n_used[None]
        nonlinear = np.any(flagged & used, axis=0)
        combined = combine_reads(linear, times, combine, n_pedestal=n_pedestal, bad=bad)
        steps.append("nonlinearity")
    t = float(exptime)
    return Prepared(
        (combined.rate * t).astype(np.float32),
        combined.saturated,
        nonlinear,
        {},
        steps,
        read_factor=(combined.read_factor * t**2).astype(np.float32),
        poisson_factor=(combined.poisson_factor * t).astype(np.float32),
    )


# ------------------------------------------------------------------------ masters
@dataclass
class Master:
    """A master calibration frame: data, 1-sigma uncertainty, mask, header cards, QA."""

    data: np.ndarray
    unc: np.ndarray
    mask: np.ndarray
    cards: list = field(default_factory=list)
    qa: dict = field(default_factory=dict)


def model_outliers(frames: list[np.ndarray], sigmas: list[np.ndarray], k: float) -> list:
    """Per frame, pixels more than ``k`` expected sigmas from the median of the stack.

    Sigma clipping with the sample scatter cannot reject a cosmic ray in a stack of
    three (one value of three is never more than 1.15 sample sigmas out); the noise
    model can. ``frames`` and ``sigmas`` are on one scale. ``k <= 0``: no masks.
    """
    if k <= 0 or len(frames) < 2:
        return [np.zeros(f.shape, dtype=bool) for f in frames]
    if len(frames) == 2:
        # the median of two is their mean, from which both are equally far: reject only
        # the higher one (a cosmic ray or hot event adds charge)
        (a, b), (sa, sb) = frames, sigmas
        limit = k * np.sqrt(sa**2 + sb**2)
        return [a - b > limit, b - a > limit]
    median = np.median(np.stack(frames), axis=0)
    return [np.abs(f - median) > k * s for f, s in zip(frames, sigmas, strict=True)]


def _combine(frames, settings, scales=None, sigmas=None):
    masks = None
    if sigmas is not None:
        scaled = (
            frames
            if scales is None
            else [f * np.float32(c) for f, c in zip(frames, scales, strict=True)]
        )
        scaled_sig = (
            sigmas
            if scales is None
            else [s * np.float32(c) for s, c in zip(sigmas, scales, strict=True)]
        )
        masks = model_outliers(scaled, scaled_sig, settings.get("model_sigma", 5.0))
    return combine_arrays(
        frames,
        method=settings.get("method", "mean"),
        sigma_lower=settings.get("sigma", 3.0),
        sigma_upper=settings.get("sigma", 3.0),
        maxiters=settings.get("maxiters", 5),
        scales=scales,
        masks=masks,
    )


def read_noise_from_pairs(frames: list[np.ndarray], gain: float) -> float:
    """Read noise (e-) from pairs of bias frames: gain x std(b1 - b2) / sqrt(2), clipped.

    The median over consecutive pairs; NaN with fewer than two frames.
    """
    values = []
    for a, b in itertools.pairwise(frames):
        diff = (a - b).astype(np.float64)
        _, _, std = sigma_clipped_stats(diff, sigma=4.0, maxiters=5)
        values.append(gain * std / np.sqrt(2.0))
    return float(np.median(values)) if values else float("nan")


def make_master_bias(
    frames: list[np.ndarray], gain: float, settings: dict, read_noise: float | None = None
) -> Master:
    """Sigma-clipped combine of prepared bias frames (ADU); read noise from pairs.

    The uncertainty is the noise model read_noise / gain / sqrt(N) (the read noise
    measured from pairs, else ``read_noise`` from the instrument): with a few frames
    the scatter of the combined values is too noisy an estimate (and undefined for one).
    """
    rn = read_noise_from_pairs(frames, gain)
    rn_model = rn if np.isfinite(rn) else (read_noise or np.nan)
    sigma = np.full(frames[0].shape, rn_model / gain, dtype=np.float32)
    result = _combine(frames, settings.get("combine", {}), sigmas=[sigma] * len(frames))
    unc = np.full(result.data.shape, rn_model / gain / np.sqrt(len(frames)), dtype=np.float32)
    _, median, std = sigma_clipped_stats(result.data, sigma=3.0, maxiters=5)
    mask = np.where(np.isfinite(result.data), 0, int(Bit.NO_DATA)).astype(np.uint16)
    qa = {
        "ncombine": len(frames),
        "read_noise_e": rn,
        "level_adu": float(median),
        "noise_adu": float(std),
        "expected_noise_adu": rn / gain / np.sqrt(len(frames)) if np.isfinite(rn) else None,
        "rejected_fraction": result.rejected_fraction,
    }
    cards = [
        ("NCOMBINE", len(frames), "frames combined"),
        ("RDNOISE", round(rn, 4) if np.isfinite(rn) else "", "read noise from bias pairs (e-)"),
    ]
    return Master(result.data, unc, mask, cards, qa)


def make_master_dark(
    frames: list[np.ndarray],
    exptimes: list[float],
    gain: float,
    settings: dict,
    *,
    read_noise: float,
) -> Master:
    """Dark rate (e-/s) from bias-subtracted prepared darks (ADU) and their exposure times.

    Hot pixels: rate above the median by more than ``hot_sigma`` robust standard
    deviations and above ``hot_min_rate`` e-/s. Uncertainty: Poisson + read noise
    of the combined exposures, sqrt(sum(rate t_i + rn^2)) / sum(t_i).
    """
    if read_noise <= 0:
        raise ImredError(f"read noise must be > 0 e- for the dark noise model, got {read_noise}")
    if any(t <= 0 for t in exptimes):
        raise ImredError(f"dark frames need exposure times > 0, got {exptimes}")
    rates = [f * np.float32(gain / t) for f, t in zip(frames, exptimes, strict=True)]
    sigmas = [
        np.sqrt(np.clip(r, 0, None) * t + read_noise**2) / np.float32(t)
        for r, t in zip(rates, exptimes, strict=True)
    ]
    result = _combine(rates, settings.get("combine", {}), sigmas=sigmas)
    total_t = float(sum(exptimes))
    unc = (
        np.sqrt(np.clip(result.data, 0, None) * total_t + len(frames) * read_noise**2) / total_t
    ).astype(np.float32)
    median = float(np.nanmedian(result.data))
    spread = _robust_std(result.data)
    hot = (result.data > median + settings.get("hot_sigma", 5.0) * spread) & (
        result.data > settings.get("hot_min_rate", 0.0)
    )
    mask = np.where(hot, int(Bit.HOT), 0).astype(np.uint16)
    mask[~np.isfinite(result.data)] |= int(Bit.NO_DATA)
    qa = {
        "ncombine": len(frames),
        "median_rate": median,
        "hot_pixels": int(hot.sum()),
        "rejected_fraction": result.rejected_fraction,
        "exptime_total": float(sum(exptimes)),
    }
    cards = [
        ("NCOMBINE", len(frames), "frames combined"),
        ("DARKRATE", round(median, 6), "median dark rate (e-/s)"),
        ("NHOTPIX", int(hot.sum()), "hot pixels flagged"),
    ]
    return Master(result.data, unc, mask, cards, qa)


def gain_from_flat_pairs(frames: list[np.ndarray], read_noise_adu: float) -> float:
    """Gain (e-/ADU) by photon transfer from pairs of flats (bias-subtracted, ADU).

    For two flats of mean m1, m2: scale the second to the first, then
    ``var(f1 - f2 m1/m2) = 2 (m1 / g + rn^2)`` (the flat-field pattern cancels).
    Median over consecutive pairs; NaN with fewer than two flats.
    """
    values = []
    for a, b in itertools.pairwise(frames):
        ma, mb = float(np.nanmedian(a)), float(np.nanmedian(b))
        if ma <= 0 or mb <= 0:
            continue
        diff = (a - b * np.float32(ma / mb)).astype(np.float64)
        _, _, std = sigma_clipped_stats(diff, sigma=4.0, maxiters=5)
        shot = std**2 / 2.0 - read_noise_adu**2
        if shot > 0:
            values.append(ma / shot)
    return float(np.median(values)) if values else float("nan")


def difference_pairs(frames: list[np.ndarray]) -> tuple[list, list]:
    """Twilight difference pairs: brightest half minus faintest half, level-sorted.

    A difference of two flats keeps the illumination pattern that scales with the sky
    and cancels what does not (dark, bias residuals, an additive glow). Frames are
    sorted by median; frame i of the brighter half is paired with frame i of the
    fainter half (largest level differences). Returns the differences and, for the
    noise model, the sums of each pair.
    """
    order = sorted(range(len(frames)), key=lambda i: float(np.nanmedian(frames[i])), reverse=True)
    half = len(order) // 2
    diffs, sums = [], []
    for hi, lo in zip(order[:half], order[half : 2 * half], strict=True):
        diffs.append(frames[hi] - frames[lo])
        sums.append(frames[hi] + frames[lo])
    return diffs, sums


def make_master_flat(
    frames: list[np.ndarray], settings: dict, read_noise_adu: float, gain: float
) -> Master:
    """Normalise each prepared flat (bias/dark-subtracted, ADU) by its median, combine.

    The master is renormalised to a median of 1; pixels below ``dead_threshold`` are
    flagged DEAD. With ``twilight_pairs``, differences of flat pairs are combined
    instead (:func:`difference_pairs`). The gain is measured from flat pairs (photon
    transfer). The
    uncertainty is the photon + read noise of the summed flats, relative:
    flat x sqrt(sum(S_i g + rn^2 g^2)) / sum(S_i g) with S_i each frame's signal (ADU).
    """
    originals = frames
    pairs = bool(settings.get("twilight_pairs")) and len(frames) >= 2
    if pairs:
        frames, sum_frames = difference_pairs(frames)
    else:
        sum_frames = frames
    medians = [float(np.nanmedian(f)) for f in frames]
    bad = [i for i, m in enumerate(medians) if not np.isfinite(m) or m <= 0]
    if bad:
        raise ImredError(f"flat frames {bad} have a median <= 0: cannot normalise them")
    reads = 2 if pairs else 1  # read-noise terms per combined frame
    sigmas = [np.sqrt(np.clip(t, 0, None) / gain + reads * read_noise_adu**2) for t in sum_frames]
    result = _combine(
        frames, settings.get("combine", {}), scales=[1.0 / m for m in medians], sigmas=sigmas
    )
    norm = float(np.nanmedian(result.data))
    data = result.data / np.float32(norm)
    signal_e = np.clip(data, 0, None) * np.float32(sum(medians) * gain)
    collected_e = np.clip(data, 0, None) * np.float32(
        sum(float(np.nanmedian(t)) for t in sum_frames) * gain
    )
    noise_e = np.sqrt(collected_e + reads * len(frames) * (read_noise_adu * gain) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        unc = np.where(signal_e > 0, data * noise_e / signal_e, np.nan).astype(np.float32)
    dead = data < settings.get("dead_threshold", 0.5)
    mask = np.where(dead, int(Bit.DEAD), 0).astype(np.uint16)
    mask[~np.isfinite(data)] |= int(Bit.NO_DATA)
    gain = gain_from_flat_pairs(originals, read_noise_adu)
    qa = {
        "ncombine": len(frames),
        "levels_adu": medians,
        "dead_pixels": int(dead.sum()),
        "gain_measured": gain,
        "rejected_fraction": result.rejected_fraction,
        "noise": float(np.nanmedian(unc)),
    }
    cards = [
        ("NCOMBINE", len(frames), "frames combined"),
        ("GAINMEAS", round(gain, 4) if np.isfinite(gain) else "", "gain from flat pairs (e-/ADU)"),
        ("NDEADPIX", int(dead.sum()), "dead pixels flagged"),
    ]
    return Master(data.astype(np.float32), unc.astype(np.float32), mask, cards, qa)


def bad_columns(image: np.ndarray, window: int = 11, sigma: float = 5.0) -> np.ndarray:
    """Columns whose median departs from a sliding clipped mean of their neighbours.

    Column medians are compared with the sigma-clipped mean of the ``window`` columns
    around each one (the column itself excluded); a column more than ``sigma`` robust
    standard deviations (of all such departures) away is bad. Returns a boolean per
    column.
    """
    from scipy.ndimage import generic_filter

    med = np.nanmedian(image, axis=0).astype(np.float64)
    half = window // 2
    fp = np.ones(window, dtype=bool)
    fp[half] = False

    def clipped_mean(values):
        values = values[np.isfinite(values)]
        if values.size == 0:
            return np.nan
        c = np.median(values)
        s = 1.4826 * np.median(np.abs(values - c)) or np.std(values) or 1.0
        return float(np.mean(values[np.abs(values - c) <= 3 * s]))

    local = generic_filter(med, clipped_mean, footprint=fp, mode="nearest")
    dev = med - local
    spread = _robust_std(dev)
    if not np.isfinite(spread) or spread == 0:
        return np.zeros(med.shape, dtype=bool)
    return np.abs(dev) > sigma * spread


def region_mask(
    regions: dict, raw_shape: tuple[int, int], trim: tuple[slice, slice], binning: tuple[int, int]
) -> np.ndarray:
    """A BAD mask on the trimmed grid from user regions (raw-frame coordinates).

    ``regions`` has ``bad_columns`` (1-based column numbers), ``bad_rows``, and
    ``bad_rectangles`` (FITS sections ``"[x1:x2,y1:y2]"``, 1-based inclusive), all in
    unbinned raw-frame pixels, like the instrument file's sections.
    """
    full = np.zeros(raw_shape, dtype=bool)
    for col in regions.get("bad_columns", []) or []:
        full[:, parse_section(f"[{col}:{col},1:1]", binning)[1]] = True
    for row in regions.get("bad_rows", []) or []:
        full[parse_section(f"[1:1,{row}:{row}]", binning)[0], :] = True
    for sec in regions.get("bad_rectangles", []) or []:
        full[parse_section(sec, binning)] = True
    return full[trim]


def repair_pixels(
    sci: np.ndarray, var: np.ndarray, mask: np.ndarray, bits: int, radius: int = 2
) -> int:
    """Replace pixels with any of ``bits`` by the mean of good neighbours, in place.

    The mean of the pixels within ``radius`` (a (2r+1)^2 box) that have no unusable
    bit, by normalised convolution (fast; iTelescope's pipeline takes their median).
    The variance becomes the neighbours' mean variance; the INTERPOLATED bit is set and
    the original bits are kept, so photometry can still tell. Pixels with no good
    neighbour are left alone. Returns the number of pixels repaired.
    """
    from scipy.ndimage import uniform_filter

    from .mask import UNUSABLE

    target = (mask & np.uint16(bits)) != 0
    if not target.any():
        return 0
    good = ((mask & np.uint16(int(UNUSABLE))) == 0) & np.isfinite(sci)
    size = 2 * radius + 1
    weight = uniform_filter(good.astype(np.float32), size, mode="constant")
    total = uniform_filter(np.where(good, sci, 0).astype(np.float32), size, mode="constant")
    vtotal = uniform_filter(np.where(good, var, 0).astype(np.float32), size, mode="constant")
    fix = target & (weight > 0)
    sci[fix] = total[fix] / weight[fix]
    var[fix] = vtotal[fix] / weight[fix]
    mask[fix] |= np.uint16(Bit.INTERPOLATED)
    return int(fix.sum())


# -------------------------------------------------------------------- per frame
@dataclass
class Calibrated:
    sci: np.ndarray
    var: np.ndarray
    mask: np.ndarray
    steps: list
    qa: dict


def find_cosmic_rays(
    sci: np.ndarray,
    mask: np.ndarray,
    read_noise: float,
    saturation: float,
    settings: dict,
) -> tuple[np.ndarray, dict]:
    """Cosmic rays by L.A.Cosmic (astroscrappy) on an image in electrons.

    The threshold ``sigclip`` starts at the setting and is raised (x1.25) until at
    most ``max_fraction`` of the usable pixels are flagged (photopipe's adaptive
    scheme), at most ``max_tries`` times. Returns the CR mask and what was done.
    """
    import astroscrappy

    # astroscrappy's filters see a star cut by the chip's edge as sharp: pad by
    # reflection so that edge stars look like stars, and crop the result
    pad = 8
    bad = np.pad(mask != 0, pad, mode="reflect")
    sigclip = float(settings.get("sigclip", 4.5))
    cap = float(settings.get("max_fraction", 0.002))
    valid = max(int((mask == 0).sum()), 1)
    data = np.pad(np.where(np.isfinite(sci), sci, 0.0).astype(np.float32), pad, mode="reflect")
    crmask = np.zeros(sci.shape, dtype=bool)
    fraction = 0.0
    for _ in range(int(settings.get("max_tries", 6))):
        crmask, _ = astroscrappy.detect_cosmics(
            data,
            inmask=bad,
            sigclip=sigclip,
            sigfrac=float(settings.get("sigfrac", 0.3)),
            objlim=float(settings.get("objlim", 5.0)),
            gain=1.0,
            readnoise=float(read_noise),
            satlevel=float(saturation),
            niter=int(settings.get("niter", 4)),
            cleantype="meanmask",
        )
        crmask = crmask[pad:-pad, pad:-pad]
        fraction = float(crmask.sum()) / valid
        if fraction <= cap:
            break
        sigclip *= 1.25
    return crmask, {"cr_sigclip": sigclip, "cr_fraction": fraction}


def _is_float32(a: np.ndarray) -> bool:
    """float32 in either byte order (a master can be read memory-mapped, big-endian)."""
    return a.dtype.kind == "f" and a.dtype.itemsize == 4


def _set_bits(mask: np.ndarray, where: np.ndarray, bit: int) -> None:
    """``mask[where] |= bit``, without the fancy indexing for a boolean ``where``."""
    where = np.asarray(where)
    if where.dtype == bool and where.shape == mask.shape:
        np.bitwise_or(mask, int(bit), out=mask, where=where)
    else:
        mask[where] |= int(bit)


def calibrate_chip(
    prepared: Prepared,
    *,
    gain: float,
    read_noise: float,
    exptime: float,
    saturation_adu: float,
    bias: tuple | None,
    dark: tuple | None,
    flat: tuple | None,
    static_mask: np.ndarray | None,
    settings: dict,
    is_science: bool = True,
) -> Calibrated:
    """Bias, dark, gain, flat, masks and cosmic rays on a prepared chip.

    ``bias`` = (data ADU, unc ADU, mask) or None; ``dark`` = (rate e-/s, unc, mask);
    ``flat`` = (normalised, unc, mask). Variance (e-^2): Poisson on the collected
    charge (signal + dark, floored at 0) + read noise^2 + the masters' uncertainties,
    propagated through the flat.
    """
    steps = list(prepared.steps)
    shape = prepared.data.shape
    for master, name in ((bias, "bias"), (dark, "dark"), (flat, "flat")):
        if master is not None and master[0].shape != shape:
            raise ImredError(
                f"master {name} is {master[0].shape[1]}x{master[0].shape[0]} but the frame is "
                f"{shape[1]}x{shape[0]} (binning or sections differ): not used"
            )
    g = np.float32(gain)
    rn2 = np.float32(read_noise) ** 2
    te = np.float32(exptime)
    # this runs on every frame (tests/benchmarks/calibrate.py): float32, in place, with one
    # scratch array for the products, which are the same values as the expressions in the
    # comments (a scratch is used only where that expression's result is float32 anyway)
    tmp = np.empty(shape, dtype=np.float32)

    def scratch(a):
        return tmp if _is_float32(a) else None

    data = prepared.data.astype(np.float32, copy=False)
    mask = np.zeros(shape, dtype=np.uint16)
    if bias is not None and _is_float32(bias[0]):
        electrons = np.subtract(data, bias[0])  # data - bias
    else:
        electrons = data.copy() if data is prepared.data else data
        if bias is not None:
            electrons -= bias[0]
    if prepared.read_factor is None:
        if bias is not None and _is_float32(bias[1]):
            var = np.multiply(bias[1], g)
            np.square(var, out=var)
            var += rn2  # rn^2 + (bias unc x g)^2
        else:
            var = np.full(shape, rn2, dtype=np.float32)
            if bias is not None:
                var += np.square(bias[1] * g)
    else:  # NIR reads combined: the read noise of one read, weighted
        var = prepared.read_factor * rn2
        if bias is not None:
            unc = np.multiply(bias[1], g, out=scratch(bias[1]))
            var += np.square(unc, out=unc)
    if bias is not None:
        mask |= bias[2]
        steps.append("bias")
    electrons *= g
    # Poisson: all collected charge, dark included
    poisson = np.maximum(electrons, 0, out=tmp)
    if prepared.poisson_factor is not None:
        pf = prepared.poisson_factor
        poisson = np.multiply(pf, poisson, out=scratch(pf))
    var += poisson
    if dark is not None:
        electrons -= np.multiply(dark[0], te, out=scratch(dark[0]))  # dark x t
        unc = np.multiply(dark[1], te, out=scratch(dark[1]))
        var += np.square(unc, out=unc)  # (dark unc x t)^2
        mask |= dark[2]
        steps.append("dark")
    steps.append("gain")
    if flat is not None:
        good = np.isfinite(flat[0])
        good &= flat[0] > 0
        inv = np.divide(1.0, flat[0], out=np.ones(shape, np.float32), where=good)
        electrons *= inv
        var *= np.square(inv, out=tmp)
        # (electrons x flat unc x inv)^2
        prod = np.multiply(electrons, flat[1], out=scratch(flat[1]))
        prod *= inv
        var += np.square(prod, out=prod)
        mask |= flat[2]
        _set_bits(mask, np.logical_not(good, out=good), Bit.NO_DATA)
        steps.append("flat")
    if static_mask is not None:
        mask |= static_mask.astype(np.uint16, copy=False)
    _set_bits(mask, prepared.saturated, Bit.SATURATED)
    _set_bits(mask, prepared.nonlinear, Bit.NONLINEAR)
    bad = np.isfinite(electrons)
    bad &= np.isfinite(var)
    np.logical_not(bad, out=bad)  # not finite in electrons or var
    any_bad = bool(bad.any())
    if any_bad:
        _set_bits(mask, bad, Bit.NO_DATA)
    steps.append("masks")
    qa: dict = {}
    if is_science and settings.get("cosmic_rays", {}).get("enabled", True):
        sat_e = (saturation_adu - np.median(list(prepared.overscan_levels.values()) or [0])) * gain
        noise = read_noise
        if prepared.read_factor is not None:  # the combined frame's read noise
            noise = read_noise * float(np.sqrt(np.median(prepared.read_factor)))
        cr, qa = find_cosmic_rays(electrons, mask, noise, sat_e, settings["cosmic_rays"])
        mask[cr] |= int(Bit.COSMIC_RAY)
        steps.append("cosmic_rays")
    repair = settings.get("bad_pixels", {}).get("repair", False)
    if repair:
        names = settings["bad_pixels"].get("repair_bits", ["BAD", "HOT", "DEAD", "COSMIC_RAY"])
        bits = sum(int(Bit[n]) for n in names)
        qa["repaired"] = repair_pixels(electrons, var, mask, bits)
        steps.append("repair")
        bad &= (mask & np.uint16(Bit.INTERPOLATED)) == 0
    if any_bad:
        np.copyto(electrons, np.nan, where=bad)
        np.copyto(var, np.nan, where=bad)
    qa["masked_fraction"] = float(np.count_nonzero(mask)) / mask.size
    return Calibrated(electrons, var, mask, steps, qa)
