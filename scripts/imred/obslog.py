"""The observation log: one row per raw frame x chip, headers normalised by the instrument file.

:func:`update_obslog` scans raw folders recursively, reads headers only (every
extension of a multi-extension file), normalises them through an
:class:`~imred.instrument.Instrument` and writes a tab-separated table that a person
can read and edit. It is incremental: a file whose size and modification time are
unchanged (and an unchanged instrument file) is not read again.

Columns (:data:`COLUMNS`): ``frame`` (id from the file name, unique per night),
``path``, ``extension``, ``instrument``, ``chip``, ``imagetype``, ``band``, ``exptime``
(s), ``binning``, ``readout_mode``, ``dateobs`` (UTC, ISO), ``mjd``, ``night``
(``YYYYMMDD`` of the evening; a night starts at local noon), ``target`` (path-safe),
``ra``/``dec`` (pointing, ICRS degrees, the instrument's convention applied),
``airmass`` (from the header, else computed from site and time), ``gain`` (e-/ADU),
``read_noise`` (e-), ``temperature`` (C), ``rotator`` (deg), ``saturation`` (ADU),
``nx``/``ny`` (raw array size), ``use`` (``yes``/``no``), ``reason``, ``file_bytes``,
``file_mtime``.

Editing ``use``: set ``no`` (and say why in ``reason``) to leave a frame out, or
``yes`` to take back one that imred excluded, then re-run; the edit is kept
when the log is updated. Reasons imred writes itself start with one of
:data:`AUTO_REASONS`; any other reason (or a ``use`` that differs from imred's own
choice with an empty reason) is the user's and wins.

Files that cannot be read (not FITS, truncated, an extension missing) and frames
lacking a required keyword get a row with ``use = no`` and the reason; the log is
still written.

NIR arrays that write one file per non-destructive read (instrument file
``detector.reads``) get one row per read x chip with four more columns
(:data:`READ_COLUMNS`, written only when some row has them): ``exposure`` (the
``group_by`` keywords and their values, naming the exposure within the night),
``read`` (the ``index`` keyword's value), ``read_group`` (``pedestal``/``signal``) and
``read_at`` (s since reset); their ``exptime`` is the exposure's (CDS: between the
two reads; Fowler: mean signal minus mean pedestal read time; ramp: first to last
read), not the read's. The reads of an exposure that cannot be combined (fewer than 2,
a CDS without exactly 2, a Fowler set without as many pedestal as signal reads, reads
with equal times) are ``use = no`` with a reason starting ``incomplete exposure:``,
re-checked at every update. :func:`usable` - what the workflow reduces - merges the
usable reads of each exposure x chip into one row (see :func:`merge_reads`).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from .errors import ImredError
from .fitsio import image_hdu, merged_header, write_atomic
from .instrument import (
    Instrument,
    airmass_at,
    night_of,
    pointing_to_icrs,
    safe_name,
)
from .nir import combine_mode, exposure_time

COLUMNS = (
    "frame path extension instrument chip imagetype band exptime binning readout_mode "
    "dateobs mjd night target ra dec airmass gain read_noise temperature rotator saturation "
    "nx ny use reason file_bytes file_mtime"
).split()

# Columns of the reads of NIR exposures (instrument file detector.reads): written only
# when some row has them, so that the logs of other cameras are unchanged.
READ_COLUMNS = ("exposure", "read", "read_group", "read_at")

_INCOMPLETE = "incomplete exposure:"

AUTO_REASONS = (
    "unreadable:",
    "not FITS:",
    "truncated:",
    "missing extension:",
    "header:",
    "not reduced:",
    "empty:",
    _INCOMPLETE,
)

# Image types imred reduces; the others (focus, test, other) are logged and left out.
REDUCED_TYPES = ("bias", "dark", "flat", "twilight-flat", "sky-flat", "science", "standard")

_FITS_SUFFIXES = (".fits.fz", ".fits.gz", ".fit.gz", ".fits", ".fit", ".fts", ".fz")


def frame_id(path: str | Path) -> str:
    """The frame id of a raw file: its name without FITS/compression suffixes, path-safe."""
    name = Path(path).name
    for suffix in _FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return safe_name(name)


def find_raw_files(instrument: Instrument, raw_dirs: Iterable[str | Path]) -> list[Path]:
    """All files under the raw folders (recursively) matching the instrument's patterns."""
    found: list[Path] = []
    for d in raw_dirs:
        d = Path(d)
        if not d.is_dir():
            raise ImredError(
                f"raw folder '{d}' does not exist or is not a folder "
                "(set the instrument's 'raw' folders in the config file)"
            )
        for root, dirs, files in os.walk(d, followlinks=True):
            dirs[:] = sorted(x for x in dirs if not x.startswith("."))
            found.extend(Path(root) / f for f in sorted(files) if instrument.wants_file(f))
    return sorted(set(found))


