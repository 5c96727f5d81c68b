"""CCD calibration on seeded synthetic chips with known bias, dark, flat, gain and noise."""

from __future__ import annotations

import numpy as np
import pytest
from imred.calib import (
    bad_columns,
    calibrate_chip,
    find_cosmic_rays,
    gain_from_flat_pairs,
    make_master_bias,
    make_master_dark,
    make_master_flat,
    prepare_chip,
    read_noise_from_pairs,
    region_mask,
    repair_pixels,
    subtract_overscan,
)
from imred.errors import ImredError
from imred.instrument import Chip
from imred.mask import Bit

NY, NX, NOVER = 120, 100, 16
GAIN, RN = 1.6, 5.0  # e-/ADU, e-


def two_amp_chip() -> Chip:
    """A 100x120 chip read by two amplifiers (left/right halves), overscan on the right."""
    return Chip(
        name="c1",
        datasec=f"[1:{NX},1:{NY}]",
        amplifiers=[
            {"name": "L", "data": f"[1:50,1:{NY}]", "overscan": f"[{NX + 1}:{NX + 8},1:{NY}]"},
            {"name": "R", "data": f"[51:{NX},1:{NY}]",
             "overscan": f"[{NX + 9}:{NX + NOVER},1:{NY}]"},
        ],
    )  # fmt: skip


def raw_frame(rng, electrons, *, levels=(1000.0, 1100.0), slope=0.0, structure=None):
    """Raw ADU: electrons (data) with Poisson noise / gain + read noise + per-amp bias."""
    raw = np.zeros((NY, NX + NOVER))
    e = rng.poisson(np.clip(electrons, 0, None)).astype(float)
    raw[:, :NX] = e / GAIN
    rows = np.arange(NY)[:, None] * slope
    raw[:, :50] += levels[0] + rows
    raw[:, 50:NX] += levels[1] + rows
    raw[:, NX : NX + 8] += levels[0] + rows
    raw[:, NX + 8 :] += levels[1] + rows
    if structure is not None:
        raw[:, :NX] += structure
    raw += rng.normal(0, RN / GAIN, raw.shape)
    return np.rint(raw)


def prep(raw, chip=None, method="median", nonlinearity=None):
    return prepare_chip(
        raw,
        chip or two_amp_chip(),
        (1, 1),
        saturation=60000,
        overscan={"enabled": True, "method": method, "fit_order": 2},
        nonlinearity=nonlinearity,
    )


def test_overscan_per_amplifier_and_fit_along_rows():
    rng = np.random.default_rng(1)
    signal = np.full((NY, NX), 500.0 * GAIN)
    raw = raw_frame(rng, signal, slope=0.2)  # bias rising 0.2 ADU per row
    flat_level = prep(raw, method="median").data
    fitted = prep(raw, method="fit").data
    # a constant level leaves the row slope (22 ADU top to bottom); the fit removes it
    # to within the noise of a quadratic fit to 8 overscan columns (rms 0.6 ADU here)
    top_minus_bottom = flat_level[-10:].mean() - flat_level[:10].mean()
    assert top_minus_bottom == pytest.approx(0.2 * (NY - 10), rel=0.1)
    assert fitted[-10:].mean() - fitted[:10].mean() == pytest.approx(0, abs=2.0)
    # both amplifiers end at the signal level, whatever their bias (rms 0.3 ADU here)
    for half in (fitted[:, :50], fitted[:, 50:]):
        assert half.mean() == pytest.approx(500.0, abs=1.0)
    out, levels = subtract_overscan(raw, two_amp_chip(), (1, 1), "median")
    assert levels["L"] == pytest.approx(1000 + 0.2 * NY / 2, abs=1.0)
    assert levels["R"] == pytest.approx(1100 + 0.2 * NY / 2, abs=1.0)
    assert out.shape == raw.shape


