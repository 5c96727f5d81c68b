"""What one run reduces: the validated configuration, its instruments and observation logs.

:class:`Run` is what the Snakefile builds once at start: it validates the config,
loads each instrument file, brings each observation log up to date (reading only
new or changed raw files) and answers the workflow's questions (which nights,
frames, chips; the wildcard constraints). It does not import snakemake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from . import paths
from .calibsets import SCIENCE_TYPES, CalibrationPlan, setup_of
from .config import load_config
from .errors import ImredError
from .instrument import Instrument, load_instrument
from .obslog import read_obslog, update_obslog, usable
from .targets import assign_targets, mean_direction


class Run:
    """The plan of a run; see the module docstring.

    Parameters
    ----------
    config : dict
        The configuration as loaded from YAML (validated here).
    source : str
        Where the configuration came from, for messages.
    update_logs : bool
        Scan the raw folders and update the logs (True), or only read existing logs.
    """

    def __init__(self, config: dict, source: str = "config", *, update_logs: bool = True):
        self.config = load_config(config, source)
        self.instruments: dict[str, Instrument] = {}
        self.rows: dict[str, list[dict]] = {}
        self.excluded: dict[str, list[dict]] = {}
        self.log_stats: dict[str, dict] = {}
        self._index: dict[tuple, dict] | None = None
        self.plans: dict[str, CalibrationPlan] = {}
        self._masters: dict[tuple, dict] = {}
        for name, spec in self.config["instruments"].items():
            inst = load_instrument(spec.get("instrument_file", name))
            if inst.name != name:
                raise ImredError(
                    f"{source}: instruments.{name} uses the instrument file {inst.source}, "
                    f"whose name is '{inst.name}'; the two must agree"
                )
            self.instruments[name] = inst
            log = paths.OBSLOG.format(instrument=name)
            for folder in spec["raw"]:
                if update_logs and not Path(folder).is_dir():
                    raise ImredError(
                        f"{source}: instruments.{name}.raw names '{folder}', which is not a "
                        f"folder (relative paths start at {Path.cwd()}); fix the path"
                        + (
                            " or run `make demo` to simulate the demo night"
                            if name == "demo"
                            else ""
                        )
                    )
            if update_logs:
                rows, stats = update_obslog(inst, spec["raw"], log)
            else:
                if not Path(log).exists():
                    raise ImredError(f"the observation log {log} does not exist yet")
                rows, _ = read_obslog(log)
                stats = {}
            self.log_stats[name] = stats
            keep = set(spec.get("nights") or [])
            cal = self.config["calibration"]
            self.plans[name] = CalibrationPlan(
                usable(rows), inst, cal["night_window_days"], cal["flat"]["types"]
            )
            rows = [r for r in rows if not keep or r.get("night") in keep]
            self.rows[name] = usable(rows)
            self.excluded[name] = [r for r in rows if r.get("use") != "yes"]
            science = self.science_rows(name)
            radius = self.config["targets"]["group_radius_arcmin"]
            radius_deg = radius / 60 if radius else self._reach_deg(name, science)
            assign_targets(science, radius_deg, self.config["targets"]["group_by"])

    def log_report(self, instrument: str, max_lines: int = 10) -> str:
        """What an update of the log found: counts, and the reasons of excluded rows."""
        stats = self.log_stats[instrument]
        excluded = self.excluded[instrument]
        lines = [
            f"imred: observation log {paths.OBSLOG.format(instrument=instrument)}: "
            f"{stats['read']} files read, {stats['kept']} unchanged, {stats['removed']} removed; "
            f"{len(self.rows[instrument])} frame x chip rows in use, {len(excluded)} excluded "
            "(see the 'reason' column)"
        ]
        for r in excluded[:max_lines]:
            lines.append(f"imred:   excluded {r['path']} [{r.get('chip') or '-'}]: {r['reason']}")
        if len(excluded) > max_lines:
            lines.append(f"imred:   ... and {len(excluded) - max_lines} more")
        return "\n".join(lines)

    # ------------------------------------------------------------------ queries
    def select(self, instrument: str | None = None, **match) -> list[dict]:
        """Usable rows, optionally filtered by equality on any column (``imagetype=...``)."""
        names = [instrument] if instrument else list(self.rows)
        out = []
        for name in names:
            for row in self.rows.get(name, []):
                if all(row.get(k) == v for k, v in match.items()):
                    out.append(row)
        return out

    def row(self, instrument: str, night: str, frame: str, chip: str) -> dict:
        """The one row of a frame x chip (an error if there is none)."""
        if self._index is None:
            self._index = {
                (name, r["night"], r["frame"], r["chip"]): r
                for name, rows in self.rows.items()
                for r in rows
            }
        found = self._index.get((instrument, night, frame, chip))
        if found is None:
            raise ImredError(
                f"no usable frame {frame} chip {chip} of {instrument} on night {night} "
                f"in {paths.OBSLOG.format(instrument=instrument)}"
            )
        return found

    def excluded_rows(self, instrument: str, night: str) -> list[dict]:
        """Log rows of a night with ``use = no`` (path, chip, reason)."""
        return [
            {k: r.get(k) for k in ("path", "chip", "reason")}
            for r in self.excluded[instrument]
            if r.get("night") == night
        ]

    def nights(self, instrument: str) -> list[str]:
        return sorted({r["night"] for r in self.rows[instrument]})

    def frame_chips(self, instrument: str, night: str) -> list[tuple[str, str]]:
        """(frame, chip) pairs of a night, in log order."""
        return [(r["frame"], r["chip"]) for r in self.select(instrument, night=night)]

    # ------------------------------------------------------------- calibration
    def science_rows(self, instrument: str) -> list[dict]:
        """Rows to calibrate: science and standard frames of the selected nights."""
        return [r for r in self.rows[instrument] if r["imagetype"] in SCIENCE_TYPES]

    def master_path(self, kind, instrument, night, chip, setup, band=None) -> str:
        template = {"bias": paths.MASTER_BIAS, "dark": paths.MASTER_DARK}.get(
            kind, paths.MASTER_FLAT
        )
        return template.format(
            instrument=instrument, night=night, chip=chip, setup=setup, band=band
        )

    def master_frames(self, kind, instrument, night, chip, setup, band=None) -> list[dict]:
        return self.plans[instrument].frames(kind, night, chip, setup, band)

    def _resolve(self, kind, instrument, night, chip, setup, band) -> tuple[str | None, str]:
        """(master path or None, problem or '') for one kind of master of a frame."""
        cal = self.config["calibration"]
        if not cal[kind]["enabled"]:
            return None, ""
        found = self.plans[instrument].master_night(kind, night, chip, setup, band)
        if found is not None:
            return self.master_path(kind, instrument, found, chip, setup, band), ""
        if kind == "bias" and self._is_nir(instrument, chip):
            return None, ""  # read differences and the dark take out the bias
        fix = {
            "bias": "calibration.bias.allow_overscan_only",
            "flat": "calibration.flat.allow_missing",
        }.get(kind)
        if fix is None or cal[kind][fix.rsplit(".", 1)[1]]:
            return None, ""  # darks are optional; or the config allows going without
        what = f"{kind} frames" + (f" in band {band}" if kind == "flat" and band else "")
        return None, (
            f"no {what} for {instrument} chip {chip} setup {setup} within "
            f"{cal['night_window_days']} nights of {night}: add some, widen "
            f"calibration.night_window_days, or set {fix}: true"
        )

    def masters_for(
        self, instrument, night, chip, setup, band, kinds=("bias", "dark", "flat")
    ) -> dict:
        """``{kind: master path}`` for a frame (the kinds available and enabled).

        Raises :class:`MissingCalibrationError` (an ImredError) listing what is missing.
        """
        key = (instrument, night, chip, setup, band, tuple(kinds))
        if key not in self._masters:
            found = {k: self._resolve(k, *key[:5]) for k in kinds}
            problems = [why for _, why in found.values() if why]
            if problems:
                raise MissingCalibrationError(problems)
            self._masters[key] = {k: path for k, (path, _) in found.items() if path}
        return self._masters[key]

    def frame_masters(self, instrument, night, frame, chip) -> dict:
        row = self.row(instrument, night, frame, chip)
        return self.masters_for(instrument, night, chip, setup_of(row), row.get("band"))

    def _is_nir(self, instrument: str, chip: str) -> bool:
        inst = self.instruments[instrument]
        kind = inst.chip_value(inst.chip(chip), "kind") or inst.detector["kind"]
        return str(kind).startswith("nir")

    def check_calibrations(self) -> None:
        """Resolve the masters of every frame to calibrate: all problems in one error."""
        problems: list[str] = []
        for name in self.rows:
            for r in self.science_rows(name):
                try:
                    self.frame_masters(name, r["night"], r["frame"], r["chip"])
                except MissingCalibrationError as err:
                    problems.extend(err.problems)
        if problems:
            raise MissingCalibrationError(list(dict.fromkeys(problems)))

    # ------------------------------------------------------------------ fields
    def targets(self, instrument: str) -> list[str]:
        """Targets of the science frames of the selected nights."""
        return sorted({r["target"] for r in self.science_rows(instrument) if r.get("target")})

    def field(self, instrument: str, target: str, margin_deg: float = 0.0) -> dict:
        """Centre (ICRS deg), radius covering every frame of a target, and mean epoch."""
        import numpy as np

        rows = [r for r in self.science_rows(instrument) if r.get("target") == target]
        ra = np.array([r["ra"] for r in rows if r.get("ra") is not None], dtype=float)
        dec = np.array([r["dec"] for r in rows if r.get("dec") is not None], dtype=float)
        if ra.size == 0:
            raise ImredError(
                f"target {target} of {instrument}: no frame has a pointing (RA/Dec keywords)"
            )
        ra_m, dec_m = mean_direction(ra, dec)
        # the centre of the pointings' bounding box (not their mean: a frame added inside
        # the footprint must not move the field), in small-angle offsets from the mean
        dx = ((ra - ra_m + 180) % 360 - 180) * np.cos(np.radians(dec_m))
        dy = dec - dec_m
        cx, cy = (dx.min() + dx.max()) / 2, (dy.min() + dy.max()) / 2
        dec0 = dec_m + cy
        ra0 = (ra_m + cx / np.cos(np.radians(dec0))) % 360
        spread = float(np.hypot(dx - cx, dy - cy).max())
        reach = self._reach_deg(instrument, rows)
        mjd = np.array([r["mjd"] for r in rows if r.get("mjd") is not None], dtype=float)
        epoch = float(2000.0 + (mjd.mean() - 51544.5) / 365.25) if mjd.size else None
        # rounded (centre to 1', radius up to 1', epoch to 0.1 yr) so that frames added
        # inside the footprint leave the field, its catalog and everything after alone
        step = 1 / 60
        radius = float(spread + reach + margin_deg + step)  # covers the centre's rounding
        return {
            "ra": round(round(ra0 / step) * step, 6),
            "dec": round(round(dec0 / step) * step, 6),
            "radius": round(float(np.ceil(radius / step) * step), 6),
            "epoch": round(epoch, 1) if epoch is not None else None,
        }

    def _reach_deg(self, instrument: str, rows: list[dict]) -> float:
        """How far the camera's pixels reach from its pointing (deg): half its field."""
        import numpy as np

        inst = self.instruments[instrument]
        nx = max((int(r["nx"] or 0) for r in rows), default=0)
        ny = max((int(r["ny"] or 0) for r in rows), default=0)
        reach = 0.0
        for chip in inst.chips:
            scale = inst.chip_value(chip, "pixel_scale") or 1.0
            offset = np.hypot(*chip.geometry.get("offset_arcsec", [0.0, 0.0]))
            reach = max(reach, (offset + 0.5 * np.hypot(nx, ny) * scale) / 3600.0)
        return float(reach)

    def previous_master(self, kind, instrument, night, chip, setup, band=None) -> str | None:
        """The master of the same group from the nearest earlier night, if any."""
        earlier = [
            n
            for (n, c, s, b) in self.plans[instrument].masters(kind)
            if c == chip and s == setup and b == band and n < night
        ]
        if not earlier:
            return None
        return self.master_path(kind, instrument, max(earlier), chip, setup, band)

    def night_masters(self, instrument: str, night: str) -> list[tuple]:
        """(kind, chip, setup, band) of every master made from this night's frames."""
        out = []
        for kind in ("bias", "dark", "flat"):
            if not self.config["calibration"][kind]["enabled"]:
                continue
            for n, chip, setup, band in self.plans[instrument].masters(kind):
                if n == night:
                    out.append((kind, chip, setup, band))
        return out

    def wildcard_constraints(self) -> dict[str, str]:
        """Regular expressions matching exactly the values in the logs (escaped)."""
        values: dict[str, set] = {k: set() for k in ("instrument", "night", "frame", "chip")}
        values["band"] = set()
        values["target"] = set()
        values["setup"] = set()
        for name, rows in self.rows.items():
            values["instrument"].add(name)
            values["chip"].update(c.name for c in self.instruments[name].chips)
            for r in rows:
                for key in ("night", "frame", "band", "target"):
                    if r.get(key):
                        values[key].add(r[key])
                values["setup"].add(setup_of(r))
            for plan_key in self.plans[name].groups:
                values["night"].add(plan_key[1])
                values["setup"].add(plan_key[3])
                if plan_key[4]:
                    values["band"].add(plan_key[4])
        return {k: _alternation(v) for k, v in values.items()}


class MissingCalibrationError(ImredError):
    """Frames that cannot be calibrated; ``problems`` has one line per missing group."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\nimred: ".join(problems))


def _alternation(values: Iterable[str]) -> str:
    values = sorted(values, key=lambda v: (-len(v), v))
    if not values:
        return "(?!)"  # matches nothing
    return "|".join(re.escape(v) for v in values)
