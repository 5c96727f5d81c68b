# Shared set-up: validate the config, bring the observation logs up to date, and
# thin input functions. The logic lives in scripts/imred (the library).
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from imred import paths
from imred.codehash import code_hash
from imred.errors import ImredError
from imred.nir import combine_mode
from imred.run import Run
from imred.schema import read_yaml

try:
    RUN = Run(config, source=" + ".join(map(str, workflow.configfiles)) or "config")
except ImredError as err:
    sys.exit(f"imred: {err}")

for _name, _stats in RUN.log_stats.items():
    if _stats.get("read") or _stats.get("removed"):
        print(RUN.log_report(_name), file=sys.stderr)


wildcard_constraints:
    **RUN.wildcard_constraints(),


def code(script):
    """Hash of a job script and the library code it runs (as params, edits re-run it)."""
    return code_hash(str(Path(workflow.basedir) / "scripts" / script))


# Log columns that describe the file on disk, not the frame: they do not reach params.
_FILE_COLUMNS = ("file_bytes", "file_mtime", "path", "read_paths")


def all_targets():
    """What `snakemake` builds by default: summaries, calibrated frames, QA, coadd catalogs."""
    summaries = [
        paths.NIGHT_SUMMARY.format(instrument=inst, night=night)
        for inst in RUN.rows
        for night in RUN.nights(inst)
    ]
    return (
        summaries
        + calibrated_targets()
        + master_qa_targets()
        + frame_qa_targets()
        + coadd_targets()
    )


def frame_row(wildcards):
    """The observation-log row of a frame x chip (for params)."""
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    return {k: v for k, v in row.items() if k not in _FILE_COLUMNS}


def raw_path(wildcards):
    return RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )["path"]


_CHIP_SPECS = {
    (name, chip.name): asdict(chip)
    for name, inst in RUN.instruments.items()
    for chip in inst.chips
}


def chip_spec(wildcards):
    """The chip's description from the instrument file (so a change re-runs that chip only)."""
    return _CHIP_SPECS[(wildcards.instrument, wildcards.chip)]


def night_inspections(wildcards):
    return [
        paths.INSPECT.format(
            instrument=wildcards.instrument,
            night=wildcards.night,
            frame=frame,
            chip=chip,
        )
        for frame, chip in RUN.frame_chips(wildcards.instrument, wildcards.night)
    ]


def night_rows(wildcards):
    return [
        {k: v for k, v in r.items() if k not in _FILE_COLUMNS}
        for r in RUN.select(wildcards.instrument, night=wildcards.night)
    ]


def night_excluded(wildcards):
    return RUN.excluded_rows(wildcards.instrument, wildcards.night)


def mem_mb_per_frame(wildcards, attempt):
    """Memory for a per-frame job: ~8 float32 copies of the chip (from the log), more on retry."""
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    pixels = (row["nx"] or 4096) * (row["ny"] or 4096)
    return int(max(512, 8 * 4 * pixels / 1e6) * attempt)


# ------------------------------------------------------------------ calibration
try:
    RUN.check_calibrations()
except ImredError as err:
    sys.exit(f"imred: {err}")

CAL = RUN.config["calibration"]


def calib_settings(*keys):
    """The calibration settings a job reads, as params (a change of one re-runs it)."""
    return {key: CAL[key] for key in keys}


def detector_spec(wildcards):
    """How the chip's detector is corrected: non-linearity and NIR reference pixels."""
    inst = RUN.instruments[wildcards.instrument]
    chip = inst.chip(wildcards.chip)
    nonlinearity = (
        inst.detector.get("nonlinearity") if CAL["nonlinearity"]["enabled"] else None
    )
    kind = inst.chip_value(chip, "kind") or inst.detector["kind"]
    width = inst.detector.get("reference_pixels") or 0
    reference = None
    if kind.startswith("nir") and width and CAL["reference_pixels"]["enabled"]:
        reference = {
            "mode": CAL["reference_pixels"]["mode"],
            "smooth_sigma": CAL["reference_pixels"]["smooth_sigma"],
            "width": width,
            "outputs": inst.detector.get("outputs") or 1,
        }
    spec = {"nonlinearity": nonlinearity, "reference": reference}
    if kind.startswith("nir") and inst.detector.get("reads"):
        # exposures written as reads: how they are combined (imred.nir.combine_mode)
        spec["combine"] = combine_mode(kind, CAL["nir"]["combine"])
    return spec