def test_prepare_trims_and_flags_saturation_on_raw_values():
    rng = np.random.default_rng(2)
    raw = raw_frame(rng, np.full((NY, NX), 100.0))
    raw[10, 20] = 60000
    p = prep(raw)
    assert p.data.shape == (NY, NX)
    assert p.saturated[10, 20] and p.saturated.sum() == 1
    assert p.steps == ["overscan:median", "trim"]
    with pytest.raises(ImredError, match="outside the"):
        prepare_chip(raw, Chip(name="x", trimsec="[1:500,1:10]"), (1, 1), saturation=6e4,
                     overscan={}, nonlinearity=None)  # fmt: skip


def test_nonlinearity_correction_is_applied_and_flags_beyond_range():
    chip = Chip(name="c", datasec="[1:10,1:10]")
    raw = np.full((10, 10), 40000.0)
    raw[0, 0] = 58000
    p = prepare_chip(raw, chip, (1, 1), saturation=65000, overscan={"enabled": False},
                     nonlinearity={"polynomial": [1.0, 0.0, 1.5e-11], "max_adu": 55000})  # fmt: skip
    assert p.data[5, 5] == pytest.approx(40000 * (1 + 1.5e-11 * 40000**2), rel=1e-6)
    assert p.nonlinear[0, 0] and p.nonlinear.sum() == 1


def test_master_bias_recovers_structure_and_read_noise():
    rng = np.random.default_rng(3)
    structure = rng.normal(0, 3.0, (NY, NX))  # fixed pattern, ADU
    n = 15
    frames = [prep(raw_frame(rng, np.zeros((NY, NX)), structure=structure)).data for _ in range(n)]
    master = make_master_bias(frames, GAIN, {"combine": {"method": "mean", "sigma": 3.0}})
    err = (master.data - master.data.mean()) - (structure - structure.mean())
    expected = RN / GAIN / np.sqrt(n)
    assert err.std() == pytest.approx(expected, rel=0.1)
    assert master.qa["read_noise_e"] == pytest.approx(RN, rel=0.03)
    assert read_noise_from_pairs(frames[:2], GAIN) == pytest.approx(RN, rel=0.05)
    # the uncertainty plane says what the error is
    assert np.median(master.unc) == pytest.approx(expected, rel=0.1)


def test_gain_from_flat_pairs_photon_transfer():
    rng = np.random.default_rng(4)
    pattern = 1 + rng.normal(0, 0.02, (NY, NX))  # pixel response: cancels in pairs
    frames = []
    for level in (20000.0, 20500.0, 19800.0, 20200.0):
        frames.append(prep(raw_frame(rng, level * pattern)).data)
    assert gain_from_flat_pairs(frames, RN / GAIN) == pytest.approx(GAIN, rel=0.03)


def test_master_dark_rate_and_hot_pixels():
    rng = np.random.default_rng(5)
    rate = np.full((NY, NX), 0.02)
    rate[30, 40] = 5.0
    rate[70, 10] = 2.0
    t = 600.0
    frames = [prep(raw_frame(rng, rate * t)).data for _ in range(5)]
    master = make_master_dark(frames, [t] * 5, GAIN,
                              {"hot_sigma": 5.0, "hot_min_rate": 0.5, "combine": {}},
                              read_noise=RN)  # fmt: skip
    good = np.ones(rate.shape, bool)
    good[30, 40] = good[70, 10] = False
    # each pixel's rate within its noise: sqrt(rate t + rn^2)/t/sqrt(5)
    noise = np.sqrt(0.02 * t + RN**2) / t / np.sqrt(5)
    assert np.abs(master.data[good] - 0.02).mean() < noise
    assert master.data[30, 40] == pytest.approx(5.0, rel=0.02)
    assert set(zip(*np.nonzero(master.mask & Bit.HOT), strict=True)) == {(30, 40), (70, 10)}
    # the uncertainty is the noise model: the empirical error of normal pixels matches it
    model = make_master_dark(frames, [t] * 5, GAIN, {"combine": {}}, read_noise=RN)
    assert np.std(model.data[good] - 0.02) == pytest.approx(np.median(model.unc[good]), rel=0.15)
    with pytest.raises(ImredError, match="exposure times > 0"):
        make_master_dark(frames[:1], [0.0], GAIN, {}, read_noise=RN)