def _data_bytes(header: fits.Header) -> int:
    naxis = header.get("NAXIS", 0)
    if not naxis:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        n *= header.get(f"NAXIS{i}", 0)
    return (
        abs(header.get("BITPIX", 8)) // 8 * header.get("GCOUNT", 1) * (header.get("PCOUNT", 0) + n)
    )


def read_file_rows(path: Path, instrument: Instrument) -> list[dict]:
    """Rows (not yet with night, ICRS pointing or airmass) for one raw file."""
    stat = path.stat()
    base = {
        "frame": frame_id(path),
        "path": str(path),
        "instrument": instrument.name,
        "file_bytes": stat.st_size,
        "file_mtime": f"{stat.st_mtime:.6f}",
    }
    if stat.st_size == 0:
        return [{**base, "use": "no", "reason": "empty: the file has 0 bytes"}]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                hdul.readall()
                rows = _rows_from_hdul(path, hdul, instrument, base, stat.st_size)
    except OSError as err:
        text = str(err)
        if "SIMPLE" in text or "No SIMPLE card" in text or "Empty or corrupt" in text:
            return [{**base, "use": "no", "reason": f"not FITS: {text}"}]
        return [{**base, "use": "no", "reason": f"unreadable: {text}"}]
    except (ValueError, TypeError, KeyError, IndexError) as err:
        return [{**base, "use": "no", "reason": f"unreadable: {type(err).__name__}: {err}"}]
    return rows


def _rows_from_hdul(path, hdul, instrument, base, size) -> list[dict]:
    compressed = path.name.lower().endswith((".gz", ".bz2", ".zip"))
    if not compressed:
        for hdu in hdul:
            if isinstance(hdu, fits.CompImageHDU):
                continue
            need = hdu.fileinfo()["datLoc"] + _data_bytes(hdu.header)
            if need > size:
                return [
                    {
                        **base,
                        "use": "no",
                        "reason": f"truncated: the file has {size} bytes, its headers need {need}",
                    }
                ]
    primary = hdul[0].header
    rows = []
    for chip in instrument.chips:
        if not chip.matches_file(path, primary):
            continue
        row = {**base, "chip": chip.name, "extension": str(chip.extension)}
        hdu = image_hdu(hdul, chip.extension)
        if hdu is None:
            rows.append(
                {
                    **row,
                    "use": "no",
                    "reason": f"missing extension: {chip.extension} (chip {chip.name})",
                }
            )
            continue
        header = merged_header(primary, hdu.header) if hdu is not hdul[0] else hdu.header
        values, problems = instrument.normalise(header, chip)
        reads = instrument.detector.get("reads")
        if reads and str(instrument.chip_value(chip, "kind")).startswith("nir"):
            read_values, read_problems = _read_values(header, reads, values)
            row.update(read_values)
            problems += read_problems
        row.update(values)
        row["nx"] = hdu.header.get("ZNAXIS1", hdu.header.get("NAXIS1"))
        row["ny"] = hdu.header.get("ZNAXIS2", hdu.header.get("NAXIS2"))
        if row.get("target") is not None:
            row["target"] = safe_name(row["target"]) or None
        if problems:
            row["use"], row["reason"] = "no", "header: " + "; ".join(problems)
        elif values["imagetype"] not in REDUCED_TYPES:
            row["use"], row["reason"] = "no", f"not reduced: image type {values['imagetype']}"
        elif not row["nx"] or not row["ny"]:
            row["use"], row["reason"] = "no", f"empty: extension {chip.extension} has no image"
        else:
            row["use"], row["reason"] = "yes", ""
        rows.append(row)
    if not rows:
        return [
            {
                **base,
                "use": "no",
                "reason": "missing extension: no chip of the instrument file matches this file",
            }
        ]
    return rows


