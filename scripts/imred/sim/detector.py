"""The simulated CCD: bias, dark current, flat field, bad columns, cosmic rays, read-out.

Arrays are ``(ny, nx)``. Bias maps are on the raw grid (overscan included, ADU);
dark rates (e-/s), flats and bad-pixel bits are on the chip's data section.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..errors import ImredError
from .optics import ChipLayout

# bits of the truth bad-pixel map
HOT_PIXEL = 1
HOT_COLUMN = 2
DEAD_COLUMN = 4
BADPIX_BITS = {"hot_pixel": HOT_PIXEL, "hot_column": HOT_COLUMN, "dead_column": DEAD_COLUMN}

ELECTRONS_PER_UM = 80.0  # charge a minimum-ionising particle frees in silicon


def _smooth_pattern(n: int, rms: float, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A smooth random pattern (70 %) plus line-to-line noise (30 %) with the given rms."""
    if n == 0 or rms == 0:
        return np.zeros(n)
    smooth = gaussian_filter1d(rng.standard_normal(n), sigma, mode="reflect")
    smooth /= smooth.std() or 1.0
    white = rng.standard_normal(n)
    pattern = 0.95 * smooth + 0.3 * white
    return rms * pattern / pattern.std()


def bias_structure(layout: ChipLayout, params: dict, rng: np.random.Generator) -> np.ndarray:
    """The fixed bias (ADU) of a chip on its raw grid: per-amplifier levels and structure.

    The row (line) structure runs along the amplifier's readout direction and is shared by
    its data and overscan pixels; the column structure is in the data pixels only.
    """
    level = float(params["level_adu"])
    image = np.full(layout.raw_shape, level, dtype=np.float64)
    if not params["enabled"]:
        return image.astype(np.float32)
    offsets = rng.normal(0.0, params["amplifier_scatter_adu"], len(layout.amps))
    image += offsets[0]
    ny, nx = layout.raw_shape
    for amp, offset in zip(layout.amps, offsets, strict=True):
        along_x = amp.axis == "x"  # overscan columns: the pattern is per row
        lines = _smooth_pattern(ny if along_x else nx, params["row_structure_adu"], rng, 25.0)
        across = _smooth_pattern(nx if along_x else ny, params["column_structure_adu"], rng, 40.0)
        for rows, cols in [amp.data] + ([amp.overscan] if amp.overscan else []):
            line = lines[rows][:, None] if along_x else lines[cols][None, :]
            image[rows, cols] = level + offset + line
        rows, cols = amp.data
        image[rows, cols] += across[cols][None, :] if along_x else across[rows][:, None]
    return image.astype(np.float32)


