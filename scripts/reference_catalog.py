"""Rule reference_catalog: the catalog of one target field (see imred.refcat)."""

import sys

sys.path.insert(0, snakemake.scriptdir)

from imred.fitsio import write_atomic
from imred.refcat import catalog_for_field
from imred.scripting import run_rule


def main(smk):
    table = catalog_for_field(smk.params.field, smk.params.settings)
    write_atomic(smk.output[0], lambda tmp: table.write(tmp, format="fits"))


run_rule(snakemake, main)
