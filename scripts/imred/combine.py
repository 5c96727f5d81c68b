"""Sigma-clipped combination of a stack of frames: the core of every master calibration.

Two entry points, one algorithm:

- :func:`combine_arrays` takes frames already in memory;
- :func:`combine_files` takes FITS files and reads them in row slabs (never a whole
  frame at once), so peak memory is bounded by ``memory_mb`` whatever the stack size.

Conventions
-----------
Arrays are ``(ny, nx)``. A mask is ``True`` (boolean arrays) or nonzero (a uint16
bitmask extension, see :mod:`imred.mask`) where a pixel is bad; bad and non-finite
values take no part in the combination.

Algorithm
---------
For each pixel, the values of the frames (each multiplied by its ``scale``) that are
neither masked nor non-finite are clipped iteratively: at each iteration the centre is
the median of the values still kept and the deviation their standard deviation
(``ddof=0``, about their mean: this is what ``astropy.stats.sigma_clip`` does with
``cenfunc="median", stdfunc="std"``); values below ``centre - sigma_lower * std`` or
above ``centre + sigma_upper * std`` are rejected for good. The iteration stops when
nothing more is rejected or after ``maxiters`` iterations. ``ccdproc.combine`` clips
once (``maxiters=1``) around the *mean*; the median centre used here is less pulled by
the outliers it is meant to reject.

The combined value is the (weighted) mean or the median of the kept values. Its
uncertainty is the standard error: the sample standard deviation (``ddof=1``) of the
kept values divided by ``sqrt(n_kept)`` (for weights ``w``: times
``sqrt(sum w**2) / sum w``, which is ``1 / sqrt(n_kept)`` for equal weights), times
``sqrt(pi / 2)`` for the median (its efficiency for Gaussian noise). It is NaN where
fewer than two values are kept.

Speed
-----
Pure numpy, no per-pixel Python. Each row slab is cut into chunks of ~16k pixels that
stay in the CPU cache. For all the pixels of a chunk at once, a selection network
(np.minimum/np.maximum of whole rows of frames, no sort) gives the median, minimum
and maximum over the frames; sums of deviations from the median give mean and
standard deviation (float32). Most pixels have no masked value and nothing beyond
the clipping limits: they are finished after that single pass. The others (~4 % with
20 frames: an outlier, a mask, a NaN) are gathered and combined by the full
iteration, in float64, on values sorted per pixel; :func:`_reference_combine` is the
plain NaN-masked version the tests compare both against. Results agree with it
within float32 rounding. It runs in one thread: threads tried on this kernel (~300
short numpy calls per chunk) spent their time handing over the GIL (twice the CPU
time, no faster).
"""

from __future__ import annotations

import math
import mmap
import numbers
import os
import warnings
from collections.abc import Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .errors import ImredError
from .fitsio import image_hdu

__all__ = ["CombineResult", "combine_arrays", "combine_files"]

METHODS = ("mean", "median")
MAX_FRAMES = np.iinfo(np.int16).max  # n_used is int16

# Bytes of chunk data (n_frames x chunk pixels, float32) processed at once: small
# enough that the chunk, the selection network's rows and the sums stay in L2 cache.
_CHUNK_BYTES = 1280 * 1024
_MIN_CHUNK, _MAX_CHUNK = 1024, 32768
# Pixels sent to the exact path at once (its scratch: up to ~80 bytes per value).
_EXACT_BATCH = 16384
# Relative distance to a clipping limit below which the one-pass kernel (float32)
# leaves the decision to the exact path (float64): ~100x the float32 rounding of the
# limits, reached by ~1e-4 of the pixels.
_MARGIN = 1e-5
# Largest row slab (bytes of float32 frames): bigger ones only add memory.
_MAX_SLAB_BYTES = 8 * 2**20


@dataclass
class CombineResult:
    """The combination of a stack of frames.

    Attributes
    ----------
    data : numpy.ndarray
        Combined image, float32 ``(ny, nx)``; NaN where no value was kept.
    uncertainty : numpy.ndarray
        Standard error of ``data``, float32 ``(ny, nx)``; NaN where fewer than two
        values were kept.
    n_used : numpy.ndarray
        Number of values kept per pixel, int16 ``(ny, nx)``.
    rejected_fraction : float
        Fraction of the usable values (not masked, finite) that sigma clipping
        rejected; 0 when there was none.
    """

    data: np.ndarray
    uncertainty: np.ndarray
    n_used: np.ndarray
    rejected_fraction: float


