"""Rule photometry: zero point and calibrated catalog (see imred.frames)."""

import json
import sys

sys.path.insert(0, snakemake.scriptdir)

from astropy.table import Table
from imred.fitsio import write_atomic
from imred.frames import calibrate_frame_photometry
from imred.scripting import run_rule


def main(smk):
    zp, catalog = calibrate_frame_photometry(
        smk.input.skysub,
        smk.input.wcs,
        Table.read(smk.input.sources),
        Table.read(smk.input.refcat),
        smk.params.mag_column,
        smk.params.settings,
    )
    write_atomic(smk.output.catalog, lambda tmp: catalog.write(tmp, format="fits"))

    def write(tmp):
        with open(tmp, "w") as fh:
            json.dump(zp | {"mag_column": smk.params.mag_column}, fh, indent=1, default=float)

    write_atomic(smk.output.zp, write)


run_rule(snakemake, main)
