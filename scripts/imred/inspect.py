"""First look at raw frames: pixel statistics per frame x chip, and a night summary.

:func:`inspect_chip` measures what an observer checks first on a raw frame: the
level and clipped noise of the illuminated pixels, each amplifier's overscan level
and noise, the fraction of saturated pixels, and flags for frames that are empty,
constant or badly saturated. :func:`night_summary` turns those numbers and the
observation log into a Markdown page.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import sigma_clipped_stats

from .instrument import Chip
from .sections import parse_section


def _stats(values: np.ndarray, clip_sigma: float) -> dict:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": 0}
    mean, median, std = sigma_clipped_stats(finite, sigma=clip_sigma, maxiters=5)
    return {
        "n": int(finite.size),
        "median": float(np.median(finite)),
        "clipped_median": float(median),
        "clipped_mean": float(mean),
        "clipped_std": float(std),
        "min": float(finite.min()),
        "max": float(finite.max()),
    }


def inspect_chip(
    data: np.ndarray,
    chip: Chip,
    binning: tuple[int, int],
    saturation: float,
    *,
    clip_sigma: float = 3.0,
    saturated_fraction_warn: float = 1e-3,
) -> dict:
    """Statistics of one raw chip (ADU, before any correction).

    Parameters
    ----------
    data : ndarray (ny, nx)
        Raw pixels as read (BZERO applied).
    chip
        The chip's description from the instrument file (data and overscan sections).
    binning : (bx, by)
        Binning of the frame; sections in the instrument file are unbinned.
    saturation : float
        Raw saturation level (ADU).

    Returns
    -------
    dict
        ``data`` (statistics of the illuminated pixels), ``overscan`` (per amplifier),
        ``saturated_fraction`` and ``flags`` (a list of short messages).
    """
    ny, nx = data.shape
    datasec = chip.datasec or f"[1:{nx},1:{ny}]"
    rows, cols = parse_section(datasec, binning)
    pixels = data[rows, cols]
    out: dict = {"shape": [ny, nx], "datasec": datasec, "data": _stats(pixels, clip_sigma)}
    out["overscan"] = {}
    for i, amp in enumerate(chip.amplifiers):
        if amp.get("overscan"):
            r, c = parse_section(amp["overscan"], binning)
            out["overscan"][amp.get("name") or str(i + 1)] = _stats(data[r, c], clip_sigma)
    finite = np.isfinite(pixels)
    sat = float(np.count_nonzero(pixels[finite] >= saturation)) / max(pixels.size, 1)
    out["saturated_fraction"] = sat
    flags = []
    if not finite.all():
        flags.append(f"{int((~finite).sum())} non-finite pixels")
    if out["data"].get("n", 0) == 0:
        flags.append("no finite pixels")
    elif out["data"]["max"] == out["data"]["min"]:
        flags.append(f"constant image (all {out['data']['min']:g})")
    if sat > saturated_fraction_warn:
        flags.append(f"saturated fraction {sat:.2e} above {saturated_fraction_warn:g}")
    out["flags"] = flags
    return out


def _cell(value, fmt: str) -> str:
    if value is None or value == "":
        return "-"
    try:
        return format(float(value), fmt)
    except (TypeError, ValueError):
        return str(value)


def night_summary(
    instrument: str, night: str, rows: list[dict], reports: list[dict], excluded: list[dict]
) -> str:
    """A Markdown page for one night: frames by type and band, raw statistics, exclusions.

    ``rows`` are the night's usable observation-log rows, ``reports`` the matching
    :func:`inspect_chip` results (same order), ``excluded`` the log rows with ``use = no``.
    """
    lines = [f"# {instrument}, night {night}", ""]
    counts: dict[tuple, set] = {}
    for r in rows:
        counts.setdefault((r["imagetype"], r.get("band") or "-"), set()).add(r["frame"])
    lines += ["| image type | band | frames |", "|---|---|---|"]
    lines += [f"| {t} | {b} | {len(f)} |" for (t, b), f in sorted(counts.items())]
    lines += ["", "## Raw statistics (ADU)", ""]
    lines += [
        "| frame | chip | type | band | exptime (s) | target | airmass | median | clipped std "
        "| overscan | saturated | flags |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, rep in zip(rows, reports, strict=True):
        d = rep["data"]
        over = ", ".join(f"{s['median']:.1f}" for s in rep["overscan"].values() if s.get("n"))
        lines.append(
            f"| {r['frame']} | {r['chip']} | {r['imagetype']} | {r.get('band') or '-'} "
            f"| {_cell(r.get('exptime'), 'g')} | {r.get('target') or '-'} "
            f"| {_cell(r.get('airmass'), '.3f')} | {_cell(d.get('median'), '.1f')} "
            f"| {_cell(d.get('clipped_std'), '.2f')} | {over or '-'} "
            f"| {rep['saturated_fraction']:.1e} | {'; '.join(rep['flags']) or '-'} |"
        )
    if excluded:
        lines += ["", "## Excluded", "", "| file | chip | reason |", "|---|---|---|"]
        lines += [
            f"| {r['path']} | {r.get('chip') or '-'} | {r.get('reason') or '-'} |" for r in excluded
        ]
    return "\n".join(lines) + "\n"