def _read_values(header, spec: dict, values: dict) -> tuple[dict, list[str]]:
    """The read columns of one read (``detector.reads``), and problems for the log."""
    out: dict = {}
    problems: list[str] = []
    parts = []
    for kw in spec["group_by"]:
        value = header.get(kw)
        if value is None or str(value).strip() == "":
            problems.append(f"reads: keyword {kw} (detector.reads.group_by) is missing")
        else:
            parts.append(f"{kw}={str(value).strip()}")
    out["exposure"] = ",".join(parts) or None
    index = None
    if spec.get("index"):
        try:
            index = int(float(header[spec["index"]]))
            out["read"] = index
        except (KeyError, TypeError, ValueError):
            problems.append(f"reads: keyword {spec['index']} (the read's index) is missing")
    if spec.get("time"):
        try:
            out["read_at"] = float(header[spec["time"]])
        except (KeyError, TypeError, ValueError):
            problems.append(f"reads: keyword {spec['time']} (the read's time) is missing")
    elif index is not None:
        if values.get("read_time") is None:
            problems.append("reads: no detector.reads.time and no header.read_time")
        else:
            out["read_at"] = index * float(values["read_time"])
    if spec.get("pedestal"):
        ped = spec["pedestal"]
        value = header.get(ped["keyword"])
        clean = str(value).strip().lower()
        if value is not None and clean == str(ped["pedestal"]).strip().lower():
            out["read_group"] = "pedestal"
        elif value is not None and clean == str(ped["signal"]).strip().lower():
            out["read_group"] = "signal"
        else:
            problems.append(
                f"reads: {ped['keyword']}={value!r} is neither the pedestal ({ped['pedestal']}) "
                f"nor the signal ({ped['signal']}) value"
            )
    return out, problems


def exposure_problem(reads: list[dict], kind: str) -> tuple[str, float | None]:
    """Why the reads (rows, in time order) of one exposure cannot be combined, or its exptime.

    Returns ``("", exptime)`` for a complete set (the exposure time of the detector
    kind's combination, :func:`imred.nir.exposure_time`), else ``(reason, None)``.
    """
    n = len(reads)
    if n < 2:
        return f"{n} usable read(s); an exposure needs at least 2", None
    times = [r.get("read_at") for r in reads]
    if any(t is None for t in times):
        return "a read has no read_at", None
    if len(set(times)) < n:
        return (
            "reads with the same time since reset (several exposures in one group? add the "
            "keyword telling them apart to detector.reads.group_by)"
        ), None
    groups = [r.get("read_group") or "" for r in reads]
    n_ped = groups.count("pedestal")
    try:
        mode = combine_mode(kind)
        if mode == "fowler" and n_ped and groups != ["pedestal"] * n_ped + ["signal"] * (n - n_ped):
            return "a pedestal read comes after a signal read", None
        return "", exposure_time(times, mode, n_ped or None)
    except ImredError as err:
        return str(err), None


def _check_exposures(rows: list[dict], instrument: Instrument) -> bool:
    """Mark the reads of incomplete exposures ``use = no``, set complete ones' exptime.

    Only imred's own choices change (``yes`` with no reason, or ``no`` for being
    incomplete); a person's edit stays. Returns whether any row changed.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("exposure"):
            groups.setdefault((r.get("night"), r.get("chip"), r["exposure"]), []).append(r)
    changed = False
    for (_, chip, _), members in groups.items():
        try:
            kind = str(instrument.chip_value(instrument.chip(chip), "kind"))
        except ImredError:
            continue
        auto = [
            r
            for r in members
            if (r.get("use") == "yes" and not r.get("reason"))
            or (r.get("use") == "no" and (r.get("reason") or "").startswith(_INCOMPLETE))
        ]
        live = [r for r in members if r.get("use") == "yes" or any(r is a for a in auto)]
        live.sort(key=lambda r: (r.get("read_at") or 0.0, r["path"]))
        problem, exptime = exposure_problem(live, kind)
        for r in live:
            before = (r.get("use"), r.get("reason"), r.get("exptime"))
            if any(r is a for a in auto):
                r["use"], r["reason"] = (
                    ("no", f"{_INCOMPLETE} {problem}") if problem else ("yes", "")
                )
            if exptime is not None:
                r["exptime"] = round(float(exptime), 9)
            changed |= before != (r.get("use"), r.get("reason"), r.get("exptime"))
    return changed


def _common_name(frames: list[str]) -> str:
    """The frames' common prefix without trailing separators ('' if none)."""
    prefix = frames[0]
    for f in frames[1:]:
        while not f.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("_-.")


