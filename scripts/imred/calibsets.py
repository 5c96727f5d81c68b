"""Which calibration frames make which master, and which master calibrates which frame.

Grouping is data (the instrument file's ``calibration`` block): a master is made per
night, chip and *setup* (binning and readout mode: ``"1x1_normal"``), and per band
for flats. A night that lacks enough frames of a kind (``calibration.min_frames``)
borrows the master of the nearest night within ``night_window_days`` that has them
(ties go to the earlier night); the choice is recorded in the calibrated frame's
header. Dark frames are kept only within ``temperature_tolerance`` of their group's
median temperature.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from .instrument import Instrument, safe_name

FLAT_TYPES = ("flat", "twilight-flat", "sky-flat")
SCIENCE_TYPES = ("science", "standard")


def setup_of(row: dict) -> str:
    """The setup token of a frame: binning and readout mode (path-safe)."""
    return f"{row.get('binning') or '1x1'}_{safe_name(row.get('readout_mode') or 'default')}"


def _date(night: str) -> dt.date:
    return dt.datetime.strptime(night, "%Y%m%d").date()


class CalibrationPlan:
    """Calibration groups of one instrument's usable observation-log rows.

    Parameters
    ----------
    rows : list of dict
        Usable rows of one instrument (all nights: a night may borrow from another).
    instrument : Instrument
    window_days : float
        How far (in nights) to look for a night with calibrations.
    flat_types : sequence of str
        Image types accepted as flats, in order of preference; per group the first
        type with enough frames is used.
    """

    def __init__(
        self,
        rows: Iterable[dict],
        instrument: Instrument,
        window_days: float,
        flat_types: Iterable[str] = FLAT_TYPES,
    ):
        self.instrument = instrument
        self.window = window_days
        cal = instrument.calibration
        self.min_frames = {"bias": 3, "dark": 3, "flat": 3, **cal.get("min_frames", {})}
        self.temp_tol = cal.get("temperature_tolerance")
        self.flat_types = tuple(flat_types)
        self.groups: dict[tuple, list[dict]] = defaultdict(list)
        for r in rows:
            kind = r["imagetype"]
            key = (r["night"], r["chip"], setup_of(r))
            if kind == "bias":
                self.groups[("bias", *key, None)].append(r)
            elif kind == "dark":
                self.groups[("dark", *key, None)].append(r)
            elif kind in self.flat_types and r.get("band"):
                self.groups[(kind, *key, r["band"])].append(r)
        for key, members in list(self.groups.items()):
            if key[0] == "dark":
                self.groups[key] = self._temperature_cut(members)
        self._nights = sorted({k[1] for k in self.groups})

    def _temperature_cut(self, rows: list[dict]) -> list[dict]:
        temps = [r["temperature"] for r in rows if r.get("temperature") is not None]
        if self.temp_tol is None or not temps:
            return rows
        centre = float(np.median(temps))
        return [
            r
            for r in rows
            if r.get("temperature") is None or abs(r["temperature"] - centre) <= self.temp_tol
        ]

    def frames(self, kind: str, night: str, chip: str, setup: str, band: str | None = None):
        """The frames of one master (flats: of the preferred flat type with enough frames)."""
        if kind == "flat":
            for ftype in self.flat_types:
                members = self.groups.get((ftype, night, chip, setup, band), [])
                if len(members) >= self.min_frames["flat"]:
                    return members
            return []
        return self.groups.get((kind, night, chip, setup, None), [])

    def has_master(self, kind, night, chip, setup, band=None) -> bool:
        return len(self.frames(kind, night, chip, setup, band)) >= self.min_frames[kind]

    def master_night(self, kind: str, night: str, chip: str, setup: str, band=None) -> str | None:
        """The night whose master of this kind calibrates frames of ``night`` (or None)."""
        target = _date(night)
        best = None
        for other in self._nights:
            gap = abs((_date(other) - target).days)
            if gap > self.window or not self.has_master(kind, other, chip, setup, band):
                continue
            rank = (gap, _date(other))
            if best is None or rank < best[0]:
                best = (rank, other)
        return best[1] if best else None

    def masters(self, kind: str) -> list[tuple]:
        """Every (night, chip, setup, band) for which a master of ``kind`` can be made."""
        out = set()
        for key in self.groups:
            k, night, chip, setup, band = key
            of_kind = (kind == "flat" and k in self.flat_types) or k == kind
            if of_kind and self.has_master(kind, night, chip, setup, band):
                out.add((night, chip, setup, band))
        return sorted(out, key=lambda t: tuple(x or "" for x in t))
