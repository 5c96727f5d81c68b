"""The sigma-clipped combine: the fast tiled path against the plain reference, outliers
rejected, uncertainties that match the scatter, FITS reading in slabs, bad input."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from astropy.io import fits
from imred import combine
from imred.combine import _reference_combine, combine_arrays, combine_files
from imred.errors import ImredError

LEVEL, NOISE = 1000.0, 10.0


def make_stack(seed: int, n: int = 20, shape=(37, 53), spikes: float = 0.01):
    """Seeded frames: level + Gaussian noise, cosmic-ray-like spikes (100 to 1e4 above)
    in a fraction ``spikes`` of the values and a few deep negative ones."""
    rng = np.random.default_rng(seed)
    frames = (LEVEL + NOISE * rng.standard_normal((n, *shape))).astype(np.float32)
    hits = rng.random(frames.shape) < spikes
    frames[hits] += rng.uniform(100, 1e4, hits.sum()).astype(np.float32)
    lows = rng.random(frames.shape) < spikes / 10
    frames[lows] -= 500
    return frames, rng


def assert_matches(fast, ref):
    """Equal to the reference within float32 rounding; identical counts and NaNs."""
    np.testing.assert_array_equal(fast.n_used, ref.n_used)
    np.testing.assert_array_equal(np.isnan(fast.data), np.isnan(ref.data))
    np.testing.assert_allclose(fast.data, ref.data, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.isnan(fast.uncertainty), np.isnan(ref.uncertainty))
    np.testing.assert_allclose(fast.uncertainty, ref.uncertainty, rtol=1e-4, atol=0)
    assert fast.rejected_fraction == pytest.approx(ref.rejected_fraction, abs=1e-12)
    assert fast.data.dtype == np.float32 and fast.uncertainty.dtype == np.float32
    assert fast.n_used.dtype == np.int16


def options(kind: str, frames: np.ndarray, rng) -> dict:
    n = len(frames)
    opts: dict = {}
    if "masks" in kind:
        masks = rng.random(frames.shape) < 0.05
        masks[:, 3, 4] = True  # one pixel masked everywhere
        masks[1:, 5, 6] = True  # one pixel with a single value
        opts["masks"] = masks
    if "scales" in kind:
        opts["scales"] = rng.uniform(0.5, 2.0, n)
    if "weights" in kind:
        opts["weights"] = rng.uniform(0.5, 2.0, n)
    return opts


CASES = [
    ("mean", "plain"), ("mean", "masks"), ("mean", "scales"), ("mean", "weights"),
    ("mean", "masks+scales+weights"), ("median", "plain"), ("median", "masks+scales"),
]  # fmt: skip


@pytest.mark.parametrize("memory_mb", [1024, 0.01], ids=["one-slab", "one-row-slabs"])
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_fast_path_equals_reference(method, kind, memory_mb):
    frames, rng = make_stack(seed=len(kind) + len(method))
    frames[2, 7, 8] = np.nan  # non-finite input counts as masked
    frames[4, 9, 10] = np.inf
    opts = options(kind, frames, rng)
    fast = combine_arrays(list(frames), method=method, memory_mb=memory_mb, **opts)
    ref = _reference_combine(list(frames), method=method, **opts)
    assert_matches(fast, ref)
    assert ref.rejected_fraction > 0.005  # the spikes were there to be clipped
    if "masks" in kind:
        assert fast.n_used[3, 4] == 0 and np.isnan(fast.data[3, 4])
        assert np.isnan(fast.uncertainty[3, 4]) and np.isnan(fast.uncertainty[5, 6])
        assert fast.n_used[5, 6] == 1 and np.isfinite(fast.data[5, 6])


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 33])
@pytest.mark.parametrize("method", ["mean", "median"])
def test_any_number_of_frames(n, method):
    frames, rng = make_stack(seed=n, n=n, shape=(11, 13))
    masks = rng.random(frames.shape) < 0.1
    fast = combine_arrays(list(frames), method=method, masks=list(masks))
    assert_matches(fast, _reference_combine(list(frames), method=method, masks=masks))


@pytest.mark.parametrize(
    ("sigma_lower", "sigma_upper", "maxiters"), [(2.0, 2.5, 1), (None, 3.0, 5), (3.0, None, 5),
                                                 (3.0, 3.0, 0), (1.5, 1.5, 10)],
)  # fmt: skip
def test_clipping_options(sigma_lower, sigma_upper, maxiters):
    frames, _ = make_stack(seed=5)
    kw = dict(sigma_lower=sigma_lower, sigma_upper=sigma_upper, maxiters=maxiters)
    assert_matches(combine_arrays(list(frames), **kw), _reference_combine(list(frames), **kw))


def borderline_pixel(seed: int) -> np.ndarray:
    """Two pixels of 20 float32 values whose lowest value is the float32 number just
    below, and just above, its float64 lower clipping limit (3 sigma)."""
    rng = np.random.default_rng(seed)
    others = (LEVEL + NOISE * rng.standard_normal(19)).astype(np.float32).astype(np.float64)

    def excess(x):  # a value minus its lower clipping limit, in float64
        v = np.append(others, x)
        return x - (np.median(v) - 3 * np.std(v))

    lo, hi = LEVEL - 10 * NOISE, others.min()
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    pixels = np.repeat(others[:, None], 2, axis=1).astype(np.float32)
    below = np.float32(lo) if np.float32(lo) <= lo else np.nextafter(np.float32(lo), np.float32(0))
    above = (
        np.float32(hi) if np.float32(hi) >= hi else np.nextafter(np.float32(hi), np.float32(2e3))
    )
    return np.vstack([pixels, [[below, above]]])


def test_values_at_the_clipping_limit_are_decided_as_the_reference_does():
    """The one-pass limits are float32: a value within rounding of its limit must still
    be decided as in float64 (the one just below clipped, the one just above kept)."""
    frames = np.concatenate([borderline_pixel(seed) for seed in range(40)], axis=1)[:, None]
    ref = _reference_combine(list(frames))
    assert list(ref.n_used[0, :4]) == [19, 20, 19, 20]  # real borderlines
    for memory_mb in (1024, 0.01):
        assert_matches(combine_arrays(list(frames), memory_mb=memory_mb), ref)


def test_chunks_and_batches_do_not_change_the_answer(monkeypatch):
    """Tiny cache chunks and exact-path batches, one-row slabs: the same bits."""
    frames, rng = make_stack(seed=11, shape=(29, 61))
    opts = options("masks+scales", frames, rng)
    whole = combine_arrays(list(frames), **opts)
    monkeypatch.setattr(combine, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(combine, "_MIN_CHUNK", 100)  # chunks straddle rows and slabs
    monkeypatch.setattr(combine, "_EXACT_BATCH", 7)
    tiled = combine_arrays(list(frames), memory_mb=0.02, **opts)
    for name in ("data", "uncertainty", "n_used"):
        np.testing.assert_array_equal(getattr(tiled, name), getattr(whole, name))
    assert tiled.rejected_fraction == whole.rejected_fraction
    assert_matches(whole, _reference_combine(list(frames), **opts))


@pytest.mark.parametrize("method", ["mean", "median"])
def test_spikes_are_rejected(method):
    rng = np.random.default_rng(3)
    n, shape = 20, (40, 40)
    frames = (LEVEL + NOISE * rng.standard_normal((n, *shape))).astype(np.float32)
    hit = rng.integers(0, n, shape)
    rows, cols = np.indices(shape)
    frames[hit, rows, cols] += 1e4  # one spike per pixel
    frames[(hit + 1)[:5] % n, rows[:5], cols[:5]] -= 1e4  # and a deep hole in some pixels
    result = combine_arrays(list(frames), method=method)
    error = NOISE / np.sqrt(n - 2) * (1.26 if method == "median" else 1.0)
    assert np.abs(result.data - LEVEL).max() < 5 * error  # unclipped: off by ~500
    assert np.all(result.n_used[:5] <= n - 2) and np.all(result.n_used <= n - 1)
    assert np.mean(result.n_used[5:]) > n - 1.2  # and little else thrown away


@pytest.mark.parametrize("method", ["mean", "median"])
def test_absurd_values_do_not_spoil_the_rest(method):
    """Values 1e30 away (garbage, sentinels) are rejected and leave no rounding trace."""
    frames, _ = make_stack(seed=9, spikes=0.002)
    frames[0, :10] = -1e30
    frames[1, 5:15] = 3e29
    frames[2, ::3] = -1e20
    fast = combine_arrays(list(frames), method=method)
    assert_matches(fast, _reference_combine(list(frames), method=method))
    assert np.abs(fast.data - LEVEL).max() < 30


@pytest.mark.parametrize("method", ["mean", "median"])
def test_uncertainty_matches_the_scatter_over_trials(method):
    """Each pixel is one seeded trial of the same truth: the predicted standard error
    matches the scatter of the combined values within 10 %."""
    predicted, combined = [], []
    for seed in range(4):
        rng = np.random.default_rng(100 + seed)
        frames = (LEVEL + NOISE * rng.standard_normal((20, 100, 100))).astype(np.float32)
        frames[rng.random(frames.shape) < 0.002] += 5e3  # a few cosmic rays
        result = combine_arrays(list(frames), method=method)
        predicted.append(result.uncertainty.ravel())
        combined.append(result.data.ravel())
    predicted_rms = np.sqrt(np.mean(np.concatenate(predicted) ** 2))
    scatter = np.std(np.concatenate(combined))
    assert predicted_rms / scatter == pytest.approx(1.0, abs=0.1)


def test_scales_and_weights():
    frames, _ = make_stack(seed=8, spikes=0)
    factors = np.array([0.5, 2.0, 4.0] * 6 + [1.0, 1.0])
    scaled = combine_arrays(
        [f * k for f, k in zip(frames, factors, strict=True)], scales=1 / factors
    )
    plain = combine_arrays(list(frames))
    np.testing.assert_allclose(scaled.data, plain.data, rtol=1e-6)
    # no clipping: the weighted mean is the weighted mean
    w = np.linspace(1, 3, len(frames))
    weighted = combine_arrays(list(frames), weights=w, maxiters=0)
    expected = np.tensordot(w, frames.astype(np.float64), axes=1) / w.sum()
    np.testing.assert_allclose(weighted.data, expected, rtol=1e-6)


# ------------------------------------------------------------------------ files
def write_frames(folder, frames, masks=None, *, kind="float"):
    paths = []
    for i, frame in enumerate(frames):
        hdus = [fits.PrimaryHDU()]
        if kind == "float":
            hdus.append(fits.ImageHDU(frame, name="SCI"))
        elif kind == "uint16":  # raw counts: int16 + BZERO, read through hdu.section
            hdus.append(fits.ImageHDU(np.clip(frame, 0, 65535).astype(np.uint16), name="SCI"))
        else:  # tile-compressed (lossless for integers), read through hdu.section
            hdus.append(fits.CompImageHDU(np.round(frame).astype(np.int32), name="SCI"))
        if masks is not None:
            hdus.append(fits.ImageHDU(masks[i].astype(np.uint16) * 32, name="MASK"))
        path = folder / f"f{i:02d}.fits"
        fits.HDUList(hdus).writeto(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("kind", ["float", "uint16", "compressed"])
def test_files_equal_arrays(tmp_path, kind):
    frames, rng = make_stack(seed=21, n=9, shape=(31, 47))
    masks = rng.random(frames.shape) < 0.05
    paths = write_frames(tmp_path, frames, masks, kind=kind)
    if kind == "uint16":
        frames = np.clip(frames, 0, 65535).astype(np.uint16)
    elif kind == "compressed":
        frames = np.round(frames).astype(np.int32)
    scales = rng.uniform(0.9, 1.1, len(frames))
    from_files = combine_files(paths, mask_hdu="MASK", scales=scales, memory_mb=0.01)
    in_memory = combine_arrays(list(frames), masks=list(masks), scales=scales)
    for name in ("data", "uncertainty", "n_used"):
        np.testing.assert_array_equal(getattr(from_files, name), getattr(in_memory, name))


def test_files_are_read_in_slabs(tmp_path):
    """Allocations stay within the outputs + memory_mb, far below the stack (16 MiB)."""
    frames, _ = make_stack(seed=2, n=16, shape=(512, 512), spikes=0.001)
    paths = write_frames(tmp_path, frames)
    tracemalloc.start()
    try:
        result = combine_files(paths, memory_mb=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < (2.5 + 3 + 0.5) * 2**20  # outputs: 10 bytes per pixel
    assert np.abs(np.nanmedian(result.data) - LEVEL) < 1


def test_file_errors_name_the_file(tmp_path):
    frames, _ = make_stack(seed=1, n=3, shape=(8, 9))
    paths = write_frames(tmp_path, frames)
    with pytest.raises(ImredError, match=r"f00\.fits: extension 'MASK' holds no mask"):
        combine_files(paths, mask_hdu="MASK")
    with pytest.raises(ImredError, match="holds no image"):
        combine_files(paths, hdu="DATA")
    with pytest.raises(ImredError, match=r"cannot read .*missing\.fits"):
        combine_files([*paths, tmp_path / "missing.fits"])
    (tmp_path / "x").mkdir()
    other = write_frames(tmp_path / "x", [frames[0][:, :5]])
    with pytest.raises(ImredError, match=r"x/f00\.fits has shape \(8, 5\)"):
        combine_files([*paths, *other])
    with pytest.raises(ImredError, match="empty"):
        combine_files([])


# -------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": []}, "empty"),
        ({"frames": [np.zeros((4, 5)), np.zeros((4, 6))]}, r"frame 1 has shape \(4, 6\)"),
        ({"frames": [np.zeros((4, 5)), np.zeros(5)]}, "frame 1 is not a 2-D image"),
        ({"frames": [np.zeros((2, 2), complex)]}, "frame 0 has dtype complex"),
        ({"scales": [1, 0, 1]}, "frame 1 has scale 0"),
        ({"scales": [1, 1, np.nan]}, "frame 2 has scale nan"),
        ({"scales": [1, 1]}, "2 scales for 3 frames"),
        ({"weights": [1, -1, 1]}, "frame 1 has weight -1"),
        ({"weights": [1, 1, 1], "method": "median"}, "weights apply to method='mean' only"),
        ({"method": "average"}, "unknown combine method 'average'"),
        ({"sigma_lower": 0}, "sigma_lower must be a number > 0"),
        ({"maxiters": -1}, "maxiters must be an integer >= 0"),
        ({"maxiters": 2.5}, "maxiters must be an integer >= 0"),
        ({"memory_mb": 0}, "memory_mb must be a number > 0"),
        ({"masks": [np.zeros((4, 5), bool)] * 2}, "2 masks for 3 frames"),
        ({"masks": [np.zeros((4, 5), bool)] * 2 + [np.zeros((5, 4), bool)]},
         r"the mask of frame 2 has shape \(5, 4\)"),
    ],
)  # fmt: skip
def test_bad_input_raises_an_actionable_error(kwargs, message):
    kwargs = {"frames": [np.ones((4, 5), np.float32)] * 3, **kwargs}
    with pytest.raises(ImredError, match=message):
        combine_arrays(kwargs.pop("frames"), **kwargs)


def test_integer_frames_and_constant_pixels():
    """uint16 input is combined in float32; a pixel equal in every frame has zero
    scatter and nothing clipped."""
    frames = [np.full((3, 4), 7, np.uint16) for _ in range(5)]
    result = combine_arrays(frames, method="median")
    assert result.data.dtype == np.float32 and np.all(result.data == 7)
    assert np.all(result.uncertainty == 0) and np.all(result.n_used == 5)
    assert result.rejected_fraction == 0.0
