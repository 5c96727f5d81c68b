"""Build masters and calibrated frames from files: the outer layer of :mod:`imred.calib`.

Each ``build_*`` function reads the raw chips named by observation-log rows (and the
masters it needs), calls the array functions of :mod:`imred.calib`, and returns the
arrays with the product's primary header (type, chip, night, sections, provenance,
measured numbers). Writing is left to the rule scripts (:mod:`imred.products`).

Rows are observation-log rows (dicts with ``path``, ``extension``, ``binning``,
``exptime``, ``gain``, ``read_noise``, ``saturation``, ...). ``chip`` is the chip's
description from the instrument file (a dict, as the workflow passes it);
``detector`` says how the chip's detector is corrected: ``{"nonlinearity": the
instrument's detector.nonlinearity block or None, "reference": the NIR
reference-pixel correction or None}``, and for NIR exposures written as reads
``"combine"`` (``cds``, ``fowler`` or ``ramp``).

An exposure of a NIR array written one file per read (instrument file
``detector.reads``) is one row whose ``path`` is the list of its reads' files in time
order (or whose ``read_paths`` has them), with ``read_times`` (s since reset) and
``read_groups`` (``pedestal``/``signal``); :func:`imred.calib.prepare_exposure`
combines the reads into a frame of ``rate x exptime`` ADU.
"""

from __future__ import annotations

import logging

import numpy as np
from astropy.io import fits

from .calib import (
    Calibrated,
    Prepared,
    bad_columns,
    calibrate_chip,
    make_master_bias,
    make_master_dark,
    make_master_flat,
    prepare_chip,
    prepare_exposure,
    region_mask,
    trim_section,
)
from .errors import ImredError
from .fitsio import read_chip
from .instrument import Chip
from .mask import Bit
from .nir import COMBINE_MODES
from .products import provenance_cards, read_image_product
from .sections import format_section

log = logging.getLogger("imred.masters")

KINDS = ("bias", "dark", "flat")  # the masters of a calibrated frame


def _binning(row: dict) -> tuple[int, int]:
    bx, by = (int(v) for v in str(row.get("binning") or "1x1").split("x"))
    return bx, by


def read_paths(row: dict) -> list[str] | None:
    """The files of an exposure's reads (time order), or None for a single-image frame."""
    if isinstance(row.get("path"), list | tuple):
        return [str(p) for p in row["path"]]
    if row.get("read_paths"):
        return [str(p) for p in row["read_paths"]]
    return None


def _prepare_reads(
    row: dict, paths: list[str], chip: Chip, settings: dict, detector: dict
) -> Prepared:
    times, groups = row.get("read_times"), row.get("read_groups") or []
    if not times or len(times) != len(paths):
        raise ImredError(
            f"frame {row.get('frame')} [{row['chip']}]: {len(paths)} read files but read times "
            f"{times!r} (the observation log's read_time column)"
        )
    reads = []
    for path in paths:
        raw, _ = read_chip(path, row["extension"])
        if not np.isfinite(raw).any() or not np.any(raw):
            raise ImredError(f"{path} [{row['chip']}]: the image is all zero or not finite")
        reads.append(raw)
    n_pedestal = sum(g == "pedestal" for g in groups) or None
    mode = detector.get("combine") or ("fowler" if n_pedestal else "ramp")
    if mode not in COMBINE_MODES:
        raise ImredError(f"read combination {mode!r} is not one of {', '.join(COMBINE_MODES)}")
    nl = detector.get("nonlinearity")
    if not settings.get("nonlinearity", {}).get("enabled", True):
        nl = None
    return prepare_exposure(
        reads,
        [float(t) for t in times],
        chip,
        _binning(row),
        saturation=float(row["saturation"]),
        nonlinearity=nl,
        reference=detector.get("reference"),
        combine=mode,
        exptime=float(row["exptime"]),
        n_pedestal=n_pedestal,
    )


def _prepare(row: dict, chip: Chip, settings: dict, detector: dict | None) -> Prepared:
    paths = read_paths(row)
    if paths is not None:
        return _prepare_reads(row, paths, chip, settings, detector or {})
    raw, _ = read_chip(row["path"], row["extension"])
    if _all_zero_or_nonfinite(raw):
        raise ImredError(f"{row['path']} [{row['chip']}]: the image is all zero or not finite")
    detector = detector or {}
    nl = detector.get("nonlinearity")
    if not settings.get("nonlinearity", {}).get("enabled", True):
        nl = None
    return prepare_chip(
        raw,
        chip,
        _binning(row),
        saturation=float(row["saturation"]),
        overscan=settings.get("overscan", {}),
        nonlinearity=nl,
        reference=detector.get("reference"),
    )


