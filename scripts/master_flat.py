"""Rule master_flat: see imred.masters.build_master_flat."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.masters import build_master_flat
from imred.products import write_image_product
from imred.scripting import run_rule


def main(smk):
    w = smk.wildcards
    master, header = build_master_flat(
        smk.params.rows,
        smk.params.chip,
        w.night,
        w.setup,
        w.band,
        smk.params.settings,
        smk.params.detector,
        smk.input.get("bias"),
        smk.input.get("dark"),
        min_frames=smk.params.limits["min_frames"],
        flat_level=smk.params.limits["flat_level"],
    )
    write_image_product(smk.output[0], header, master.data, unc=master.unc, mask=master.mask)


run_rule(snakemake, main)