def dark_and_defects(
    layout: ChipLayout, dark: dict, bad_columns: dict, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark-current rate (e-/s), bad-pixel bits and column response on the data grid.

    Returns
    -------
    rate : ndarray (ny, nx) float32
        Dark current, e-/s, including hot pixels and hot columns.
    bits : ndarray (ny, nx) uint8
        :data:`BADPIX_BITS`.
    response : ndarray (ny, nx) float32
        Multiplier (dead columns below 1) applied to every flat.
    """
    ny, nx = layout.data_shape
    rate = np.full((ny, nx), dark["rate_e_per_s"] if dark["enabled"] else 0.0, dtype=np.float64)
    bits = np.zeros((ny, nx), dtype=np.uint8)
    response = np.ones((ny, nx), dtype=np.float32)
    if dark["enabled"]:
        n_hot = int(rng.poisson(dark["hot_pixel_fraction"] * ny * nx))
        idx = rng.choice(ny * nx, size=min(n_hot, ny * nx), replace=False)
        lo, hi = np.log(dark["hot_pixel_rate_e_per_s"])
        rate.flat[idx] += np.exp(rng.uniform(lo, hi, idx.size))
        bits.flat[idx] |= HOT_PIXEL
    if bad_columns["enabled"]:
        for _ in range(bad_columns["per_chip"]):
            col = int(rng.integers(8, max(nx - 8, 9)))
            start = 0 if rng.random() < 0.4 else int(rng.integers(0, ny // 2 + 1))
            if rng.random() < 0.5:
                response[start:, col] *= rng.uniform(0.05, 0.5)
                bits[start:, col] |= DEAD_COLUMN
            else:
                rate[start:, col] += rng.uniform(0.5, 3.0)
                bits[start:, col] |= HOT_COLUMN
    return rate.astype(np.float32), bits, response


def _donut(flat: np.ndarray, x: float, y: float, radius: float, depth: float) -> None:
    """Multiply a dust-donut shadow (annulus with a central hole) into ``flat`` in place."""
    ny, nx = flat.shape
    h = int(np.ceil(radius + 4))
    x1, x2 = max(int(x) - h, 0), min(int(x) + h + 1, nx)
    y1, y2 = max(int(y) - h, 0), min(int(y) + h + 1, ny)
    if x1 >= x2 or y1 >= y2:
        return
    yy, xx = np.mgrid[y1:y2, x1:x2]
    r = np.hypot(xx - x, yy - y)
    edge = 1.2
    outer = 1.0 / (1.0 + np.exp((r - radius) / edge))
    inner = 1.0 / (1.0 + np.exp((0.45 * radius - r) / edge))
    flat[y1:y2, x1:x2] *= 1.0 - depth * outer * inner


def make_flat(
    layout: ChipLayout,
    params: dict,
    response: np.ndarray,
    chip_rng: np.random.Generator,
    band_rng: np.random.Generator,
    window_rng: np.random.Generator,
) -> np.ndarray:
    """The true flat (response to a uniform sky) of one chip in one band, data grid.

    ``chip_rng`` must give the same numbers for every band of a chip (pixel response,
    chip sensitivity), ``window_rng`` too (window donuts); ``band_rng`` differs per band.
    """
    ny, nx = layout.data_shape
    if not params["enabled"]:
        return np.ones((ny, nx), dtype=np.float32)
    east, north = layout.focal_plane()
    r2 = (east**2 + north**2) / params["vignetting_radius_arcsec"] ** 2
    flat = np.clip(1.0 - params["vignetting"] * r2, 0.05, None)
    chip_level = 1.0 + chip_rng.normal(0.0, params["chip_response_rms"])
    pixel = 1.0 + chip_rng.normal(0.0, params["pixel_rms"], (ny, nx))
    flat *= chip_level * pixel
    u = np.linspace(-1.0, 1.0, nx)[None, :]
    v = np.linspace(-1.0, 1.0, ny)[:, None]
    c = band_rng.normal(0.0, params["large_scale_rms"], 5)
    flat *= 1.0 + c[0] * u + c[1] * v + c[2] * (u**2 - 1 / 3) + c[3] * u * v + c[4] * (v**2 - 1 / 3)
    flat = flat.astype(np.float64)
    lo_r, hi_r = params["donut_radius_px"]
    lo_d, hi_d = params["donut_depth"]
    for rng, n in ((window_rng, params["window_donuts"]), (band_rng, params["filter_donuts"])):
        for _ in range(n):
            x, y = rng.uniform(0, nx), rng.uniform(0, ny)
            _donut(flat, x, y, rng.uniform(lo_r, hi_r), rng.uniform(lo_d, hi_d))
    flat *= response
    return flat.astype(np.float32)


def cosmic_rays(
    shape: tuple[int, int], exptime: float, params: dict, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Charge (e-) deposited by cosmic rays during ``exptime`` seconds, and their number.

    Particles arrive isotropically from above (``cos(zenith) = sqrt(U)``); a track's
    projected length is ``depletion * tan(zenith)`` and its charge 80 e-/um of path with
    a log-normal spread (Landau-like tail).
    """
    ny, nx = shape
    deposit = np.zeros(shape, dtype=np.float32)
    if not params["enabled"] or exptime <= 0:
        return deposit, 0
    pix_cm = params["pixel_size_um"] * 1e-4
    expected = params["rate_per_cm2_s"] * ny * nx * pix_cm**2 * exptime
    n = int(rng.poisson(expected))
    if n == 0:
        return deposit, 0
    x0 = rng.uniform(-0.5, nx - 0.5, n)
    y0 = rng.uniform(-0.5, ny - 0.5, n)
    cos_z = np.sqrt(rng.uniform(1e-4, 1.0, n))
    tan_z = np.sqrt(1.0 - cos_z**2) / cos_z
    length_um = np.minimum(params["depletion_um"] * tan_z, 60 * params["pixel_size_um"])
    length_px = length_um / params["pixel_size_um"]
    path_um = np.hypot(params["depletion_um"], length_um)
    charge = ELECTRONS_PER_UM * path_um * rng.lognormal(0.0, 0.35, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    xs, ys, qs = [], [], []
    for i in range(n):
        m = max(1, int(np.ceil(length_px[i] * 3)))
        t = np.linspace(-0.5, 0.5, m)
        xs.append(x0[i] + t * length_px[i] * np.cos(phi[i]))
        ys.append(y0[i] + t * length_px[i] * np.sin(phi[i]))
        qs.append(np.full(m, charge[i] / m))
    ix = np.rint(np.concatenate(xs)).astype(int)
    iy = np.rint(np.concatenate(ys)).astype(int)
    q = np.concatenate(qs)
    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    np.add.at(deposit, (iy[ok], ix[ok]), q[ok].astype(np.float32))
    return deposit, n


def _poly(c: np.ndarray, r: np.ndarray) -> np.ndarray:
    out = np.full_like(r, c[-1])
    for coef in c[-2::-1]:
        out = out * r + coef
    return out


def apply_nonlinearity(signal_adu: np.ndarray, polynomial, upto: float) -> np.ndarray:
    """Raw ADU (above bias) that the correction ``raw * (c0 + c1 raw + ...)`` maps to ``signal``.

    Solved by Newton's method; values at or below zero are only divided by ``c0``.
    ``upto`` (ADU) is the largest signal that must be invertible.
    """
    c = np.asarray(polynomial, dtype=np.float64)
    if c.size == 0 or c[0] <= 0:
        raise ImredError(
            "detector.nonlinearity.polynomial must start with a positive c0 "
            f"(corrected = raw * (c0 + c1 raw + ...)); it is {list(polynomial)}"
        )
    if c.size == 1:
        return signal_adu / c[0]
    deriv = np.arange(1, c.size) * c[1:]  # coefficients of P'(r)
    grid = np.linspace(0.0, upto, 512)
    slope = _poly(c, grid) + grid * _poly(deriv, grid)
    if np.any(slope <= 0):
        raise ImredError(
            f"detector.nonlinearity.polynomial {list(polynomial)} is not monotonic below "
            f"{upto:.0f} ADU, so it cannot be inverted to simulate raw values"
        )
    s = signal_adu.astype(np.float64)
    r = s / c[0]
    pos = s > 0
    rp, sp = r[pos], s[pos]
    for _ in range(5):
        f = rp * _poly(c, rp) - sp
        rp -= f / (_poly(c, rp) + rp * _poly(deriv, rp))
    r[pos] = rp
    return r.astype(signal_adu.dtype)


def read_out(
    signal_e: np.ndarray,
    layout: ChipLayout,
    bias: np.ndarray,
    rng: np.random.Generator,
    *,
    read_noise: bool,
    polynomial: list | None,
    saturation: bool,
) -> np.ndarray:
    """Turn electrons on the data grid into a raw uint16 chip (overscan included).

    Per amplifier: electrons / gain -> non-linearity (inverse of the correction) ->
    + read noise (ADU) -> + bias (``bias``, raw grid, ADU) -> rounded, clipped at the
    saturation level (and 0..65535).
    """
    full = np.zeros(layout.raw_shape, dtype=np.float32)
    full[layout.datasec] = signal_e
    gain = np.full(layout.raw_shape, layout.gain, dtype=np.float32)
    noise = np.full(layout.raw_shape, layout.read_noise / layout.gain, dtype=np.float32)
    for amp in layout.amps:
        gain[amp.data] = amp.gain
        noise[amp.data] = amp.read_noise / amp.gain
        if amp.overscan:
            noise[amp.overscan] = amp.read_noise / amp.gain
    adu = full / gain
    if polynomial is not None:
        adu = apply_nonlinearity(adu, polynomial, layout.saturation)
    if read_noise:
        adu += rng.standard_normal(layout.raw_shape, dtype=np.float32) * noise
    adu += bias
    top = min(layout.saturation, 65535.0) if saturation else 65535.0
    return np.clip(np.rint(adu), 0, top).astype(np.uint16)


def _interpolation_matrix(n_out: int, n_in: int, step: float) -> np.ndarray:
    """(n_out, n_in) linear-interpolation weights from a coarse grid (pitch ``step``)."""
    pos = np.clip(np.arange(n_out) / step, 0.0, n_in - 1.0)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2) if n_in > 1 else np.zeros(n_out, int)
    w = pos - lo
    mat = np.zeros((n_out, n_in))
    mat[np.arange(n_out), lo] = 1.0 - w
    if n_in > 1:
        mat[np.arange(n_out), lo + 1] += w
    return mat


def fringe_pattern(
    shape: tuple[int, int],
    amplitude: float,
    params: dict,
    chip_rng: np.random.Generator,
    band_rng: np.random.Generator,
) -> np.ndarray:
    """A fringe pattern (fraction of the sky, peak ``amplitude``) on a chip's data grid.

    Fringes are interference in the thinned CCD: ``amplitude * cos(2 pi c t(x, y) + phi)``
    with ``t`` a smooth random thickness map of the chip (rms 1, correlation length
    ``fringes.scale_px``; ``chip_rng`` must give the same map in every band), ``c``
    ``fringes.cycles`` times a per-band factor in 0.8-1.2 and ``phi`` a per-band phase
    (``band_rng``).
    """
    ny, nx = shape
    step = max(params["scale_px"] / 4.0, 1.0)
    cy, cx = int(np.ceil((ny - 1) / step)) + 2, int(np.ceil((nx - 1) / step)) + 2
    coarse = gaussian_filter1d(
        gaussian_filter1d(chip_rng.standard_normal((cy, cx)), 4.0, axis=0, mode="wrap"),
        4.0,
        axis=1,
        mode="wrap",
    )
    coarse = (coarse - coarse.mean()) / (coarse.std() or 1.0)
    thickness = _interpolation_matrix(ny, cy, step) @ coarse @ _interpolation_matrix(nx, cx, step).T
    cycles = params["cycles"] * band_rng.uniform(0.8, 1.2)
    phase = band_rng.uniform(0.0, 2 * np.pi)
    return (amplitude * np.cos(2 * np.pi * cycles * thickness + phase)).astype(np.float32)