def _check_same(rows: list[dict], what: str) -> None:
    shapes = {(r.get("nx"), r.get("ny"), r.get("binning")) for r in rows}
    if len(shapes) > 1:
        raise ImredError(f"{what}: frames differ in size or binning: {sorted(map(str, shapes))}")


def _header(
    kind: str,
    rows: list[dict],
    chip: Chip,
    night: str,
    setup: str,
    settings,
    *,
    band=None,
    masters=None,
    steps=(),
) -> fits.Header:
    h = fits.Header()
    r0 = rows[0]
    h["IMRTYPE"] = (kind.upper(), "imred product type")
    h["INSTRUME"] = (r0["instrument"], "imred instrument")
    h["CHIP"] = (chip.name, "chip name in the instrument file")
    h["NIGHT"] = (night, "night (YYYYMMDD of the evening)")
    h["SETUP"] = (setup, "binning_readoutmode")
    if band:
        h["BAND"] = (band, "band")
    rows_s, cols_s = trim_section(chip, (int(r0["ny"]), int(r0["nx"])), _binning(r0))
    h["TRIMSEC"] = (format_section(rows_s, cols_s), "raw section of these pixels (binned, 1-based)")
    if chip.datasec:
        h["DATASEC"] = (chip.datasec, "raw data section (unbinned, 1-based)")
    for key, value, comment in provenance_cards(
        settings=settings,
        inputs=[p for r in rows for p in (read_paths(r) or [r["path"]])],
        masters=masters,
        steps=steps,
    ):
        h[key] = (value, comment)
    return h


def _add(h: fits.Header, cards) -> None:
    for key, value, comment in cards:
        h[key] = (value, comment)


def _load_master(path: str | None):
    """A master's ``(SCI, UNC, MASK)`` (see :func:`_read_master`), or None without one."""
    return None if path is None else _read_master(path)[0]


def _mapped(hdu) -> np.ndarray | None:
    """An HDU's pixels (opened memory-mapped, ``do_not_scale_image_data``) as astropy
    would scale them, or None for a scaling other than imred's own.

    Floats stay mapped, in the file's (big-endian) byte order: numpy's arithmetic reads
    them as it goes, which gives the values of a native copy without making one. A
    uint16 (int16 with BZERO 32768: a flip of the top bit) becomes a native array.
    """
    h = hdu.header
    if h.get("BLANK") is not None or h.get("BSCALE", 1) != 1:
        return None
    bzero = h.get("BZERO", 0)
    data = np.asarray(hdu.data)
    if bzero == 0:
        return data if data.dtype.kind == "f" else data.astype(data.dtype.newbyteorder("="))
    if bzero == 1 << 15 and h.get("BITPIX") == 16:
        unsigned = data.view(np.dtype(np.uint16).newbyteorder(data.dtype.byteorder))
        return np.bitwise_xor(unsigned, np.uint16(1 << 15))
    return None


def _read_master(path: str) -> tuple[tuple, fits.Header]:
    """A master's ``(SCI, UNC, MASK)`` for a calibration, and its primary header.

    Read memory-mapped (:func:`_mapped`): SCI and UNC as float32 in either byte order
    (the values of astropy's scaled reading, without its copies), MASK as native uint16
    (zeros when the master has none).
    """
    with fits.open(path, memmap=True, do_not_scale_image_data=True) as hdul:
        hdus = {hdu.name: hdu for hdu in hdul[1:]}
        names = ("SCI", "UNC", "MASK") if "MASK" in hdus else ("SCI", "UNC")
        arrays = [_mapped(hdus[name]) for name in names]
        header = hdul[0].header
    if any(a is None for a in arrays):  # a scaling imred does not write: astropy's reading
        p = read_image_product(path)
        arrays, header = [p[name] for name in names], p["header"]
    sci, unc = (
        a if a.dtype.kind == "f" and a.itemsize == 4 else a.astype(np.float32) for a in arrays[:2]
    )
    mask = arrays[2].astype(np.uint16, copy=False) if len(arrays) > 2 else None
    if mask is None:
        mask = np.zeros(sci.shape, np.uint16)
    return (sci, unc, mask), header