# --------------------------------------------------------------------------- API
def combine_arrays(
    frames: Sequence[np.ndarray],
    *,
    method: str = "mean",
    sigma_lower: float | None = 3.0,
    sigma_upper: float | None = 3.0,
    maxiters: int = 5,
    scales: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    memory_mb: float = 1024,
) -> CombineResult:
    """Sigma-clipped mean or median of frames held in memory.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        2-D images ``(ny, nx)`` of equal shape, any real numeric dtype (combined in
        float32).
    method : {"mean", "median"}
        Statistic of the values kept after clipping.
    sigma_lower, sigma_upper : float or None
        Clipping limits below and above the median, in standard deviations of the
        kept values; None switches that side off.
    maxiters : int
        Maximum number of clipping iterations (0: no clipping); it stops earlier when
        an iteration rejects nothing.
    scales : sequence of float, optional
        Factor per frame applied before combining (e.g. ``1 / median`` for flats);
        finite and nonzero.
    weights : sequence of float, optional
        Weight per frame for ``method="mean"``; finite and > 0. Not used by the
        median (giving them raises).
    masks : sequence of numpy.ndarray, optional
        Boolean ``(ny, nx)`` per frame, True where the pixel is bad (excluded).
    memory_mb : float
        Working-set budget in MiB for the row slabs and scratch space, besides the
        caller's frames and the outputs (10 bytes per pixel). A bound, not a target:
        slabs stop at 8 MiB, beyond which they gain nothing.

    Returns
    -------
    CombineResult

    Raises
    ------
    ImredError
        No frames, frames not 2-D or of different shapes, a mask that does not
        match its frame, a scale of 0 or not finite, a weight <= 0, a bad option.
    """
    frames = list(frames)
    if not frames:
        raise ImredError("nothing to combine: the list of frames is empty")
    arrays = []
    for i, frame in enumerate(frames):
        arr = np.asarray(frame)
        if arr.dtype.kind not in "biuf":
            raise ImredError(f"frame {i} has dtype {arr.dtype}: give real numbers")
        arrays.append(arr)
    labels = [f"frame {i}" for i in range(len(arrays))]
    shape = _common_shape([a.shape for a in arrays], labels)
    mask_arrays = None
    if masks is not None:
        mask_arrays = [np.asarray(m) for m in masks]
        if len(mask_arrays) != len(arrays):
            raise ImredError(f"{len(mask_arrays)} masks for {len(arrays)} frames: give one each")
        for label, m in zip(labels, mask_arrays, strict=True):
            if m.shape != shape:
                raise ImredError(f"the mask of {label} has shape {m.shape}, its frame {shape}")
    opts = _Options.check(
        len(arrays), labels, method, sigma_lower, sigma_upper, maxiters, scales, weights,
        memory_mb,
    )  # fmt: skip

    def read(i: int, r0: int, r1: int, out: np.ndarray) -> None:
        np.multiply(arrays[i][r0:r1], opts.scales[i], out=out, casting="unsafe")
        if mask_arrays is not None:
            np.copyto(out, np.float32(np.nan), where=mask_arrays[i][r0:r1].astype(bool, copy=False))

    return _combine(read, shape, opts, mask_bytes=0)


