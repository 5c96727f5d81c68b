"""Rule master_dark: see imred.masters.build_master_dark."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.masters import build_master_dark
from imred.products import write_image_product
from imred.scripting import run_rule


def main(smk):
    w = smk.wildcards
    master, header = build_master_dark(
        smk.params.rows,
        smk.params.chip,
        w.night,
        w.setup,
        smk.params.settings,
        smk.params.detector,
        smk.input.get("bias"),
    )
    write_image_product(
        smk.output[0], header, master.data, unc=master.unc, mask=master.mask, unit="electron/s"
    )


run_rule(snakemake, main)