def _all_zero_or_nonfinite(raw: np.ndarray) -> bool:
    """True when no pixel is finite, or every pixel is 0 (a broken readout)."""
    first = raw.flat[0] if raw.size else 0
    if np.isfinite(first) and first != 0:  # the usual case, without a pass over the image
        return False
    return not np.isfinite(raw).any() or not np.any(raw)


def build_master_bias(rows, chip: dict, night, setup, settings, detector):
    """Master bias (ADU) of one night x chip x setup, with read noise from pairs."""
    chip = Chip(**chip)
    _check_same(rows, f"bias frames of chip {chip.name}, night {night}")
    no_nl = {**(detector or {}), "nonlinearity": None}  # a bias has no signal to linearise
    prepared = [_prepare(r, chip, settings, no_nl) for r in rows]
    gain = float(rows[0]["gain"])
    master = make_master_bias(
        [p.data for p in prepared], gain, settings, read_noise=float(rows[0]["read_noise"])
    )
    h = _header("bias", rows, chip, night, setup, settings, steps=prepared[0].steps)
    _add(h, master.cards)
    h["GAIN"] = (gain, "gain used (e-/ADU)")
    h["RNINST"] = (rows[0]["read_noise"], "read noise in the instrument file/header (e-)")
    return master, h


def _subtract_bias(p: Prepared, bias) -> np.ndarray:
    if bias is None:
        return p.data
    if bias[0].shape != p.data.shape:
        raise ImredError(
            f"master bias shape {bias[0].shape} differs from the frame's {p.data.shape}"
        )
    return p.data - bias[0]


def build_master_dark(rows, chip: dict, night, setup, settings, detector, bias_path):
    """Master dark rate (e-/s) from bias-subtracted darks."""
    chip = Chip(**chip)
    _check_same(rows, f"dark frames of chip {chip.name}, night {night}")
    bias = _load_master(bias_path)
    prepared = [_prepare(r, chip, settings, detector) for r in rows]
    frames = [_subtract_bias(p, bias) for p in prepared]
    master = make_master_dark(
        frames,
        [float(r["exptime"]) for r in rows],
        float(rows[0]["gain"]),
        settings["dark"] | {"combine": settings.get("combine", {})},
        read_noise=float(rows[0]["read_noise"]),
    )
    masters = {"bias": bias_path} if bias_path else {}
    steps = [*prepared[0].steps, *(["bias"] if bias_path else [])]
    h = _header("dark", rows, chip, night, setup, settings, masters=masters, steps=steps)
    _add(h, master.cards)
    return master, h


def build_master_flat(
    rows,
    chip: dict,
    night,
    setup,
    band,
    settings,
    detector,
    bias_path,
    dark_path,
    min_frames: int,
    flat_level=(0.2, 0.8),
):
    """Master flat of one band: level and saturation cuts, normalise, combine, bad columns.

    ``flat_level``: accepted median level as fractions of saturation (instrument file).
    """
    chip = Chip(**chip)
    _check_same(rows, f"flat frames of chip {chip.name}, band {band}, night {night}")
    bias, dark = _load_master(bias_path), _load_master(dark_path)
    lo, hi = flat_level
    kept, frames, reasons = [], [], []
    for r in rows:
        p = _prepare(r, chip, settings, detector)
        level = float(np.nanmedian(p.data))
        sat = float(r["saturation"])
        frac_sat = float(p.saturated.mean())
        if not lo <= level / sat <= hi:
            reasons.append(
                f"{r['frame']}: level {level:.0f} ADU = {level / sat:.2f} of saturation,"
                f" outside {lo}-{hi}"
            )
            continue
        if frac_sat > settings["flat"]["max_saturated_fraction"]:
            reasons.append(f"{r['frame']}: {frac_sat:.1e} of its pixels saturated")
            continue
        f = _subtract_bias(p, bias)
        if dark is not None:
            f = f - dark[0] * np.float32(float(r["exptime"]) / float(r["gain"]))
        kept.append(r)
        frames.append(f)
        steps = p.steps
    for why in reasons:
        log.warning("flat rejected: %s", why)
    if len(frames) < min_frames:
        raise ImredError(
            f"flats of chip {chip.name}, band {band}, night {night}: {len(frames)} usable, "
            f"{min_frames} needed (calibration.min_frames.flat in the instrument file); "
            f"rejected: {'; '.join(reasons) or 'none'}"
        )
    rn_adu = float(rows[0]["read_noise"]) / float(rows[0]["gain"])
    master = make_master_flat(
        frames,
        settings["flat"] | {"combine": settings.get("combine", {})},
        rn_adu,
        float(rows[0]["gain"]),
    )
    if settings.get("bad_pixels", {}).get("bad_columns", True):
        cols = bad_columns(
            master.data,
            settings["bad_pixels"]["column_window"],
            settings["bad_pixels"]["column_sigma"],
        )
        master.mask[:, cols] |= np.uint16(Bit.BAD)
        master.cards.append(("NBADCOL", int(cols.sum()), "bad columns found"))
        master.qa["bad_columns"] = [int(c) for c in np.flatnonzero(cols)]
    masters = {k: v for k, v in (("bias", bias_path), ("dark", dark_path)) if v}
    steps = [*steps, *masters]
    h = _header("flat", kept, chip, night, setup, settings, band=band, masters=masters, steps=steps)
    _add(h, master.cards)
    h["NREJECT"] = (len(reasons), "flat frames rejected")
    for i, why in enumerate(reasons, start=1):
        h[f"IMRREJ{i}"] = why  # a reason can be long: no comment
    master.qa["rejected"] = reasons
    return master, h