def combine_files(
    paths: Sequence[str | Path],
    *,
    hdu: int | str = "SCI",
    mask_hdu: int | str | None = None,
    method: str = "mean",
    sigma_lower: float | None = 3.0,
    sigma_upper: float | None = 3.0,
    maxiters: int = 5,
    scales: Sequence[float] | None = None,
    weights: Sequence[float] | None = None,
    memory_mb: float = 1024,
) -> CombineResult:
    """Sigma-clipped mean or median of the images in FITS files, read in row slabs.

    A slab of rows of every frame at a time: plain images through a memory map whose
    pages are released after each slab, compressed or scaled ones through
    ``hdu.section``. Peak memory is the outputs (10 bytes per pixel) plus at most
    about ``memory_mb`` (in practice a few tens of MiB), whatever the number of
    frames. Options are those of :func:`combine_arrays`.

    Parameters
    ----------
    paths : sequence of str or pathlib.Path
        FITS files, one frame each.
    hdu : int or str
        Extension holding the image (index or EXTNAME).
    mask_hdu : int or str, optional
        Extension holding a uint16 bitmask of the same shape; nonzero = bad.

    Returns
    -------
    CombineResult

    Raises
    ------
    ImredError
        As :func:`combine_arrays`, plus a file that cannot be read or lacks an
        extension; the message names the file.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise ImredError("nothing to combine: the list of files is empty")
    labels = [str(p) for p in paths]
    opts = _Options.check(
        len(paths), labels, method, sigma_lower, sigma_upper, maxiters, scales, weights,
        memory_mb,
    )  # fmt: skip
    with ExitStack() as stack, warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyWarning)
        images, bitmasks = [], []
        for path in paths:
            try:
                hdul = stack.enter_context(fits.open(path, memmap=False, lazy_load_hdus=True))
            except OSError as err:
                raise ImredError(f"cannot read {path}: {err}") from None
            images.append(stack.enter_context(_FitsRows(hdul, hdu, path, "image")))
            if mask_hdu is not None:
                bitmasks.append(stack.enter_context(_FitsRows(hdul, mask_hdu, path, "mask")))
        shape = _common_shape([im.shape for im in images], labels)
        for label, bm in zip(labels, bitmasks, strict=False):
            if bm.shape != shape:
                raise ImredError(f"{label}: mask extension {mask_hdu!r} has shape {bm.shape}, "
                                 f"the image {shape}")  # fmt: skip

        def read(i: int, r0: int, r1: int, out: np.ndarray) -> None:
            try:
                images[i].read_into(r0, r1, out, opts.scales[i])
                if bitmasks:
                    bad = bitmasks[i].read(r0, r1) != 0
                    bitmasks[i].release(r0, r1)
                    np.copyto(out, np.float32(np.nan), where=bad)
            except (OSError, ValueError, TypeError) as err:  # truncated file, bad BITPIX
                raise ImredError(f"cannot read rows {r0}-{r1} of {labels[i]}: {err}") from None

        return _combine(read, shape, opts, mask_bytes=2 if bitmasks else 0)


_BITPIX = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


class _FitsRows:
    """Row slabs of one image extension, without ever holding the whole image.

    Plain data (uncompressed file, no BSCALE/BZERO) is read through a read-only memory
    map whose pages are released (``madvise(MADV_DONTNEED)``; they stay in the page
    cache) as soon as a slab is converted, so resident memory does not grow with the
    stack. Anything else (tile-compressed, gzipped, scaled integers) goes through
    ``hdu.section``, which reads just the rows asked for."""

    def __init__(self, hdul: fits.HDUList, ext: int | str, path: Path, what: str):
        try:
            hdu = image_hdu(hdul, ext)
        except OSError as err:
            raise ImredError(f"cannot read {path}: {err}") from None
        if hdu is None or not hdu.header.get("NAXIS"):
            raise ImredError(
                f"{path}: extension {ext!r} holds no {what}; check the hdu/mask_hdu setting"
            )
        self.shape = tuple(hdu.shape)
        self.section = hdu.section
        self._map = self._file = None
        header = hdu.header
        plain = (
            len(self.shape) == 2
            and not isinstance(hdu, fits.CompImageHDU)
            and header.get("BSCALE", 1) == 1
            and header.get("BZERO", 0) == 0
            and header.get("BITPIX") in _BITPIX
            and hasattr(mmap, "MADV_DONTNEED")
        )
        if plain:
            self._dtype = np.dtype(_BITPIX[header["BITPIX"]])
            self._offset = hdu.fileinfo()["datLoc"]
            self._row_bytes = self.shape[1] * self._dtype.itemsize
            file = open(path, "rb")  # noqa: SIM115 (closed in __exit__)
            try:
                size = os.fstat(file.fileno()).st_size
                # gzipped or truncated: left to hdu.section (which says what is wrong)
                if (
                    file.read(6) == b"SIMPLE"
                    and size >= self._offset + self.shape[0] * self._row_bytes
                ):
                    self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):
                self._map = None
            if self._map is None:
                file.close()
            else:
                self._file = file

    def __enter__(self) -> _FitsRows:
        return self

    def __exit__(self, *exc) -> None:
        if self._map is not None:
            with suppress(BufferError):  # a view still alive (an exception's traceback)
                self._map.close()
            self._file.close()

    def read(self, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` as stored (a view of the map, or a fresh array)."""
        if self._map is None:
            return self.section[r0:r1]
        count = (r1 - r0) * self.shape[1]
        start = self._offset + r0 * self._row_bytes
        return np.frombuffer(self._map, self._dtype, count, start).reshape(r1 - r0, -1)

    def read_into(self, r0: int, r1: int, out: np.ndarray, scale) -> None:
        """``out[...] = rows r0:r1 * scale`` (float32), then release the map's pages."""
        np.multiply(self.read(r0, r1), scale, out=out, casting="unsafe")
        self.release(r0, r1)

    def release(self, r0: int, r1: int) -> None:
        """Drop the map's pages of rows ``r0:r1`` from this process (a later read of a
        shared page at the edges maps it again from the page cache)."""
        if self._map is not None:
            page = mmap.PAGESIZE
            start = (self._offset + r0 * self._row_bytes) // page * page
            end = min(-(-(self._offset + r1 * self._row_bytes) // page) * page, len(self._map))
            self._map.madvise(mmap.MADV_DONTNEED, start, end - start)


# ------------------------------------------------------------------------ checks
@dataclass
class _Options:
    n: int
    method: str
    sigma_lower: float | None
    sigma_upper: float | None
    maxiters: int
    scales: np.ndarray  # float32 (n,)
    weights: np.ndarray | None  # float64 (n,)
    memory_bytes: int

    @classmethod
    def check(cls, n, labels, method, sigma_lower, sigma_upper, maxiters, scales, weights,
              memory_mb) -> _Options:  # fmt: skip
        if n > MAX_FRAMES:
            raise ImredError(f"{n} frames: combine at most {MAX_FRAMES} at once")
        if method not in METHODS:
            raise ImredError(f"unknown combine method {method!r}: use one of {METHODS}")
        sigmas = []
        for name, value in (("sigma_lower", sigma_lower), ("sigma_upper", sigma_upper)):
            if value is not None and not (_is_number(value) and value > 0):
                raise ImredError(
                    f"{name} must be a number > 0 or None (no clipping), got {value!r}"
                )
            sigmas.append(None if value is None or math.isinf(value) else float(value))
        if not _is_integer(maxiters) or maxiters < 0:
            raise ImredError(f"maxiters must be an integer >= 0, got {maxiters!r}")
        if not (_is_number(memory_mb) and np.isfinite(memory_mb) and memory_mb > 0):
            raise ImredError(f"memory_mb must be a number > 0, got {memory_mb!r}")
        scale_arr = np.ones(n, np.float32)
        if scales is not None:
            given = _per_frame(scales, n, "scale")
            with np.errstate(over="ignore", under="ignore"):
                scale_arr = given.astype(np.float32)  # the arithmetic is float32
            for label, s, s32 in zip(labels, given, scale_arr, strict=True):
                if not np.isfinite(s32) or s32 == 0:
                    raise ImredError(f"{label} has scale {s}: scales must be finite and nonzero "
                                     "in float32 (a flat with median 0 or NaN cannot be "
                                     "normalised)")  # fmt: skip
        weight_arr = None
        if weights is not None:
            if method != "mean":
                raise ImredError("weights apply to method='mean' only: drop them for the median")
            weight_arr = _per_frame(weights, n, "weight")
            for label, w in zip(labels, weight_arr, strict=True):
                if not (np.isfinite(w) and w > 0):
                    raise ImredError(f"{label} has weight {w}: weights must be finite and > 0 "
                                     "(leave a frame out rather than give it weight 0)")  # fmt: skip
        return cls(n, method, sigmas[0], sigmas[1], int(maxiters), scale_arr, weight_arr,
                   int(memory_mb * 2**20))  # fmt: skip


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _per_frame(values, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ImredError(f"{what}s must be numbers, got {values!r}") from None
    if arr.shape != (n,):
        raise ImredError(f"{arr.size} {what}s for {n} frames: give one {what} per frame")
    return arr


def _common_shape(shapes: list[tuple[int, ...]], labels: list[str]) -> tuple[int, int]:
    for label, shape in zip(labels, shapes, strict=True):
        if len(shape) != 2:
            raise ImredError(f"{label} is not a 2-D image (shape {shape})")
    for label, shape in zip(labels, shapes, strict=True):
        if shape != shapes[0]:
            raise ImredError(f"{label} has shape {shape} but {labels[0]} has {shapes[0]}: "
                             "combine frames of one size only")  # fmt: skip
    return shapes[0]


# ------------------------------------------------------------------------ driver
def _chunk_pixels(n: int) -> int:
    return int(np.clip(_CHUNK_BYTES // (4 * n), _MIN_CHUNK, _MAX_CHUNK))


@dataclass
class _Plan:
    rows: int  # rows per slab
    chunk: int  # pixels per cache-sized chunk
    exact_batch: int  # pixels per call of the exact path


def _plan(opts: _Options, ny: int, nx: int, mask_bytes: int) -> _Plan:
    """Split ``memory_mb`` between the slab and scratch: the network's rows
    ((n + 1) x chunk float32) and the exact path's arrays (~80 bytes per value, for at
    most ``exact_batch`` pixels) take at most a quarter each; the slab gets the rest,
    up to _MAX_SLAB_BYTES."""
    n, budget = opts.n, opts.memory_bytes
    chunk = int(min(_chunk_pixels(n), max(64, budget // (16 * (n + 1)))))
    exact_batch = int(min(_EXACT_BATCH, max(64, budget // (4 * 80 * n))))
    scratch = (n + 1) * chunk * 4 + 80 * n * exact_batch
    # per row: the float32 slab, a row as read (float64 at worst) and a mask row
    row_bytes = nx * (n * 4 + 8 + mask_bytes)
    slab_budget = min(budget - scratch, _MAX_SLAB_BYTES)
    rows = int(np.clip(slab_budget // max(row_bytes, 1), 1, max(ny, 1)))
    return _Plan(rows, chunk, exact_batch)


def _combine(read, shape: tuple[int, int], opts: _Options, *, mask_bytes: int) -> CombineResult:
    """Run the combination slab by slab; ``read(i, r0, r1, out)`` fills frame ``i``'s rows
    (scaled, float32, NaN where masked)."""
    n, (ny, nx) = opts.n, shape
    plan = _plan(opts, ny, nx, mask_bytes)
    data = np.empty((ny, nx), np.float32)
    unc = np.empty((ny, nx), np.float32)
    n_used = np.empty((ny, nx), np.int16)
    buffer = np.empty((n, plan.rows, nx), np.float32)
    scratch = _Scratch()
    offered = rejected = 0
    with np.errstate(all="ignore"):
        for r0 in range(0, ny, plan.rows):
            r1 = min(r0 + plan.rows, ny)
            x = _read_slab(read, buffer, n, r0, r1)
            o, r = _combine_pixels(
                x, opts, plan, scratch, data[r0:r1].reshape(-1), unc[r0:r1].reshape(-1),
                n_used[r0:r1].reshape(-1),
            )  # fmt: skip
            offered, rejected = offered + o, rejected + r
    return CombineResult(data, unc, n_used, rejected / offered if offered else 0.0)


def _read_slab(read, buffer: np.ndarray, n: int, r0: int, r1: int) -> np.ndarray:
    for i in range(n):
        read(i, r0, r1, buffer[i, : r1 - r0])
    return buffer[:, : r1 - r0].reshape(n, -1)


# ------------------------------------------------------------------ fast kernel
class _Scratch:
    """Reusable arrays for one combination: allocating them per chunk would page-fault
    fresh memory every time (slow, worst in a VM)."""

    def __init__(self):
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A C-contiguous array of ``shape`` (contents undefined)."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.size < size or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` inputs."""
    pairs, size, p = [], 1, 1
    while size < n:
        size *= 2
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return pairs


@lru_cache(maxsize=256)
def _network(n: int, outputs: frozenset[int]) -> tuple[tuple[int, int, bool, bool], ...]:
    """Batcher's network pruned to what the sorted positions ``outputs`` need:
    ``(i, j, keep_min, keep_max)`` per comparator, in order."""
    needed = set(outputs)
    ops = []
    for a, b in reversed(_batcher_pairs(n)):
        need_min, need_max = a in needed, b in needed
        if need_min or need_max:
            ops.append((a, b, need_min, need_max))
            needed |= {a, b}
    return tuple(reversed(ops))


def _run_network(rows: list[np.ndarray], owned: list[bool], free: list[np.ndarray], ops) -> None:
    """Apply a network to whole rows (vectorised over pixels): each comparator is one
    np.minimum and/or np.maximum over the rows. ``rows[k]`` ends as sorted position k
    (for the positions the network was pruned for). A row not ``owned`` (the caller's
    input) is never written; results go to rows taken from ``free``."""
    for a, b, need_min, need_max in ops:
        ra, rb = rows[a], rows[b]
        if need_min and need_max:
            lo = free.pop()
            np.minimum(ra, rb, out=lo)
            hi = rb if owned[b] else free.pop()
            np.maximum(ra, rb, out=hi)
            if owned[a]:
                free.append(ra)
            rows[a], rows[b], owned[a], owned[b] = lo, hi, True, True
        elif need_min:
            lo = ra if owned[a] else free.pop()
            np.minimum(ra, rb, out=lo)
            rows[a], owned[a] = lo, True
        else:
            hi = rb if owned[b] else free.pop()
            np.maximum(ra, rb, out=hi)
            rows[b], owned[b] = hi, True


def _combine_pixels(
    x, opts: _Options, plan: _Plan, scratch: _Scratch, data, unc, n_used
) -> tuple[int, int]:
    """Combine the pixels of one slab part ``x`` (n, npix) into the flat output views;
    returns (values offered, values rejected).

    Chunk by chunk through the one-pass kernel; the pixels it leaves are gathered and
    sent to the exact path in batches (its per-call overhead is large)."""
    n, npix = x.shape
    n_chunks = max(1, -(-npix // plan.chunk))
    chunk = max(1, -(-npix // n_chunks))  # equal chunks: no small one at the end
    ws = scratch.get("network", (n + 1, chunk), np.float32)
    offered = rejected = 0
    pending: list[np.ndarray] = []
    n_pending = 0
    for p0 in range(0, npix, chunk):
        p1 = min(p0 + chunk, npix)
        left = _combine_chunk(x[:, p0:p1], opts, ws, data[p0:p1], unc[p0:p1], n_used[p0:p1])
        offered += n * (p1 - p0 - left.size)
        if left.size:
            pending.append(left + p0)
            n_pending += left.size
        if n_pending >= plan.exact_batch or (p1 == npix and n_pending):
            pending_idx = np.concatenate(pending)
            for b0 in range(0, pending_idx.size, plan.exact_batch):
                idx = pending_idx[b0 : b0 + plan.exact_batch]
                res = _combine_exact(_gather_columns(x, idx, scratch), opts, scratch)
                data[idx], unc[idx], n_used[idx] = res.data, res.uncertainty, res.n_used
                offered, rejected = offered + res.offered, rejected + res.rejected
            pending, n_pending = [], 0
    return offered, rejected


def _gather_columns(x: np.ndarray, idx: np.ndarray, scratch: _Scratch) -> np.ndarray:
    """``x[:, idx]`` as a C-ordered array (fancy indexing of a strided view is not)."""
    out = scratch.get("gathered", (x.shape[0], idx.size), x.dtype)
    for i in range(x.shape[0]):
        np.take(x[i], idx, out=out[i])
    return out


def _combine_chunk(x, opts: _Options, ws, data, unc, n_used) -> np.ndarray:
    """One cache-sized chunk through the one-pass kernel: writes the answer for the
    pixels whose values are all finite and within the clipping limits (all kept), and
    returns the indices of the others, which need the exact path."""
    n, c = x.shape
    clip_low = opts.maxiters > 0 and opts.sigma_lower is not None
    clip_high = opts.maxiters > 0 and opts.sigma_upper is not None
    mid = ((n - 1) // 2, n // 2)
    outputs = frozenset(mid + ((0,) if clip_low else ()) + ((n - 1,) if clip_high else ()))
    rows = list(x)
    _run_network(rows, [False] * n, [ws[k, :c] for k in range(n + 1)], _network(n, outputs))
    med = rows[mid[0]] + rows[mid[1]]
    med *= np.float32(0.5)
    xmin = rows[0].copy() if clip_low else None  # before ws is reused below
    xmax = rows[n - 1].copy() if clip_high else None
    d = ws[:n, :c]
    np.subtract(x, med, out=d)
    s1 = d.sum(axis=0)
    s2 = np.einsum("ij,ij->j", d, d)  # twice as fast as square + sum
    # population standard deviation: the one the clipping limits use
    std = s2 / n
    std -= (s1 / n) ** 2
    np.maximum(std, 0, out=std)
    np.sqrt(std, out=std)
    good = np.isfinite(s2)  # every value finite (NaN = masked), no float32 overflow
    if clip_low or clip_high:
        # Limits carry float32 rounding: an extreme within _MARGIN (relative) of one is
        # decided by the exact path in float64. A constant pixel clips nothing.
        margin = np.abs(med)
        margin += np.float32(max(opts.sigma_lower or 0, opts.sigma_upper or 0)) * std
        margin *= np.float32(_MARGIN)
        flat = std == 0
        if clip_low:
            good &= (xmin - margin >= med - np.float32(opts.sigma_lower) * std) | flat
        if clip_high:
            good &= (xmax + margin <= med + np.float32(opts.sigma_upper) * std) | flat

    # Right for the good pixels (all n values kept); the others are overwritten later.
    if opts.method == "median":
        data[:] = med
    elif opts.weights is None:
        np.add(med, s1 / n, out=data)
    else:
        s1w = np.zeros(c, np.float32)
        for i in range(n):
            s1w += d[i] * np.float32(opts.weights[i])
        np.add(med, s1w / np.float32(opts.weights.sum()), out=data)
    # standard error from the sample standard deviation (ddof=1)
    np.multiply(std, np.float32(math.sqrt(n / (n - 1)) if n > 1 else np.nan), out=unc)
    unc *= np.float32(_error_factor(opts, n))
    n_used[:] = n
    return np.flatnonzero(~good)


def _error_factor(opts: _Options, n: int) -> float:
    """Standard error / sample standard deviation when all n values are kept."""
    if opts.weights is not None:
        factor = math.sqrt(float((opts.weights**2).sum())) / float(opts.weights.sum())
    else:
        factor = 1.0 / math.sqrt(n)
    return factor * (math.sqrt(math.pi / 2) if opts.method == "median" else 1.0)


# ------------------------------------------------------------------ exact path
@dataclass
class _Exact:
    data: np.ndarray
    uncertainty: np.ndarray
    n_used: np.ndarray
    offered: int
    rejected: int


def _combine_exact(y: np.ndarray, opts: _Options, scratch: _Scratch | None = None) -> _Exact:
    """The full algorithm for the pixels (columns) of ``y`` (n, m); ``y`` is overwritten.

    Values are sorted per pixel, bad ones as +inf at the end (the sorting network, or
    an argsort when weights must follow): the kept values are then always a run
    ``lo <= k < hi`` of the sorted ones, so a median is a gather and a clipping limit
    a count. Sums are of float64 deviations from the first median, two-pass where a
    run excludes values (a huge rejected value would swamp running sums). After the
    first iteration only the pixels whose run changed are iterated."""
    scratch = scratch or _Scratch()
    n, m = y.shape
    flags = scratch.get("flags", (n, m), bool)
    np.isfinite(y, out=flags)
    n_valid = flags.sum(axis=0)
    np.logical_not(flags, out=flags)
    np.copyto(y, np.float32(np.inf), where=flags)
    s = scratch.get("sorted", (n, m), np.float64)
    if opts.weights is None:
        rows = list(y)
        spare = [scratch.get("spare", (m,), np.float32)]
        _run_network(rows, [True] * n, spare, _network(n, frozenset(range(n))))
        for i, row in enumerate(rows):
            s[i] = row
        w = None
    else:
        order = np.argsort(y, axis=0)
        s[...] = np.take(y, order * m + np.arange(m))
        w = opts.weights[order]
    flat = s.reshape(-1)
    cols = np.arange(m)
    rank = np.arange(n)[:, None]
    lo = np.zeros(m, np.intp)
    hi = n_valid.astype(np.intp)
    ref = np.where(n_valid > 0, _median_of_run(flat, m, lo, hi, cols), 0.0)
    dev = scratch.get("dev", (n, m), np.float64)
    np.subtract(s, ref, out=dev)
    np.isinf(dev, out=flags)
    np.copyto(dev, 0.0, where=flags)  # bad values: 0, outside every run anyway

    active = np.flatnonzero(n_valid > 0)
    for iteration in range(opts.maxiters):
        if not active.size:
            break
        if iteration == 0:  # every valid value kept: plain sums
            la, ha = lo[active], hi[active]
            mean = dev.sum(axis=0)[active] / ha
            std = np.einsum("ij,ij->j", dev, dev)[active] / ha - mean**2
            np.sqrt(np.maximum(std, 0, out=std), out=std)
            sa = s if active.size == m else s[:, active]
        elif 2 * active.size > m:  # recomputing every pixel is cheaper than gathering
            la, ha = lo, hi
            mean, std = _run_stats(dev, lo, hi, rank, ddof=0, scratch=scratch)
            sa = s
        else:
            la, ha = lo[active], hi[active]
            mean, std = _run_stats(dev[:, active], la, ha, rank, ddof=0)
            sa = s[:, active]
        centre = _median_of_run(flat, m, la, ha, active if sa is not s else cols)
        cmp = flags if sa is s else None
        new_lo, new_hi = la, ha
        if opts.sigma_lower is not None:
            cmp = np.less(sa, centre - opts.sigma_lower * std, out=cmp)
            new_lo = np.maximum(la, cmp.sum(axis=0))
        if opts.sigma_upper is not None:
            cmp = np.less_equal(sa, centre + opts.sigma_upper * std, out=cmp)
            new_hi = np.minimum(ha, cmp.sum(axis=0))
        if sa is s and active.size < m:  # computed for every pixel: keep the active ones
            la, ha, new_lo, new_hi = la[active], ha[active], new_lo[active], new_hi[active]
        changed = (new_lo != la) | (new_hi != ha)
        lo[active], hi[active] = new_lo, new_hi
        active = active[changed & (new_hi > new_lo)]

    k = hi - lo
    mean, std = _run_stats(dev, lo, hi, rank, ddof=1, scratch=scratch)
    if w is None:
        mean += ref
        factor = 1 / np.sqrt(k)
    else:
        kept = (rank >= lo) & (rank < hi)
        sw = np.where(kept, w, 0).sum(axis=0)
        mean = ref + np.where(kept, w * dev, 0).sum(axis=0) / sw
        factor = np.sqrt(np.where(kept, w * w, 0).sum(axis=0)) / sw
    if opts.method == "median":
        data = np.where(k > 0, _median_of_run(flat, m, lo, hi, cols), np.nan)
        factor = factor * math.sqrt(math.pi / 2)
    else:
        data = np.where(k > 0, mean, np.nan)
    err = np.where(k > 1, std * factor, np.nan)
    return _Exact(data.astype(np.float32), err.astype(np.float32), k.astype(np.int16),
                  int(n_valid.sum()), int((n_valid - k).sum()))  # fmt: skip


def _run_stats(d, lo, hi, rank, *, ddof: int, scratch: _Scratch | None = None):
    """Mean and standard deviation of the runs ``lo <= k < hi`` of the columns of ``d``
    (n, m) (deviations from a value inside the runs: one pass is exact enough); NaN
    for runs too short."""
    kept = np.greater_equal(rank, lo, out=scratch.get("kept", d.shape, bool) if scratch else None)
    kept &= rank < hi
    work = np.multiply(d, kept, out=scratch.get("work", d.shape, d.dtype) if scratch else None)
    k = hi - lo
    s1 = work.sum(axis=0)
    s2 = np.einsum("ij,ij->j", work, work)
    mean = s1 / k
    std = np.sqrt(np.maximum(s2 - s1 * mean, 0) / (k - ddof))
    return mean, std


def _median_of_run(flat: np.ndarray, m: int, lo, hi, cols) -> np.ndarray:
    """Median of the sorted values ``lo <= k < hi`` of the columns ``cols`` of an (n, m)
    array given as ``flat`` (needs hi > lo; any value otherwise)."""
    last = flat.size // m - 1
    a = np.clip((lo + hi - 1) // 2, 0, last)
    b = np.clip((lo + hi) // 2, 0, last)
    return 0.5 * (flat.take(a * m + cols) + flat.take(b * m + cols))


# -------------------------------------------------------------- reference (tests)
def _reference_combine(
    frames,
    *,
    method: str = "mean",
    sigma_lower: float | None = 3.0,
    sigma_upper: float | None = 3.0,
    maxiters: int = 5,
    scales=None,
    weights=None,
    masks=None,
) -> CombineResult:
    """The same combination written plainly on the whole stack with NaN for rejected
    values (float64, no tiling, no shortcuts). For the tests only: slow and memory-hungry."""
    stack = np.array([np.asarray(f, dtype=np.float64) for f in frames])
    n = len(stack)
    if scales is not None:
        stack *= np.asarray(scales, dtype=np.float64)[:, None, None]
    if masks is not None:
        stack[np.asarray(masks, dtype=bool)] = np.nan
    stack[~np.isfinite(stack)] = np.nan
    offered = int(np.isfinite(stack).sum())
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w[:, None, None]
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        for _ in range(maxiters):
            centre = np.nanmedian(stack, axis=0)
            std = np.nanstd(stack, axis=0)
            clip = np.zeros(stack.shape, dtype=bool)
            if sigma_lower is not None:
                clip |= stack < centre - sigma_lower * std
            if sigma_upper is not None:
                clip |= stack > centre + sigma_upper * std
            if not clip.any():
                break
            stack[clip] = np.nan
        kept = np.isfinite(stack)
        n_used = kept.sum(axis=0)
        sw = (w * kept).sum(axis=0)
        if method == "median":
            data = np.nanmedian(stack, axis=0)
        else:
            data = np.nansum(w * stack, axis=0) / sw
        err = np.nanstd(stack, axis=0, ddof=1) * np.sqrt((w**2 * kept).sum(axis=0)) / sw
        if method == "median":
            err *= np.sqrt(np.pi / 2)
        err[n_used < 2] = np.nan
    rejected = offered - int(n_used.sum())
    return CombineResult(data.astype(np.float32), err.astype(np.float32),
                         n_used.astype(np.int16), rejected / offered if offered else 0.0)  # fmt: skip
