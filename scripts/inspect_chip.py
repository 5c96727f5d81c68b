"""Rule inspect: raw statistics of one frame x chip (see imred.inspect.inspect_chip)."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)

from imred import __version__
from imred.config import settings_hash
from imred.fitsio import read_chip, write_atomic
from imred.inspect import inspect_chip
from imred.instrument import Chip
from imred.scripting import run_rule


def main(smk):
    row, settings = smk.params.row, smk.params.settings
    data, _ = read_chip(smk.input.raw, row["extension"])
    binning = tuple(int(v) for v in row["binning"].split("x"))
    report = inspect_chip(
        data,
        Chip(**smk.params.chip),
        binning,
        float(row["saturation"]),
        clip_sigma=settings["clip_sigma"],
        saturated_fraction_warn=settings["saturated_fraction_warn"],
    )
    report["frame"] = {k: row.get(k) for k in ("frame", "chip", "imagetype", "band", "exptime")}
    report["provenance"] = {
        "software": f"imred {__version__}",
        "inputs": [str(smk.input.raw)],
        "settings_hash": settings_hash({"settings": settings, "chip": smk.params.chip}),
    }

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(report, fh, indent=1)

    write_atomic(smk.output[0], write)


run_rule(snakemake, main)