def _master_key(kind, wildcards):
    band = wildcards.band if kind == "flat" else None
    return (
        kind,
        wildcards.instrument,
        wildcards.night,
        wildcards.chip,
        wildcards.setup,
        band,
    )


def _master_rows(kind, wildcards):
    return RUN.master_frames(*_master_key(kind, wildcards))


def master_raw(kind):
    def raw_files(wildcards):
        return [
            p
            for r in _master_rows(kind, wildcards)
            for p in (r.get("read_paths") or [r["path"]])
        ]

    return raw_files


def master_rows(kind):
    def rows(wildcards):
        return [
            {k: v for k, v in r.items() if k not in _FILE_COLUMNS}
            | {"path": r["path"]}
            | ({"read_paths": r["read_paths"]} if r.get("read_paths") else {})
            for r in _master_rows(kind, wildcards)
        ]

    return rows


def master_needs(kinds):
    """The masters a master needs (a dark needs a bias; a flat a bias and a dark)."""

    def needs(wildcards):
        return RUN.masters_for(
            wildcards.instrument,
            wildcards.night,
            wildcards.chip,
            wildcards.setup,
            None,
            kinds=kinds,
        )

    return needs


def flat_limits(wildcards):
    cal = RUN.instruments[wildcards.instrument].calibration
    return {
        "flat_level": cal.get("flat_level", [0.2, 0.8]),
        "min_frames": RUN.plans[wildcards.instrument].min_frames["flat"],
    }


def calibrate_inputs(wildcards):
    """The raw file (the list of its reads for a NIR exposure) and the frame's masters."""
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    raw = row.get("read_paths") or row["path"]
    return {"raw": raw} | RUN.frame_masters(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )


def mem_mb_calibrate(wildcards, attempt):
    """A per-frame job's memory, more for an exposure's reads (float64, twice)."""
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    n_reads = len(row.get("read_paths") or [])
    pixels = (row["nx"] or 4096) * (row["ny"] or 4096)
    extra = 2 * 8 * n_reads * pixels / 1e6 * attempt
    return int(mem_mb_per_frame(wildcards, attempt) + extra)


_REGIONS = (
    read_yaml(CAL["bad_pixels"]["regions"], "calibration.bad_pixels.regions file")
    if CAL["bad_pixels"]["regions"]
    else {}
)


def user_regions(wildcards):
    """The user's bad regions of this chip (from calibration.bad_pixels.regions)."""
    return (_REGIONS or {}).get(wildcards.chip, {})


def calibrated_targets():
    return [
        paths.CALIBRATED.format(
            instrument=inst, night=r["night"], frame=r["frame"], chip=r["chip"]
        )
        for inst in RUN.rows
        for r in RUN.science_rows(inst)
    ]


def master_qa_targets():
    return [
        paths.MASTER_QA.format(instrument=inst, night=night)
        for inst in RUN.rows
        for night in RUN.nights(inst)
        if RUN.night_masters(inst, night)
    ]


def night_master_list(wildcards):
    """(kind, chip, setup, band, path, previous path) of every master of a night."""
    out = []
    for kind, chip, setup, band in RUN.night_masters(
        wildcards.instrument, wildcards.night
    ):
        key = (wildcards.instrument, wildcards.night, chip, setup, band)
        previous = RUN.previous_master(kind, *key)
        out.append(
            {
                "kind": kind,
                "chip": chip,
                "setup": setup,
                "band": band,
                "path": RUN.master_path(kind, *key),
                "previous": previous,
            }
        )
    return out


def night_master_files(wildcards):
    files = []
    for m in night_master_list(wildcards):
        files.append(m["path"])
        if m["previous"]:
            files.append(m["previous"])
    return files


def instrument_parameters(wildcards):
    """Gain and read noise per chip as the observation log has them (for master QA)."""
    out = {}
    for r in RUN.select(wildcards.instrument, night=wildcards.night):
        out.setdefault(r["chip"], {"gain": r["gain"], "read_noise": r["read_noise"]})
    return out


def mem_mb_master(kind):
    """Memory for a master: its frames in float32 three times over, more on retry."""

    def mem_mb(wildcards, attempt):
        rows = _master_rows(kind, wildcards)
        pixels = sum((r["nx"] or 4096) * (r["ny"] or 4096) for r in rows)
        return int(max(1024, 3 * 4 * pixels / 1e6) * attempt)

    return mem_mb


# ------------------------------------------------------------------ first light
REFCAT_SETTINGS = RUN.config["reference_catalog"]