def merge_reads(reads: list[dict], frame: str) -> dict:
    """One row for the reads (rows of one exposure x chip): the workflow's frame.

    The first read's row (in time order) with ``frame``, and ``read_paths``,
    ``read_times`` (s since reset) and ``read_groups`` (lists in time order) in place
    of the per-read columns.
    """
    reads = sorted(reads, key=lambda r: (float(r["read_at"]), r["path"]))
    row = {k: v for k, v in reads[0].items() if k not in ("read", "read_at", "read_group")}
    row["frame"] = frame
    row["read_paths"] = [r["path"] for r in reads]
    row["read_times"] = [float(r["read_at"]) for r in reads]
    row["read_groups"] = [r.get("read_group") or "" for r in reads]
    return row


def _merged_names(groups: dict[tuple, list[dict]], taken: set[tuple]) -> dict[tuple, str]:
    """A frame id per exposure (all chips alike): the reads' common prefix, unique per night."""
    names: dict[tuple, str] = {}
    by_exposure: dict[tuple, list[str]] = {}
    for (inst, night, _, exposure), members in groups.items():
        by_exposure.setdefault((inst, night, exposure), []).extend(r["frame"] for r in members)
    for (inst, night, exposure), frames in sorted(by_exposure.items()):
        frames = sorted(set(frames))
        candidate = _common_name(frames) or frames[0]
        if (night, candidate) in taken:
            candidate = frames[0]
        name, n = candidate, 1
        while (night, name) in taken:
            n += 1
            name = f"{candidate}-{n}"
        taken.add((night, name))
        names[(inst, night, exposure)] = name
    return names


def _finish(rows: list[dict], instrument: Instrument) -> None:
    """Add ICRS pointing, night and (where missing) airmass to freshly read rows, in bulk."""
    if not rows:
        return

    def arr(key):
        return np.array([_num(r.get(key)) for r in rows], dtype=float)

    mjd = arr("mjd")
    ra, dec = pointing_to_icrs(arr("ra"), arr("dec"), mjd, instrument.pointing, instrument.site)
    lon = instrument.site["longitude_deg"] if instrument.site else None
    nights = night_of(mjd, lon)
    airmass = arr("airmass")
    if instrument.site is not None:
        missing = ~np.isfinite(airmass)
        if missing.any():
            airmass[missing] = airmass_at(ra[missing], dec[missing], mjd[missing], instrument.site)
    for i, row in enumerate(rows):
        row["ra"] = _round(ra[i], 7)
        row["dec"] = _round(dec[i], 7)
        row["airmass"] = _round(airmass[i], 4)
        row["night"] = nights[i] or "unknown"


def _num(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _round(value, digits):
    return None if not math.isfinite(value) else round(float(value), digits)


def _is_auto(reason: str) -> bool:
    return reason.startswith(AUTO_REASONS)


def _unique_frames(rows: list[dict]) -> None:
    """Make (night, frame) unique: a repeated file name in one night gets -2, -3, ..."""
    taken: dict[tuple[str, str], str] = {}
    new_id: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r["path"]):
        path = row["path"]
        if path not in new_id:
            night, frame = row.get("night") or "", row["frame"]
            candidate, n = frame, 1
            while taken.get((night, candidate), path) != path:
                n += 1
                candidate = f"{frame}-{n}"
            taken[(night, candidate)] = path
            new_id[path] = candidate
        row["frame"] = new_id[path]


