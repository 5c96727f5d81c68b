"""NIR detector library: reference pixels, CDS/Fowler/ramps, non-linearity.

Every test builds seeded synthetic data with a known truth and measures the error of
the recovered quantity against it (numbers in the comments are what the tests found).
"""

from __future__ import annotations

import numpy as np
import pytest
from imred.calib import calibrate_chip, prepare_exposure
from imred.errors import ImredError
from imred.instrument import Chip
from imred.mask import Bit
from imred.nir import (
    build_nonlinearity_cube,
    cds,
    cds_exptime,
    combination_weights,
    combine_mode,
    combine_reads,
    correct_nonlinearity,
    correct_reference_pixels,
    exposure_time,
    fowler,
    fowler_exptime,
    ramp_exptime,
    ramp_slope,
    rate_image,
    trim_reference_pixels,
)

# --------------------------------------------------------------------------------------
# reference pixels
# --------------------------------------------------------------------------------------

NY = NX = 256
WIDTH = 4
N_OUT = 4  # 64 columns per output, as on IO:I
REF_NOISE = 5.0  # ADU per pixel
ROWS = np.arange(NY, dtype=float)[:, None]


def _reference_parts(seed: int = 1) -> dict[str, np.ndarray]:
    """The pieces of a raw read: signal (0 in the border), noise, and three bias terms."""
    rng = np.random.default_rng(seed)
    signal = np.zeros((NY, NX))
    signal[WIDTH:-WIDTH, WIDTH:-WIDTH] = rng.gamma(4.0, 50.0, (NY - 2 * WIDTH, NX - 2 * WIDTH))
    noise = rng.normal(0.0, REF_NOISE, (NY, NX))
    # per output and column parity: an offset drifting linearly along y
    group = 2 * (np.arange(NX) // (NX // N_OUT)) + np.arange(NX) % 2
    level = rng.uniform(-300, 300, 2 * N_OUT)[group]
    drift = rng.uniform(-0.5, 0.5, 2 * N_OUT)[group]
    channels = level + drift * ROWS
    # common mode along y, shared by every column (slow: smoother than the Gaussian)
    row_term = 30.0 * np.sin(2 * np.pi * ROWS / 180.0 + 0.7) + 10.0 * np.cos(ROWS / 40.0)
    row_term = np.broadcast_to(row_term, (NY, NX))
    return {"signal": signal, "noise": noise, "channels": channels, "rows": row_term}


def _structure_rms(corrected: np.ndarray, parts: dict[str, np.ndarray]) -> float:
    """rms over the light-sensitive pixels of what is left besides signal and noise."""
    left = corrected - parts["signal"] - parts["noise"]
    return float(np.sqrt(np.mean(trim_reference_pixels(left, WIDTH) ** 2)))


def _correct(frame: np.ndarray, mode: str) -> np.ndarray:
    return correct_reference_pixels(frame, mode, width=WIDTH, n_outputs=N_OUT)


def test_ramp_mode_removes_per_output_parity_drifts():
    parts = _reference_parts()
    frame = parts["signal"] + parts["noise"] + parts["channels"] + 1000.0
    before = _structure_rms(frame, parts)  # found 1024 ADU
    ramp = _structure_rms(_correct(frame, "ramp"), parts)
    # each line end is a mean of 4 rows x 32 columns: error ~ 5/sqrt(128) = 0.44 ADU
    assert ramp < 2 * REF_NOISE / np.sqrt(WIDTH * NX / N_OUT / 2)  # 0.88; found 0.23
    # the wrong modes leave the per-output structure (hundreds of ADU)
    assert _structure_rms(_correct(frame, "constant"), parts) > 50  # found 145
    assert _structure_rms(_correct(frame, "column"), parts) > 50  # found 153
    assert _structure_rms(_correct(frame, "trim"), parts) == pytest.approx(before)


def test_column_mode_removes_a_common_row_term():
    parts = _reference_parts()
    frame = parts["signal"] + parts["noise"] + parts["rows"] + 1000.0
    column = _structure_rms(_correct(frame, "column"), parts)
    # noise: 8 reference pixels per row (1.8 ADU) smoothed over ~7 rows, ~0.35 ADU; bias:
    # the sigma-7 Gaussian damps the 180-row wave of 30 ADU by 3 % (0.6 ADU rms)
    assert column < 1.2  # found 0.86
    unsmoothed = correct_reference_pixels(
        frame, "column", width=WIDTH, n_outputs=N_OUT, smooth_sigma=0
    )
    assert _structure_rms(unsmoothed, parts) == pytest.approx(
        REF_NOISE / np.sqrt(2 * WIDTH), rel=0.1
    )
    # unsmoothed: just the noise of 8 pixels, 5/sqrt(8) = 1.77 (found 1.66)
    # ramp joins the ends with a straight line; the wave in between stays
    assert _structure_rms(_correct(frame, "ramp"), parts) > 10  # found 31
    assert _structure_rms(_correct(frame, "constant"), parts) > 10  # found 28


def test_full_mode_removes_both_and_constant_only_a_constant():
    parts = _reference_parts()
    frame = parts["signal"] + parts["noise"] + parts["channels"] + parts["rows"] + 1000.0
    assert _structure_rms(_correct(frame, "full"), parts) < 1.2  # found 0.89
    assert _structure_rms(_correct(frame, "ramp"), parts) > 10  # found 31
    assert _structure_rms(_correct(frame, "column"), parts) > 50  # found 153

    flat = parts["signal"] + parts["noise"] + 1234.0
    # mean of (256^2 - 248^2) = 4032 border pixels: 5/sqrt(4032) = 0.08 ADU
    assert _structure_rms(_correct(flat, "constant"), parts) < 0.3  # found 0.09
    assert _structure_rms(_correct(flat, "trim"), parts) == pytest.approx(1234.0)


def test_trim_reference_pixels_and_errors():
    frame = np.arange(20 * 24, dtype=float).reshape(20, 24)
    trimmed = trim_reference_pixels(frame, 4)
    assert trimmed.shape == (12, 16)
    assert trimmed[0, 0] == frame[4, 4] and trimmed[-1, -1] == frame[15, 19]
    assert correct_reference_pixels(frame, "TRIM", width=4, n_outputs=4).dtype == float
    with pytest.raises(ImredError, match="equal outputs"):
        correct_reference_pixels(frame, "ramp", width=4, n_outputs=5)
    with pytest.raises(ImredError, match="unknown reference-pixel mode"):
        correct_reference_pixels(frame, "median", width=4, n_outputs=4)
    with pytest.raises(ImredError, match="leaves nothing"):
        trim_reference_pixels(frame, 10)


# --------------------------------------------------------------------------------------
# CDS, Fowler and ramps
# --------------------------------------------------------------------------------------

READ_NOISE = 15.0  # ADU per read
GAIN = 2.0  # e-/ADU
BIAS = 1000.0
HARD_LIMIT = 33000.0  # the ADC/well: reads cannot exceed it
SATURATION = 32000.0  # threshold given to ramp_slope


def _simulate_reads(rate: np.ndarray, times: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Non-destructive reads: cumulative Poisson charge + bias, clipped, + read noise."""
    steps = np.diff(np.concatenate([[0.0], times]))
    electrons = rng.poisson(rate[None] * GAIN * steps[:, None, None]).cumsum(axis=0)
    level = np.minimum(BIAS + electrons / GAIN, HARD_LIMIT)
    return level + rng.normal(0.0, READ_NOISE, level.shape)


def test_cds_recovers_rate_within_its_noise():
    rng = np.random.default_rng(7)
    rate = rng.uniform(5, 500, (100, 100))
    times = np.array([1.4, 21.4])
    reads = _simulate_reads(rate, times, rng)
    exptime = cds_exptime(*times)
    assert exptime == pytest.approx(20.0)
    measured = rate_image(cds(reads[0], reads[1]), exptime)
    sigma = np.sqrt(2 * READ_NOISE**2 + rate * exptime / GAIN) / exptime
    pull = (measured - rate) / sigma
    # found mean 0.02, std 0.99 over 10000 pixels
    assert abs(pull.mean()) < 0.05 and pull.std() == pytest.approx(1.0, abs=0.05)


def test_fowler_noise_falls_as_one_over_sqrt_n():
    rng = np.random.default_rng(11)
    shape = (100, 100)
    stds = {}
    for n in (1, 2, 4, 8):
        pedestal_t = 1.4 * np.arange(1, n + 1)
        signal_t = pedestal_t + 30.0
        reads = _simulate_reads(np.zeros(shape), np.concatenate([pedestal_t, signal_t]), rng)
        frame = fowler(reads[:n], reads[n:])
        assert fowler_exptime(pedestal_t, signal_t) == pytest.approx(30.0)
        stds[n] = frame.std()
        # read-noise limited: std = rn * sqrt(2 / N) = 21.2, 15.0, 10.6, 7.5
        # found 21.0, 15.1, 10.7, 7.5
        assert stds[n] == pytest.approx(READ_NOISE * np.sqrt(2.0 / n), rel=0.03)
    for n in (2, 4, 8):  # found ratios 0.718, 0.507, 0.356 (1/sqrt(N): 0.707, 0.5, 0.354)
        assert stds[n] / stds[1] == pytest.approx(1 / np.sqrt(n), rel=0.05)
    # with light: the Fowler frame over its exposure time is the rate
    rate = np.full(shape, 200.0)
    pedestal_t, signal_t = 1.4 * np.arange(1, 5), 1.4 * np.arange(1, 5) + 20.0
    reads = _simulate_reads(rate, np.concatenate([pedestal_t, signal_t]), rng)
    measured = rate_image(fowler(reads[:4], reads[4:]), fowler_exptime(pedestal_t, signal_t))
    assert measured.mean() == pytest.approx(200.0, rel=0.002)  # found 199.98
    with pytest.raises(ImredError, match="as many pedestal"):
        fowler(reads[:4], reads[4:7])


def test_ramp_slope_pulls_and_saturation():
    rng = np.random.default_rng(3)
    rate = rng.uniform(2.0, 2000.0, (120, 100))
    # rows 100-109 saturate after read 3 of 10 (level 1000 + 4.2 s * rate < 32000 and
    # 1000 + 5.6 s * rate >= 33000); row 110: in the first read; row 111: in the second
    rate[100:110] = rng.uniform(6000.0, 7000.0, (10, 100))
    rate[110] = 40000.0
    rate[111] = 18000.0
    times = 1.4 * np.arange(1, 11)
    reads = _simulate_reads(rate, times, rng)
    result, err, n_used, saturated = ramp_slope(
        reads, times, SATURATION, read_noise=READ_NOISE, gain=GAIN
    )

    pull = (result[:100] - rate[:100]) / err[:100]
    assert np.all(n_used[:100] == 10)
    assert abs(pull.mean()) < 0.05  # found -0.008
    assert pull.std() == pytest.approx(1.0, abs=0.05)  # found 1.006

    # saturated after 3 reads: fitted on those 3, still right within its (larger) error
    assert np.all(n_used[100:110] == 3)
    pull_sat = (result[100:110] - rate[100:110]) / err[100:110]
    # found mean 0.04, std 0.97 over 1000 pixels
    assert abs(pull_sat.mean()) < 0.1 and pull_sat.std() == pytest.approx(1.0, abs=0.1)
    assert np.all(ramp_exptime(times, n_used[100:110]) == pytest.approx(2.8))
    # without the cut the saturated reads would pull these rates far down
    naive = ramp_slope(reads, times, np.inf, read_noise=READ_NOISE, gain=GAIN)[0]
    assert np.median(naive[100:110] / rate[100:110]) < 0.7  # found 0.22

    # fewer than two usable reads: no rate, flagged
    assert np.all(n_used[110] == 0) and np.all(n_used[111] == 1)
    assert np.all(np.isnan(result[110:112])) and np.all(saturated[110:112])
    assert not saturated[:110].any()


def test_ramp_slope_exact_on_noise_free_ramp_and_scatter_error():
    times = np.array([1.4, 2.8, 4.2, 7.0, 9.8])
    rate = np.array([[10.0, 250.0], [0.0, -3.0]])
    reads = 500.0 + rate[None] * times[:, None, None]
    result, err, n_used, saturated = ramp_slope(reads, times, 1e6)
    assert result == pytest.approx(rate, abs=1e-9)
    assert np.all(err < 1e-9) and np.all(n_used == 5) and not saturated.any()

    # without a noise model, the error comes from the scatter about the line
    rng = np.random.default_rng(5)
    times = 1.4 * np.arange(1, 11)
    reads = 1000.0 + rng.normal(0.0, READ_NOISE, (10, 100, 100))
    _, scatter_err, _, _ = ramp_slope(reads, times, 1e6)
    _, model_err, _, _ = ramp_slope(reads, times, 1e6, read_noise=READ_NOISE)
    assert np.median(scatter_err) == pytest.approx(model_err[0, 0], rel=0.1)  # found -4 %

    with pytest.raises(ImredError, match="read times"):
        ramp_slope(reads, times[:-1], 1e6)
    with pytest.raises(ImredError, match="increase"):
        ramp_slope(reads, times[::-1], 1e6)


# --------------------------------------------------------------------------------------
# non-linearity
# --------------------------------------------------------------------------------------

FIT_RANGE = (2500.0, 40000.0)


def _factor(x: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    return sum(c * x**k for k, c in enumerate(coeffs))


def _observed_level(linear: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """Invert x * F(x) = linear by Newton (the detector's non-linear response)."""
    x = np.array(linear, dtype=float)
    deriv = [k * c for k, c in enumerate(coeffs)][1:]
    for _ in range(30):
        g = x * _factor(x, coeffs) - linear
        dg = _factor(x, coeffs) + x * _factor(x, deriv)
        x = x - g / dg
    return x


def _true_coeffs(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Per-pixel factor 1 + c1 x + c2 x^2 + c3 x^3: ~5 % at 40000 ADU, scattered 20 %."""
    scatter = 1 + 0.2 * rng.standard_normal((3, *shape))
    return np.stack([np.ones(shape), 1.0e-6 * scatter[0], 5e-12 * scatter[1], 2e-17 * scatter[2]])


def _nonlinear_ramp(rate, coeffs, times, rng=None, n_ramps=1):
    """Reads (bias + observed level) of non-linear pixels, and the linear truth.

    With ``rng``: Poisson (cumulative) and read noise of the mean of ``n_ramps`` ramps.
    """
    linear = rate[None] * times[:, None, None]
    reads = BIAS + _observed_level(linear, coeffs[:, None])
    if rng is not None:
        steps = np.diff(np.concatenate([[0.0], times]))[:, None, None]
        shot = rng.normal(0.0, 1.0, linear.shape) * np.sqrt(rate[None] * steps / GAIN)
        noise = shot.cumsum(axis=0) + rng.normal(0.0, READ_NOISE, linear.shape)
        reads = reads + noise / np.sqrt(n_ramps)
    return np.minimum(reads, 60000.0), linear


def test_global_polynomial_recovers_truth_and_flags_beyond_max_adu():
    coeffs = np.array([1.0, 1.0e-6, 5e-12, 2e-17])
    linear = np.linspace(0.0, 50000.0, 501)[None, :].repeat(3, axis=0)
    observed = _observed_level(linear, coeffs)
    at_40k = linear[0, 400] / observed[0, 400]
    assert at_40k == pytest.approx(1.05, abs=0.01)  # found 1.045: 4.5 % low at 40000 ADU
    corrected, flagged = correct_nonlinearity(observed, polynomial=coeffs, max_adu=40000.0)
    assert corrected == pytest.approx(linear, rel=1e-10)
    assert np.array_equal(flagged, observed > 40000.0) and flagged.any() and not flagged.all()
    cube = np.broadcast_to(coeffs[:, None, None], (4, *linear.shape))
    assert correct_nonlinearity(observed, cube=cube)[0] == pytest.approx(corrected, rel=1e-12)
    with pytest.raises(ImredError, match="exactly one"):
        correct_nonlinearity(observed)
    with pytest.raises(ImredError, match="does not fit"):
        correct_nonlinearity(observed, cube=cube[:, :2])


def test_lost_signal_puts_a_difference_on_the_right_part_of_the_curve():
    coeffs = np.array([1.0, 1.0e-6, 5e-12, 2e-17])
    rate = np.linspace(100.0, 1500.0, 50)[None, :]
    t0, t1 = 1.4, 25.0
    first = _observed_level(rate * t0, coeffs)
    last = _observed_level(rate * t1, coeffs)
    difference = cds(first, last)
    truth = rate * (t1 - t0)
    exact, _ = correct_nonlinearity(difference, polynomial=coeffs, lost_signal=first)
    assert exact == pytest.approx(truth, rel=1e-10)
    # in practice the lost signal is the measured rate x t0
    lost = rate_image(difference, cds_exptime(t0, t1)) * t0
    estimated = np.abs(
        correct_nonlinearity(difference, polynomial=coeffs, lost_signal=lost)[0] / truth - 1
    )
    ignored = np.abs(correct_nonlinearity(difference, polynomial=coeffs)[0] / truth - 1)
    assert estimated.max() < 5e-4  # found 2.2e-4
    assert ignored.max() > 2e-3  # found 5.3e-3: the CDS frame alone sits too low on the curve


def test_build_nonlinearity_cube_recovers_the_response():
    rng = np.random.default_rng(21)
    shape = (48, 40)
    coeffs = _true_coeffs(shape, rng)
    rate = rng.uniform(600.0, 900.0, shape)
    times = 1.4 * np.arange(1, 61)
    # dead pixels and pixels whose well fills at 20000 ADU, inside the fit range
    rate[0, :5] = 0.0
    reads, linear = _nonlinear_ramp(rate, coeffs, times)
    reads[:, 1, :5] = np.minimum(reads[:, 1, :5], BIAS + 20000.0)

    cube, bad = build_nonlinearity_cube(reads, times, linear_max_adu=5000.0, fit_range=FIT_RANGE)
    assert cube.shape == (4, *shape)
    assert np.all(bad[:2, :5]) and bad.sum() == 10
    assert np.all(cube[:, :2, :5] == np.array([1, 0, 0, 0])[:, None, None])

    good = ~bad
    observed = reads - BIAS
    corrected, flagged = correct_nonlinearity(observed, cube=cube, max_adu=FIT_RANGE[1])
    in_range = (observed >= FIT_RANGE[0]) & ~flagged & good[None]
    residual = np.abs(corrected[in_range] / linear[in_range] - 1)
    assert residual.max() < 1e-3  # found 2.7e-7 (a cubic factor is recovered exactly)
    # untreated, the same reads are up to 7 % low
    assert np.abs(observed[in_range] / linear[in_range] - 1).max() > 0.04  # found 0.070


def test_build_nonlinearity_cube_with_noise():
    rng = np.random.default_rng(22)
    shape = (64, 64)
    coeffs = _true_coeffs(shape, rng)
    rate = rng.uniform(600.0, 900.0, shape)
    times = 1.4 * np.arange(1, 61)
    grid = np.linspace(*FIT_RANGE, 50)[:, None, None]
    scatter = {}
    for n_ramps in (1, 16):
        reads, _ = _nonlinear_ramp(rate, coeffs, times, rng, n_ramps=n_ramps)
        cube, bad = build_nonlinearity_cube(
            reads, times, linear_max_adu=5000.0, fit_range=FIT_RANGE
        )
        assert not bad.any()  # noise alone does not make a pixel bad
        # the fitted factor against the truth, on a noise-free grid over the fit range
        error = _factor(grid, cube) / _factor(grid, coeffs) - 1
        scatter[n_ramps] = error[-1].std()  # at 40000 ADU
        # unbiased: the median over pixels is at the truth at every level, within 4 of its
        # standard errors (found 4.3e-4 for one ramp, 5e-5 for 16; limits 1.5e-3, 3.8e-4)
        limit = 4 * 1.2533 * scatter[n_ramps] / np.sqrt(error[-1].size)
        assert np.abs(np.median(error, axis=(1, 2))).max() < limit
    # per pixel it is noise, falling as 1/sqrt(K): found 1.96 % (one ramp), 0.49 % (16)
    assert scatter[16] < 0.01
    assert scatter[1] / scatter[16] == pytest.approx(4.0, rel=0.15)

    with pytest.raises(ImredError, match="at least"):
        build_nonlinearity_cube(reads[:4], times[:4], linear_max_adu=5000.0)


# --------------------------------------------------------------------------------------
# one exposure from its reads: combine_reads, prepare_exposure, calibrate_chip
# --------------------------------------------------------------------------------------


def _textbook_sigma(mode: str, rate: np.ndarray, times: np.ndarray, n: int) -> np.ndarray:
    """1-sigma error (ADU/s) of a rate from the standard formulas, not the library's algebra.

    CDS: var(S) = 2 rn^2 + S; Fowler-N (group spacing d, exposure T): var(S) = 2 rn^2 / N
    + S (1 - (N^2 - 1) d / (3 N T)); ramp of n reads d apart (Rauscher et al. 2007):
    var(rate) = 12 rn^2 / (n (n^2 - 1) d^2) + 6 (n^2 + 1) rate / (5 n (n^2 - 1) d).
    In ADU with rate / GAIN the Poisson variance per second.
    """
    if mode == "ramp":
        d = times[1] - times[0]
        var = 12 * READ_NOISE**2 / (n * (n**2 - 1) * d**2)
        return np.sqrt(var + 6 * (n**2 + 1) * rate / GAIN / (5 * n * (n**2 - 1) * d))
    d, t = times[1] - times[0], times[n] - times[0]
    poisson = 1 - (n**2 - 1) * d / (3 * n * t) if n > 1 else 1.0
    return np.sqrt(2 * READ_NOISE**2 / n + rate * t / GAIN * poisson) / t


@pytest.mark.parametrize(
    ("mode", "times", "n"),
    [
        ("cds", np.array([1.4, 21.4]), 1),
        ("fowler", np.array([1.4, 2.8, 4.2, 5.6, 21.4, 22.8, 24.2, 25.6]), 4),
        ("ramp", 1.4 + 2.0 * np.arange(10), 10),
    ],
)
def test_combine_reads_recovers_the_rate_within_the_textbook_noise(mode, times, n):
    rng = np.random.default_rng(31)
    rate = rng.uniform(5.0, 500.0, (100, 100))
    reads = _simulate_reads(rate, times, rng)
    w = combination_weights(times, mode, n if mode == "fowler" else None)
    assert w.sum() == pytest.approx(0.0, abs=1e-12) and w @ times == pytest.approx(1.0)
    out = combine_reads(reads, times, mode, n_pedestal=n if mode == "fowler" else None)
    sigma = _textbook_sigma(mode, rate, times, n)
    pull = (out.rate - rate) / sigma
    # found mean 0.010 / 0.001 / 0.010, std 0.990 / 1.002 / 0.996 (cds / fowler / ramp)
    assert abs(pull.mean()) < 0.05 and pull.std() == pytest.approx(1.0, abs=0.04)
    # the library's noise factors are the textbook's
    model = np.sqrt(out.read_factor * READ_NOISE**2 + out.poisson_factor * rate / GAIN)
    assert model == pytest.approx(sigma, rel=1e-9)
    assert not out.saturated.any() and np.all(out.n_used == times.size)
    if mode == "ramp":  # the same least-squares slope as ramp_slope
        assert out.rate == pytest.approx(ramp_slope(reads, times, np.inf)[0], rel=1e-9)


def test_combine_reads_ignores_saturated_reads_and_flags_only_early_saturation():
    rng = np.random.default_rng(32)
    times = np.array([1.4, 2.8, 21.4, 22.8])  # Fowler-2
    rate = rng.uniform(20.0, 200.0, (60, 100))
    rate[20:40] = rng.uniform(2000.0, 2600.0, (20, 100))  # saturate in the signal reads
    rate[40:50] = 60000.0  # saturated before the second read
    reads = _simulate_reads(rate, times, rng)
    out = combine_reads(reads, times, "fowler", n_pedestal=2, bad=reads >= SATURATION)
    assert np.all(out.n_used[:20] == 4)
    assert np.all(out.n_used[20:40] == 2) and not out.saturated[20:40].any()
    # the pedestal reads alone still give the rate, unbiased, with their (larger) noise
    sigma = np.sqrt(out.read_factor * READ_NOISE**2 + out.poisson_factor * rate / GAIN)
    pull = (out.rate[20:40] - rate[20:40]) / sigma[20:40]
    # found mean -0.039, std 1.000 over 2000 pixels
    assert abs(pull.mean()) < 0.1 and pull.std() == pytest.approx(1.0, abs=0.1)
    naive = combine_reads(reads, times, "fowler", n_pedestal=2).rate
    assert np.median(naive[20:40] / rate[20:40]) < 0.8  # clipped reads pull it: found 0.59
    assert out.saturated[40:50].all() and not out.saturated[:40].any()
    assert np.all(out.saturated == (out.n_used < 2))


def test_combination_modes_exposure_times_and_errors():
    fowler_t = np.array([1.4, 2.8, 11.4, 12.8])
    assert exposure_time(fowler_t, "fowler") == pytest.approx(10.0)
    assert exposure_time(fowler_t, "ramp") == pytest.approx(11.4)
    assert exposure_time([1.4, 11.4], "cds") == pytest.approx(10.0)
    assert combine_mode("nir-fowler") == "fowler" and combine_mode("nir-cds") == "cds"
    assert combine_mode("nir-fowler", "ramp") == "ramp" and combine_mode("nir-ramp") == "ramp"
    with pytest.raises(ImredError, match="no non-destructive reads"):
        combine_mode("ccd")
    with pytest.raises(ImredError, match="unknown read combination"):
        combine_mode("nir-cds", "median")
    with pytest.raises(ImredError, match="CDS takes 2 reads"):
        exposure_time(fowler_t, "cds")
    with pytest.raises(ImredError, match="as many pedestal"):
        exposure_time(fowler_t[:3], "fowler")


def test_prepare_exposure_corrects_reference_pixels_linearises_and_sets_the_variance():
    """Raw reads with per-output reference drifts and a non-linear response -> the
    calibrated frame is rate x exptime in e-, with a variance that matches its scatter."""
    rng = np.random.default_rng(33)
    n, width, n_out = 128, 4, 4
    times = np.array([1.4, 2.8, 11.4, 12.8])
    poly = [1.0, 0.0, 2e-11]
    rate = np.zeros((n, n))
    rate[width:-width, width:-width] = rng.uniform(50.0, 2000.0, (n - 2 * width, n - 2 * width))
    rate[60:62, 60:70] = 9000.0  # saturates in the signal reads only
    rate[70, 60:70] = 100000.0  # saturated before the second read
    linear = _simulate_reads(rate, times, rng) - BIAS + rng.normal(0, 20.0, (n, n))  # + reset
    reads = BIAS + _observed_level(np.clip(linear, 0, None), np.array(poly)) + np.minimum(linear, 0)
    group = 2 * (np.arange(n) // (n // n_out)) + np.arange(n) % 2
    for i in range(times.size):  # a level and a slope per output and parity, new each read
        level = rng.normal(0.0, 100.0, 2 * n_out)[group]
        slope = rng.normal(0.0, 20.0, 2 * n_out)[group]
        reads[i] += level + slope * (np.arange(n)[:, None] / (n - 1) - 0.5)
    reads = np.minimum(reads, HARD_LIMIT)
    chip = Chip(name="h2rg", trimsec=f"[{width + 1}:{n - width},{width + 1}:{n - width}]")
    reference = {"mode": "ramp", "width": width, "outputs": n_out, "smooth_sigma": 7.0}
    p = prepare_exposure(
        list(reads), times, chip, (1, 1), saturation=SATURATION,
        nonlinearity={"polynomial": poly, "max_adu": 20000.0}, reference=reference,
        combine="fowler", exptime=10.0, n_pedestal=2,
    )  # fmt: skip
    assert p.steps == ["reference:ramp", "trim", "fowler", "nonlinearity"]
    cal = calibrate_chip(
        p, gain=GAIN, read_noise=READ_NOISE * GAIN, exptime=10.0, saturation_adu=SATURATION,
        bias=None, dark=None, flat=None, static_mask=None,
        settings={"cosmic_rays": {"enabled": False}},
    )  # fmt: skip
    truth = rate[width:-width, width:-width] * 10.0 * GAIN  # e- in the exposure time
    pull = (cal.sci - truth) / np.sqrt(cal.var)
    sat = (cal.mask & Bit.SATURATED) != 0
    ok = ~sat
    # found mean -0.012, std 1.004 over 14390 pixels: drifts, reset levels and the
    # non-linearity (up to 1.3 % at the top) are gone, and VAR is the noise
    assert abs(pull[ok].mean()) < 0.05 and pull[ok].std() == pytest.approx(1.0, abs=0.05)
    # SATURATED only where the second read was already saturated
    assert np.array_equal(np.flatnonzero(sat.any(axis=1)) + width, [70])
    assert np.all(np.abs(pull[56:58, 56:66]) < 5)  # saturated later: 2 reads (found 2.2)
    # NONLINEAR where a read that was used is beyond max_adu (25200 ADU at 2.8 s)
    nonlinear = (cal.mask & Bit.NONLINEAR) != 0
    assert nonlinear[56:58, 56:66].all() and not nonlinear[rate[4:-4, 4:-4] < 1500].any()