def test_master_flat_reaches_the_photon_noise_limit_and_flags_dead_pixels():
    rng = np.random.default_rng(6)
    truth = 1 + 0.05 * np.sin(np.arange(NX) / 9.0)[None, :] * np.ones((NY, 1))
    truth = truth * (1 + rng.normal(0, 0.01, (NY, NX)))
    truth[50, 50] = 0.2  # dead
    levels = [15000.0, 22000.0, 18000.0, 20000.0, 17000.0]  # electrons per pixel
    frames = [prep(raw_frame(rng, lv * truth)).data for lv in levels]
    master = make_master_flat(frames, {"dead_threshold": 0.5, "combine": {}}, RN / GAIN, GAIN)
    ok = np.ones(truth.shape, bool)
    ok[50, 50] = False
    rel = master.data[ok] / (truth[ok] / np.median(truth[ok]))
    limit = 1 / np.sqrt(sum(levels))  # photon noise of the summed flats, relative
    assert np.median(master.data) == pytest.approx(1.0, abs=1e-3)
    assert rel.std() / limit < 1.2
    # the uncertainty plane predicts the error (photon + read noise model)
    assert np.median(master.unc[ok]) == pytest.approx(rel.std(), rel=0.15)
    # one flat alone still gets an uncertainty
    single = make_master_flat(frames[:1], {"dead_threshold": 0.5, "combine": {}}, RN / GAIN, GAIN)
    assert np.isfinite(single.unc[ok]).all()
    assert master.mask[50, 50] & Bit.DEAD and np.count_nonzero(master.mask & Bit.DEAD) == 1
    assert master.qa["gain_measured"] == pytest.approx(GAIN, rel=0.05)


def test_bad_columns_are_found_without_false_ones():
    rng = np.random.default_rng(7)
    image = 1 + rng.normal(0, 0.01, (200, 150)) + 0.1 * np.linspace(0, 1, 150)[None, :]
    image[:, 37] *= 0.9
    image[:, 100] *= 1.05
    cols = bad_columns(image, window=11, sigma=5.0)
    assert np.flatnonzero(cols).tolist() == [37, 100]


def test_region_mask_uses_raw_one_based_inclusive_coordinates():
    trim = (slice(0, 100), slice(2, 102))  # trimmed grid starts at raw column 3
    m = region_mask({"bad_columns": [5], "bad_rows": [1], "bad_rectangles": ["[10:12,20:21]"]},
                    (100, 110), trim, (1, 1))  # fmt: skip
    assert m[:, 2].all() and m[:, 2].sum() == 100  # raw column 5 = trimmed index 2
    assert m[0, :].all()
    assert m[19:21, 7:10].all() and m[19:21, 7:10].size == 6


def test_calibrated_frame_values_and_variance_match_the_truth():
    rng = np.random.default_rng(8)
    bias_struct = rng.normal(0, 2.0, (NY, NX))
    flat_true = 1 + 0.1 * np.linspace(-1, 1, NX)[None, :] * np.ones((NY, 1))
    dark_rate, t, sky = 0.05, 300.0, 400.0  # e-/s, s, e-/pixel before the flat
    bias = (bias_struct, np.zeros((NY, NX), np.float32), np.zeros((NY, NX), np.uint16))
    dark = (np.full((NY, NX), dark_rate, np.float32), np.zeros((NY, NX), np.float32),
            np.zeros((NY, NX), np.uint16))  # fmt: skip
    flat = (flat_true.astype(np.float32), np.zeros((NY, NX), np.float32),
            np.zeros((NY, NX), np.uint16))  # fmt: skip
    outs, variances = [], []
    for _ in range(60):
        electrons = sky * flat_true + dark_rate * t
        p = prep(raw_frame(rng, electrons, structure=bias_struct))
        cal = calibrate_chip(p, gain=GAIN, read_noise=RN, exptime=t, saturation_adu=60000,
                             bias=bias, dark=dark, flat=flat, static_mask=None,
                             settings={"cosmic_rays": {"enabled": False}})  # fmt: skip
        outs.append(cal.sci)
        variances.append(cal.var)
    outs = np.array(outs)
    assert outs.mean() == pytest.approx(sky, rel=2e-3)  # flat-fielded sky is flat
    assert np.abs(outs.mean(axis=0) - sky).max() < 6 * np.sqrt(sky / 60)
    # the variance plane predicts the scatter between realisations (within 5 %)
    assert np.mean(np.var(outs, axis=0, ddof=1)) == pytest.approx(np.mean(variances), rel=0.05)
    assert cal.steps == ["overscan:median", "trim", "bias", "dark", "gain", "flat", "masks"]