def update_obslog(
    instrument: Instrument,
    raw_dirs: Iterable[str | Path],
    log_path: str | Path,
    *,
    force: bool = False,
) -> tuple[list[dict], dict]:
    """Bring the observation log at ``log_path`` up to date with the raw folders.

    Returns ``(rows, stats)`` where ``stats`` counts files ``read``, ``kept``
    (unchanged, not re-read) and ``removed``. The log is written only if it changed,
    atomically (never half-written).
    """
    log_path = Path(log_path)
    files = find_raw_files(instrument, raw_dirs)
    old_rows, old_hash = read_obslog(log_path) if log_path.exists() else ([], None)
    same_inst = old_hash == instrument.hash and not force
    by_path: dict[str, list[dict]] = {}
    for row in old_rows:
        by_path.setdefault(row["path"], []).append(row)

    rows: list[dict] = []
    fresh: list[dict] = []
    stats = {"read": 0, "kept": 0, "removed": 0}
    for path in files:
        stat = path.stat()
        old = by_path.get(str(path))
        if (
            same_inst
            and old
            and str(old[0].get("file_bytes")) == str(stat.st_size)
            and old[0].get("file_mtime") == f"{stat.st_mtime:.6f}"
        ):
            rows.extend(old)
            stats["kept"] += 1
            continue
        new = read_file_rows(path, instrument)
        stats["read"] += 1
        for row in new:
            prev = next((o for o in old or [] if o.get("chip", "") == row.get("chip", "")), None)
            if prev is not None:
                _keep_user_edit(prev, row)
        fresh.extend(new)
    stats["removed"] = len(set(by_path) - {str(p) for p in files})
    _finish(fresh, instrument)
    rows.extend(_typed(r) for r in fresh)
    _unique_frames(rows)
    regrouped = _check_exposures(rows, instrument)
    rows.sort(key=lambda r: (r.get("night") or "", r["path"], r.get("chip") or ""))
    if fresh or stats["removed"] or not log_path.exists() or not same_inst or regrouped:
        write_obslog(rows, log_path, instrument)
    return rows, stats


def _keep_user_edit(prev: dict, row: dict) -> None:
    """Carry a user's edit of ``use``/``reason`` over to a freshly read row.

    imred writes ``yes`` with an empty reason, or ``no`` with a reason from
    :data:`AUTO_REASONS`; every other combination is a person's edit.
    """
    use, reason = prev.get("use", ""), prev.get("reason") or ""
    auto = (use == "yes" and not reason) or (use == "no" and _is_auto(reason))
    if auto:
        return
    row["use"] = use
    if use == "no":
        row["reason"] = reason or "excluded by the user"
    elif _is_auto(reason):
        row["reason"] = f"included by the user despite: {reason}"
    else:
        row["reason"] = reason


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return repr(round(value, 9))
    if isinstance(value, np.floating):
        return _fmt(float(value))
    return str(value).replace("\t", " ").replace("\n", " ")


def write_obslog(rows: list[dict], path: str | Path, instrument: Instrument) -> None:
    """Write the log atomically (never half-written)."""

    columns = list(COLUMNS)
    if any(row.get("exposure") for row in rows):
        columns += READ_COLUMNS

    def write(tmp):
        with open(tmp, "w", newline="") as fh:
            fh.write(
                f"# imred observation log; instrument {instrument.name} "
                f"(file {instrument.source}, hash {instrument.hash})\n"
            )
            fh.write(
                "# Edit 'use' (yes/no) and 'reason' to include or exclude frames, then re-run.\n"
            )
            writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
            writer.writerow(columns)
            for row in rows:
                writer.writerow([_fmt(row.get(c)) for c in columns])

    write_atomic(path, write)


_FLOAT_COLUMNS = {"exptime", "mjd", "ra", "dec", "airmass", "gain", "read_noise", "temperature"}
_FLOAT_COLUMNS |= {"rotator", "saturation"}
_INT_COLUMNS = {"nx", "ny", "file_bytes", "read"}
_FLOAT_COLUMNS |= {"read_at"}


def _typed(row: dict) -> dict:
    """A row as it reads back from disk: numbers as float/int, empty as None, else str."""
    out = {}
    for key in COLUMNS:
        text = _fmt(row.get(key))
        if text == "":
            out[key] = "" if key == "reason" else None
        elif key in _FLOAT_COLUMNS:
            out[key] = float(text)
        elif key in _INT_COLUMNS:
            out[key] = int(float(text))
        else:
            out[key] = text
    for key in READ_COLUMNS:  # only where present (the reads of NIR exposures)
        text = _fmt(row.get(key))
        if text == "":
            continue
        if key in _FLOAT_COLUMNS:
            out[key] = float(text)
        elif key in _INT_COLUMNS:
            out[key] = int(float(text))
        else:
            out[key] = text
    return out


