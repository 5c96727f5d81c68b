# Shared set-up: validate the config, bring the observation logs up to date, and
# thin input functions. The logic lives in scripts/imred (the library).
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from imred import paths
from imred.errors import ImredError
from imred.run import Run

try:
    RUN = Run(config, source=" + ".join(map(str, workflow.configfiles)) or "config")
except ImredError as err:
    sys.exit(f"imred: {err}")

for _name, _stats in RUN.log_stats.items():
    if _stats.get("read") or _stats.get("removed"):
        print(RUN.log_report(_name), file=sys.stderr)


wildcard_constraints:
    **RUN.wildcard_constraints(),


# Log columns that describe the file on disk, not the frame: they do not reach params.
_FILE_COLUMNS = ("file_bytes", "file_mtime", "path")


def all_targets():
    """What `snakemake` builds by default: every night's summary."""
    return [
        paths.NIGHT_SUMMARY.format(instrument=inst, night=night)
        for inst in RUN.rows
        for night in RUN.nights(inst)
    ]


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
