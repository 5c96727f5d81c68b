"""Rule calibrate: one frame x chip to electrons (see imred.masters.build_calibrated)."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.masters import build_calibrated
from imred.products import write_image_product
from imred.scripting import run_rule


def main(smk):
    # input is a list of paths with names: test the names
    names = smk.input.keys()
    masters = {k: smk.input[k] for k in ("bias", "dark", "flat") if k in names}
    cal, header = build_calibrated(
        smk.params.row | {"path": smk.input.raw},
        smk.params.chip,
        smk.params.settings,
        smk.params.detector,
        masters,
        smk.params.regions,
    )
    write_image_product(smk.output[0], header, cal.sci, var=cal.var, mask=cal.mask, unit="electron")


run_rule(snakemake, main)