_YES = {"yes", "y", "true", "t", "1"}
_NO = {"no", "n", "false", "f", "0"}


def read_obslog(path: str | Path) -> tuple[list[dict], str | None]:
    """Read a log: ``(rows, instrument_hash)``. Values are strings (empty = unknown).

    ``use`` is normalised to ``yes``/``no``; anything else is an error naming the row.
    """
    path = Path(path)
    inst_hash = None
    try:
        with open(path, newline="") as fh:
            lines = [ln for ln in fh]
    except OSError as err:
        raise ImredError(f"cannot read the observation log '{path}': {err}") from None
    body = []
    for ln in lines:
        if ln.startswith("#"):
            if "hash " in ln:
                inst_hash = ln.rsplit("hash ", 1)[1].strip().rstrip(")")
            continue
        body.append(ln)
    reader = csv.DictReader(body, delimiter="\t")
    missing = [c for c in ("frame", "path", "chip", "use") if c not in (reader.fieldnames or [])]
    if missing:
        raise ImredError(
            f"observation log '{path}' lacks the column(s) {', '.join(missing)}; "
            "delete it to have it rebuilt"
        )
    rows = []
    for n, row in enumerate(reader, start=len(lines) - len(body) + 2):
        use = (row.get("use") or "").strip().lower()
        if use in _YES:
            row["use"] = "yes"
        elif use in _NO:
            row["use"] = "no"
        else:
            raise ImredError(
                f"observation log '{path}', line {n} (frame {row.get('frame')}): "
                f"use = {row.get('use')!r}; write yes or no"
            )
        rows.append(_typed(row))
    return rows, inst_hash


def usable(rows: Iterable[dict]) -> list[dict]:
    """The rows with ``use = yes``, one per frame x chip: what the workflow reduces.

    The usable reads of each NIR exposure x chip become one row (:func:`merge_reads`),
    in the place of its first read, with one frame id for all chips of the exposure:
    the reads' common frame-id prefix (``ioi_20240315_0007`` for
    ``ioi_20240315_0007_1_1`` ...), or the first read's where that is not unique in the
    night. An exposure with fewer than 2 usable reads is left out.
    """
    out: list = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("use") != "yes":
            continue
        if r.get("exposure"):
            key = (r.get("instrument"), r.get("night"), r.get("chip"), r["exposure"])
            if key not in groups:
                groups[key] = []
                out.append(key)
            groups[key].append(r)
        else:
            out.append(r)
    if not groups:
        return out
    taken = {(r.get("night"), r["frame"]) for r in out if isinstance(r, dict)}
    names = _merged_names(groups, taken)
    merged = []
    for item in out:
        if isinstance(item, dict):
            merged.append(item)
            continue
        reads = groups[item]
        if len(reads) < 2 or any(r.get("read_at") is None for r in reads):
            continue
        merged.append(merge_reads(reads, names[(item[0], item[1], item[3])]))
    return merged


def format_summary(rows: list[dict]) -> str:
    """A short plain-text summary of a log: frames per night, type and band; exclusions."""
    counts: dict[tuple, int] = {}
    frames: dict[tuple, set] = {}
    for r in usable(rows):
        key = (r.get("night") or "", r.get("imagetype") or "", r.get("band") or "-")
        frames.setdefault(key, set()).add(r["frame"])
        counts[key] = len(frames[key])
    lines = [f"{'night':<10} {'type':<14} {'band':<8} frames"]
    lines += [f"{k[0]:<10} {k[1]:<14} {k[2]:<8} {v}" for k, v in sorted(counts.items())]
    excluded = [r for r in rows if r.get("use") == "no"]
    if excluded:
        lines.append(f"excluded ({len(excluded)} rows):")
        lines += [f"  {r['path']} [{r.get('chip') or '-'}]: {r.get('reason')}" for r in excluded]
    return "\n".join(lines)