def test_calibrate_refuses_a_master_of_another_shape():
    rng = np.random.default_rng(9)
    p = prep(raw_frame(rng, np.full((NY, NX), 100.0)))
    small = np.zeros((10, 10), np.float32)
    with pytest.raises(ImredError, match="master bias is 10x10 but the frame is 100x120"):
        calibrate_chip(p, gain=GAIN, read_noise=RN, exptime=1, saturation_adu=6e4,
                       bias=(small, small, small.astype(np.uint16)), dark=None, flat=None,
                       static_mask=None, settings={"cosmic_rays": {"enabled": False}})  # fmt: skip


def gaussian_stars(rng, shape, n, sigma_px, flux):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    centres = rng.uniform(10, np.array(shape) - 10, (n, 2))
    for cy, cx in centres:
        image += (
            flux
            / (2 * np.pi * sigma_px**2)
            * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma_px**2))
        )
    return image, centres


def test_cosmic_rays_recalled_and_star_cores_spared():
    rng = np.random.default_rng(10)
    shape = (300, 300)
    stars, centres = gaussian_stars(rng, shape, 40, 1.5, 30000.0)
    sky = 300.0
    image = rng.poisson(stars + sky).astype(float) + rng.normal(0, RN, shape)
    truth = np.zeros(shape, bool)
    hits = rng.integers(5, 295, (60, 2))
    for y, x in hits:
        image[y, x] += rng.uniform(500, 5000)
        truth[y, x] = True
    cr, qa = find_cosmic_rays(image, np.zeros(shape, np.uint16), RN, 1e6,
                              {"sigclip": 4.5, "objlim": 5.0, "max_fraction": 0.01})  # fmt: skip
    recall = (cr & truth).sum() / truth.sum()
    assert recall >= 0.95
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cores = np.zeros(shape, bool)
    for cy, cx in centres:
        cores |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 1.5**2
    assert (cr & cores & ~truth).sum() / cores.sum() < 0.001
    # adaptive threshold: a cap below the true fraction raises sigclip
    _, capped = find_cosmic_rays(image, np.zeros(shape, np.uint16), RN, 1e6,
                                 {"sigclip": 4.5, "max_fraction": 1e-5, "max_tries": 3})  # fmt: skip
    assert capped["cr_sigclip"] > qa["cr_sigclip"]


def test_a_cosmic_ray_in_one_of_three_darks_is_rejected_by_the_noise_model():
    rng = np.random.default_rng(11)
    t = 300.0
    frames = [prep(raw_frame(rng, np.full((NY, NX), 0.01 * t))).data for _ in range(3)]
    frames[1][40, 40] += 2000.0 / GAIN  # a cosmic ray: 2000 e- in one dark
    master = make_master_dark(frames, [t] * 3, GAIN, {"combine": {}}, read_noise=RN)
    # sample-sigma clipping of three values cannot reject it (one of three is never more
    # than 1.15 sample sigmas out); the noise model does
    assert master.data[40, 40] == pytest.approx(0.01, abs=5 * RN / t)
    off = make_master_dark(frames, [t] * 3, GAIN, {"combine": {"model_sigma": 0}}, read_noise=RN)
    assert off.data[40, 40] > 2.0  # 2000 e- / 3 frames / 300 s


