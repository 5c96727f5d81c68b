"""Near-infrared arrays in the simulator: non-destructive reads, reference pixels, persistence.

:class:`NirCamera` simulates the exposures of a camera whose chips are NIR arrays
(instrument file ``detector.kind`` / chip ``kind`` ``nir-cds``, ``nir-fowler`` or
``nir-ramp``) the way the camera writes them (:mod:`imred.simulate` calls it in place
of the CCD read-out):

* with ``detector.reads`` (IO:I): one raw file per read, every read carrying the
  ``group_by`` keywords (the exposure number), the read's ``time`` since reset and
  ``index``, and for Fowler sampling the ``pedestal`` keyword's pedestal or signal value.
  Files are named ``{exposure file stem}_{m}_{n}.fits`` (m = 1 pedestal, 2 signal; n the
  read's index; ramps ``{stem}_{n}.fits``), so that the reads' common prefix is the
  exposure's frame name;
* without (RATIR's nir-ramp chips): one finished image per exposure, as the
  instrument software makes it - the least-squares slope through the reads below
  saturation times the exposure time (ADU, float32; pixels saturated before their
  second read hold the saturation level).

Sampling (scenario ``nir``; the detector kind chooses; ``d`` = ``read_time_s``, ``T`` =
the exposure time, read times in s since reset)

=========  =================================================================
CDS        reads at ``d`` and ``d + T``
Fowler-N   pedestal reads at ``d, 2d, ... N d``, signal reads ``T`` later each
ramp-N     ``N`` reads evenly spaced from ``d`` to ``d + T``
=========  =================================================================

Model of one read (ADU, raw grid)::

    read_i = reset + reference_i + L(Q(t_i) / gain) + read noise, rounded, clipped

``Q(t)``: electrons since reset - Poisson increments of the expected rate (sky, stars,
flat, dark from :func:`imred.simulate._expected_electrons`, 0 in the reference border)
plus persistence, plus cosmic rays from the moment they arrive (uniform in time, one
moment per track); ``L``: the inverse of the instrument's non-linearity correction;
``reset``: the fixed bias structure + the frame's drift + a per-pixel reset level drawn
anew at every reset (``reset_noise_adu``, kTC); ``reference_i``: per output (equal
groups of columns) and column parity, a level and a slope along the rows, partly fixed
(``output_offset_adu``, ``parity_offset_adu``) and partly new at every read
(``read_drift_adu``, ``slope_adu``), in every pixel including the reference pixels.
Clipping at the saturation level (raw ADU) marks a pixel saturated; with
``persistence`` it then leaves, in every later exposure, an extra dark current
``rate_e_per_s * exp(-dt / decay_s)`` (``dt`` since the end of the saturating
exposure's last read).

Truth (added to the simulator's truth folder)

``nir_reads.ecsv``
    one row per exposure x read: ``frame``, ``read`` (1-based, time order), ``file``
    (the read's file, or the exposure's), ``group`` (pedestal, signal or empty),
    ``index`` (the camera's read number), ``time_s`` (since reset), ``mjd``; meta
    ``sampling`` and ``read_time_s``.
``rate/{frame}.fits``
    per chip (EXTNAME = chip): the true rate, e-/s on the data grid - the charge the
    exposure collects per second from light and dark current (after the flat; 0 in the
    reference border), without persistence and cosmic rays.
``persistence/{frame}.fits``
    (persistence on) per chip: the persistence that the exposure's combination (its
    detector kind's: CDS, Fowler, ramp) measures, e-/s on the data grid.
``nir_reference.ecsv``
    one row per exposure x chip x read x output x column parity: ``offset_adu`` (the
    reference level at the array's centre row) and ``slope_adu`` (top row minus bottom
    row), as added to every pixel of that output and parity (parity 0 = even 0-based
    columns).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from scipy.ndimage import label

from ..errors import ImredError
from ..fitsio import write_atomic
from . import detector

KIND_SAMPLING = {"nir-cds": "cds", "nir-fowler": "fowler", "nir-ramp": "ramp"}

# random-stream tags (imred.simulate uses 1-29): np.random.default_rng([seed, tag, ...])
_READS, _RESET, _REFERENCE, _REFERENCE_FIXED, _CR_TIMES = 30, 31, 32, 33, 34
_COSMICS = 21  # the CCD simulator's cosmic-ray stream (the same tracks)


# ------------------------------------------------------------------ sampling
@dataclass
class Sampling:
    """When the reads of one exposure happen, and how the camera labels them."""

    mode: str  # cds, fowler or ramp
    times: np.ndarray  # s since reset, increasing
    groups: list[str]  # "pedestal", "signal" or "" per read
    index: list[int]  # the camera's read number (Fowler: the pair number)
    exptime: float

    def weights(self) -> np.ndarray:
        """``w`` with ``rate = sum w_i Q(t_i)`` for this sampling (the sim's own algebra)."""
        t, n = self.times, self.times.size
        if self.mode == "ramp":
            dt = t - t.mean()
            return dt / np.sum(dt**2)
        p = self.groups.count("pedestal") or n // 2
        return np.concatenate([np.full(p, -1.0 / p), np.full(n - p, 1.0 / p)]) / self.exptime


def sampling(mode: str, n_reads: int, read_time: float, exptime: float) -> Sampling:
    """Read times and labels of one exposure (see the module table).

    ``n_reads``: Fowler pairs (``fowler``) or reads (``ramp``, >= 2); CDS always reads
    twice. The exposure time is the time between the two reads (CDS), between each
    pedestal read and its signal read (Fowler), or from the first to the last read (ramp).
    """
    d, t = float(read_time), float(exptime)
    if not t > 0:
        raise ImredError(
            f"a NIR exposure needs an exposure time > 0 s (got {t}): NIR arrays take no "
            "bias frames (set calibrations.bias.count: 0)"
        )
    if mode == "cds":
        return Sampling(mode, np.array([d, d + t]), ["pedestal", "signal"], [1, 1], t)
    if mode == "fowler":
        n = int(n_reads)
        if n < 1:
            raise ImredError(f"Fowler sampling needs at least 1 pair, got nir.reads = {n_reads}")
        if t < n * d:
            raise ImredError(
                f"Fowler-{n} with {d} s reads needs an exposure time of at least {n * d:g} s "
                f"(the signal reads start after the pedestal reads), not {t:g} s"
            )
        ped = d * np.arange(1, n + 1)
        return Sampling(
            mode,
            np.concatenate([ped, ped + t]),
            ["pedestal"] * n + ["signal"] * n,
            list(range(1, n + 1)) * 2,
            t,
        )
    if mode == "ramp":
        n = int(n_reads)
        if n < 2:
            raise ImredError(f"a ramp needs at least 2 reads, got nir.reads = {n_reads}")
        if t / (n - 1) < d:
            raise ImredError(
                f"{n} reads of {d} s do not fit in {t:g} s: the reads would overlap "
                f"(use fewer reads or a longer exposure)"
            )
        return Sampling(mode, d + t * np.arange(n) / (n - 1), [""] * n, list(range(1, n + 1)), t)
    raise ImredError(f"unknown NIR sampling {mode!r}: use cds, fowler or ramp")


# ----------------------------------------------------------- reference pixels
def output_groups(nx: int, n_outputs: int) -> np.ndarray:
    """Per column: ``2 * output + column parity`` (outputs are equal blocks of columns)."""
    if n_outputs < 1 or nx % n_outputs:
        raise ImredError(
            f"{nx} columns do not split into {n_outputs} equal outputs (detector.outputs)"
        )
    cols = np.arange(nx)
    return 2 * (cols // (nx // n_outputs)) + cols % 2


def reference_pattern(
    shape: tuple[int, int], n_outputs: int, offsets: np.ndarray, slopes: np.ndarray
) -> np.ndarray:
    """The reference-pixel pattern (ADU) of one read.

    ``offsets`` and ``slopes`` have shape (n_outputs, 2) (column parity 0 = even): the
    level at the centre row and the change from the bottom to the top row, per output
    and parity.
    """
    ny, nx = shape
    groups = output_groups(nx, n_outputs)
    y = (np.arange(ny, dtype=float) - (ny - 1) / 2.0) / max(ny - 1, 1)
    return offsets.reshape(-1)[groups][None, :] + y[:, None] * slopes.reshape(-1)[groups][None, :]


# ------------------------------------------------------------------ the reads
def cumulative_electrons(
    rate: np.ndarray,
    times: np.ndarray,
    rng: np.random.Generator,
    *,
    poisson: bool = True,
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """Electrons collected since reset at each read: (n_reads, ny, nx), float32.

    ``rate`` e-/s; ``extra`` (n_reads, ny, nx): further expected electrons in each
    interval (since reset for the first read), e.g. persistence. Poisson increments per
    interval (``poisson``), else the expectation.
    """
    edges = np.concatenate([[0.0], np.asarray(times, dtype=float)])
    out = np.empty((len(times), *rate.shape), dtype=np.float32)
    total = np.zeros(rate.shape, dtype=np.float64)
    for i in range(len(times)):
        mean = rate * (edges[i + 1] - edges[i])
        if extra is not None:
            mean = mean + extra[i]
        mean = np.clip(mean, 0, None)
        total += rng.poisson(mean) if poisson else mean
        out[i] = total
    return out


def instrument_slope(reads: np.ndarray, times: np.ndarray, saturation: float) -> np.ndarray:
    """What an instrument's software makes of a ramp: the least-squares slope (ADU/s)
    through the reads before each pixel's first read at or above ``saturation``; pixels
    with fewer than 2 such reads get NaN."""
    n = reads.shape[0]
    ok = np.logical_and.accumulate(reads < saturation, axis=0)
    n_used = ok.sum(axis=0)
    slope = np.full(reads.shape[1:], np.nan)
    for k in range(2, n + 1):
        sel = n_used == k
        if not sel.any():
            continue
        t = times[:k] - times[:k].mean()
        slope[sel] = np.tensordot(t / np.sum(t**2), reads[:k][:, sel], axes=1)
    return slope


def _crop_border(image: np.ndarray, width: int) -> None:
    if width > 0:
        image[:width] = 0
        image[-width:] = 0
        image[:, :width] = 0
        image[:, -width:] = 0


# ----------------------------------------------------------------- the camera
@dataclass
class _Persistence:
    """Sources of persistence on one chip: (end of the saturating exposure, mjd; e-/s)."""

    sources: list = field(default_factory=list)

    def charge(self, mjd0: float, edges: np.ndarray, decay: float, shape) -> np.ndarray:
        """Expected electrons in each interval ``edges[i]..edges[i+1]`` (s since mjd0)."""
        out = np.zeros((len(edges) - 1, *shape))
        for t_end, amplitude in self.sources:
            lag = (mjd0 - t_end) * 86400.0
            if lag + edges[0] < 0:
                continue
            left = np.exp(-(lag + edges) / decay)
            out += (decay * (left[:-1] - left[1:]))[:, None, None] * amplitude[None]
        return out


def is_nir(layouts: list) -> bool:
    """Whether the simulated chips are NIR arrays (all of them: a mix is not supported)."""
    kinds = {lay.kind for lay in layouts}
    nir = {k for k in kinds if k in KIND_SAMPLING}
    if nir and kinds - nir:
        raise ImredError(
            f"the simulated chips mix CCDs and NIR arrays ({', '.join(sorted(kinds))}); the "
            "simulator writes one kind at a time: choose the chips with camera.chips"
        )
    return bool(nir)


class NirCamera:
    """The NIR exposures of one night (see the module docstring).

    Parameters
    ----------
    sc : dict
        The completed scenario (its ``nir``, ``poisson``, ``read_noise``, ``saturation``,
        ``cosmic_rays`` and ``bias`` sections are used).
    inst : Instrument
    layouts : list of ChipLayout
    """

    def __init__(self, sc: dict, inst, layouts: list):
        self.sc, self.inst, self.layouts = sc, inst, layouts
        self.params = sc["nir"]
        self.seed = int(sc["seed"])
        self.polynomial: list | None = None
        kinds = {lay.kind for lay in layouts}
        if len(kinds) != 1:
            raise ImredError(
                f"{inst.source}: the simulated chips have different kinds ({', '.join(kinds)})"
            )
        self.kind = kinds.pop()
        self.mode = KIND_SAMPLING[self.kind]
        self.reads_spec = inst.detector.get("reads")
        self.width = int(inst.detector.get("reference_pixels") or 0)
        self.n_outputs = int(inst.detector.get("outputs") or 1)
        for lay in layouts:
            output_groups(lay.raw_shape[1], self.n_outputs)
            if 2 * self.width >= min(lay.raw_shape):
                raise ImredError(f"{inst.source}: chip {lay.name} is smaller than its border")
        self.persistence = {lay.name: _Persistence() for lay in layouts}
        self.fixed_reference = {}
        ref = self.params["reference"]
        for lay in layouts:
            rng = np.random.default_rng([self.seed, _REFERENCE_FIXED, lay.index])
            level = rng.normal(0.0, ref["output_offset_adu"], (self.n_outputs, 1))
            parity = rng.normal(0.0, ref["parity_offset_adu"], (self.n_outputs, 2))
            self.fixed_reference[lay.name] = level + parity
        self.read_rows: list[dict] = []
        self.reference_rows: list[dict] = []
        self.rates: dict[str, dict] = {}
        self.persisted: dict[str, dict] = {}

    # ------------------------------------------------------------ files
    def sampling(self, f) -> Sampling:
        return sampling(self.mode, self.params["reads"], self.params["read_time_s"], f.exptime)

    def _read_names(self, f, path: Path) -> list[Path]:
        samp = self.sampling(f)
        stem = path.name.removesuffix(".fits")
        if samp.mode == "ramp":
            return [path.with_name(f"{stem}_{n}.fits") for n in samp.index]
        return [
            path.with_name(f"{stem}_{1 if g == 'pedestal' else 2}_{n}.fits")
            for g, n in zip(samp.groups, samp.index, strict=True)
        ]

    def read_files(self, f, paths: list[Path]) -> list[Path]:
        """Every file of an exposure (read by read, each read's files in ``paths`` order)."""
        if not self.reads_spec:
            return list(paths)
        per_file = [self._read_names(f, Path(p)) for p in paths]
        return [names[i] for i in range(len(per_file[0])) for names in per_file]

    def files(self, f, paths: list[Path]) -> list[tuple]:
        """``(frame of the read, its files (one per raw-file group), header cards, key)``.

        ``key`` names the arrays in :meth:`expose`'s chip dicts. One item (the
        exposure) without ``detector.reads``.
        """
        if not self.reads_spec:
            return [(f, list(paths), [], "raw")]
        samp = self.sampling(f)
        n_groups = len(paths) // len(samp.times)
        spec = self.reads_spec
        out = []
        for i, t in enumerate(samp.times):
            cards = [(kw, int(f.index)) for kw in spec["group_by"]]
            if spec.get("time"):
                cards.append((spec["time"], round(float(t), 6)))
            if spec.get("index"):
                cards.append((spec["index"], int(samp.index[i])))
            if spec.get("pedestal"):
                ped = spec["pedestal"]
                pedestal = samp.groups[i] == "pedestal"
                cards.append((ped["keyword"], ped["pedestal"] if pedestal else ped["signal"]))
            read_frame = dataclasses.replace(f, mjd=f.mjd + float(t) / 86400.0)
            out.append((read_frame, paths[i * n_groups : (i + 1) * n_groups], cards, f"read{i}"))
        return out

    # ---------------------------------------------------------- exposure
    def expose(
        self, f, expected: list, biases: dict, drift: np.ndarray, polynomial: list | None
    ) -> list[dict]:
        """Simulate one exposure on every chip.

        ``expected``: per layout, ``imred.simulate._expected_electrons``'s (electrons in
        the exposure on the data grid, star truth rows, true WCS or None); ``biases``:
        the fixed bias structure per chip (raw grid); ``drift``: the frame's bias drift
        per chip index; ``polynomial``: the non-linearity correction to invert (None:
        linear). Returns per chip a dict with the read arrays (``read0`` ...) or
        the finished image (``raw``), ``mask`` (cosmic rays between the first and last
        read, for the truth), ``chip_row`` and ``star_rows``.
        """
        sc, p = self.sc, self.params
        self.polynomial = polynomial
        samp = self.sampling(f)
        self._record_reads(f, samp)
        out = []
        for lay, (electrons, star_rows, wcs) in zip(self.layouts, expected, strict=True):
            rng = np.random.default_rng([self.seed, _READS, f.index, lay.index])
            rate = np.zeros(lay.raw_shape)
            rate[lay.datasec] = electrons / f.exptime
            _crop_border(rate, self.width)
            edges = np.concatenate([[0.0], samp.times])
            pers = None
            if p["persistence"]["enabled"]:
                pers = self.persistence[lay.name].charge(
                    f.mjd, edges, p["persistence"]["decay_s"], lay.raw_shape
                )
                _crop_border_stack(pers, self.width)
            q = cumulative_electrons(
                rate, samp.times, rng, poisson=sc["poisson"]["enabled"], extra=pers
            )
            n_cr, cr_mask = self._cosmic_rays(f, lay, samp, q)
            reads, saturated, top = self._read_out(f, lay, samp, q, biases, drift, rng)
            if p["persistence"]["enabled"]:
                level = np.where(saturated, p["persistence"]["rate_e_per_s"], 0.0)
                self.persistence[lay.name].sources.append((f.mjd + samp.times[-1] / 86400.0, level))
            self._record_truth(f, lay, samp, rate, pers)
            header = wcs.header(lay.data_shape) if wcs is not None else fits.Header()
            header["CHIP"] = lay.name
            chip = {
                "mask": fits.CompImageHDU(
                    cr_mask[lay.datasec].astype(np.uint8),
                    header=header,
                    name=lay.name,
                    compression_type="RICE_1",
                ),
                "chip_row": self._chip_row(f, lay, drift, n_cr),
                "star_rows": star_rows,
            }
            if self.reads_spec:
                chip.update({f"read{i}": r for i, r in enumerate(reads)})
            else:  # the instrument software's image
                image = instrument_slope(reads.astype(float), samp.times, top) * f.exptime
                chip["raw"] = np.where(np.isfinite(image), image, top).astype(np.float32)
            out.append(chip)
        return out

    def _cosmic_rays(self, f, lay, samp: Sampling, q: np.ndarray):
        """Add cosmic rays to ``q`` from their arrival; (their number, the mask of those
        arriving between the first and the last read on the raw grid)."""
        rng = np.random.default_rng([self.seed, _COSMICS, f.index, lay.index])
        deposit, n_cr = detector.cosmic_rays(
            lay.data_shape, float(samp.times[-1]), self.sc["cosmic_rays"], rng
        )
        full = np.zeros(lay.raw_shape, dtype=np.float32)
        full[lay.datasec] = deposit
        if n_cr == 0:
            return 0, np.zeros(lay.raw_shape, dtype=bool)
        tracks, n_tracks = label(full > 0, structure=np.ones((3, 3)))
        arrive = np.random.default_rng([self.seed, _CR_TIMES, f.index, lay.index]).uniform(
            0.0, samp.times[-1], n_tracks + 1
        )
        when = arrive[tracks]
        for i, t in enumerate(samp.times):
            q[i] += np.where((tracks > 0) & (when <= t), full, 0.0)
        return n_cr, (tracks > 0) & (when > samp.times[0]) & (when <= samp.times[-1])

    def _read_out(self, f, lay, samp: Sampling, q, biases, drift, rng):
        sc, p = self.sc, self.params
        ref = p["reference"]
        reset = biases[lay.name].astype(np.float64) + float(drift[lay.index])
        reset = reset + np.random.default_rng([self.seed, _RESET, f.index, lay.index]).normal(
            0.0, p["reset_noise_adu"], lay.raw_shape
        )
        ref_rng = np.random.default_rng([self.seed, _REFERENCE, f.index, lay.index])
        top = min(lay.saturation, 65535.0) if sc["saturation"]["enabled"] else 65535.0
        noise = lay.read_noise / lay.gain if sc["read_noise"]["enabled"] else 0.0
        reads = np.empty((samp.times.size, *lay.raw_shape), dtype=np.uint16)
        saturated = np.zeros(lay.raw_shape, dtype=bool)
        for i in range(samp.times.size):
            level = q[i].astype(np.float64) / lay.gain
            if self.polynomial is not None:
                level = detector.apply_nonlinearity(level, self.polynomial, lay.saturation)
            adu = reset + level
            if ref["enabled"] and self.width > 0:
                offsets = self.fixed_reference[lay.name] + ref_rng.normal(
                    0.0, ref["read_drift_adu"], (self.n_outputs, 2)
                )
                slopes = ref_rng.normal(0.0, ref["slope_adu"], (self.n_outputs, 2))
                adu = adu + reference_pattern(lay.raw_shape, self.n_outputs, offsets, slopes)
                self._record_reference(f, lay, i, offsets, slopes)
            if noise:
                adu = adu + rng.standard_normal(lay.raw_shape) * noise
            saturated |= adu >= top
            reads[i] = np.clip(np.rint(adu), 0, top).astype(np.uint16)
        return reads, saturated, top

    # -------------------------------------------------------------- truth
    def _chip_row(self, f, lay, drift, n_cr) -> dict:
        row = {
            "frame": f.name,
            "chip": lay.name,
            "bias_offset": float(drift[lay.index]),
            "n_cosmic_rays": n_cr,
            "gain": lay.gain,
            "read_noise": lay.read_noise,
        }
        if hasattr(f, "conditions"):
            cond = f.conditions(lay.band)
            row.update(
                band=cond["band"] or "",
                zero_point=cond["zero_point"],
                sky=cond["sky"],
                seeing=cond["seeing"],
                illumination=cond["illumination"],
            )
        return row

    def _record_reads(self, f, samp: Sampling) -> None:
        for i, t in enumerate(samp.times):
            self.read_rows.append(
                {
                    "frame": f.name,
                    "read": i + 1,
                    "group": samp.groups[i],
                    "index": int(samp.index[i]),
                    "time_s": float(t),
                    "mjd": f.mjd + float(t) / 86400.0,
                    "exptime": samp.exptime,
                }
            )

    def _record_reference(self, f, lay, read: int, offsets, slopes) -> None:
        for k in range(self.n_outputs):
            for parity in (0, 1):
                self.reference_rows.append(
                    {
                        "frame": f.name,
                        "chip": lay.name,
                        "read": read + 1,
                        "output": k,
                        "parity": parity,
                        "offset_adu": float(offsets[k, parity]),
                        "slope_adu": float(slopes[k, parity]),
                    }
                )

    def _record_truth(self, f, lay, samp: Sampling, rate, pers) -> None:
        self.rates.setdefault(f.name, {})[lay.name] = rate[lay.datasec].astype(np.float32)
        if pers is not None:
            cumulative = np.cumsum(pers, axis=0)  # expected persistence since reset per read
            measured = np.tensordot(samp.weights(), cumulative, axes=1)
            self.persisted.setdefault(f.name, {})[lay.name] = measured[lay.datasec].astype(
                np.float32
            )

    def write_truth(self, truth_dir: Path, files: dict[str, list[str]] | None = None) -> None:
        """Write ``nir_reads.ecsv``, ``rate/``, ``persistence/``, ``nir_reference.ecsv``.

        ``files``: per frame, its files in the order of :meth:`read_files`.
        """
        truth_dir = Path(truth_dir)
        rows = [dict(r) for r in self.read_rows]
        for r in rows:
            names = (files or {}).get(r["frame"], [])
            per_read = len(names) // max(1, sum(x["frame"] == r["frame"] for x in rows))
            r["file"] = Path(names[(r["read"] - 1) * per_read]).name if names else ""
        table = Table(rows=rows) if rows else Table(names=["frame", "read"])
        table.meta.update(
            sampling=self.mode,
            read_time_s=float(self.params["read_time_s"]),
            definition="time_s: since the array's reset; exptime: the exposure's",
        )
        _write_table(truth_dir / "nir_reads.ecsv", table)
        for name, folder in (("rate", self.rates), ("persistence", self.persisted)):
            for frame, per_chip in folder.items():
                hdus = [
                    fits.PrimaryHDU(header=fits.Header([("FRAME", frame), ("BUNIT", "electron/s")]))
                ]
                for chip, image in per_chip.items():
                    hdu = fits.ImageHDU(image, name=chip)
                    hdu.header["CHIP"] = chip
                    hdus.append(hdu)
                path = truth_dir / name / f"{frame}.fits"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, lambda tmp, h=hdus: fits.HDUList(h).writeto(tmp))
        if self.reference_rows:
            _write_table(truth_dir / "nir_reference.ecsv", Table(rows=self.reference_rows))


def _crop_border_stack(stack: np.ndarray, width: int) -> None:
    for plane in stack:
        _crop_border(plane, width)


def _write_table(path: Path, table: Table) -> None:
    write_atomic(path, lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))