def refcat_inputs(wildcards):
    """The catalog file, when the reference catalog is a file (an edit re-runs)."""
    return [REFCAT_SETTINGS["file"]] if REFCAT_SETTINGS["source"] == "file" else []


def target_field(wildcards):
    return RUN.field(
        wildcards.instrument, wildcards.target, REFCAT_SETTINGS["margin_deg"]
    )


def frame_refcat(wildcards):
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    return paths.REFCAT.format(instrument=wildcards.instrument, target=row["target"])


def band_mag_column(wildcards):
    """The catalog magnitude a frame's band is calibrated against."""
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    return mag_column_of(row.get("band") or "")


def mag_column_of(band):
    return REFCAT_SETTINGS["bands"].get(band, f"{band}_mag")


def pixel_scale(wildcards):
    inst = RUN.instruments[wildcards.instrument]
    row = RUN.row(
        wildcards.instrument, wildcards.night, wildcards.frame, wildcards.chip
    )
    binning = int(str(row.get("binning") or "1x1").split("x")[0])
    return inst.chip_value(inst.chip(wildcards.chip), "pixel_scale") * binning


def frame_products(template):
    """One product per science frame x chip of a night."""

    def products(wildcards):
        return [
            template.format(
                instrument=wildcards.instrument,
                night=wildcards.night,
                frame=r["frame"],
                chip=r["chip"],
            )
            for r in RUN.science_rows(wildcards.instrument)
            if r["night"] == wildcards.night
        ]

    return products


def night_science_rows(wildcards):
    return [
        {k: v for k, v in r.items() if k not in _FILE_COLUMNS}
        for r in RUN.science_rows(wildcards.instrument)
        if r["night"] == wildcards.night
    ]


def frame_qa_targets():
    return [
        paths.FRAME_QA.format(instrument=inst, night=night)
        for inst in RUN.rows
        for night in sorted({r["night"] for r in RUN.science_rows(inst)})
    ]


def optics_spec(wildcards):
    """What the initial WCS depends on in the instrument file (a change re-solves)."""
    inst = RUN.instruments[wildcards.instrument]
    chip = inst.chip(wildcards.chip)
    return {
        "pixel_scale": inst.chip_value(chip, "pixel_scale"),
        "rotator": inst.rotator,
        "geometry": chip.geometry,
    }


# ------------------------------------------------------------------ coadds
COADD = RUN.config["coadd"]


def _coadd_rows(wildcards):
    return [
        r
        for r in RUN.science_rows(wildcards.instrument)
        if r["night"] == wildcards.night
        and r.get("target") == wildcards.target
        and r.get("band") == wildcards.band
    ]


def _frame_path(template, wildcards, r):
    return template.format(
        instrument=wildcards.instrument,
        night=r["night"],
        frame=r["frame"],
        chip=r["chip"],
    )


def coadd_inputs(wildcards):
    """Sky-subtracted frames, their WCS and zero points: every frame x chip of the stack."""
    rows = _coadd_rows(wildcards)
    return {
        "skysub": [_frame_path(paths.SKYSUB, wildcards, r) for r in rows],
        "wcs": [_frame_path(paths.FRAME_WCS, wildcards, r) for r in rows],
        "zp": [_frame_path(paths.FRAME_ZP, wildcards, r) for r in rows],
    }


def coadd_members(wildcards):
    """Label and exposure time of each frame x chip of the stack (in input order)."""
    return [
        {"label": f"{r['frame']}.{r['chip']}", "exptime": r["exptime"]}
        for r in _coadd_rows(wildcards)
    ]


def mem_mb_coadd(wildcards, attempt):
    """Memory for a coadd: the stack's frames in float32 four times over, more on retry."""
    pixels = sum((r["nx"] or 4096) * (r["ny"] or 4096) for r in _coadd_rows(wildcards))
    return int(max(1024, 16 * pixels / 1e6) * attempt)


def coadd_refcat(wildcards):
    return paths.REFCAT.format(instrument=wildcards.instrument, target=wildcards.target)


def coadd_mag_column(wildcards):
    return mag_column_of(wildcards.band)


def coadd_targets():
    """One coadd catalog per instrument, night, target and band with science frames."""
    if not COADD["enabled"]:
        return []
    keys = sorted(
        {
            (inst, r["night"], r["target"], r["band"])
            for inst in RUN.rows
            for r in RUN.science_rows(inst)
            if r.get("target") and r.get("band")
        }
    )
    return [
        paths.COADD_CATALOG.format(instrument=i, night=n, target=t, band=b)
        for i, n, t, b in keys
    ]