def build_calibrated(
    row, chip: dict, settings, detector, masters: dict, regions: dict | None = None
) -> tuple[Calibrated, fits.Header]:
    """Calibrate one frame x chip with the masters ``{"bias"|"dark"|"flat": path}``."""
    chip = Chip(**chip)
    p = _prepare(row, chip, settings, detector)
    rows_s, cols_s = trim_section(chip, (int(row["ny"]), int(row["nx"])), _binning(row))
    # the static BAD pixels (instrument file, user regions); None when there are none
    bad = None
    for spec in ({"bad_rectangles": chip.static_mask} if chip.static_mask else None, regions):
        if spec:
            full = region_mask(
                spec, (int(row["ny"]), int(row["nx"])), (rows_s, cols_s), _binning(row)
            )
            bad = full if bad is None else bad | full
    static = None
    if bad is not None:
        static = np.zeros(p.data.shape, dtype=np.uint16)
        static[bad] = np.uint16(Bit.BAD)
    # each master read once: its arrays and (the bias) its header
    loaded = {
        k: _read_master(masters[k]) if masters.get(k) is not None else (None, None) for k in KINDS
    }
    # the read noise measured from the night's bias pairs, where there is one, over the
    # instrument file's (real detectors drift: CAFOS measures 14 e- against its 7.4)
    read_noise, rn_source = float(row["read_noise"]), "instrument"
    if masters.get("bias"):
        measured = loaded["bias"][1].get("RDNOISE")
        if measured not in (None, "") and np.isfinite(float(measured)):
            read_noise, rn_source = float(measured), "bias pairs"
    cal = calibrate_chip(
        p,
        gain=float(row["gain"]),
        read_noise=read_noise,
        exptime=float(row["exptime"]),
        saturation_adu=float(row["saturation"]),
        bias=loaded["bias"][0],
        dark=loaded["dark"][0],
        flat=loaded["flat"][0],
        static_mask=static,
        settings=settings,
        is_science=row["imagetype"] in ("science", "standard"),
    )
    h = fits.Header()
    h["IMRTYPE"] = ("CALIBRATED", "imred product type")
    h["INSTRUME"] = (row["instrument"], "imred instrument")
    h["CHIP"] = (chip.name, "chip name in the instrument file")
    h["NIGHT"] = (row["night"], "night (YYYYMMDD of the evening)")
    h["FRAME"] = (row["frame"], "frame id")
    for key, col, comment in (
        ("OBJECT", "target", "target"), ("BAND", "band", "band"),
        ("EXPTIME", "exptime", "exposure time (s)"), ("DATE-OBS", "dateobs", "start (UTC)"),
        ("MJD-OBS", "mjd", "start (MJD, UTC)"), ("AIRMASS", "airmass", "airmass"),
        ("RA", "ra", "pointing RA (ICRS deg)"), ("DEC", "dec", "pointing Dec (ICRS deg)"),
        ("ROTANG", "rotator", "rotator angle (deg)"),
    ):  # fmt: skip
        if row.get(col) is not None:
            h[key] = (row[col], comment)
    h["GAIN"] = (1.0, "e-/e-: the data are in electrons")
    h["GAINRAW"] = (float(row["gain"]), "gain used to convert ADU to e- (e-/ADU)")
    h["RDNOISE"] = (read_noise, "read noise used for VAR (e-)")
    h["RNSOURCE"] = (rn_source, "where the read noise comes from")
    h["TRIMSEC"] = (format_section(rows_s, cols_s), "raw section of these pixels (binned, 1-based)")
    reads = read_paths(row)
    if reads is not None:
        h["NREADS"] = (len(reads), "non-destructive reads combined")
        h["READMODE"] = (_read_mode(cal.steps), "how the reads were combined")
    for key, value, comment in provenance_cards(
        settings=settings, inputs=reads or [row["path"]], masters=masters, steps=cal.steps
    ):
        h[key] = (value, comment)
    for key, value in cal.qa.items():
        if key == "cr_fraction":
            h["CRFRAC"] = (round(value, 6), "fraction of pixels flagged as cosmic rays")
        elif key == "cr_sigclip":
            h["CRSIGCLP"] = (round(value, 3), "L.A.Cosmic sigclip used")
    return cal, h