def test_repair_fills_flagged_pixels_from_good_neighbours():
    rng = np.random.default_rng(12)
    sci = (100 + rng.normal(0, 1, (50, 50))).astype(np.float32)
    var = np.full((50, 50), 1.0, np.float32)
    mask = np.zeros((50, 50), np.uint16)
    sci[10, 10] = 5000.0
    mask[10, 10] = Bit.COSMIC_RAY
    sci[:, 30] = 0.0
    mask[:, 30] = Bit.BAD
    n = repair_pixels(sci, var, mask, int(Bit.COSMIC_RAY | Bit.BAD))
    assert n == 51
    assert sci[10, 10] == pytest.approx(100, abs=1.0)
    assert np.abs(sci[:, 30] - 100).max() < 1.5
    assert mask[10, 10] == Bit.COSMIC_RAY | Bit.INTERPOLATED  # the original bit is kept
    assert (mask[:, 30] & Bit.INTERPOLATED).all()


def test_twilight_difference_pairs_cancel_an_additive_glow():
    rng = np.random.default_rng(13)
    truth = 1 + 0.05 * np.linspace(-1, 1, NX)[None, :] * np.ones((NY, 1))
    glow = 300.0 * np.exp(-((np.arange(NY)[:, None] - 60) ** 2) / 800.0) * np.ones((1, NX))
    levels = [30000.0, 24000.0, 12000.0, 9000.0]  # a falling twilight sky (e-)
    frames = [prep(raw_frame(rng, lv * truth + glow * GAIN)).data for lv in levels]
    settings = {"dead_threshold": 0.5, "combine": {}}
    plain = make_master_flat(frames, settings, RN / GAIN, GAIN)
    paired = make_master_flat(frames, settings | {"twilight_pairs": True}, RN / GAIN, GAIN)
    ref = truth / np.median(truth)
    err_plain = np.std(plain.data / ref - 1)
    err_pairs = np.std(paired.data / ref - 1)
    assert err_plain > 0.005  # the glow does not scale with the sky: it biases the flat
    assert err_pairs < 1.3 * np.median(paired.unc)  # pairs: only noise, as predicted


def test_nir_reference_pixels_replace_the_overscan():
    rng = np.random.default_rng(14)
    n, width = 64, 4
    signal = np.zeros((n, n))
    signal[width:-width, width:-width] = 500.0
    y = np.arange(n)[:, None]
    drift = np.where(np.arange(n)[None, :] < n // 2, 100 + 0.5 * y, 300 - 0.3 * y)  # 2 outputs
    raw = signal + drift + rng.normal(0, 2.0, (n, n))
    chip = Chip(name="h2rg", trimsec=f"[{width + 1}:{n - width},{width + 1}:{n - width}]")
    reference = {"mode": "ramp", "width": width, "outputs": 2, "smooth_sigma": 7.0}
    p = prepare_chip(raw, chip, (1, 1), saturation=60000, overscan={}, nonlinearity=None,
                     reference=reference)  # fmt: skip
    assert p.data.shape == (n - 2 * width, n - 2 * width)
    assert p.steps[0] == "reference:ramp"
    assert np.abs(p.data - 500).mean() < 2.0  # the drifts (100-320 ADU) are gone
    plain = prepare_chip(raw, chip, (1, 1), saturation=6e4, overscan={}, nonlinearity=None)
    assert np.abs(plain.data - 500).mean() > 100  # without reference pixels they stay


def test_a_cosmic_ray_in_one_of_two_biases_leaves_the_other_value():
    rng = np.random.default_rng(15)
    frames = [prep(raw_frame(rng, np.zeros((NY, NX)))).data for _ in range(2)]
    frames[0][20, 20] += 3000.0
    master = make_master_bias(frames, GAIN, {"combine": {}}, read_noise=RN)
    assert np.isfinite(master.data).all()
    assert master.data[20, 20] == pytest.approx(frames[1][20, 20], abs=1e-3)