def _read_mode(steps: list) -> str:
    return next((s for s in steps if s in COMBINE_MODES), "")


def compare_masters(current: str, previous: str | None) -> dict:
    """How a master differs from the previous one of its group: rms / expected noise."""
    cur = read_image_product(current)
    out = {"noise": float(np.nanmedian(cur["UNC"]))}
    if previous is None:
        return out | {"previous": None, "change_ratio": None}
    prev = read_image_product(previous)
    if prev["SCI"].shape != cur["SCI"].shape:
        return out | {"previous": previous, "change_ratio": None, "note": "shape differs"}
    diff = cur["SCI"] - prev["SCI"]
    good = np.isfinite(diff)
    if "MASK" in cur:
        good &= cur["MASK"] == 0
    expected = np.sqrt(cur["UNC"] ** 2 + prev["UNC"] ** 2)
    diff = diff - np.nanmedian(diff[good]) if cur["header"]["IMRTYPE"] == "BIAS" else diff
    ratio = float(np.sqrt(np.nanmean(diff[good] ** 2)) / np.nanmedian(expected[good]))
    return out | {"previous": previous, "change_ratio": ratio}


def master_qa_table(masters: list[dict], parameters: dict, settings: dict):
    """One row per master of a night: noise, measured read noise/gain, change vs previous.

    ``masters``: dicts with ``kind, chip, setup, band, path, previous``; ``parameters``:
    ``{chip: {"gain", "read_noise"}}`` as the instrument file/headers give them;
    ``settings``: ``change_threshold`` and ``parameter_tolerance``. A master whose
    change from the previous one of its group exceeds the threshold, or whose measured
    read noise or gain departs from the instrument's, gets a flag (it is not silently
    trusted: the flag is in the table and the night's log).
    """
    from astropy.table import Table

    rows = []
    for m in masters:
        header = fits.getheader(m["path"])
        cmp = compare_masters(m["path"], m["previous"])
        flags = []
        ratio = cmp["change_ratio"]
        if ratio is not None and ratio > settings["change_threshold"]:
            flags.append(f"changed: rms difference {ratio:.1f}x the expected noise")
        inst = parameters.get(m["chip"], {})
        rn = header.get("RDNOISE") if m["kind"] == "bias" else None
        gain = header.get("GAINMEAS") if m["kind"] == "flat" else None
        tol = settings["parameter_tolerance"]
        for name, measured, expected in (
            ("read noise", rn, inst.get("read_noise")),
            ("gain", gain, inst.get("gain")),
        ):
            known = measured not in (None, "") and expected
            if known and abs(float(measured) / float(expected) - 1) > tol:
                flags.append(f"{name} {float(measured):.3g} vs {float(expected):.3g} expected")
        for flag in flags:
            log.warning("master %s: %s", m["path"], flag)
        rows.append(
            {
                "kind": m["kind"],
                "chip": m["chip"],
                "setup": m["setup"],
                "band": m["band"] or "",
                "ncombine": int(header.get("NCOMBINE", 0)),
                "noise": cmp["noise"],
                "read_noise_measured": float(rn) if rn not in (None, "") else np.nan,
                "gain_measured": float(gain) if gain not in (None, "") else np.nan,
                "change_ratio": ratio if ratio is not None else np.nan,
                "previous": m["previous"] or "",
                "path": m["path"],
                "flags": "; ".join(flags),
            }
        )
    return Table(rows=rows) if rows else Table(names=["kind", "chip", "path", "flags"])
